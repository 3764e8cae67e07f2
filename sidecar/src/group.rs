//! A live group: its fixed info, the writer thread that owns its only write
//! connection, a pool of read connections, and the maintenance writes
//! (access changes, projection definitions, pruning) serialised with the
//! writer by SQLite.

use crate::auth::Role;
use crate::error::ApiError;
use crate::projection::{self, Projection};
use crate::store::{self, log, GroupInfo};
use crate::write::writer::{self, Job};
use ed25519_dalek::SigningKey;
use pdb_protocol::{now_ms, quote_ident};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Read connections kept open per group.
const READERS: usize = 8;

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
    /// Opens an existing group file and starts its writer.
    pub fn open(path: &Path, key: Arc<SigningKey>) -> store::Result<Group> {
        let (conn, info, head) = store::open(path)?;
        let info = Arc::new(info);
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
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let stopping = || ApiError::Unavailable("the witness is shutting down; retry".into());
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some((tx, _)) => tx.send(job).map_err(|_| stopping()),
            None => Err(stopping()),
        }
    }

    /// Runs `f` on a pooled read-only connection inside one read
    /// transaction, so everything it reads is one consistent snapshot.
    pub fn read<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let sql = |e: rusqlite::Error| ApiError::internal(context, e);
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                store::open_conn(&self.path, false).map_err(|e| ApiError::internal(context, e))?
            }
        };
        conn.execute_batch("BEGIN").map_err(sql)?;
        let out = f(&conn);
        conn.execute_batch("COMMIT").map_err(sql)?;
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` in one write transaction on a connection of its own: a
    /// maintenance write that touches neither head nor replica rows.
    /// SQLite serialises it with the writer. Rolled back when `f` fails.
    pub fn maintenance<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let sql = |e: rusqlite::Error| ApiError::internal(context, e);
        let mut conn =
            store::open_conn(&self.path, true).map_err(|e| ApiError::internal(context, e))?;
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

    /// Drops the changesets of commits up to `through` (a snapshot's head).
    pub fn prune_log(&self, through: u64) -> Result<(), ApiError> {
        self.maintenance("pruning the log", |conn| {
            log::prune(conn, through).map_err(|e| ApiError::internal("pruning the log", e))
        })?;
        tracing::info!(group = %self.info.id, through, "log pruned");
        Ok(())
    }

    /// The caller's role in this group, if any.
    pub fn role_of(&self, identity: &str) -> Result<Option<Role>, ApiError> {
        let role: Option<String> = self.read("reading members", |c| {
            c.query_row(
                "SELECT role FROM pdb_members WHERE identity = ?1",
                [identity],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| ApiError::internal("reading members", e))
        })?;
        Ok(role.as_deref().and_then(Role::parse))
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
        apply: impl FnOnce(&mut Connection, i64) -> Result<T, ApiError>,
    ) -> Result<(i64, T), ApiError> {
        let out = self.maintenance("changing access", |conn| {
            let sql = |e| ApiError::internal("changing access", e);
            let version: i64 = conn
                .query_row("SELECT coalesce(max(version), 0) + 1 FROM pdb_access_log", [], |r| r.get(0))
                .map_err(sql)?;
            let out = apply(conn, version)?;
            conn.execute(
                "INSERT INTO pdb_access_log(version, kind, subject, value, changed_by, time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![version, kind, subject, value, by, now_ms() as i64],
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
    ) -> Result<Projection, ApiError> {
        let text = def.to_string();
        let (_, p) = self.change_access("projection", name, Some(&text), by, |conn, version| {
            let p = projection::install(conn, &self.info, name, def)?;
            projection::store(conn, &p, def, version)
                .map_err(|e| ApiError::internal("defining a projection", e))?;
            Ok(p)
        })?;
        Ok(p)
    }

    pub fn drop_projection(&self, name: &str, by: &str) -> Result<i64, ApiError> {
        let store = quote_ident(&format!("pdb_proj_{name}"));
        let (version, ()) = self.change_access("projection", name, None, by, |c, _| {
            c.execute("DELETE FROM pdb_projections WHERE name = ?1", [name])
                .and_then(|_| c.execute_batch(&format!("DROP TABLE IF EXISTS {store}")))
                .map_err(|e| ApiError::internal("dropping a projection", e))
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
