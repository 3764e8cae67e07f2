//! A group on disk: one SQLite file holding the replica (the group's own
//! tables) and the witness's bookkeeping (`pdb_*`). This module knows the
//! file — creating it atomically, opening and migrating it, its fixed
//! info, its rows by key, its log and head — and nothing of threads.

pub mod disk;
mod error;
pub mod log;
pub mod migrate;
pub mod schema;
pub mod tables;
pub mod value;

use ed25519_dalek::SigningKey;
pub use error::{Result, StoreError};
use log::HeadState;
use pdb_protocol::records::{HeadRecord, Signed};
use pdb_protocol::wire::{HeadJson, SchemaJson, SchemaVersionJson};
use pdb_protocol::{genesis_hash, hex, now_ms, Changeset, Migration, Schema, StateRoot, Value};
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
    include_str!("../../../sql/witness/005_migrations.sql"),
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

/// Everything about a group that changes only with its schema: read when
/// the group opens and again after each migration.
pub struct GroupInfo {
    pub id: String,
    /// The schema in force (the newest version).
    pub schema: Schema,
    pub schema_hash: [u8; 32],
    pub tables: Vec<TableSql>,
    /// Every version the schema has had, oldest first (the last is
    /// `schema`).
    pub history: Vec<SchemaVersion>,
}

/// One version of a group's schema. Its structure, DDL and migration are
/// kept in memory only while commits of that version are still accepted
/// (the window, the version in force included); older ones are read from
/// the file when needed ([`schema_of`]), so an open group's memory does not
/// grow with its history.
pub struct SchemaVersion {
    pub version: u32,
    pub hash: [u8; 32],
    /// The log entry that made it (0: the group's creation).
    pub seq: u64,
    /// The oldest version whose commits were accepted while it was the
    /// newest.
    pub accepts_from: u32,
    /// The structure, inside the window.
    pub schema: Option<Schema>,
    /// The DDL it was made from, inside the window (else empty).
    pub ddl: String,
    /// The migration that made it, inside the window (none for the first
    /// version).
    pub migration: Option<Migration>,
}

impl SchemaVersion {
    pub fn json(&self) -> SchemaVersionJson {
        SchemaVersionJson {
            version: self.version,
            seq: self.seq,
            hash: hex(&self.hash),
            accepts_from: self.accepts_from,
            ddl: self.ddl.clone(),
        }
    }
}

impl GroupInfo {
    /// The info of a group with this schema (and history).
    pub fn new(id: String, schema: Schema, history: Vec<SchemaVersion>) -> GroupInfo {
        GroupInfo {
            id,
            schema_hash: schema.hash(),
            tables: schema.tables.iter().map(TableSql::new).collect(),
            schema,
            history,
        }
    }

    pub fn schema_json(&self) -> SchemaJson {
        SchemaJson::new(&self.schema)
    }

    /// The oldest schema version whose commits are accepted now.
    pub fn accepts_from(&self) -> u32 {
        self.history
            .last()
            .map_or(self.schema.version, |v| v.accepts_from)
    }

    /// The versions after `version`, oldest first.
    pub fn since(&self, version: u32) -> &[SchemaVersion] {
        let i = self
            .history
            .iter()
            .position(|v| v.version > version)
            .unwrap_or(self.history.len());
        &self.history[i..]
    }

    /// A version of the schema, if the group had it.
    pub fn version(&self, version: u32) -> Option<&SchemaVersion> {
        self.history.iter().find(|v| v.version == version)
    }

    pub fn table_sql(&self, name: &str) -> Option<&TableSql> {
        self.schema.table_index(name).map(|i| &self.tables[i])
    }

    /// The head hash before the first entry: bound to the group's first
    /// schema.
    pub fn genesis(&self) -> [u8; 32] {
        match self.history.first() {
            Some(v) => genesis_hash(&self.id, v.version, &v.hash),
            None => genesis_hash(&self.id, self.schema.version, &self.schema_hash),
        }
    }

