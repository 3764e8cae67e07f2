//! Admin-defined SQL — write rules, projection queries and filters,
//! visibility rules — is the only SQL the witness runs that it did not
//! write. Each piece is checked when it is defined against allow-lists of
//! tables and functions (`allow`), and runs under a budget of steps, time
//! and memory (`budget`; SQLite's memory is counted per thread by `alloc`).

pub mod alloc;
pub mod allow;
pub mod budget;

pub use budget::{Budget, Exceeded, Failure, Limits, Scope};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What every connection that runs admin SQL shares: the limits of one
/// unit of work, and the flag that stops all of it at shutdown.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub limits: Limits,
    pub stop: Arc<AtomicBool>,
}

impl Sandbox {
    pub fn new(limits: Limits) -> Sandbox {
        Sandbox {
            limits,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops every running and future piece of admin SQL (shutdown).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A budget on `conn`, stopped with the others at shutdown.
    pub fn budget(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<Budget> {
        Budget::install(conn, self.stop.clone())
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(Limits::default())
    }
}
