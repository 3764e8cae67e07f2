//! The witness's shared state: its key, its settings, the directory of
//! groups and members, the open groups; creating groups; the snapshot
//! policy and closing idle groups; health.

use crate::admit::Admission;
use crate::auth::Caller;
use crate::directory::{Directory, GroupPage};
use crate::error::ApiError;
use crate::group::{Env, Group};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::store;
use crate::write::pool::Pool;
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::SnapshotJson;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Settings {
    pub data_dir: PathBuf,
    pub auth: crate::auth::Authenticator,
    pub max_body_bytes: usize,
    /// The byte bound of a catch-up page (see `store::log::PageBound`).
    pub max_page_bytes: u64,
    pub snapshots: SnapshotPolicy,
    pub limits: Limits,
    /// The signing key's rotations, in order (served to clients, which
    /// follow them from the key they pinned).
    pub rotations: Vec<pdb_protocol::Rotation>,
    /// Bounds on head watches (`crate::watch`).
    pub watch: crate::watch::WatchLimits,
}

/// When snapshots are made on their own, and whether the log before the
/// newest one is dropped. 0 disables a trigger.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    pub every_commits: u64,
    pub every_log_bytes: u64,
    pub prune_log: bool,
    /// With `prune_log`: commits kept in the log before each new snapshot,
    /// so a device a little behind it still catches up from the log.
    pub keep_log_commits: u64,
}

/// The default of `--keep-log-commits`.
pub const DEFAULT_KEEP_LOG_COMMITS: u64 = 1000;

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_commits: 10_000,
            every_log_bytes: 64 * 1024 * 1024,
            prune_log: false,
            keep_log_commits: DEFAULT_KEEP_LOG_COMMITS,
        }
    }
}

pub struct Witness {
    pub settings: Settings,
    pub key: Arc<SigningKey>,
    /// What every group shares (budgets, reserve, read slots, writer pool).
    env: Env,
    pub admission: Admission,
    /// Which groups exist and who holds which role in each.
    pub directory: Directory,
    /// The groups open now.
    registry: Registry,
    /// Groups taken out of the registry to make room, closed by a thread
    /// of their own so the request that needed the room does not wait for
    /// their checkpoints (at most [`CLOSING`] wait; beyond, the request
    /// closes one itself).
    closer: Mutex<Option<Closer>>,
    pub metrics: Arc<Metrics>,
    /// The heads being watched; writers move them.
    pub heads: Arc<crate::watch::Heads>,
}

/// Groups waiting to be closed by the closer thread at most.
const CLOSING: usize = 64;

/// Where groups to close are sent, and the thread that closes them.
type Closer = (
    std::sync::mpsc::SyncSender<Arc<Group>>,
    std::thread::JoinHandle<()>,
);

/// A writer busy with one batch or maintenance write for longer than this
/// is reported stuck by `/healthz` (budgets bound a batch far below it).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

pub fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("groups")
}

fn no_group(id: &str) -> ApiError {
    ApiError::NotFound(format!("no group {id:?}"))
}

