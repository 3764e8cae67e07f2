//! The sync state kept in `pdb_state`: the settings `pdb_open` stored
//! (witness, group, token, pinned key, policy, schema), the verified
//! head, and the last error — loaded once per call as [`Local`].

use crate::client::HttpWitness;
use crate::db::{as_blob, transaction, Cache, Db};
use crate::error::{Error, Result};
use crate::merge::Policy;
use crate::tables::{self, SyncTable};
use crate::transport::Transport;
use pdb_protocol::wire::LimitsJson;
use pdb_protocol::{hex, KeyChain, Schema, StateRoot, Value};

/// The extension's tables (`pdb_state`, `pdb_outbox`, ...), in order;
/// `pdb_state.local_version` records how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/extension/001_local.sql"),
    include_str!("../../sql/extension/002_never_stuck.sql"),
    include_str!("../../sql/extension/003_migrations.sql"),
    include_str!("../../sql/extension/004_live.sql"),
    include_str!("../../sql/extension/005_recover.sql"),
];

/// Creates or updates the extension's tables (idempotent).
pub fn migrate(db: &Db) -> Result<()> {
    if get_i64_if_any(db, "local_version")? == Some(MIGRATIONS.len() as i64) {
        return Ok(());
    }
    transaction(db, || {
        // The first creates pdb_state, so it is run again harmlessly (IF
        // NOT EXISTS throughout) before the version can be read.
        db.exec(MIGRATIONS[0])?;
        let done = get_i64(db, "local_version")?.unwrap_or(1).max(1) as usize;
        for sql in MIGRATIONS.iter().skip(done) {
            db.exec(sql)?;
        }
        set(db, "local_version", Value::Integer(MIGRATIONS.len() as i64))
    })
}

/// A setting, or None when `pdb_state` does not exist yet.
fn get_i64_if_any(db: &Db, k: &str) -> Result<Option<i64>> {
    let exists = db.row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'pdb_state'",
        &[],
    )?;
    if exists.is_none() {
        return Ok(None);
    }
    get_i64(db, k)
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
    /// What the witness said one request may carry.
    pub limits: LimitsJson,
}

pub use crate::kv::{delete, get, get_i64, get_text, set};

pub fn is_open(db: &Db) -> Result<bool> {
    let t = db.row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'pdb_state'",
        &[],
    )?;
    Ok(t.is_some() && get(db, "group")?.is_some())
}

/// Keeps the error a sync or open ended with, for `pdb_status`: its
/// message (`last_error`) and what it was as data (`last_error_json`:
/// class, code, table, key, retry_after_s, at_ms).
pub fn record_error(db: &Db, e: &Error) {
    let r = e.rejection();
    let detail = serde_json::json!({
        "class": e.class().map_or("local", |c| c.name()),
        "code": e.code(),
        "table": r.and_then(|r| r.body.table.clone()),
        "key": r.and_then(|r| r.body.key.clone()),
        "retry_after_s": e.retry_after(),
        "at_ms": pdb_protocol::now_ms(),
    });
    let _ = set(db, "last_error", Value::text(&e.to_string()));
    let _ = set(db, "last_error_json", Value::text(&detail.to_string()));
}

pub fn clear_error(db: &Db) -> Result<()> {
    delete(db, "last_error")?;
    delete(db, "last_error_json")
}

/// Records a sync that ended well: no error, and when (written in the
/// sync's last local transaction, so an idle sync makes one).
pub fn mark_synced(db: &Db) -> Result<()> {
    clear_error(db)?;
    // The witness's history holds this database's head again (the pull
    // verified a head extending it, or a commit on it landed): a restore
    // seen before is no longer the case, and pdb_status stops advising
    // pdb_recover.
    delete(db, crate::recover::RESTORED)?;
    set(
        db,
        "last_sync_ms",
        Value::Integer(pdb_protocol::now_ms() as i64),
    )
}

/// The limits the witness advertised (stored by `pdb_open` and when a
/// request was too large), or what a witness that predates them takes.
pub fn limits(db: &Db) -> Result<LimitsJson> {
    Ok(get_text(db, "limits")?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(default_limits))
}

/// What a witness that predates advertised limits takes.
pub fn default_limits() -> LimitsJson {
    LimitsJson {
        max_body_bytes: 8 * 1024 * 1024,
        max_page_bytes: 4 * 1024 * 1024,
        max_page_commits: 1000,
        keep_log_commits: None,
        max_wait_seconds: None,
    }
}

pub fn set_limits(db: &Db, limits: &LimitsJson) -> Result<()> {
    let text = serde_json::to_string(limits).map_err(|e| Error::invalid(e.to_string()))?;
    set(db, "limits", Value::text(&text))
}

pub fn load(db: Db) -> Result<Local> {
    if !is_open(&db)? {
        return Err(Error::invalid(
            "this database is not open for sync; call pdb_open(url, group, options) first",
        ));
    }
    migrate(&db)?;
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
        limits: limits(&db)?,
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
    /// The witness this database was opened for, reached as `pdb_open`
    /// stored.
    pub fn witness(&self) -> Result<HttpWitness> {
        Ok(HttpWitness::new(
            &self.url,
            &self.token,
            &self.group,
            &Transport::load(&self.db)?,
        )?
        .with_limits(&self.limits))
    }

    /// The verified head (its three keys read in one statement: a sync
    /// reads it often).
    pub fn head(&self) -> Result<Head> {
        let (mut seq, mut hash, mut root) = (0, None, None);
        for r in self.sql.rows(
            "SELECT k, v FROM pdb_state WHERE k IN ('head_seq', 'head_hash', 'root')",
            &[],
        )? {
            let (Some(k), Some(v)) = (r.first().and_then(crate::db::as_text), r.get(1)) else {
                continue;
            };
            match k.as_str() {
                "head_seq" => seq = crate::db::as_i64(v).unwrap_or(0) as u64,
                "head_hash" => hash = as_blob(v).and_then(|b| <[u8; 32]>::try_from(b).ok()),
                _ => root = as_blob(v).and_then(StateRoot::from_bytes),
            }
        }
        let hash = hash.ok_or_else(|| Error::invalid("the stored head hash is corrupt"))?;
        let root = root.ok_or_else(|| Error::invalid("the stored state root is corrupt"))?;
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
