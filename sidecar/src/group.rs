//! An open group: its fixed info, its writer (the only write connection,
//! run in turns on the writer pool), a few read connections, and the
//! maintenance writes (rule changes, projection definitions, pruning),
//! which go before the writer's next batch
//! (`write::writer::Mailbox::maintenance`). Groups are opened on first use
//! and closed when idle (`crate::registry`); closing checkpoints and
//! truncates the WAL.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::projection::{self, Projection};
use crate::sandbox::{Budget, Sandbox, Scope};
use crate::store::{self, log, GroupInfo};
use crate::write::migration::MigrationInput;
use crate::write::pool::{Pool, Turn};
use crate::write::writer::{self, Job, Mailbox, MigrationJob, SharedInfo, Stats};
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::MigrationResponse;
use pdb_protocol::{now_ms, quote_ident};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Read connections kept open per group.
const READERS: usize = 2;
/// The WAL is cut back to this size whenever a checkpoint has emptied it,
/// so a burst (or a long read that held checkpoints back) leaves no giant
/// WAL behind.
pub const WAL_KEEP_BYTES: i64 = 4 * 1024 * 1024;
/// A projection's first fill may take this many times a unit's budget.
const FILL_BUDGETS: u32 = 10;
/// How long a maintenance write waits for the write lock (the writer's
/// batch in progress ends early for it, so this is only a backstop).
const MAINTENANCE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every group of a witness shares.
#[derive(Clone)]
pub struct Env {
    pub sandbox: Sandbox,
    /// Free disk space the writers keep in reserve.
    pub reserve_bytes: u64,
    /// Reads that may run at once against one group.
    pub reads: usize,
    /// The threads that run every group's writer.
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// The heads clients watch; the writer moves its group's.
    pub heads: Arc<crate::watch::Heads>,
    /// Migrations back to back, then one per `migration_every`.
    pub migration_burst: u32,
    pub migration_every: std::time::Duration,
}

/// A read connection with the budget its admin SQL runs under.
struct Reader {
    conn: Connection,
    budget: Budget,
}

pub struct Group {
    pub id: String,
    /// Replaced by the writer after each migration.
    info: SharedInfo,
    pub path: PathBuf,
    mailbox: Mailbox,
    /// Held by the pool for a turn, or by `close`.
    writer: Mutex<writer::Writer>,
    readers: Mutex<Vec<Reader>>,
    sandbox: Sandbox,
    pool: Pool,
    /// Commits accepted when the snapshot policy last looked at it.
    pub policy_seen: std::sync::atomic::AtomicU64,
    /// Slots for reads running at once (`crate::admit`).
    pub reads: Arc<tokio::sync::Semaphore>,
    /// One snapshot at a time per group.
    pub snapshot_lock: Mutex<()>,
    /// Migrations this group may still start now (see
    /// [`Group::take_migration_turn`]).
    migration_turns: Mutex<Turns>,
}

/// A bucket of migration turns: `burst` at most, one more every `every`
/// (a migration rewrites whole tables inside a writer thread that every
/// group shares, so one admin repeating large migrations could otherwise
/// keep the writer pool busy).
struct Turns {
    left: f64,
    at: std::time::Instant,
    burst: f64,
    every: std::time::Duration,
}

/// Opens a connection to the group's file that runs admin SQL: temporary
/// tables and sorts in memory (so the memory budget covers them, and no
/// temporary file can grow), with a budget.
fn sandboxed(path: &Path, writer: bool, sandbox: &Sandbox) -> store::Result<(Connection, Budget)> {
    sandbox_conn(store::open_conn(path, writer)?, writer, sandbox)
}

/// Makes `conn` one that runs admin SQL (see [`sandboxed`]).
fn sandbox_conn(
    mut conn: Connection,
    writer: bool,
    sandbox: &Sandbox,
) -> store::Result<(Connection, Budget)> {
    conn.execute_batch("PRAGMA temp_store = MEMORY")?;
    if writer {
        conn.query_row(
            &format!("PRAGMA journal_size_limit = {WAL_KEEP_BYTES}"),
            [],
            |_| Ok(()),
        )?;
        // No value a commit carries is larger than a request body: a
        // CHECK constraint that makes a larger one (evaluated on each row
        // written, in the writer) is refused with the row, so one
        // commit's CHECKs hold bounded memory.
        let most = i32::try_from(sandbox.limits.value_bytes).unwrap_or(i32::MAX);
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, most)?;
    }
    let budget = sandbox.budget(&mut conn)?;
    Ok((conn, budget))
}

