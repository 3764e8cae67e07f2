//! One writer thread per group, with group commit: it takes every commit
//! waiting in its queue (up to a bound), processes each in its own
//! savepoint inside one transaction, makes that transaction durable with a
//! single COMMIT (one WAL fsync), and only then answers all of them.

use crate::commit::{self, CommitInput};
use crate::error::ApiError;
use crate::group::GroupInfo;
use crate::read::{self, HeadState};
use pdb_protocol::wire::CommitResponse;
use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Most commits made durable by one fsync.
pub const MAX_BATCH: usize = 256;

pub struct Job {
    pub input: CommitInput,
    pub reply: oneshot::Sender<Result<CommitResponse, ApiError>>,
}

pub fn start(
    conn: Connection,
    info: Arc<GroupInfo>,
    key: Arc<SigningKey>,
    head: HeadState,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let name = format!("pdb-writer-{}", info.id);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(conn, &info, &key, head, rx))
        .unwrap_or_else(|e| panic!("cannot start a writer thread: {e}"));
    (tx, handle)
}

fn run(
    conn: Connection,
    info: &GroupInfo,
    key: &SigningKey,
    mut head: HeadState, rx: mpsc::Receiver<Job>) {
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
        let results = match write_batch(&conn, info, key, &mut head, &batch) {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(group = %info.id, error = %e, "batch failed; nothing in it was committed");
                let _ = conn.execute_batch("ROLLBACK");
                head = read::head(&conn).unwrap_or(before);
                batch
                    .iter()
                    .map(|_| Err(ApiError::Internal("committing".into())))
                    .collect()
            }
        };
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
) -> rusqlite::Result<Results> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        conn.execute_batch("SAVEPOINT pdb_commit")?;
        let result = commit::process(conn, info, key, head, &job.input);
        if result.is_err() {
            conn.execute_batch("ROLLBACK TO pdb_commit")?;
        }
        conn.execute_batch("RELEASE pdb_commit")?;
        results.push(result);
    }
    conn.execute_batch("COMMIT")?;
    Ok(results)
}
