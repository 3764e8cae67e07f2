//! A live group: its fixed info, the writer thread that owns its only write
//! connection, a pool of read connections, and the maintenance writes
//! (access changes, projection definitions, pruning), which go before the
//! writer's next batch (`write::writer::Mailbox::maintenance`).

use crate::error::ApiError;
use crate::grant::{self, Grant};
use crate::projection::{self, Projection};
use crate::sandbox::{Budget, Sandbox, Scope};
use crate::store::{self, log, GroupInfo};
use crate::write::writer::{self, Job, Mailbox, Stats};
use ed25519_dalek::SigningKey;
use pdb_protocol::{now_ms, quote_ident};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Read connections kept open per group.
const READERS: usize = 8;
/// A projection's first fill may take this many times a unit's budget.
const FILL_BUDGETS: u32 = 10;
/// How long a maintenance write waits for the write lock (the writer's
/// batch in progress ends early for it, so this is only a backstop).
const MAINTENANCE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every group of a witness shares.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub sandbox: Sandbox,
    /// Free disk space the writers keep in reserve.
    pub reserve_bytes: u64,
    /// Reads that may run at once against one group.
    pub reads: usize,
}

/// A read connection with the budget its admin SQL runs under.
struct Reader {
    conn: Connection,
    budget: Budget,
}

pub struct Group {
    pub info: Arc<GroupInfo>,
    pub path: PathBuf,
    mailbox: Arc<Mailbox>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Reader>>,
    sandbox: Sandbox,
    /// Slots for reads running at once (`crate::admit`).
    pub reads: Arc<tokio::sync::Semaphore>,
    /// One snapshot at a time per group.
    pub snapshot_lock: Mutex<()>,
}

/// Opens a connection to the group's file that runs admin SQL: temporary
/// tables and sorts in memory (so the memory budget covers them, and no
/// temporary file can grow), with a budget.
fn sandboxed(path: &Path, writer: bool, sandbox: &Sandbox) -> store::Result<(Connection, Budget)> {
    let mut conn = store::open_conn(path, writer)?;
    conn.execute_batch("PRAGMA temp_store = MEMORY")?;
    let budget = sandbox.budget(&mut conn)?;
    Ok((conn, budget))
}