impl Group {
    /// Opens an existing group file (no thread: its writer runs on the
    /// pool when commits arrive).
    pub fn open(path: &Path, key: Arc<SigningKey>, env: &Env) -> store::Result<Group> {
        let sandbox = &env.sandbox;
        let (conn, info, head) = store::open(path)?;
        let (conn, budget) = sandbox_conn(conn, true, sandbox)?;
        let info = Arc::new(info);
        let shared: SharedInfo = Arc::new(std::sync::RwLock::new(info.clone()));
        Ok(Group {
            id: info.id.clone(),
            writer: Mutex::new(writer::Writer {
                conn,
                budget,
                limits: sandbox.limits,
                info: info.clone(),
                shared: shared.clone(),
                key,
                head,
                dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                reserve_bytes: env.reserve_bytes,
                metrics: env.metrics.clone(),
                heads: env.heads.clone(),
            }),
            info: shared,
            path: path.to_path_buf(),
            mailbox: Mailbox::default(),
            readers: Mutex::new(Vec::new()),
            sandbox: sandbox.clone(),
            pool: env.pool.clone(),
            policy_seen: Default::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(env.reads.max(1))),
            snapshot_lock: Mutex::new(()),
            migration_turns: Mutex::new(Turns {
                left: env.migration_burst.into(),
                at: std::time::Instant::now(),
                burst: env.migration_burst.into(),
                every: env.migration_every,
            }),
        })
    }

    /// Takes a turn to migrate, or says how long until there is one
    /// (`429 overloaded` with `Retry-After`).
    pub fn take_migration_turn(&self) -> Result<(), ApiError> {
        let mut t = self
            .migration_turns
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let every = t.every.as_secs_f64().max(0.001);
        let earned = now.duration_since(t.at).as_secs_f64() / every;
        t.left = (t.left + earned).min(t.burst);
        t.at = now;
        if t.left < 1.0 {
            let wait = ((1.0 - t.left) * every).ceil() as u32;
            return Err(ApiError::MigrationTooSoon {
                message: format!(
                    "this group has migrated {} times in quick succession; it may migrate again in {wait} s",
                    t.burst
                ),
                retry_after: wait.max(1),
            });
        }
        t.left -= 1.0;
        Ok(())
    }

    /// The group's info: its schema in force (and history).
    pub fn info(&self) -> Arc<GroupInfo> {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The group's info on the schema of `head`, read on `c` (in one
    /// transaction): the one in memory, unless a migration committed
    /// between the two reads.
    pub fn info_at(
        &self,
        c: &Connection,
        head: &log::HeadState,
    ) -> Result<Arc<GroupInfo>, ApiError> {
        let info = self.info();
        if info.schema.version == head.schema_version {
            return Ok(info);
        }
        store::load_info(c)
            .map(Arc::new)
            .map_err(|e| ApiError::internal("reading the group's schema", e))
    }

    pub fn stats(&self) -> &Stats {
        &self.mailbox.stats
    }

    /// Queues a commit for the writer: `overloaded` when too many wait,
    /// `unavailable` when shutting down.
    pub fn submit(self: &Arc<Self>, job: Job) -> Result<(), ApiError> {
        if self.mailbox.submit(job)? {
            self.pool.schedule(self.clone());
        }
        Ok(())
    }

    /// Queues a migration behind the commits already waiting; it runs
    /// alone, in its own transaction.
    pub async fn migrate(
        self: &Arc<Self>,
        input: MigrationInput,
    ) -> Result<MigrationResponse, ApiError> {
        self.queue_migration(input)?
            .await
            .map_err(|_| ApiError::Unavailable("the witness is shutting down; retry".into()))?
    }

    /// [`Group::migrate`] for a caller off the async runtime (the CLI).
    pub fn migrate_blocking(
        self: &Arc<Self>,
        input: MigrationInput,
    ) -> Result<MigrationResponse, ApiError> {
        self.queue_migration(input)?
            .blocking_recv()
            .map_err(|_| ApiError::Unavailable("the witness is shutting down; retry".into()))?
    }

    fn queue_migration(
        self: &Arc<Self>,
        input: MigrationInput,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<MigrationResponse, ApiError>>, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self
            .mailbox
            .submit_migration(MigrationJob { input, reply })?
        {
            self.pool.schedule(self.clone());
        }
        Ok(answer)
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

    /// The budget of one unit of admin SQL.
    pub fn sql_limits(&self) -> crate::sandbox::Limits {
        self.sandbox.limits
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
        self: &Arc<Self>,
        context: &'static str,
        f: impl FnOnce(&mut Connection, &Budget) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (out, turn) = self.mailbox.maintenance(|| {
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
        });
        if turn {
            self.pool.schedule(self.clone());
        }
        out
    }

    /// Drops the changesets of commits up to `through` (a snapshot's head).
    pub fn prune_log(self: &Arc<Self>, through: u64) -> Result<(), ApiError> {
        self.maintenance("pruning the log", |conn, _| {
            log::prune(conn, through).map_err(|e| ApiError::sqlite("pruning the log", e))
        })?;
        tracing::info!(group = %self.id, through, "log pruned");
        Ok(())
    }

    /// Runs one access change (members, rules, projections) as a
    /// maintenance write and logs it with the next version number. Returns
    /// the version and what `apply` returned.
    pub fn change_access<T>(
        self: &Arc<Self>,
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
        tracing::info!(group = %self.id, kind, subject, value, by, version = out.0, "access changed");
        Ok(out)
    }

    /// Defines (or replaces) a projection and fills it, in one write
    /// transaction that goes before the writer's next batch, so it starts
    /// exactly at the head it was filled from and every later commit
    /// maintains it. The definition is checked against the allow-lists
    /// first; the fill runs under [`FILL_BUDGETS`] units of budget.
    pub fn define_projection(
        self: &Arc<Self>,
        name: &str,
        def: &serde_json::Value,
        by: &str,
    ) -> Result<Projection, ApiError> {
        projection::check(&mut self.check_conn()?, &self.info(), name, def)?;
        let text = def.to_string();
        let limits = self.sandbox.limits.times(FILL_BUDGETS);
        let (_, p) = self.change_access(
            "projection",
            name,
            Some(&text),
            by,
            |conn, budget, version| {
                // Checked again on the schema in force now: a migration
                // may have gone before this write.
                let info = store::load_info(conn)
                    .map_err(|e| ApiError::internal("defining a projection", e))?;
                let p = projection::check(conn, &info, name, def)?;
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

    pub fn drop_projection(self: &Arc<Self>, name: &str, by: &str) -> Result<i64, ApiError> {
        let store = quote_ident(&format!("pdb_proj_{name}"));
        let (version, ()) = self.change_access("projection", name, None, by, |c, _, _| {
            c.execute("DELETE FROM pdb_projections WHERE name = ?1", [name])
                .and_then(|_| c.execute_batch(&format!("DROP TABLE IF EXISTS {store}")))
                .map_err(|e| ApiError::sqlite("dropping a projection", e))
        })?;
        Ok(version)
    }

    /// Stops taking commits: those still queued are answered
    /// `unavailable` by one last turn.
    pub fn stop(self: &Arc<Self>) {
        if self.mailbox.stop() {
            self.pool.schedule(self.clone());
        }
    }

    /// No commit waits or runs and no maintenance write is under way.
    pub fn idle(&self) -> bool {
        self.mailbox.idle()
    }

    /// Closes the group's connections, first checkpointing the WAL into
    /// the database and truncating it (so nothing but the database file is
    /// left while the group is closed). Waits for a turn in progress.
    pub fn close(&self) {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(group = %self.id, error = %e, "checkpoint at close failed");
        }
    }
}

impl Turn for Group {
    /// One turn of the writer. A panic in it (a bug the writer did not
    /// catch itself) rolls its transaction back, and the turn still ends,
    /// so the group is scheduled again when work waits (never left marked
    /// scheduled with no turn coming).
    fn turn(&self) -> bool {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.turn(&self.mailbox)));
        if turn.is_err() {
            w.recover("running the group's writer");
            self.mailbox
                .stats
                .busy_since_ms
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
        drop(w);
        self.mailbox.end_turn()
    }
}
