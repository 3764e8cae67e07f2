//! Admission: who may start work now. Concurrent work is bounded per
//! caller, per group and in total, and request bodies in memory are
//! bounded in total, so no single caller or group can take the capacity
//! the others need. Over a bound the answer is `overloaded` with
//! `Retry-After`: 429 when it is the caller's own bound, 503 when it is a
//! group's or the witness's. Blocking work runs on tokio's blocking pool,
//! never more of it at once than [`Limits::blocking`].

use crate::error::ApiError;
use crate::group::Group;
use crate::limits::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    limits: Limits,
    /// Calls in progress per identity.
    callers: Arc<Mutex<HashMap<String, usize>>>,
    blocking: Arc<Semaphore>,
    /// Request body bytes held in memory now, in all and per client
    /// address (each may hold a quarter of the bound, or one largest body).
    body_bytes: Arc<AtomicUsize>,
    body_bytes_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    body_share: usize,
}

/// One call of a caller in progress; released when dropped.
pub struct CallerSlot {
    callers: Arc<Mutex<HashMap<String, usize>>>,
    identity: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

/// Request body bytes held in memory; released when dropped.
pub struct BodyBytes {
    held: Arc<AtomicUsize>,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
    n: usize,
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        self.held.fetch_sub(self.n, Relaxed);
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(self.n);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn busy(caller: bool, message: String) -> ApiError {
    ApiError::Overloaded { caller, message }
}

impl Admission {
    /// `max_body` is the largest single request body.
    pub fn new(limits: Limits, max_body: usize) -> Admission {
        let total = limits.max_buffered_bytes;
        Admission {
            blocking: Arc::new(Semaphore::new(limits.blocking.max(1))),
            body_share: (total / 4).max(max_body).min(total),
            limits,
            callers: Arc::default(),
            body_bytes: Arc::default(),
            body_bytes_by_ip: Arc::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A slot for one more call of `identity` (429 over its bound).
    pub fn caller(&self, identity: &str) -> Result<CallerSlot, ApiError> {
        let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(identity.to_string()).or_insert(0);
        if *n >= self.limits.max_calls_per_caller {
            return Err(busy(
                true,
                format!(
                    "you have {} requests in progress, the most allowed at once; retry",
                    self.limits.max_calls_per_caller
                ),
            ));
        }
        *n += 1;
        Ok(CallerSlot {
            callers: self.callers.clone(),
            identity: identity.to_string(),
        })
    }

    /// Holds `more` bytes of `held` (a request body from `ip` being
    /// read), or refuses when the address's bodies would pass its share
    /// (429) or all bodies together the bound (503).
    pub fn body_bytes(
        &self,
        held: &mut Option<BodyBytes>,
        ip: IpAddr,
        more: usize,
    ) -> Result<(), ApiError> {
        let total = self.body_bytes.fetch_add(more, Relaxed) + more;
        let mine = {
            let mut map = self
                .body_bytes_by_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            *n += more;
            *n
        };
        let slot = held.get_or_insert_with(|| BodyBytes {
            held: self.body_bytes.clone(),
            by_ip: self.body_bytes_by_ip.clone(),
            ip,
            n: 0,
        });
        slot.n += more;
        if mine > self.body_share {
            return Err(busy(
                true,
                "your address has as many request and answer bodies in flight as it may (answers count until they are read); retry".into(),
            ));
        }
        if total > self.limits.max_buffered_bytes {
            return Err(busy(
                false,
                "the witness holds as many request and answer bodies as it may; retry".into(),
            ));
        }
        Ok(())
    }

    async fn permit(
        &self,
        pool: &Arc<Semaphore>,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.limits.queue_wait, pool.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy(false, format!("{what} is busy; retry"))),
        }
    }

    /// Runs blocking work (SQLite, files) off the async workers, within
    /// the witness's bound on blocking work.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.permit(&self.blocking, "the witness").await?;
        run(permit, None, f).await
    }

    /// Runs work on group `g` (a read, or an admin's change or snapshot)
    /// off the async workers, within the group's bound on concurrent work
    /// and the witness's on blocking work.
    pub async fn read<T: Send + 'static>(
        &self,
        g: &Group,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let group = self.permit(&g.reads, &format!("group {:?}", g.id)).await?;
        let permit = self.permit(&self.blocking, "the witness").await?;
        run(permit, Some(group), f).await
    }
}

/// Runs `f` on the blocking pool, holding the permits until it ends (even
/// when the caller has gone).
async fn run<T: Send + 'static>(
    permit: OwnedSemaphorePermit,
    group: Option<OwnedSemaphorePermit>,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let _held = (permit, group);
        f()
    })
    .await
    .map_err(|e| ApiError::internal("running a blocking task", e))?
}