impl Group {
    /// Opens an existing group file and starts its writer.
    pub fn open(path: &Path, key: Arc<SigningKey>, env: &Env) -> store::Result<Group> {
        let sandbox = &env.sandbox;
        let (conn, info, head) = store::open(path)?;
        drop(conn);
        let (conn, budget) = sandboxed(path, true, sandbox)?;
        let info = Arc::new(info);
        let mailbox = Arc::new(Mailbox::default());
        let handle = writer::start(
            writer::Writer {
                conn,
                budget,
                limits: sandbox.limits,
                info: info.clone(),
                key,
                head,
                dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                reserve_bytes: env.reserve_bytes,
            },
            mailbox.clone(),
        );
        Ok(Group {
            info,
            path: path.to_path_buf(),
            mailbox,
            writer: Mutex::new(Some(handle)),
            readers: Mutex::new(Vec::new()),
            sandbox: sandbox.clone(),
            reads: Arc::new(tokio::sync::Semaphore::new(env.reads.max(1))),
            snapshot_lock: Mutex::new(()),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.mailbox.stats
    }

    /// Queues a commit for the writer: `overloaded` when too many wait,
    /// `unavailable` when shutting down.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.mailbox.submit(job)
    }

    fn reader<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Reader) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let sql = |e: rusqlite::Error| ApiError::internal(context, e);
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let r = match pooled {
            Some(r) => r,
            None => {
                let (conn, budget) = sandboxed(&self.path, false, &self.sandbox)
                    .map_err(|e| ApiError::internal(context, e))?;
                Reader { conn, budget }
            }
        };
        r.conn.execute_batch("BEGIN").map_err(sql)?;
        let out = f(&r);
        r.conn.execute_batch("COMMIT").map_err(sql)?;
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS {
            pool.push(r);
        }
        out
    }

    /// Runs `f` on a pooled read-only connection inside one read
    /// transaction, so everything it reads is one consistent snapshot.
    pub fn read<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.reader(context, |r| f(&r.conn))
    }

    /// Like [`Group::read`], for reads that run admin SQL (projection
    /// pages): `f` gets a scope of one unit's budget.
    pub fn read_sandboxed<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection, &Scope<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.reader(context, |r| {
            f(&r.conn, &r.budget.scope(self.sandbox.limits))
        })
    }

    /// A connection of its own for checking definitions (the allow-lists
    /// install an authorizer while they compile).
    pub fn check_conn(&self) -> Result<Connection, ApiError> {
        store::open_conn(&self.path, false).map_err(|e| ApiError::internal("opening the group", e))
    }

    /// Runs `f` in one write transaction on a connection of its own: a
    /// maintenance write that touches neither head nor replica rows. The
    /// writer lets it go before its next batch. Rolled back when `f`
    /// fails. `f` gets a budget for admin SQL it runs.
    pub fn maintenance<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&mut Connection, &Budget) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.mailbox.maintenance(|| {
            let (mut conn, budget) = sandboxed(&self.path, true, &self.sandbox)
                .map_err(|e| ApiError::internal(context, e))?;
            conn.busy_timeout(MAINTENANCE_WAIT)
                .map_err(|e| ApiError::internal(context, e))?;
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| ApiError::sqlite(context, e))?;
            match f(&mut conn, &budget) {
                Ok(v) => {
                    conn.execute_batch("COMMIT")
                        .map_err(|e| ApiError::sqlite(context, e))?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })
    }

    /// Drops the changesets of commits up to `through` (a snapshot's head).
    pub fn prune_log(&self, through: u64) -> Result<(), ApiError> {
        self.maintenance("pruning the log", |conn, _| {
            log::prune(conn, through).map_err(|e| ApiError::sqlite("pruning the log", e))
        })?;
        tracing::info!(group = %self.info.id, through, "log pruned");
        Ok(())
    }

    /// The caller's grant in this group, if any.
    pub fn grant_of(&self, identity: &str) -> Result<Option<Grant>, ApiError> {
        self.read("reading members", |c| grant::read(c, identity))
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
        apply: impl FnOnce(&mut Connection, &Budget, i64) -> Result<T, ApiError>,
    ) -> Result<(i64, T), ApiError> {
        let out = self.maintenance("changing access", |conn, budget| {
            let sql = |e| ApiError::sqlite("changing access", e);
            let version: i64 = conn
                .query_row("SELECT coalesce(max(version), 0) + 1 FROM pdb_access_log", [], |r| r.get(0))
                .map_err(sql)?;
            let out = apply(conn, budget, version)?;
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
    /// transaction that goes before the writer's next batch, so it starts
    /// exactly at the head it was filled from and every later commit
    /// maintains it. The definition is checked against the allow-lists
    /// first; the fill runs under [`FILL_BUDGETS`] units of budget.
    pub fn define_projection(
        &self,
        name: &str,
        def: &serde_json::Value,
        by: &str,
    ) -> Result<Projection, ApiError> {
        let p = projection::check(&mut self.check_conn()?, &self.info, name, def)?;
        let text = def.to_string();
        let limits = self.sandbox.limits.times(FILL_BUDGETS);
        let (_, p) = self.change_access(
            "projection",
            name,
            Some(&text),
            by,
            |conn, budget, version| {
                projection::create(conn, &p)?;
                projection::refill(conn, &budget.scope(limits), &p).map_err(|e| match e {
                    projection::MaintainError::Witness(e) => e,
                    projection::MaintainError::Broken(f) => ApiError::BadRequest(format!(
                        "the projection cannot be filled: its SQL {f}"
                    )),
                })?;
                projection::store(conn, &p, def, version)
                    .map_err(|e| ApiError::sqlite("defining a projection", e))?;
                Ok(p)
            },
        )?;
        Ok(p)
    }

    pub fn drop_projection(&self, name: &str, by: &str) -> Result<i64, ApiError> {
        let store = quote_ident(&format!("pdb_proj_{name}"));
        let (version, ()) = self.change_access("projection", name, None, by, |c, _, _| {
            c.execute("DELETE FROM pdb_projections WHERE name = ?1", [name])
                .and_then(|_| c.execute_batch(&format!("DROP TABLE IF EXISTS {store}")))
                .map_err(|e| ApiError::sqlite("dropping a projection", e))
        })?;
        Ok(version)
    }

    /// Stops the writer: commits still queued are answered `unavailable`.
    pub fn shutdown(&self) {
        self.mailbox.stop();
        let taken = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = taken {
            let _ = handle.join();
        }
    }
}
