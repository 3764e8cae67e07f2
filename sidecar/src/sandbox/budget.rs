//! The budget admin SQL runs under: virtual-machine steps, wall time and
//! memory, checked by SQLite's progress handler, plus a bound on the size
//! of any one value it makes (`SQLITE_LIMIT_LENGTH`).
//!
//! A connection that runs admin SQL gets a [`Budget`] when it opens. The
//! progress handler is always installed but only counts while a [`Scope`]
//! runs admin SQL, so the witness's own statements never trip it. A scope
//! is one unit of work (one commit's rule checks, one projection page, one
//! refill): its steps and its deadline are shared by everything run in it.
//! Admin SQL is always a read-only statement, so an interrupt ends only
//! that statement, never the transaction around it.

use super::alloc;
use rusqlite::limits::Limit;
use rusqlite::{Connection, ErrorCode};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Virtual-machine instructions between two checks of the budget.
const EVERY: i32 = 1000;

/// What one scope of admin SQL may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Virtual-machine steps (instructions), all statements of the scope.
    pub steps: u64,
    /// Wall time from the scope's start.
    pub time: Duration,
    /// SQLite memory one statement may hold at once (per thread).
    pub memory: usize,
    /// Largest string or blob a statement may make or read.
    pub value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            steps: 10_000_000,
            time: Duration::from_secs(2),
            memory: 64 * 1024 * 1024,
            value_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// These limits multiplied (for filling a projection at definition).
    pub fn times(self, n: u32) -> Limits {
        Limits {
            steps: self.steps.saturating_mul(u64::from(n)),
            time: self.time.saturating_mul(n),
            ..self
        }
    }
}

/// Which part of the budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Steps(u64),
    Time(Duration),
    Memory(usize),
    ValueSize(usize),
    /// The witness is shutting down.
    Stopping,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Steps(n) => write!(f, "exceeded its budget of {n} steps"),
            Exceeded::Time(t) => write!(f, "exceeded its time budget of {} ms", t.as_millis()),
            Exceeded::Memory(b) => write!(f, "exceeded its memory budget of {b} bytes"),
            Exceeded::ValueSize(b) => {
                write!(f, "made or read a value larger than {b} bytes")
            }
            Exceeded::Stopping => write!(f, "was stopped: the witness is shutting down"),
        }
    }
}

/// Why admin SQL failed: its budget, or an error of its own (a runtime
/// error such as malformed JSON).
#[derive(Debug)]
pub enum Failure {
    Exceeded(Exceeded),
    Sql(rusqlite::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exceeded(e) => e.fmt(f),
            Failure::Sql(e) => write!(f, "failed: {e}"),
        }
    }
}

const NOT_TRIPPED: u8 = 0;
const STEPS: u8 = 1;
const TIME: u8 = 2;
const MEMORY: u8 = 3;
const STOPPING: u8 = 4;

struct State {
    base: Instant,
    armed: AtomicBool,
    steps_left: AtomicI64,
    /// Nanoseconds after `base`.
    deadline: AtomicU64,
    tripped: AtomicU8,
    stop: Arc<AtomicBool>,
}

impl State {
    fn check(&self) -> bool {
        if !self.armed.load(Relaxed) {
            return false;
        }
        let why = if self.stop.load(Relaxed) {
            STOPPING
        } else if self.steps_left.fetch_sub(i64::from(EVERY), Relaxed) <= i64::from(EVERY) {
            STEPS
        } else if self.base.elapsed().as_nanos() as u64 > self.deadline.load(Relaxed) {
            TIME
        } else if alloc::over_on_this_thread() {
            MEMORY
        } else {
            return false;
        };
        self.tripped.store(why, Relaxed);
        true
    }
}

/// The budget of one connection.
pub struct Budget {
    state: Arc<State>,
}

impl Budget {
    /// Installs the progress handler on `conn`. `stop` set means the
    /// witness is shutting down: admin SQL then stops at the next check.
    pub fn install(conn: &mut Connection, stop: Arc<AtomicBool>) -> rusqlite::Result<Budget> {
        let state = Arc::new(State {
            base: Instant::now(),
            armed: AtomicBool::new(false),
            steps_left: AtomicI64::new(0),
            deadline: AtomicU64::new(0),
            tripped: AtomicU8::new(NOT_TRIPPED),
            stop,
        });
        let s = state.clone();
        conn.progress_handler(EVERY, Some(move || s.check()))?;
        Ok(Budget { state })
    }

    /// Starts a unit of work with `limits`.
    pub fn scope(&self, limits: Limits) -> Scope<'_> {
        let s = &self.state;
        s.steps_left
            .store(i64::try_from(limits.steps).unwrap_or(i64::MAX), Relaxed);
        let deadline = s.base.elapsed().saturating_add(limits.time);
        s.deadline.store(
            u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
        s.tripped.store(NOT_TRIPPED, Relaxed);
        Scope {
            budget: self,
            limits,
        }
    }
}

/// One unit of admin SQL work under one budget.
pub struct Scope<'a> {
    budget: &'a Budget,
    limits: Limits,
}

