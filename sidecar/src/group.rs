//! One group on disk: a SQLite file holding the replica (the group's own
//! tables) and the witness's bookkeeping (`pdb_*`). Creating, opening,
//! connection settings, and row access by primary key.

use crate::read::{self, HeadState};
use crate::schema_ddl;
use crate::sqlvalue::{from_ref, ident, Bind};
use crate::writer::{self, Job};
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::SchemaJson;
use pdb_protocol::{genesis_hash, hex, Schema, StateRoot, Value};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Bookkeeping migrations, applied in order; `user_version` records the
/// last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/witness/001_group.sql"),
    include_str!("../../sql/witness/002_access.sql"),
    include_str!("../../sql/witness/003_projections.sql"),
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
    pub schema_sql: String,
    pub schema_hash: [u8; 32],
    pub tables: Vec<TableSql>,
}

impl GroupInfo {
    pub fn schema_json(&self) -> SchemaJson {
        SchemaJson {
            version: self.schema.version,
            hash: hex(&self.schema_hash),
            sql: self.schema_sql.clone(),
            tables: self.schema.tables.iter().map(|t| t.name.clone()).collect(),
        }
    }

    pub fn table_sql(&self, name: &str) -> Option<&TableSql> {
        self.schema.table_index(name).map(|i| &self.tables[i])
    }
}

/// SQL text for one table, built once from the schema with quoted names.
pub struct TableSql {
    pub name: String,
    pub affinities: Vec<pdb_protocol::schema::Affinity>,
    pub columns: Vec<String>,
    pub pk_cols: Vec<usize>,
    pub select_by_pk: String,
    pub scan: String,
    pub insert: String,
    pub delete: String,
}

