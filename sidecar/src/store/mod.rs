//! A group on disk: one SQLite file holding the replica (the group's own
//! tables) and the witness's bookkeeping (`pdb_*`). This module knows the
//! file — creating it atomically, opening and migrating it, its fixed
//! info, its rows by key, its log and head — and nothing of threads.

pub mod disk;
mod error;
pub mod log;
pub mod schema;
pub mod tables;
pub mod value;

use ed25519_dalek::SigningKey;
pub use error::{Result, StoreError};
use log::HeadState;
use pdb_protocol::records::{HeadRecord, Signed};
use pdb_protocol::wire::{HeadJson, SchemaJson};
use pdb_protocol::{genesis_hash, hex, now_ms, Changeset, Schema, StateRoot, Value};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;
pub use tables::TableSql;

/// Bookkeeping migrations, applied in order; `user_version` records the
/// last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../sql/witness/001_group.sql"),
    include_str!("../../../sql/witness/002_access.sql"),
    include_str!("../../../sql/witness/003_projections.sql"),
    include_str!("../../../sql/witness/004_isolation.sql"),
];
pub const MAX_GROUP_ID: usize = 64;

/// Group ids: 1–64 of `a-z 0-9 _ -`, starting with a letter or digit.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_GROUP_ID
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn file_name(id: &str) -> String {
    format!("{id}.sqlite")
}

/// Everything fixed about a group once it exists.
pub struct GroupInfo {
    pub id: String,
    pub schema: Schema,
    pub schema_hash: [u8; 32],
    pub tables: Vec<TableSql>,
}

impl GroupInfo {
    pub fn schema_json(&self) -> SchemaJson {
        SchemaJson::new(&self.schema)
    }

    pub fn table_sql(&self, name: &str) -> Option<&TableSql> {
        self.schema.table_index(name).map(|i| &self.tables[i])
    }

    /// The head hash before the first commit.
    pub fn genesis(&self) -> [u8; 32] {
        genesis_hash(&self.id, self.schema.version, &self.schema_hash)
    }

    /// Signs `head` as of now: the one place a head record is made.
    pub fn sign_head(&self, key: &SigningKey, head: &HeadState) -> HeadJson {
        let rec = HeadRecord {
            group: self.id.clone(),
            seq: head.seq,
            head_hash: head.hash,
            state_root: head.root.digest(),
            schema_version: self.schema.version,
            schema_hash: self.schema_hash,
            time_ms: now_ms(),
        };
        let signed = Signed::sign(key, rec.encode());
        HeadJson {
            seq: rec.seq,
            head_hash: hex(&rec.head_hash),
            state_root: hex(&rec.state_root),
            schema_version: rec.schema_version,
            schema_hash: hex(&rec.schema_hash),
            time_ms: rec.time_ms,
            signed: (&signed).into(),
            group: rec.group,
        }
    }

    /// (schema table name, primary key) of every row a validated changeset
    /// touches; validation guarantees each appears once.
    pub fn touched_keys(&self, cs: &Changeset) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::with_capacity(cs.len());
        for t in &cs.tables {
            let name = self
                .table_sql(&t.name)
                .map(|s| s.name.clone())
                .unwrap_or_else(|| t.name.clone());
            for c in &t.changes {
                out.push((name.clone(), c.pk(&t.pk_flags)));
            }
        }
        out
    }
}

/// The root computed from scratch over every row of the replica.
pub fn full_root(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<(StateRoot, u64)> {
    let mut root = StateRoot::empty();
    let mut rows = 0;
    for t in &info.tables {
        rows += t.add_all(conn, &mut root)?;
    }
    Ok((root, rows))
}

/// Opens a connection to a group file: the writer's (WAL, fsync on every
/// COMMIT) or a read-only one.
pub fn open_conn(path: &Path, writer: bool) -> Result<Connection> {
    let flags = if writer {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    if writer {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "cannot switch {} to WAL (got {mode})",
                path.display()
            )));
        }
        // A commit is durable when COMMIT returns: the WAL is fsynced.
        // Foreign keys stay off: the replica must change by exactly the rows a
        // changeset names (cascades arrive as rows of their own), or the
        // state root would miss rows SQLite changed on its own.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
    }
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