impl Scope<'_> {
    fn exceeded(&self) -> Option<Exceeded> {
        let l = self.limits;
        match self.budget.state.tripped.load(Relaxed) {
            STEPS => Some(Exceeded::Steps(l.steps)),
            TIME => Some(Exceeded::Time(l.time)),
            MEMORY => Some(Exceeded::Memory(l.memory)),
            STOPPING => Some(Exceeded::Stopping),
            _ => None,
        }
    }

    /// Whether half the steps or half the time is spent: for work that can
    /// stop early with a cursor (projection pages).
    pub fn half_spent(&self) -> bool {
        let s = &self.budget.state;
        let left = s.steps_left.load(Relaxed).max(0) as u64;
        let deadline = s.deadline.load(Relaxed);
        let now = s.base.elapsed().as_nanos() as u64;
        let half_time = self.limits.time.as_nanos() as u64 / 2;
        left < self.limits.steps / 2 || now.saturating_add(half_time) > deadline
    }

    /// Runs `f` (the witness's own SQL, such as writing a selected row)
    /// from inside [`Scope::run`] without the budget counting it, so an
    /// interrupt can only ever end a read-only statement.
    pub fn paused<T>(&self, f: impl FnOnce() -> T) -> T {
        let state = &self.budget.state;
        let was = state.armed.swap(false, Relaxed);
        let out = alloc::paused(f);
        state.armed.store(was, Relaxed);
        out
    }

    /// Runs `f` (which prepares, binds and steps admin SQL on `conn`, the
    /// budget's connection) with the budget counting.
    pub fn run<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce() -> rusqlite::Result<T>,
    ) -> Result<T, Failure> {
        if let Some(e) = self.exceeded() {
            return Err(Failure::Exceeded(e));
        }
        let state = &self.budget.state;
        let value_limit = i32::try_from(self.limits.value_bytes).unwrap_or(i32::MAX);
        let previous = conn
            .limit(Limit::SQLITE_LIMIT_LENGTH)
            .map_err(Failure::Sql)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, value_limit)
            .map_err(Failure::Sql)?;
        let memory = alloc::arm(self.limits.memory);
        state.armed.store(true, Relaxed);
        let out = f();
        state.armed.store(false, Relaxed);
        let refused = memory.over();
        drop(memory);
        let _ = conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, previous);
        if let Some(e) = self.exceeded() {
            return Err(Failure::Exceeded(e));
        }
        match out {
            Ok(v) if !refused => Ok(v),
            Ok(_) => Err(Failure::Exceeded(Exceeded::Memory(self.limits.memory))),
            Err(e) => Err(match e.sqlite_error_code() {
                _ if refused => Failure::Exceeded(Exceeded::Memory(self.limits.memory)),
                Some(ErrorCode::OutOfMemory) => {
                    Failure::Exceeded(Exceeded::Memory(self.limits.memory))
                }
                Some(ErrorCode::TooBig) => {
                    Failure::Exceeded(Exceeded::ValueSize(self.limits.value_bytes))
                }
                _ => Failure::Sql(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Connection, Budget) {
        let mut c = Connection::open_in_memory().unwrap();
        let b = Budget::install(&mut c, Arc::new(AtomicBool::new(false))).unwrap();
        (c, b)
    }

    const SPIN: &str =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

    #[test]
    fn a_runaway_query_is_stopped_by_its_step_budget() {
        let (c, b) = conn();
        let limits = Limits {
            steps: 100_000,
            time: Duration::from_secs(3600),
            ..Limits::default()
        };
        let scope = b.scope(limits);
        let r = scope.run(&c, || c.query_row(SPIN, [], |r| r.get::<_, i64>(0)));
        assert!(matches!(
            r,
            Err(Failure::Exceeded(Exceeded::Steps(100_000)))
        ));
        // The same scope stays spent; a new one starts afresh.
        let again = scope.run(&c, || c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)));
        assert!(again.is_err());
        let fresh = b.scope(limits);
        assert_eq!(
            fresh
                .run(&c, || c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
                .unwrap(),
            1
        );
        // Outside a scope, nothing counts.
        let n: i64 = c
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT count(*) FROM c",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 100_000);
    }

    #[test]
    fn time_stop_and_value_size_end_a_scope_too() {
        let (c, b) = conn();
        let slow = Limits {
            steps: u64::MAX / 2,
            time: Duration::from_millis(50),
            ..Limits::default()
        };
        let r = b
            .scope(slow)
            .run(&c, || c.query_row(SPIN, [], |r| r.get::<_, i64>(0)));
        assert!(
            matches!(r, Err(Failure::Exceeded(Exceeded::Time(_)))),
            "{r:?}"
        );

        let small = Limits {
            value_bytes: 1000,
            ..Limits::default()
        };
        let r = b.scope(small).run(&c, || {
            c.query_row(
                "SELECT length(hex(x'00') || substr(quote(zeroblob(600)), 1))",
                [],
                |r| r.get::<_, i64>(0),
            )
        });
        assert!(
            matches!(r, Err(Failure::Exceeded(Exceeded::ValueSize(1000)))),
            "{r:?}"
        );

        let mut c2 = Connection::open_in_memory().unwrap();
        let stop = Arc::new(AtomicBool::new(true));
        let b2 = Budget::install(&mut c2, stop).unwrap();
        let r = b2
            .scope(Limits::default())
            .run(&c2, || c2.query_row(SPIN, [], |r| r.get::<_, i64>(0)));
        assert!(matches!(r, Err(Failure::Exceeded(Exceeded::Stopping))));
    }
}
