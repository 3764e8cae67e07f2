//! The open groups: opened on first use, closed when idle, at most a
//! bound of them, so a witness's cost follows the groups in use, not the
//! groups that exist. A group is evicted only when nothing else holds it
//! (no request, no queued or running turn, no maintenance write): its
//! `Arc` is then the registry's alone.

use crate::error::ApiError;
use crate::group::Group;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Slot {
    group: Arc<Group>,
    used: Instant,
}

pub struct Registry {
    open: Mutex<HashMap<String, Slot>>,
    /// One opener per group id at a time (others wait for it).
    opening: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    capacity: usize,
}

impl Registry {
    pub fn new(capacity: usize) -> Registry {
        Registry {
            open: Mutex::default(),
            opening: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group, if it is open.
    pub fn get(&self, id: &str) -> Option<Arc<Group>> {
        let mut open = self.lock();
        let slot = open.get_mut(id)?;
        slot.used = Instant::now();
        Some(slot.group.clone())
    }

    /// The group, opened by `open` unless it is open already (blocking).
    pub fn get_or_open(
        &self,
        id: &str,
        open: impl FnOnce() -> Result<Group, ApiError>,
    ) -> Result<Arc<Group>, ApiError> {
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        let gate = self
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let out = {
            let _one_opener = gate.lock().unwrap_or_else(|p| p.into_inner());
            match self.get(id) {
                Some(g) => Ok(g),
                None => open().map(|g| self.insert(Arc::new(g))),
            }
        };
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&gate) <= 2 {
            opening.remove(id);
        }
        out
    }

    /// Adds an opened group (or returns the one already open under its id,
    /// dropping this one, which never ran a turn).
    pub fn insert(&self, g: Arc<Group>) -> Arc<Group> {
        let mut open = self.lock();
        let slot = open.entry(g.id.clone()).or_insert(Slot {
            group: g,
            used: Instant::now(),
        });
        slot.used = Instant::now();
        slot.group.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open group.
    pub fn all(&self) -> Vec<Arc<Group>> {
        self.lock().values().map(|s| s.group.clone()).collect()
    }

    /// Takes out the groups to close: those unused for `idle`, and while
    /// more than the bound are open, the least recently used. Only groups
    /// nothing else holds are taken; the caller closes them.
    pub fn evict(&self, idle: Duration) -> Vec<Arc<Group>> {
        let mut open = self.lock();
        let mut free: Vec<(Instant, String)> = open
            .iter()
            .filter(|(_, s)| Arc::strong_count(&s.group) == 1 && s.group.idle())
            .map(|(id, s)| (s.used, id.clone()))
            .collect();
        free.sort();
        let mut over = open.len().saturating_sub(self.capacity);
        let mut out = Vec::new();
        for (used, id) in free {
            if over == 0 && used.elapsed() < idle {
                break;
            }
            if let Some(slot) = open.remove(&id) {
                out.push(slot.group);
            }
            over = over.saturating_sub(1);
        }
        out
    }

    /// Whether more groups are open than the bound allows.
    pub fn over(&self) -> bool {
        self.len() > self.capacity
    }

    /// Takes out every open group (shutdown).
    pub fn drain(&self) -> Vec<Arc<Group>> {
        self.lock().drain().map(|(_, s)| s.group).collect()
    }
}
