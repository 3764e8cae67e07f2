//! One writer thread per group, with group commit: it takes every commit
//! waiting in its queue (up to a bound), processes each in its own
//! savepoint inside one transaction, makes that transaction durable with a
//! single COMMIT (one WAL fsync), and only then answers all of them.

use super::commit::{self, CommitInput};
use crate::error::ApiError;
use crate::store::log::{self, HeadState};
use crate::store::GroupInfo;
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::CommitResponse;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most commits made durable by one fsync.
pub const MAX_BATCH: usize = 256;

/// Counters a group's writer keeps, for operators and the benchmark.
#[derive(Default)]
pub struct Stats {
    /// Durable writes (COMMITs), each covering one batch.
    pub batches: AtomicU64,
    /// Commit requests answered (accepted, replayed or rejected).
    pub requests: AtomicU64,
    /// Commits appended to the log.
    pub accepted: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        let (b, r, a) = (
            self.batches.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
        );
        serde_json::json!({
            "batches": b,
            "requests": r,
            "accepted": a,
            "requests_per_batch": if b == 0 { 0.0 } else { r as f64 / b as f64 },
        })
    }
}

pub struct Job {
    pub input: CommitInput,
    pub reply: oneshot::Sender<Result<CommitResponse, ApiError>>,
}

pub fn start(
    conn: Connection,
    info: Arc<GroupInfo>,
    key: Arc<SigningKey>,
    head: HeadState,
    stats: Arc<Stats>,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let name = format!("pdb-writer-{}", info.id);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(conn, &info, &key, head, &stats, rx))
        .unwrap_or_else(|e| panic!("cannot start a writer thread: {e}"));
    (tx, handle)
}

fn run(
    conn: Connection,
    info: &GroupInfo,
    key: &SigningKey,
    mut head: HeadState,
    stats: &Stats,
    rx: mpsc::Receiver<Job>,
) {
    // recv() fails once every sender is gone: that is shutdown, after the
    // queue has been drained.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let before = head.clone();
        let before_seq = before.seq;
        let results = match write_batch(&conn, info, key, &mut head, &batch) {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(group = %info.id, code = e.code(), "batch failed; nothing in it was committed");
                let _ = conn.execute_batch("ROLLBACK");
                head = log::head(&conn).unwrap_or(before);
                batch
                    .iter()
                    .map(|_| Err(ApiError::Internal("committing".into())))
                    .collect()
            }
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .accepted
            .fetch_add(head.seq.saturating_sub(before_seq), Ordering::Relaxed);
        tracing::debug!(group = %info.id, size = batch.len(), seq = head.seq, "batch durable");
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
    tracing::info!(group = %info.id, "writer stopped");
}

type Results = Vec<Result<CommitResponse, ApiError>>;

fn write_batch(
    conn: &Connection,
    info: &GroupInfo,
    key: &SigningKey,
    head: &mut HeadState,
    batch: &[Job],
) -> Result<Results, ApiError> {
    let sql = |e| ApiError::internal("writing a batch", e);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
    let context = commit::Batch::load(conn, info).map_err(sql)?;
    let start_seq = head.seq;
    let mut results = Vec::with_capacity(batch.len());
    let run = |stmt: &str| -> Result<(), ApiError> {
        conn.prepare_cached(stmt)
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(sql)
    };
    for job in batch {
        run("SAVEPOINT pdb_commit")?;
        let result = commit::process(conn, info, key, head, &job.input, &context);
        if result.is_err() {
            run("ROLLBACK TO pdb_commit")?;
        }
        run("RELEASE pdb_commit")?;
        results.push(result);
    }
    if head.seq > start_seq {
        super::projections::after_batch(conn, &context.projections)?;
    }
    // The head row moves once per batch; the in-memory head is the truth
    // between commits of one batch.
    conn.prepare_cached(
        "UPDATE pdb_head SET seq = ?1, head_hash = ?2, root = ?3, time_ms = ?4 WHERE id = 1",
    )
    .and_then(|mut st| {
        st.execute(rusqlite::params![
            head.seq as i64,
            head.hash.to_vec(),
            head.root.to_bytes(),
            head.time_ms as i64
        ])
    })
    .map_err(sql)?;
    conn.execute_batch("COMMIT").map_err(sql)?;
    Ok(results)
}
