//! The sync state kept in `pdb_state`: the settings `pdb_open` stored
//! (witness, group, token, pinned key, policy, schema), the verified
//! head, and the last error — loaded once per call as [`Local`].

use crate::db::{as_blob, as_i64, as_text, Cache, Db};
use crate::error::{Error, Result};
use crate::merge::Policy;
use crate::tables::{self, SyncTable};
use pdb_protocol::{hex, KeyChain, Schema, StateRoot, Value};

/// The extension's tables (`pdb_state`, `pdb_outbox`, ...).
pub const MIGRATION: &str = include_str!("../../sql/extension/001_local.sql");

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
    pub sql: Cache,
    pub url: String,
    pub group: String,
    pub token: String,
    /// The witness keys this database trusts.
    pub key: KeyChain,
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

pub fn delete(db: &Db, k: &str) -> Result<()> {
    db.run("DELETE FROM pdb_state WHERE k = ?1", &[Value::text(k)])
}

pub fn get_text(db: &Db, k: &str) -> Result<Option<String>> {
    Ok(get(db, k)?.as_ref().and_then(as_text))
}

pub fn get_i64(db: &Db, k: &str) -> Result<Option<i64>> {
    Ok(get(db, k)?.as_ref().and_then(as_i64))
}

pub fn is_open(db: &Db) -> Result<bool> {
    let t = db.row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'pdb_state'",
        &[],
    )?;
    Ok(t.is_some() && get(db, "group")?.is_some())
}

/// Keeps an error for `pdb_status().last_error`.
pub fn record_error(db: &Db, e: &Error) {
    let _ = set(db, "last_error", Value::text(&e.to_string()));
}

pub fn clear_error(db: &Db) -> Result<()> {
    delete(db, "last_error")
}

/// A failed call to the witness, classified (see
/// [`Error::classified`]) and kept for `pdb_status`.
pub fn call_failed(db: &Db, e: Error) -> Error {
    let e = e.classified();
    if matches!(e.root(), Error::Network { .. } | Error::Rejected(_)) {
        record_error(db, &e);
    }
    e
}

pub fn load(db: Db) -> Result<Local> {
    if !is_open(&db)? {
        return Err(Error::invalid(
            "this database is not open for sync; call pdb_open(url, group, options) first",
        ));
    }
    let need = |k: &str| -> Result<String> {
        get_text(&db, k)?.ok_or_else(|| {
            Error::invalid(format!("sync state is missing {k:?}; call pdb_open again"))
        })
    };
    let key = crate::keys::load(&db)?;
    let schema = stored_schema(&db)?;
    let schema_hash = schema.hash();
    if get_text(&db, "schema_hash")? != Some(hex(&schema_hash)) {
        return Err(Error::invalid("the stored schema does not match its hash"));
    }
    // The local tables are read in full only when the catalog changed
    // since they were last found to match.
    let fingerprint = tables::fingerprint(&db, &schema)?;
    if get(&db, "schema_fingerprint")?.as_ref().and_then(as_blob) != Some(&fingerprint[..]) {
        tables::check_local(&db, &schema)?;
        set(&db, "schema_fingerprint", Value::Blob(fingerprint.to_vec()))?;
    }
    let tables = schema.tables.iter().map(SyncTable::new).collect();
    Ok(Local {
        url: need("url")?,
        group: need("group")?,
        token: match crate::token::get(&db)? {
            Some(t) => t,
            None => get_text(&db, "token")?.unwrap_or_default(),
        },
        key,
        policy: Policy::parse(&need("policy")?).unwrap_or(Policy::RemoteWins),
        schema,
        schema_hash,
        tables,
        sql: Cache::new(db),
        db,
    })
}

/// The group's schema as `pdb_open` verified and stored it.
pub fn stored_schema(db: &Db) -> Result<Schema> {
    let again = "; call pdb_open again";
    let text = get_text(db, "schema")?
        .ok_or_else(|| Error::invalid(format!("sync state has no group schema{again}")))?;
    let tables = serde_json::from_str(&text)
        .map_err(|_| Error::invalid(format!("the stored schema is corrupt{again}")))?;
    let version = get_i64(db, "schema_version")?.unwrap_or(0);
    let schema = Schema::new(u32::try_from(version).unwrap_or(0), tables);
    schema
        .validate()
        .map_err(|e| Error::invalid(format!("the stored schema is invalid ({e}){again}")))?;
    Ok(schema)
}

/// Stores the group's schema (verified against a signed head), with the
/// fingerprint of the local tables that were just found to match it.
pub fn set_schema(db: &Db, schema: &Schema) -> Result<()> {
    let text = serde_json::to_string(&schema.tables).map_err(|e| Error::invalid(e.to_string()))?;
    set(db, "schema", Value::text(&text))?;
    set(db, "schema_version", Value::Integer(schema.version.into()))?;
    set(db, "schema_hash", Value::text(&hex(&schema.hash())))?;
    let fingerprint = tables::fingerprint(db, schema)?;
    set(db, "schema_fingerprint", Value::Blob(fingerprint.to_vec()))
}

impl Local {
    pub fn head(&self) -> Result<Head> {
        let seq = get_i64(&self.db, "head_seq")?.unwrap_or(0) as u64;
        let hash = get(&self.db, "head_hash")?
            .as_ref()
            .and_then(as_blob)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| Error::invalid("the stored head hash is corrupt"))?;
        let root = get(&self.db, "root")?
            .as_ref()
            .and_then(as_blob)
            .and_then(StateRoot::from_bytes)
            .ok_or_else(|| Error::invalid("the stored state root is corrupt"))?;
        Ok(Head { seq, hash, root })
    }

    pub fn set_head(&self, h: &Head) -> Result<()> {
        set_head(&self.db, h)
    }
}

pub fn set_head(db: &Db, h: &Head) -> Result<()> {
    set(db, "head_seq", Value::Integer(h.seq as i64))?;
    set(db, "head_hash", Value::Blob(h.hash.to_vec()))?;
    set(db, "root", Value::Blob(h.root.to_bytes()))
}
