//! The witness's shared state: its key, its settings and the registry of
//! live groups; creating groups; the snapshot policy.

use crate::admit::Admission;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::group::{Env, Group};
use crate::limits::Limits;
use crate::sandbox::Sandbox;
use crate::store;
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::SnapshotJson;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
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
    /// What every group shares (budgets, reserve, read slots).
    env: Env,
    pub admission: Admission,
    groups: RwLock<HashMap<String, Arc<Group>>>,
    creating: Mutex<()>,
}

/// A writer busy with one batch or maintenance write for longer than this
/// is reported stuck by `/healthz` (budgets bound a batch far below it).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

pub fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("groups")
}

impl Witness {
    /// Opens every group found in the data directory.
    pub fn open(settings: Settings, key: SigningKey) -> Result<Witness, String> {
        let dir = groups_dir(&settings.data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let key = Arc::new(key);
        let limits = &settings.limits;
        let env = Env {
            sandbox: Sandbox::new(crate::sandbox::Limits {
                value_bytes: limits.sql.value_bytes.max(settings.max_body_bytes),
                ..limits.sql
            }),
            reserve_bytes: limits.reserve_bytes,
            reads: limits.group_reads,
        };
        let mut groups = HashMap::new();
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".sqlite") else {
                continue;
            };
            if !store::valid_id(id) {
                continue;
            }
            let g = Group::open(&entry.path(), key.clone(), &env)
                .map_err(|e| format!("opening group {id}: {e}"))?;
            if g.info.id != id {
                return Err(format!("{name} holds group {:?}", g.info.id));
            }
            groups.insert(id.to_string(), Arc::new(g));
        }
        Ok(Witness {
            admission: Admission::new(settings.limits.clone(), settings.max_body_bytes),
            settings,
            key,
            env,
            groups: RwLock::new(groups),
            creating: Mutex::new(()),
        })
    }

    pub fn group(&self, id: &str) -> Result<Arc<Group>, ApiError> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no group {id:?}")))
    }

    pub fn groups(&self) -> Vec<Arc<Group>> {
        let mut all: Vec<Arc<Group>> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        all
    }

    pub fn group_ids(&self) -> Vec<String> {
        self.groups().iter().map(|g| g.info.id.clone()).collect()
    }

    /// The ids of the groups `caller` holds a role in (all of them for the
    /// operator), sorted (blocking).
    pub fn visible_groups(&self, caller: &Caller) -> Result<Vec<String>, ApiError> {
        let mut ids = Vec::new();
        for g in self.groups() {
            if caller.operator || g.grant_of(&caller.identity)?.is_some() {
                ids.push(g.info.id.clone());
            }
        }
        Ok(ids)
    }

    /// Creates a group (blocking: call off the async workers).
    pub fn create_group(&self, id: &str, ddl: &str, version: u32) -> Result<Arc<Group>, ApiError> {
        if !store::valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "group id must be 1-{} characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                store::MAX_GROUP_ID
            )));
        }
        let _one_at_a_time = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let dir = groups_dir(&self.settings.data_dir);
        if self.group(id).is_ok() || dir.join(store::file_name(id)).exists() {
            return Err(ApiError::GroupExists(id.to_string()));
        }
        let schema = store::schema::parse(ddl, version).map_err(ApiError::BadRequest)?;
        store::create(&dir, id, ddl, &schema)
            .map_err(|e| ApiError::internal("creating a group", e))?;
        let g = Group::open(&dir.join(store::file_name(id)), self.key.clone(), &self.env)
            .map_err(|e| ApiError::internal("opening a new group", e))?;
        let g = Arc::new(g);
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), g.clone());
        tracing::info!(group = id, schema_version = version, "group created");
        Ok(g)
    }

    pub fn snapshots_dir(&self, g: &Group) -> PathBuf {
        crate::snapshot::dir(&self.settings.data_dir, &g.info.id)
    }

    /// Makes a snapshot of the group's head now (blocking), then, when the
    /// policy says so, prunes the log up to `keep_log_commits` before it.
    pub fn snapshot_now(&self, g: &Group) -> Result<SnapshotJson, ApiError> {
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

    /// Makes snapshots when the policy asks for them (checked every second)
    /// until the task is dropped.
    pub async fn run_snapshot_policy(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for g in self.groups() {
                let w = self.clone();
                let done = tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
                    if w.snapshot_due(&g)? {
                        w.snapshot_now(&g)?;
                    }
                    Ok(())
                })
                .await;
                if let Ok(Err(e)) = done {
                    tracing::warn!(code = e.code(), "automatic snapshot failed");
                }
            }
        }
    }

    /// Stops every writer (the batch in progress is made durable; admin
    /// SQL still running is stopped; commits still queued are answered
    /// `unavailable`).
    pub fn shutdown(&self) {
        self.env.sandbox.stop();
        for g in self.groups() {
            g.shutdown();
        }
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
        let groups = self.groups();
        for g in &groups {
            let stats = g.stats();
            if stats
                .storage_full
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(ApiError::StorageFull(format!(
                    "group {:?} could not commit: the disk is full",
                    g.info.id
                )));
            }
            if let Some(busy) = stats.busy_for().filter(|b| *b > STUCK_AFTER) {
                return Err(ApiError::Unavailable(format!(
                    "the writer of group {:?} has been busy for {} s",
                    g.info.id,
                    busy.as_secs()
                )));
            }
        }
        Ok(serde_json::json!({"ok": true, "groups": groups.len(), "free_bytes": free}))
    }
}
