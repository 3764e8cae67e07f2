//! Watching heads: `GET /v1/groups/<g>/head?after=SEQ&wait=SECONDS`
//! answers as soon as the group's head passes `SEQ`, or with the current
//! head when the wait ends. A waiter is a task parked on a
//! `tokio::sync::watch` of the group's head, which the group's writer
//! moves after each durable batch: no thread and a few hundred bytes per
//! waiter. Waiters are bounded in total and per caller, waits by
//! `max_wait`, and all end at once on shutdown. The watches live here,
//! not in the open group, so a group may close while it is watched.

use crate::error::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Bounds on watching.
#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// The longest wait a caller may ask for.
    pub max_wait: Duration,
    /// Waiters at once, in all.
    pub max_waiters: usize,
    /// Waiters at once per caller identity.
    pub max_waiters_per_caller: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_wait: Duration::from_secs(60),
            max_waiters: 10_000,
            max_waiters_per_caller: 16,
        }
    }
}

type Groups = Mutex<HashMap<String, watch::Sender<u64>>>;

#[derive(Default)]
struct Counts {
    total: usize,
    by_caller: HashMap<String, usize>,
}

/// The heads being watched, and who waits.
pub struct Heads {
    limits: WatchLimits,
    groups: Arc<Groups>,
    counts: Arc<Mutex<Counts>>,
    stopping: watch::Sender<bool>,
}

/// One waiter's place; released when dropped.
pub struct Waiter {
    counts: Arc<Mutex<Counts>>,
    groups: Arc<Groups>,
    group: String,
    caller: String,
    /// Always `Some` until dropped.
    head: Option<watch::Receiver<u64>>,
    stopping: watch::Receiver<bool>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // The last waiter on a group takes its watch away (under the lock
        // new waiters subscribe under, so none is missed).
        {
            let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            drop(self.head.take());
            if groups
                .get(&self.group)
                .is_some_and(|tx| tx.receiver_count() == 0)
            {
                groups.remove(&self.group);
            }
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_caller.remove(&self.caller);
            }
        }
    }
}

fn busy(caller: bool, message: String) -> ApiError {
    ApiError::Overloaded { caller, message }
}

impl Heads {
    pub fn new(limits: WatchLimits) -> Heads {
        Heads {
            limits,
            groups: Arc::default(),
            counts: Arc::default(),
            stopping: watch::channel(false).0,
        }
    }

    pub fn limits(&self) -> WatchLimits {
        self.limits
    }

    /// The group's head moved to `seq` (called by its writer after a
    /// durable batch or migration). Cheap when nobody watches.
    pub fn moved(&self, group: &str, seq: u64) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = groups.get(group) {
            tx.send_replace(seq);
            if tx.receiver_count() == 0 {
                groups.remove(group);
            }
        }
    }

    /// A place to wait on the group's head, within the bounds (over them:
    /// `overloaded`, 429 for the caller's own, 503 for the witness's).
    /// Take it before reading the head, so no move between the read and
    /// the wait is missed.
    pub fn waiter(&self, group: &str, caller: &str) -> Result<Waiter, ApiError> {
        {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let mine = c.by_caller.get(caller).copied().unwrap_or(0);
            if mine >= self.limits.max_waiters_per_caller {
                return Err(busy(
                    true,
                    format!("you have {mine} head watches open, the most allowed at once; retry"),
                ));
            }
            if c.total >= self.limits.max_waiters {
                return Err(busy(
                    false,
                    "the witness has as many head watches open as it may; retry".into(),
                ));
            }
            c.total += 1;
            *c.by_caller.entry(caller.to_string()).or_insert(0) += 1;
        }
        let head = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Ok(Waiter {
            counts: self.counts.clone(),
            groups: self.groups.clone(),
            group: group.to_string(),
            caller: caller.to_string(),
            head: Some(head),
            stopping: self.stopping.subscribe(),
        })
    }

    /// Ends every wait now (shutdown); later waits end at once.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Waiters now, in all.
    pub fn waiting(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Waiter {
    /// Waits until the head passes `after`, `wait` passes, or the witness
    /// stops, whichever comes first.
    pub async fn wait(&mut self, after: u64, wait: Duration) {
        if *self.stopping.borrow() {
            return;
        }
        let Some(head) = self.head.as_mut() else {
            return;
        };
        let stopping = &mut self.stopping;
        tokio::select! {
            _ = head.wait_for(|seq| *seq > after) => {}
            _ = stopping.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(per_caller: usize, total: usize) -> Heads {
        Heads::new(WatchLimits {
            max_wait: Duration::from_secs(60),
            max_waiters: total,
            max_waiters_per_caller: per_caller,
        })
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_head_passes_it_or_on_stop() {
        let h = Arc::new(heads(4, 10));
        let mut w = h.waiter("g", "ann").unwrap();
        let h2 = h.clone();
        let mover = tokio::spawn(async move {
            tokio::task::yield_now().await;
            h2.moved("g", 3); // not past 5: the wait goes on
            h2.moved("other", 9);
            h2.moved("g", 6);
        });
        w.wait(5, Duration::from_secs(600)).await;
        mover.await.unwrap();
        assert_eq!(w.head.as_ref().map(|h| *h.borrow()), Some(6));
        let mut w2 = h.waiter("g", "ann").unwrap();
        h.stop();
        w2.wait(100, Duration::from_secs(600)).await;
        // Once stopped, waits end at once.
        h.waiter("g", "bob")
            .unwrap()
            .wait(100, Duration::from_secs(600))
            .await;
    }

    #[tokio::test]
    async fn waiters_are_bounded_per_caller_and_in_total() {
        let h = heads(2, 3);
        let a1 = h.waiter("g", "ann").unwrap();
        let _a2 = h.waiter("g", "ann").unwrap();
        let e = h.waiter("g", "ann").err().unwrap();
        assert_eq!((e.status().as_u16(), e.code()), (429, "overloaded"));
        let _b1 = h.waiter("h", "bob").unwrap();
        let e = h.waiter("h", "cy").err().unwrap();
        assert_eq!((e.status().as_u16(), e.code()), (503, "overloaded"));
        assert_eq!(h.waiting(), 3);
        drop(a1);
        assert_eq!(h.waiting(), 2);
        h.waiter("h", "cy").unwrap();
        // Nobody watches "g" once its waiters are gone: the entry goes.
        drop(_a2);
        assert!(!h.groups.lock().unwrap().contains_key("g"));
        assert!(h.groups.lock().unwrap().contains_key("h"));
    }
}
