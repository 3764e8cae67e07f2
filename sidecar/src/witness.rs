//! The witness's shared state: its key, its groups and its settings.

use crate::error::ApiError;
use crate::group::{self, Group};
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub struct Settings {
    pub data_dir: PathBuf,
    pub admin_token_hash: [u8; 32],
    pub max_body_bytes: usize,
}

pub struct Witness {
    pub settings: Settings,
    pub key: Arc<SigningKey>,
    groups: RwLock<HashMap<String, Arc<Group>>>,
    creating: Mutex<()>,
}

pub fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("groups")
}

impl Witness {
    /// Opens every group found in the data directory.
    pub fn open(settings: Settings, key: SigningKey) -> Result<Witness, String> {
        let dir = groups_dir(&settings.data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let key = Arc::new(key);
        let mut groups = HashMap::new();
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".sqlite") else {
                continue;
            };
            if !group::valid_id(id) {
                continue;
            }
            let g = Group::open(&entry.path(), key.clone())
                .map_err(|e| format!("opening group {id}: {e}"))?;
            if g.info.id != id {
                return Err(format!("{name} holds group {:?}", g.info.id));
            }
            groups.insert(id.to_string(), Arc::new(g));
        }
        Ok(Witness {
            settings,
            key,
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

    pub fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Creates a group (blocking: call off the async workers).
    pub fn create_group(&self, id: &str, ddl: &str, version: u32) -> Result<Arc<Group>, ApiError> {
        if !group::valid_id(id) {
            return Err(ApiError::BadRequest(format!(
                "group id must be 1-{} characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                group::MAX_GROUP_ID
            )));
        }
        let _one_at_a_time = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if self.group(id).is_ok() {
            return Err(ApiError::GroupExists(id.to_string()));
        }
        let g = Group::create(
            &groups_dir(&self.settings.data_dir),
            id,
            ddl,
            version,
            self.key.clone(),
        )
        .map_err(ApiError::BadRequest)?;
        let g = Arc::new(g);
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), g.clone());
        tracing::info!(group = id, schema_version = version, "group created");
        Ok(g)
    }

    /// Stops every writer once its queued commits are durable.
    pub fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for g in groups {
            g.shutdown();
        }
    }
}
