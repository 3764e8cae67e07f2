//! The writer pool: a fixed number of threads that run the writers of all
//! open groups in turn, so threads do not grow with groups. A group with
//! commits waiting is scheduled once (never twice: at most one writer per
//! group runs at a time); a thread takes it, runs one batch (bounded in
//! commits and time, so groups take turns fairly), and puts it back at the
//! end of the queue if more wait. A panic in a turn never ends a thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// Something with writes to run: one turn at a time.
pub trait Turn: Send + Sync {
    /// Runs one batch; true when more work waits (schedule it again).
    fn turn(&self) -> bool;
}

struct Queue {
    ready: VecDeque<Arc<dyn Turn>>,
    stopping: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Pool {
    /// Starts `n` writer threads.
    pub fn start(n: usize) -> Pool {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                ready: VecDeque::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let threads = (0..n.max(1))
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("pdb-writer-{i}"))
                    .spawn(move || work(&inner))
                    .unwrap_or_else(|e| panic!("cannot start a writer thread: {e}"))
            })
            .collect();
        Pool {
            inner,
            threads: Arc::new(Mutex::new(threads)),
        }
    }

    /// Queues one turn of `t` (the caller makes sure it is not queued or
    /// running already).
    pub fn schedule(&self, t: Arc<dyn Turn>) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.ready.push_back(t);
        self.inner.wake.notify_one();
    }

    /// Lets the threads finish what is queued, then stops them.
    pub fn stop(&self) {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        self.inner.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn work(inner: &Inner) {
    loop {
        let next = {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(t) = q.ready.pop_front() {
                    break t;
                }
                if q.stopping {
                    return;
                }
                q = inner.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A turn that panics anyway (Group::turn catches its writer's)
        // costs the pool no thread; it is not scheduled again.
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| next.turn()))
            .unwrap_or_else(|_| {
                tracing::error!("a bug: a writer turn panicked");
                false
            });
        if again {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.ready.push_back(next);
            inner.wake.notify_one();
        }
    }
}