pub fn meta<T: rusqlite::types::FromSql>(conn: &Connection, k: &str) -> rusqlite::Result<T> {
    conn.query_row("SELECT v FROM pdb_meta WHERE k = ?1", [k], |r| r.get(0))
}

/// Creates a group file atomically (built under a temporary name, synced,
/// then renamed), so a crash never leaves half a group. The tables are
/// built from `schema` (which [`schema::parse`] made from `schema_sql`, the
/// admin's DDL, kept for people only).
pub fn create(dir: &Path, id: &str, schema_sql: &str, schema: &Schema) -> Result<()> {
    let path = dir.join(file_name(id));
    let tmp = dir.join(format!(".{id}.creating"));
    let _ = std::fs::remove_file(&tmp);
    let build = || -> Result<()> {
        let mut conn = Connection::open(&tmp)?;
        // Nothing needs to be durable before the one sync below: until the
        // rename, a crash only leaves a temporary file to discard.
        conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF;")?;
        migrate(&conn)?;
        schema::create(&conn, schema).map_err(StoreError::Corrupt)?;
        let hash = schema.hash();
        let structure = serde_json::to_string(&schema.tables)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = now_ms() as i64;
        let tx = conn.transaction()?;
        for (k, v) in [
            ("group", rusqlite::types::Value::Text(id.into())),
            (
                "schema_sql",
                rusqlite::types::Value::Text(schema_sql.into()),
            ),
            (
                "schema_version",
                rusqlite::types::Value::Integer(schema.version.into()),
            ),
            ("schema", rusqlite::types::Value::Text(structure)),
            ("schema_hash", rusqlite::types::Value::Blob(hash.to_vec())),
            ("created_ms", rusqlite::types::Value::Integer(now)),
        ] {
            tx.execute("INSERT INTO pdb_meta(k, v) VALUES (?1, ?2)", params![k, v])?;
        }
        tx.execute(
            "INSERT INTO pdb_head(id, seq, head_hash, root, time_ms) VALUES (1, 0, ?1, ?2, ?3)",
            params![
                genesis_hash(id, schema.version, &hash).to_vec(),
                StateRoot::empty().to_bytes(),
                now
            ],
        )?;
        tx.commit()?;
        drop(conn);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Corrupt(format!("syncing {}: {e}", tmp.display())))
    };
    if let Err(e) = build() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path)
        .and_then(|_| std::fs::File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Corrupt(format!("storing {}: {e}", path.display())))
}

/// Opens a group file for writing: migrates its bookkeeping, checks its
/// tables against the recorded schema hash, reads its head.
pub fn open(path: &Path) -> Result<(Connection, GroupInfo, HeadState)> {
    let conn = open_conn(path, true)?;
    migrate(&conn)?;
    let info = load_info(&conn)?;
    let head = log::head(&conn)?;
    Ok((conn, info, head))
}

/// Reads a group's fixed info: its structured schema, checked against the
/// grammar, the recorded hash, and the replica's tables on disk.
pub fn load_info(conn: &Connection) -> Result<GroupInfo> {
    let id: String = meta(conn, "group")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("group {id:?}: {what}"));
    let version: i64 = meta(conn, "schema_version")?;
    let version = u32::try_from(version).map_err(|_| corrupt("bad schema version"))?;
    let structure: Option<String> = meta(conn, "schema").optional()?;
    let structure = structure.ok_or_else(|| {
        corrupt("made by PersonalDB 0.1.0, whose schema hash does not cover constraints; export its rows and create the group again")
    })?;
    let tables: Vec<pdb_protocol::Table> =
        serde_json::from_str(&structure).map_err(|e| corrupt(&format!("stored schema: {e}")))?;
    let schema = Schema::new(version, tables);
    schema
        .validate()
        .map_err(|e| corrupt(&format!("stored schema: {e}")))?;
    let stored_hash: Vec<u8> = meta(conn, "schema_hash")?;
    let schema_hash = schema.hash();
    if stored_hash != schema_hash {
        return Err(corrupt(
            "the stored schema does not match its recorded hash",
        ));
    }
    let on_disk = schema::read(conn, version).map_err(StoreError::Corrupt)?;
    if on_disk != schema {
        return Err(corrupt(
            "the tables on disk do not match the group's schema",
        ));
    }
    let tables = schema.tables.iter().map(TableSql::new).collect();
    Ok(GroupInfo {
        id,
        schema,
        schema_hash,
        tables,
    })
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
