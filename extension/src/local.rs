//! The extension's state in the local database (`pdb_state` and friends):
//! loading it, saving it, and running work in one local transaction.

use crate::db::{as_blob, as_i64, as_text, Db, Error, Result};
use crate::tables::{read_local, SyncTable};
use ed25519_dalek::VerifyingKey;
use pdb_protocol::{unhex32, Schema, StateRoot, Value};

pub const MIGRATION: &str = include_str!("../../sql/extension/001_local.sql");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RemoteWins,
    LocalWins,
    KeepBoth,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "remote_wins" => Some(Policy::RemoteWins),
            "local_wins" => Some(Policy::LocalWins),
            "keep_both" => Some(Policy::KeepBoth),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Policy::RemoteWins => "remote_wins",
            Policy::LocalWins => "local_wins",
            Policy::KeepBoth => "keep_both",
        }
    }
}

/// The verified head: everything the local copy is proven against.
#[derive(Clone, Debug)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    /// State-root lanes of the group at `seq` (the server's view: local
    /// rows with pending rows replaced by their base values).
    pub root: StateRoot,
}

/// Everything `pdb_open` stored, loaded for one call.
pub struct Local {
    pub db: Db,
    /// Statements reused within this call.
    pub sql: crate::db::Cache,
    pub url: String,
    pub group: String,
    pub token: String,
    pub key: VerifyingKey,
    pub policy: Policy,
    pub schema: Schema,
    pub schema_hash: [u8; 32],
    pub tables: Vec<SyncTable>,
}

pub fn get(db: &Db, k: &str) -> Result<Option<Value>> {
    Ok(db
        .row("SELECT v FROM pdb_state WHERE k = ?1", &[Value::text(k)])?
        .and_then(|r| r.into_iter().next()))
}

pub fn set(db: &Db, k: &str, v: Value) -> Result<()> {
    db.run(
        "INSERT OR REPLACE INTO pdb_state(k, v) VALUES (?1, ?2)",
        &[Value::text(k), v],
    )
}

pub fn get_text(db: &Db, k: &str) -> Result<Option<String>> {
    Ok(get(db, k)?.as_ref().and_then(as_text))
}

pub fn is_open(db: &Db) -> Result<bool> {
    let t = db.row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'pdb_state'",
        &[],
    )?;
    Ok(t.is_some() && get(db, "group")?.is_some())
}

pub fn load(db: Db) -> Result<Local> {
    if !is_open(&db)? {
        return Err(Error(
            "this database is not open for sync; call pdb_open(url, group, options) first".into(),
        ));
    }
    let need = |k: &str| -> Result<String> {
        get_text(&db, k)?
            .ok_or_else(|| Error(format!("sync state is missing {k:?}; call pdb_open again")))
    };
    let key_hex = need("public_key")?;
    let key = unhex32(&key_hex)
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| Error("the pinned witness key is corrupt".into()))?;
    let names: Vec<String> = serde_json::from_str(&need("tables")?)
        .map_err(|_| Error("the stored table list is corrupt".into()))?;
    let version = get(&db, "schema_version")?
        .as_ref()
        .and_then(as_i64)
        .unwrap_or(0) as u32;
    let schema = read_local(&db, &names, version)?
        .ok_or_else(|| Error("the group's tables are missing from this database".into()))?;
    let schema_hash = unhex32(&need("schema_hash")?)
        .ok_or_else(|| Error("the stored schema hash is corrupt".into()))?;
    if schema.hash() != schema_hash {
        return Err(Error(
            "schema_mismatch: the local tables no longer match the group's schema".into(),
        ));
    }
    let tables = schema.tables.iter().map(SyncTable::new).collect();
    Ok(Local {
        url: need("url")?,
        group: need("group")?,
        token: get_text(&db, "token")?.unwrap_or_default(),
        key,
        policy: Policy::parse(&need("policy")?).unwrap_or(Policy::RemoteWins),
        schema,
        schema_hash,
        tables,
        sql: crate::db::Cache::new(db),
        db,
    })
}

impl Local {
    pub fn head(&self) -> Result<Head> {
        let seq = get(&self.db, "head_seq")?
            .as_ref()
            .and_then(as_i64)
            .unwrap_or(0) as u64;
        let hash = get(&self.db, "head_hash")?
            .as_ref()
            .and_then(as_blob)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| Error("the stored head hash is corrupt".into()))?;
        let root = get(&self.db, "root")?
            .as_ref()
            .and_then(as_blob)
            .and_then(StateRoot::from_bytes)
            .ok_or_else(|| Error("the stored state root is corrupt".into()))?;
        Ok(Head { seq, hash, root })
    }

    pub fn set_head(&self, h: &Head) -> Result<()> {
        set(&self.db, "head_seq", Value::Integer(h.seq as i64))?;
        set(&self.db, "head_hash", Value::Blob(h.hash.to_vec()))?;
        set(&self.db, "root", Value::Blob(h.root.to_bytes()))
    }

    /// Drops the capture triggers (inside a transaction, so no other
    /// connection ever sees them missing) while sync writes rows itself.
    pub fn without_capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        for t in &self.tables {
            for name in t.trigger_names() {
                self.db.exec(&format!("DROP TRIGGER IF EXISTS {name}"))?;
            }
        }
        let out = f()?;
        for t in &self.tables {
            for ddl in t.trigger_ddl() {
                self.db.exec(&ddl)?;
            }
        }
        Ok(out)
    }
}

/// Runs `f` in one transaction: BEGIN IMMEDIATE when the host is in
/// autocommit, a savepoint inside the host's own transaction.
pub fn transaction<T>(db: &Db, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let nested = db.in_transaction()?;
    db.exec(if nested {
        "SAVEPOINT pdb_tx"
    } else {
        "BEGIN IMMEDIATE"
    })?;
    match f() {
        Ok(v) => {
            db.exec(if nested { "RELEASE pdb_tx" } else { "COMMIT" })?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.exec(if nested {
                "ROLLBACK TO pdb_tx; RELEASE pdb_tx"
            } else {
                "ROLLBACK"
            });
            Err(e)
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
