//! The bounds the witness keeps on connections, memory and concurrent
//! work, as configured (each has a `serve` flag; defaults here). See
//! docs/witness.md, "Limits".

use crate::sandbox;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections in total; more are answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one IP address; more are answered 429.
    pub max_connections_per_ip: usize,
    /// A connection that sends no complete request head for this long
    /// (a new one, or an idle keep-alive one) is closed.
    pub idle_timeout: Duration,
    /// A request body must arrive completely within this long.
    pub body_timeout: Duration,
    /// A connection that takes no bytes of an answer for this long is
    /// closed (and what the answer held is released).
    pub write_timeout: Duration,
    /// An answer must be written within the write timeout plus its
    /// length at this many bytes per second, however its reader trickles
    /// (then the connection is closed and what the answer held released).
    pub min_write_rate: u64,
    /// Request bodies held in memory at once, all requests together.
    pub max_buffered_bytes: usize,
    /// Requests one caller (identity) may have in progress at once.
    pub max_calls_per_caller: usize,
    /// Reads (and admins' changes and snapshots) running at once against
    /// one group.
    pub group_reads: usize,
    /// Blocking jobs (SQLite reads, snapshots, maintenance) at once.
    pub blocking: usize,
    /// How long a request may wait for a group's or the witness's slot
    /// before it is answered `overloaded`.
    pub queue_wait: Duration,
    /// Free disk space kept in reserve: below it, commits get
    /// `storage_full` and `/healthz` is not ready.
    pub reserve_bytes: u64,
    /// The budget of each unit of admin SQL.
    pub sql: sandbox::Limits,
    /// Groups open at once (beyond it, the least recently used idle ones
    /// are closed).
    pub max_open_groups: usize,
    /// An open group unused for this long is closed.
    pub group_idle: Duration,
    /// Threads that run the groups' writers.
    pub writer_threads: usize,
    /// Migrations a group may run back to back, then one per
    /// `migration_every` (a migration rewrites whole tables in a writer
    /// thread every group shares).
    pub migration_burst: u32,
    pub migration_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 512,
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            min_write_rate: 64 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_calls_per_caller: 32,
            group_reads: 4,
            blocking: 64,
            queue_wait: Duration::from_secs(2),
            reserve_bytes: 64 * 1024 * 1024,
            sql: sandbox::Limits::default(),
            max_open_groups: 1000,
            group_idle: Duration::from_secs(60),
            writer_threads: 8,
            migration_burst: 10,
            migration_every: Duration::from_secs(10),
        }
    }
}