    /// Signs `head` as of now: the one place a head record is made.
    pub fn sign_head(&self, key: &SigningKey, head: &HeadState) -> HeadJson {
        let rec = HeadRecord {
            group: self.id.clone(),
            seq: head.seq,
            head_hash: head.hash,
            state_root: head.root.digest(),
            schema_version: head.schema_version,
            schema_hash: head.schema_hash,
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
            "INSERT INTO pdb_head(id, seq, head_hash, root, time_ms, schema_version, schema_hash)
             VALUES (1, 0, ?1, ?2, ?3, ?4, ?5)",
            params![
                genesis_hash(id, schema.version, &hash).to_vec(),
                StateRoot::empty().to_bytes(),
                now,
                schema.version,
                hash.to_vec()
            ],
        )?;
        tx.execute(
            "INSERT INTO pdb_schemas(version, seq, structure, hash, accepts_from, ddl)
             VALUES (?1, 0, ?2, ?3, ?1, ?4)",
            params![
                schema.version,
                serde_json::to_string(&schema.tables)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                hash.to_vec(),
                schema_sql
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
    let history = load_history(conn, &schema).map_err(|e| corrupt(&e))?;
    Ok(GroupInfo::new(id, schema, history))
}

/// Every version of the schema, oldest first: for each its hash, entry
/// and window; for those inside the window in force, the structure
/// (checked against its hash), the DDL and the migration (checked to make
/// that structure from the one before). The last must be `current`.
fn load_history(
    conn: &Connection,
    current: &Schema,
) -> std::result::Result<Vec<SchemaVersion>, String> {
    let sqlerr = |e: rusqlite::Error| e.to_string();
    let window: i64 = conn
        .query_row(
            "SELECT accepts_from FROM pdb_schemas ORDER BY version DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .map_err(sqlerr)?;
    let window = window.min(i64::from(current.version));
    let mut st = conn
        .prepare(
            "SELECT s.version, s.seq, s.hash, s.accepts_from,
                    CASE WHEN s.version >= ?1 THEN s.structure END,
                    CASE WHEN s.version >= ?1 THEN s.ddl ELSE '' END,
                    CASE WHEN s.version >= ?1 THEN l.migration END
               FROM pdb_schemas s LEFT JOIN pdb_log l ON l.seq = s.seq AND s.seq > 0
              ORDER BY s.version",
        )
        .map_err(sqlerr)?;
    let rows = st
        .query_map([window], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
            ))
        })
        .map_err(sqlerr)?;
    let mut out: Vec<SchemaVersion> = Vec::new();
    for row in rows {
        let (version, seq, hash, accepts_from, structure, ddl, migration) = row.map_err(sqlerr)?;
        let version = u32::try_from(version).map_err(|_| "bad schema version in history")?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| format!("schema version {version}: bad hash"))?;
        let schema = match structure {
            None => None,
            Some(text) => Some(structure_of(version, &text, &hash)?),
        };
        let migration = match (&schema, migration) {
            (Some(schema), Some(bytes)) if seq > 0 => {
                let m = Migration::decode(&bytes)
                    .map_err(|e| format!("the migration to version {version}: {e}"))?;
                let made = match out.last().and_then(|p| p.schema.as_ref()) {
                    Some(prev) => m.apply_to(prev)?,
                    None => m.schema(),
                };
                if &made != schema {
                    return Err(format!(
                        "the migration to version {version} does not make that version"
                    ));
                }
                Some(m)
            }
            (Some(_), None) if seq > 0 => {
                return Err(format!(
                    "the migration to version {version} is not in the log"
                ))
            }
            _ => None,
        };
        out.push(SchemaVersion {
            version,
            hash,
            seq: seq.max(0) as u64,
            accepts_from: u32::try_from(accepts_from).unwrap_or(0),
            schema,
            ddl,
            migration,
        });
    }
    match out.last() {
        Some(last) if last.schema.as_ref() == Some(current) => Ok(out),
        _ => Err("the schema history does not end at the schema in force".into()),
    }
}

/// A stored structure, checked against the grammar and its hash.
fn structure_of(version: u32, text: &str, hash: &[u8; 32]) -> std::result::Result<Schema, String> {
    let tables =
        serde_json::from_str(text).map_err(|e| format!("schema version {version}: {e}"))?;
    let schema = Schema::new(version, tables);
    schema
        .validate()
        .map_err(|e| format!("schema version {version}: {e}"))?;
    if &schema.hash() != hash {
        return Err(format!("schema version {version} does not match its hash"));
    }
    Ok(schema)
}

/// The group's schema at `version`, read from the file (for versions
/// whose structure is not kept in memory).
pub fn schema_of(conn: &Connection, version: u32) -> Result<Option<Schema>> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT structure, hash FROM pdb_schemas WHERE version = ?1",
            [version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((text, hash)) = row else {
        return Ok(None);
    };
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("schema version {version}: bad hash")))?;
    structure_of(version, &text, &hash)
        .map(Some)
        .map_err(StoreError::Corrupt)
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