impl Witness {
    /// Opens the witness's data directory: the directory of groups and
    /// members, and the writer pool. No group is opened: each opens on
    /// first use, so start-up does not grow with the number of groups.
    pub fn open(settings: Settings, key: SigningKey) -> Result<Witness, String> {
        let dir = groups_dir(&settings.data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let directory = Directory::open(&settings.data_dir, &dir)?;
        let key = Arc::new(key);
        let limits = &settings.limits;
        let metrics = Arc::new(Metrics::default());
        let heads = Arc::new(crate::watch::Heads::new(settings.watch));
        let env = Env {
            heads: heads.clone(),
            metrics: metrics.clone(),
            sandbox: Sandbox::new(crate::sandbox::Limits {
                value_bytes: limits.sql.value_bytes.max(settings.max_body_bytes),
                ..limits.sql
            }),
            reserve_bytes: limits.reserve_bytes,
            reads: limits.group_reads,
            pool: Pool::start(limits.writer_threads),
            migration_burst: limits.migration_burst,
            migration_every: limits.migration_every,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Group>>(CLOSING);
        let closer = std::thread::Builder::new()
            .name("pdb-closer".into())
            .spawn(move || {
                for g in rx {
                    g.close();
                }
            })
            .map_err(|e| format!("starting the closer thread: {e}"))?;
        Ok(Witness {
            closer: Mutex::new(Some((tx, closer))),
            admission: Admission::new(settings.limits.clone(), settings.max_body_bytes),
            registry: Registry::new(limits.max_open_groups),
            settings,
            key,
            env,
            directory,
            metrics,
            heads,
        })
    }

    /// The group, opened if it is not open yet (blocking: call off the
    /// async workers); `not_found` when there is no such group.
    pub fn group(&self, id: &str) -> Result<Arc<Group>, ApiError> {
        if !store::valid_id(id) {
            return Err(no_group(id));
        }
        if let Some(g) = self.registry.get(id) {
            return Ok(g);
        }
        let path = groups_dir(&self.settings.data_dir).join(store::file_name(id));
        let g = self.registry.get_or_open(id, || {
            if !path.exists() {
                return Err(no_group(id));
            }
            let g = Group::open(&path, self.key.clone(), &self.env)
                .map_err(|e| ApiError::internal("opening a group", e))?;
            if g.id != id {
                return Err(ApiError::internal(
                    "opening a group",
                    format!("{} holds group {:?}", path.display(), g.id),
                ));
            }
            if !self.directory.has_group(id)? {
                self.directory.add_group(id)?;
            }
            tracing::debug!(group = id, "group opened");
            Ok(g)
        })?;
        self.make_room();
        Ok(g)
    }

    /// While more groups are open than the bound, hands the least recently
    /// used idle ones to the closer (or closes them here when it lags).
    fn make_room(&self) {
        if !self.registry.over() {
            return;
        }
        for g in self.registry.evict(Duration::MAX) {
            let sent = match &*self.closer.lock().unwrap_or_else(|p| p.into_inner()) {
                Some((tx, _)) => tx.try_send(g).map_err(|e| match e {
                    std::sync::mpsc::TrySendError::Full(g)
                    | std::sync::mpsc::TrySendError::Disconnected(g) => g,
                }),
                None => Err(g),
            };
            if let Err(g) = sent {
                g.close();
            }
        }
    }

    /// The group if it is open now (never blocks).
    pub fn open_group(&self, id: &str) -> Option<Arc<Group>> {
        self.registry.get(id)
    }

    /// The groups open now.
    pub fn open_groups(&self) -> Vec<Arc<Group>> {
        self.registry.all()
    }

    /// One page of the groups `caller` holds a role in (all of them for
    /// the operator), in id order, from the directory alone (blocking).
    pub fn visible_groups(
        &self,
        caller: &Caller,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<GroupPage, ApiError> {
        let member = (!caller.operator).then_some(caller.identity.as_str());
        self.directory.list(member, prefix, after, limit)
    }

    /// Closes the open groups nothing uses that were idle for `idle` (and
    /// the least recently used ones while more are open than the bound),
    /// making a snapshot first where the policy asks for one (blocking).
    /// Groups closed to make room skip the snapshot check: the policy's
    /// next look at them, when they are open again, catches up.
    pub fn close_idle(&self, idle: Duration) {
        let mut closed = 0;
        for g in self.registry.evict(idle) {
            if let Err(e) = self.snapshot_if_due(&g) {
                tracing::warn!(group = %g.id, code = e.code(), "snapshot before closing failed");
            }
            g.close();
            tracing::debug!(group = %g.id, "group closed");
            // The last reference: its connections (page caches, statements)
            // are freed here.
            drop(g);
            closed += 1;
        }
        if closed > 0 {
            give_back_memory();
        }
    }

    /// Creates a group (blocking: call off the async workers).
    pub fn create_group(&self, id: &str, ddl: &str, version: u32) -> Result<Arc<Group>, ApiError> {
        if !store::valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "group id must be 1-{} characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                store::MAX_GROUP_ID
            )));
        }
        let dir = groups_dir(&self.settings.data_dir);
        let path = dir.join(store::file_name(id));
        let mut created = false;
        let g = self.registry.get_or_open(id, || {
            if path.exists() {
                return Err(ApiError::GroupExists(id.to_string()));
            }
            let g = self.create_file(id, ddl, version)?;
            created = true;
            Ok(g)
        })?;
        if !created {
            return Err(ApiError::GroupExists(id.to_string()));
        }
        self.directory.add_group(id)?;
        self.make_room();
        tracing::info!(group = id, schema_version = version, "group created");
        Ok(g)
    }

    /// Builds a new group's file and opens it (under the registry's
    /// one-opener-per-id gate).
    fn create_file(&self, id: &str, ddl: &str, version: u32) -> Result<Group, ApiError> {
        let dir = groups_dir(&self.settings.data_dir);
        let schema = store::schema::parse(ddl, version).map_err(ApiError::BadRequest)?;
        store::migrate::check_size(&schema).map_err(ApiError::BadRequest)?;
        store::migrate::check_expressions(&schema, None).map_err(ApiError::BadRequest)?;
        store::create(&dir, id, ddl, &schema)
            .map_err(|e| ApiError::internal("creating a group", e))?;
        Group::open(&dir.join(store::file_name(id)), self.key.clone(), &self.env)
            .map_err(|e| ApiError::internal("opening a new group", e))
    }

    pub fn snapshots_dir(&self, g: &Group) -> PathBuf {
        crate::snapshot::dir(&self.settings.data_dir, &g.id)
    }

    /// Makes a snapshot of the group's head now (blocking), then, when the
    /// policy says so, prunes the log up to `keep_log_commits` before it.
    pub fn snapshot_now(&self, g: &Arc<Group>) -> Result<SnapshotJson, ApiError> {
        let _one_at_a_time = g.snapshot_lock.lock().unwrap_or_else(|p| p.into_inner());
        let m = crate::snapshot::create(&self.snapshots_dir(g), g, &self.key)?;
        let p = self.settings.snapshots;
        if p.prune_log && m.seq > p.keep_log_commits {
            g.prune_log(m.seq - p.keep_log_commits)?;
        }
        Ok(m)
    }

    /// What one request may carry and one answer holds, for clients.
    pub fn limits(&self) -> pdb_protocol::wire::LimitsJson {
        let p = self.settings.snapshots;
        pdb_protocol::wire::LimitsJson {
            max_body_bytes: self.settings.max_body_bytes as u64,
            max_page_bytes: self.settings.max_page_bytes,
            max_page_commits: crate::store::log::MAX_PAGE,
            keep_log_commits: p.prune_log.then_some(p.keep_log_commits),
            max_wait_seconds: Some(self.settings.watch.max_wait.as_secs()),
        }
    }

    /// Whether the policy asks for a new snapshot of `g` (blocking).
    pub fn snapshot_due(&self, g: &Group) -> Result<bool, ApiError> {
        let p = self.settings.snapshots;
        if p.every_commits == 0 && p.every_log_bytes == 0 {
            return Ok(false);
        }
        let last = crate::snapshot::latest(&self.snapshots_dir(g))?
            .map(|m| m.seq)
            .unwrap_or(0);
        g.read("checking the snapshot policy", |c| {
            let sql = |e| ApiError::internal("checking the snapshot policy", e);
            let head = store::log::head(c).map_err(sql)?;
            if head.seq <= last {
                return Ok(false);
            }
            if p.every_commits > 0 && head.seq - last >= p.every_commits {
                return Ok(true);
            }
            let bytes: i64 = c
                .query_row(
                    "SELECT coalesce(sum(length(changeset)), 0) FROM pdb_log WHERE seq > ?1",
                    [last as i64],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            Ok(p.every_log_bytes > 0 && bytes as u64 >= p.every_log_bytes)
        })
    }

    /// Makes a snapshot when the policy asks for one (blocking).
    pub fn snapshot_if_due(&self, g: &Arc<Group>) -> Result<(), ApiError> {
        let accepted = g.stats().accepted.load(Relaxed);
        if g.policy_seen.swap(accepted, Relaxed) == accepted {
            return Ok(());
        }
        if self.snapshot_due(g)? {
            self.snapshot_now(g)?;
        }
        Ok(())
    }

    /// Every second until the task is dropped: snapshots where the policy
    /// asks for them (only groups that took commits since the last look),
    /// and closing groups idle for `--group-idle-secs`.
    pub async fn run_background(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let idle = self.settings.limits.group_idle;
        loop {
            tick.tick().await;
            for g in self.open_groups() {
                if g.policy_seen.load(Relaxed) == g.stats().accepted.load(Relaxed) {
                    continue;
                }
                let w = self.clone();
                let done = self.admission.blocking(move || w.snapshot_if_due(&g)).await;
                if let Err(e) = done {
                    tracing::warn!(code = e.code(), "automatic snapshot failed");
                }
            }
            let w = self.clone();
            let _ = self
                .admission
                .blocking(move || {
                    w.close_idle(idle);
                    Ok(())
                })
                .await;
        }
    }

    /// Stops: admin SQL still running is stopped, commits still queued
    /// are answered `unavailable`, each batch in progress is made durable,
    /// the writer threads end, and every open group is closed (its WAL
    /// checkpointed and truncated).
    pub fn shutdown(&self) {
        self.env.sandbox.stop();
        for g in self.registry.all() {
            g.stop();
        }
        self.env.pool.stop();
        let closer = self.closer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, thread)) = closer {
            drop(tx);
            let _ = thread.join();
        }
        for g in self.registry.drain() {
            g.close();
        }
    }

    /// The metrics, with the gauges of what is open read now (blocking).
    pub fn metrics_text(&self) -> Result<String, ApiError> {
        let open = self.open_groups();
        let (mut db, mut wal) = (0u64, 0u64);
        for g in &open {
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            db += size(&g.path);
            let mut w = g.path.clone().into_os_string();
            w.push("-wal");
            wal += size(Path::new(&w));
        }
        let m = &self.metrics;
        m.open_groups.set(open.len() as i64);
        m.groups.set(self.directory.count()? as i64);
        m.db_bytes.set(db as i64);
        m.wal_bytes.set(wal as i64);
        m.waiters.set(self.heads.waiting() as i64);
        let busy = open
            .iter()
            .filter(|g| g.stats().busy_for().is_some_and(|b| b > STUCK_AFTER))
            .count();
        m.busy_writers.set(busy as i64);
        Ok(m.render())
    }

    /// Whether the witness can take commits now: `Ok` with what it checked,
    /// or the first reason it cannot (a full disk, a writer that cannot
    /// commit or has been busy too long).
    pub fn health(&self) -> Result<serde_json::Value, ApiError> {
        let reserve = self.settings.limits.reserve_bytes;
        let free = store::disk::free_bytes(&groups_dir(&self.settings.data_dir));
        if let Some(free) = free.filter(|f| *f < reserve) {
            return Err(ApiError::StorageFull(format!(
                "the witness's disk has {free} bytes free, below its reserve of {reserve}"
            )));
        }
        let groups = self.open_groups();
        // One group's busy writer is that group's state (its stats, the
        // metrics), not the witness's: only when every writer thread is
        // held does the witness take no commit at all.
        let mut stuck = Vec::new();
        for g in &groups {
            let stats = g.stats();
            if stats
                .storage_full
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(ApiError::StorageFull(format!(
                    "group {:?} could not commit: the disk is full",
                    g.id
                )));
            }
            if stats.busy_for().is_some_and(|b| b > STUCK_AFTER) {
                stuck.push(g.id.clone());
            }
        }
        let threads = self.settings.limits.writer_threads.max(1);
        if stuck.len() >= threads {
            return Err(ApiError::Unavailable(format!(
                "every writer thread ({threads}) has been busy with one write for more than {} s (groups {stuck:?})",
                STUCK_AFTER.as_secs()
            )));
        }
        self.metrics.busy_writers.set(stuck.len() as i64);
        Ok(serde_json::json!({
            "ok": true,
            "open_groups": groups.len(),
            "free_bytes": free,
            "busy_writers": stuck.len(),
        }))
    }
}

/// Hands the heap memory freed by closed groups back to the system: glibc
/// keeps freed memory in its arenas (one per thread that allocated), so
/// without this the process stays at its peak after the groups in use
/// have closed.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointers are
    // involved.
    unsafe {
        libc::malloc_trim(0);
    }
}