impl TableSql {
    fn new(t: &pdb_protocol::Table) -> TableSql {
        let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
        let pk_cols: Vec<usize> = (0..t.columns.len())
            .filter(|i| t.columns[*i].pk > 0)
            .collect();
        let cond: Vec<String> = pk_cols
            .iter()
            .enumerate()
            .map(|(n, i)| format!("{} = ?{}", cols[*i], n + 1))
            .collect();
        let list = cols.join(", ");
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let table = ident(&t.name);
        let cond = cond.join(" AND ");
        TableSql {
            name: t.name.clone(),
            affinities: t.affinities(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            select_by_pk: format!("SELECT {list} FROM {table} WHERE {cond}"),
            scan: format!("SELECT {list} FROM {table}"),
            insert: format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", ")),
            delete: format!("DELETE FROM {table} WHERE {cond}"),
            pk_cols,
        }
    }

    /// The full row with this key, if present.
    pub fn fetch(&self, conn: &Connection, key: &[Value]) -> rusqlite::Result<Option<Vec<Value>>> {
        let mut st = conn.prepare_cached(&self.select_by_pk)?;
        let n = st.column_count();
        let binds: Vec<Bind<'_>> = key.iter().map(Bind).collect();
        let mut rows = st.query(rusqlite::params_from_iter(binds.iter()))?;
        match rows.next()? {
            None => Ok(None),
            Some(r) => (0..n)
                .map(|i| r.get_ref(i).map(from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Adds every row of the table to `root`.
    pub fn add_all(&self, conn: &Connection, root: &mut StateRoot) -> rusqlite::Result<u64> {
        let mut st = conn.prepare(&self.scan)?;
        let n = st.column_count();
        let mut rows = st.query([])?;
        let mut count = 0;
        let mut row = Vec::with_capacity(n);
        while let Some(r) = rows.next()? {
            row.clear();
            for i in 0..n {
                row.push(from_ref(r.get_ref(i)?));
            }
            root.add_row(&self.name, &row);
            count += 1;
        }
        Ok(count)
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

pub fn open_conn(path: &Path, writer: bool) -> rusqlite::Result<Connection> {
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
            return Err(rusqlite::Error::InvalidParameterName(format!(
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

/// A live group: its fixed info, its writer thread and a pool of readers.
pub struct Group {
    pub info: Arc<GroupInfo>,
    pub path: PathBuf,
    pub stats: Arc<writer::Stats>,
    writer: Mutex<Option<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    /// One snapshot at a time per group.
    pub snapshot_lock: Mutex<()>,
}

impl Group {
    /// Creates the group file atomically (built under a temporary name,
    /// synced, then renamed), so a crash never leaves half a group.
    pub fn create(
        dir: &Path,
        id: &str,
        schema_sql: &str,
        version: u32,
        key: Arc<SigningKey>,
    ) -> Result<Group, String> {
        let schema = schema_ddl::parse(schema_sql, version)?;
        let path = dir.join(file_name(id));
        if path.exists() {
            return Err(format!("group {id:?} already exists"));
        }
        let tmp = dir.join(format!(".{id}.creating"));
        let _ = std::fs::remove_file(&tmp);
        let build = || -> Result<(), String> {
            let mut conn = Connection::open(&tmp).map_err(|e| e.to_string())?;
            conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;")
                .map_err(|e| e.to_string())?;
            migrate(&conn).map_err(|e| e.to_string())?;
            schema_ddl::run_ddl(&mut conn, schema_sql)?;
            let hash = schema.hash();
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            for (k, v) in [
                ("group", rusqlite::types::Value::Text(id.into())),
                (
                    "schema_sql",
                    rusqlite::types::Value::Text(schema_sql.into()),
                ),
                (
                    "schema_version",
                    rusqlite::types::Value::Integer(version.into()),
                ),
                ("schema_hash", rusqlite::types::Value::Blob(hash.to_vec())),
                (
                    "created_ms",
                    rusqlite::types::Value::Integer(read::now_ms() as i64),
                ),
            ] {
                tx.execute("INSERT INTO pdb_meta(k, v) VALUES (?1, ?2)", params![k, v])
                    .map_err(|e| e.to_string())?;
            }
            tx.execute(
                "INSERT INTO pdb_head(id, seq, head_hash, root, time_ms) VALUES (1, 0, ?1, ?2, ?3)",
                params![
                    genesis_hash(id, version, &hash).to_vec(),
                    StateRoot::empty().to_bytes(),
                    read::now_ms() as i64
                ],
            )
            .map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            drop(conn);
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
        Group::open(&path, key).map_err(|e| e.to_string())
    }

    /// Opens an existing group file and starts its writer.
    pub fn open(path: &Path, key: Arc<SigningKey>) -> rusqlite::Result<Group> {
        let conn = open_conn(path, true)?;
        migrate(&conn)?;
        let info = Arc::new(load_info(&conn)?);
        let head = read::head(&conn)?;
        let stats = Arc::new(writer::Stats::default());
        let (tx, handle) = writer::start(conn, info.clone(), key, head, stats.clone());
        Ok(Group {
            info,
            stats,
            path: path.to_path_buf(),
            writer: Mutex::new(Some((tx, handle))),
            readers: Mutex::new(Vec::new()),
            snapshot_lock: Mutex::new(()),
        })
    }

    /// Queues a commit for the writer. Fails only when shutting down.
    pub fn submit(&self, job: Job) -> Result<(), crate::error::ApiError> {
        let stopping =
            || crate::error::ApiError::Unavailable("the witness is shutting down; retry".into());
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some((tx, _)) => tx.send(job).map_err(|_| stopping()),
            None => Err(stopping()),
        }
    }

    /// Runs `f` on a pooled read-only connection inside one read
    /// transaction, so everything it reads is one consistent snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> T) -> rusqlite::Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path, false)?,
        };
        conn.execute_batch("BEGIN")?;
        let out = f(&conn);
        conn.execute_batch("COMMIT")?;
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        Ok(out)
    }

    pub fn head(&self) -> rusqlite::Result<HeadState> {
        self.read(read::head)?
    }

    /// Drops the changesets of commits up to `through` (a snapshot's head);
    /// certificates stay, so the chain still verifies and retries still
    /// replay. A maintenance write on its own connection: it touches
    /// neither the head nor the replica, and SQLite serialises it with the
    /// writer.
    pub fn prune_log(&self, through: u64) -> Result<(), crate::error::ApiError> {
        self.maintenance("pruning the log", |conn| {
            conn.execute(
                "UPDATE pdb_log SET changeset = x'' WHERE seq <= ?1 AND length(changeset) > 0",
                [through as i64],
            )
            .and_then(|_| conn.execute(
                "INSERT OR REPLACE INTO pdb_meta(k, v) VALUES ('pruned_through', max(?1, coalesce((SELECT v FROM pdb_meta WHERE k = 'pruned_through'), 0)))",
                [through as i64],
            ))
            .map(|_| ())
            .map_err(|e| crate::error::ApiError::internal("pruning the log", e))
        })?;
        tracing::info!(group = %self.info.id, through, "log pruned");
        Ok(())
    }

    /// Runs `f` in one write transaction on a connection of its own: a
    /// maintenance write (pruning, access changes, projection definitions)
    /// that touches neither head nor replica rows. SQLite serialises it with
    /// the writer. Rolled back when `f` fails.
    pub fn maintenance<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T, crate::error::ApiError>,
    ) -> Result<T, crate::error::ApiError> {
        use crate::error::ApiError;
        let sql = |e: rusqlite::Error| ApiError::internal(context, e);
        let mut conn = open_conn(&self.path, true).map_err(sql)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        match f(&mut conn) {
            Ok(v) => {
                conn.execute_batch("COMMIT").map_err(sql)?;
                Ok(v)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The caller's role in this group, if any.
    pub fn role_of(
        &self,
        identity: &str,
    ) -> Result<Option<crate::auth::Role>, crate::error::ApiError> {
        self.read(|c| {
            c.query_row(
                "SELECT role FROM pdb_members WHERE identity = ?1",
                [identity],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .and_then(|r| r)
        .map(|r| r.as_deref().and_then(crate::auth::Role::parse))
        .map_err(|e| crate::error::ApiError::internal("reading members", e))
    }

    /// Runs one access change (members, rules, projections) as a
    /// maintenance write and logs it with the next version number. Returns
    /// the version and what `apply` returned.
    pub fn change_access<T>(
        &self,
        kind: &str,
        subject: &str,
        value: Option<&str>,
        by: &str,
        apply: impl FnOnce(&mut Connection, i64) -> Result<T, crate::error::ApiError>,
    ) -> Result<(i64, T), crate::error::ApiError> {
        let out = self.maintenance("changing access", |conn| {
            let sql = |e| crate::error::ApiError::internal("changing access", e);
            let version: i64 = conn
                .query_row("SELECT coalesce(max(version), 0) + 1 FROM pdb_access_log", [], |r| r.get(0))
                .map_err(sql)?;
            let out = apply(conn, version)?;
            conn.execute(
                "INSERT INTO pdb_access_log(version, kind, subject, value, changed_by, time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![version, kind, subject, value, by, read::now_ms() as i64],
            )
            .map_err(sql)?;
            Ok((version, out))
        })?;
        tracing::info!(group = %self.info.id, kind, subject, value, by, version = out.0, "access changed");
        Ok(out)
    }

    /// Defines (or replaces) a projection and fills it, in one write
    /// transaction serialised with the writer, so it starts exactly at the
    /// head it was filled from and every later commit maintains it.
    pub fn define_projection(
        &self,
        name: &str,
        def: &serde_json::Value,
        by: &str,
    ) -> Result<crate::projection::Projection, crate::error::ApiError> {
        let text = def.to_string();
        let (_, p) = self.change_access("projection", name, Some(&text), by, |conn, version| {
            let p = crate::projection::install(conn, &self.info, name, def)?;
            crate::projection::store(conn, &p, def, version)
                .map_err(|e| crate::error::ApiError::internal("defining a projection", e))?;
            Ok(p)
        })?;
        Ok(p)
    }

    pub fn drop_projection(&self, name: &str, by: &str) -> Result<i64, crate::error::ApiError> {
        let store = crate::sqlvalue::ident(&format!("pdb_proj_{name}"));
        let (version, ()) = self.change_access("projection", name, None, by, |c, _| {
            c.execute("DELETE FROM pdb_projections WHERE name = ?1", [name])
                .and_then(|_| c.execute_batch(&format!("DROP TABLE IF EXISTS {store}")))
                .map_err(|e| crate::error::ApiError::internal("dropping a projection", e))
        })?;
        Ok(version)
    }

    /// Stops the writer after it has finished the commits already queued.
    pub fn shutdown(&self) {
        let taken = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// Reads a group's fixed info and checks its tables against the recorded
/// schema hash.
pub fn load_info(conn: &Connection) -> rusqlite::Result<GroupInfo> {
    let id: String = meta(conn, "group")?;
    let schema_sql: String = meta(conn, "schema_sql")?;
    let version: i64 = meta(conn, "schema_version")?;
    let stored_hash: Vec<u8> = meta(conn, "schema_hash")?;
    let schema = schema_ddl::read(conn, version as u32)?;
    let schema_hash = schema.hash();
    if stored_hash != schema_hash {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "group {id:?}: tables on disk do not match the recorded schema hash"
        )));
    }
    let tables = schema.tables.iter().map(TableSql::new).collect();
    Ok(GroupInfo {
        id,
        schema,
        schema_sql,
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
