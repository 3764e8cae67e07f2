//! A group's writer, with group commit: it takes the commits waiting in
//! the group's mailbox, processes each in its own savepoint inside one
//! transaction, makes that transaction durable with a single COMMIT (one
//! WAL fsync), and only then answers all of them. Writers run on the
//! writer pool (`super::pool`), one batch per turn.
//!
//! A batch ends at [`MAX_BATCH`] commits, after [`BATCH_TIME`], or as soon
//! as a maintenance write (an admin changing access or projections) is
//! waiting: the writer then lets it take the write lock before its next
//! batch, so an admin can always repair a group whose rules misbehave.
//! Each commit's admin SQL has its own budget, so a batch is bounded too.
//!
//! If SQLite drops the transaction under a commit (out of memory in a
//! rule), the batch is run again without that commit (it gets
//! `rule_error`); if under a projection, again with that projection
//! marked broken. The disk's free space is checked before each batch:
//! below the reserve, commits get `storage_full` and nothing is written.

use super::batch::Batch;
use super::commit::{self, CommitInput};
use super::migration::{self, MigrationInput};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sandbox::{Budget, Limits};
use crate::store::log::{self, HeadState};
use crate::store::GroupInfo;
use ed25519_dalek::SigningKey;
use pdb_protocol::wire::{CommitResponse, MigrationResponse};
use rusqlite::Connection;
use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most commits made durable by one fsync.
pub const MAX_BATCH: usize = 256;
/// A batch takes no more commits after this long.
pub const BATCH_TIME: Duration = Duration::from_millis(500);
/// Most commits waiting for one group's writer; more get `overloaded`.
pub const MAX_QUEUED: usize = 1024;

/// Counters and health a group's writer keeps, for operators, `/healthz`
/// and the benchmark.
#[derive(Default)]
pub struct Stats {
    /// Durable writes (COMMITs), each covering one batch.
    pub batches: AtomicU64,
    /// Commit requests answered (accepted, replayed or rejected).
    pub requests: AtomicU64,
    /// Commits appended to the log.
    pub accepted: AtomicU64,
    /// When the batch or maintenance write in progress began (ms since
    /// the epoch; 0 when idle).
    pub busy_since_ms: AtomicU64,
    /// The last batch failed because the disk is full (or below its
    /// reserve); cleared by the next batch that commits.
    pub storage_full: AtomicBool,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        let (b, r, a) = (
            self.batches.load(Relaxed),
            self.requests.load(Relaxed),
            self.accepted.load(Relaxed),
        );
        serde_json::json!({
            "batches": b,
            "requests": r,
            "accepted": a,
            "requests_per_batch": if b == 0 { 0.0 } else { r as f64 / b as f64 },
            "busy_for_ms": self.busy_for().map(|d| d.as_millis() as u64),
            "storage_full": self.storage_full.load(Relaxed),
        })
    }

    /// How long the write in progress has been running, if one is.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since_ms.load(Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(
                pdb_protocol::now_ms().saturating_sub(t),
            )),
        }
    }

    fn busy(&self, yes: bool) {
        let t = if yes {
            pdb_protocol::now_ms().max(1)
        } else {
            0
        };
        self.busy_since_ms.store(t, Relaxed);
    }
}

pub struct Job {
    pub input: CommitInput,
    pub reply: oneshot::Sender<Result<CommitResponse, ApiError>>,
}

/// A migration waiting for the writer: it runs alone, in a transaction of
/// its own, in its place among the commits.
pub struct MigrationJob {
    pub input: MigrationInput,
    pub reply: oneshot::Sender<Result<MigrationResponse, ApiError>>,
}

/// What waits in a group's mailbox, in order.
enum Work {
    Commit(Job),
    Migration(MigrationJob),
}

/// The group's info, shared by the writer (which replaces it after a
/// migration) and everything that reads it.
pub type SharedInfo = Arc<RwLock<Arc<GroupInfo>>>;

struct Queue {
    jobs: VecDeque<Work>,
    stopping: bool,
    /// A turn is queued on the pool or running.
    scheduled: bool,
}

/// Where a group's commits wait for its writer, and the gate that lets
/// maintenance writes go first. It says when the group needs a turn on
/// the writer pool; the group schedules it.
pub struct Mailbox {
    queue: Mutex<Queue>,
    /// Maintenance writes waiting for, or holding, the write lock.
    maintenance: AtomicUsize,
    pub stats: Stats,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                stopping: false,
                scheduled: false,
            }),
            maintenance: AtomicUsize::new(0),
            stats: Stats::default(),
        }
    }
}

fn stopping() -> ApiError {
    ApiError::Unavailable("the witness is shutting down; retry".into())
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a commit. Fails when shutting down or when too many wait.
    /// True when the group needs a turn scheduled now.
    pub fn submit(&self, job: Job) -> Result<bool, ApiError> {
        self.push(Work::Commit(job))
    }

    /// Queues a migration, behind the commits already waiting.
    pub fn submit_migration(&self, job: MigrationJob) -> Result<bool, ApiError> {
        self.push(Work::Migration(job))
    }

    fn push(&self, job: Work) -> Result<bool, ApiError> {
        let mut q = self.lock();
        if q.stopping {
            return Err(stopping());
        }
        if q.jobs.len() >= MAX_QUEUED {
            return Err(ApiError::Overloaded {
                caller: false,
                message: format!("{MAX_QUEUED} commits are already waiting for this group; retry"),
            });
        }
        q.jobs.push_back(job);
        Ok(self.claim_turn(&mut q))
    }

    /// Marks a turn scheduled when one is due and none is.
    fn claim_turn(&self, q: &mut Queue) -> bool {
        let due = !q.jobs.is_empty() && self.maintenance.load(Relaxed) == 0;
        if due && !q.scheduled {
            q.scheduled = true;
            return true;
        }
        false
    }

    /// Runs `f` (a maintenance write on a connection of its own) with the
    /// writer held off: the batch in progress ends early and no new one
    /// starts until `f` returns. Also returns whether the group needs a
    /// turn scheduled now (commits waited meanwhile).
    pub fn maintenance<T>(&self, f: impl FnOnce() -> T) -> (T, bool) {
        self.maintenance.fetch_add(1, Relaxed);
        self.stats.busy(true);
        let out = f();
        self.stats.busy(false);
        self.maintenance.fetch_sub(1, Relaxed);
        let mut q = self.lock();
        let turn = self.claim_turn(&mut q);
        (out, turn)
    }

    /// The first commit of a turn's batch: `None` when none waits or
    /// maintenance goes first. Once stopping, every commit still queued is
    /// answered `unavailable` instead.
    fn first(&self) -> Option<Work> {
        let mut q = self.lock();
        if q.stopping {
            for job in q.jobs.drain(..) {
                match job {
                    Work::Commit(j) => drop(j.reply.send(Err(stopping()))),
                    Work::Migration(j) => drop(j.reply.send(Err(stopping()))),
                }
            }
            return None;
        }
        if self.maintenance.load(Relaxed) > 0 {
            return None;
        }
        q.jobs.pop_front()
    }

    /// Another commit for the batch in progress, unless maintenance waits,
    /// the witness is stopping, or a migration is next.
    fn next(&self) -> Option<Job> {
        let mut q = self.lock();
        if q.stopping || self.maintenance.load(Relaxed) > 0 {
            return None;
        }
        match q.jobs.pop_front() {
            Some(Work::Commit(j)) => Some(j),
            Some(other) => {
                q.jobs.push_front(other);
                None
            }
            None => None,
        }
    }

    /// Ends a turn: true when it should be scheduled again.
    pub fn end_turn(&self) -> bool {
        let mut q = self.lock();
        let again = !q.jobs.is_empty() && self.maintenance.load(Relaxed) == 0;
        q.scheduled = again;
        again
    }

    /// No commit waits or runs and no maintenance write is under way.
    pub fn idle(&self) -> bool {
        let q = self.lock();
        q.jobs.is_empty() && !q.scheduled && self.maintenance.load(Relaxed) == 0
    }

    /// Stops taking commits. True when the group needs a turn scheduled
    /// to answer those still queued.
    pub fn stop(&self) -> bool {
        let mut q = self.lock();
        q.stopping = true;
        if !q.jobs.is_empty() && !q.scheduled {
            q.scheduled = true;
            return true;
        }
        false
    }
}

/// What a group's writer owns: the only write connection and the head.
pub struct Writer {
    pub conn: Connection,
    pub budget: Budget,
    pub limits: Limits,
    pub info: Arc<GroupInfo>,
    /// Where everything else reads the group's info.
    pub shared: SharedInfo,
    pub key: Arc<SigningKey>,
    pub head: HeadState,
    /// The directory whose file system holds the group, and the free
    /// space to keep there.
    pub dir: PathBuf,
    pub reserve_bytes: u64,
    pub metrics: Arc<Metrics>,
    /// Told each new durable head, for clients watching it.
    pub heads: Arc<crate::watch::Heads>,
}

type Answer = Result<CommitResponse, ApiError>;

/// Why one attempt at a batch did not commit.
enum Attempt {
    /// SQLite dropped the transaction; what to leave out is recorded.
    Lost,
    /// The batch cannot commit (disk, I/O): every commit in it fails.
    Failed(ApiError),
}

impl Writer {
    /// One turn: a batch starting with the first commit waiting, if any.
    pub fn turn(&mut self, mailbox: &Mailbox) {
        if let Some(first) = mailbox.first() {
            mailbox.stats.busy(true);
            match first {
                Work::Commit(job) => self.batch(job, mailbox),
                Work::Migration(job) => {
                    let answer =
                        std::panic::catch_unwind(AssertUnwindSafe(|| self.migrate(&job.input)))
                            .unwrap_or_else(|_| Err(self.recover("applying a migration")));
                    self.metrics.commit(match &answer {
                        Ok(_) => "migrated",
                        Err(e) => e.code(),
                    });
                    let _ = job.reply.send(answer);
                }
            }
            mailbox.stats.busy(false);
        }
    }

    /// Applies a migration in a transaction of its own; on success the
    /// group's info becomes the new schema's, here and for everyone.
    fn migrate(&mut self, input: &MigrationInput) -> Result<MigrationResponse, ApiError> {
        if let Some(e) = self.short_of_space() {
            return Err(e);
        }
        let failed = |e| ApiError::sqlite("migrating", e);
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
        let mut head = self.head.clone();
        let applied = migration::apply(
            &mut self.conn,
            &self.info,
            &self.key,
            &mut head,
            input,
            &self.budget,
            self.limits,
        )
        .and_then(|out| {
            self.conn.execute_batch("COMMIT").map_err(failed)?;
            Ok(out)
        });
        match applied {
            Ok((answer, info)) => {
                let moved = head.seq > self.head.seq;
                self.head = head;
                if moved {
                    self.heads.moved(&self.info.id, self.head.seq);
                }
                let info = Arc::new(info);
                *self.shared.write().unwrap_or_else(|p| p.into_inner()) = info.clone();
                self.info = info;
                if !answer.replay {
                    tracing::info!(group = %self.info.id, seq = self.head.seq, version = self.info.schema.version, "migrated");
                }
                Ok(answer)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn batch(&mut self, first: Job, mailbox: &Mailbox) {
        let started = Instant::now();
        let stats = &mailbox.stats;
        let mut jobs = vec![first];
        if let Some(e) = self.short_of_space() {
            while let Some(j) = mailbox.next() {
                jobs.push(j);
            }
            stats.storage_full.store(true, Relaxed);
            return finish(&self.metrics, jobs, |_| Err(e.clone()));
        }
        // Answers fixed by an earlier attempt (commits left out).
        let mut fixed: Vec<Option<Answer>> = vec![None];
        let mut broken = BTreeMap::new();
        let before = self.head.clone();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| loop {
            match self.attempt(&mut jobs, &mut fixed, &mut broken, mailbox, started) {
                Ok(answers) => break Ok(answers),
                Err(Attempt::Lost) => {
                    tracing::warn!(group = %self.info.id, "SQLite dropped the batch's transaction; running it again");
                    self.head = before.clone();
                }
                Err(Attempt::Failed(e)) => break Err(e),
            }
        }))
        .unwrap_or_else(|_| Err(self.recover("writing a batch")));
        stats.batches.fetch_add(1, Relaxed);
        stats.requests.fetch_add(jobs.len() as u64, Relaxed);
        self.metrics.batch_commits.observe(jobs.len() as f64);
        match outcome {
            Ok(answers) => {
                stats.storage_full.store(false, Relaxed);
                stats
                    .accepted
                    .fetch_add(self.head.seq.saturating_sub(before.seq), Relaxed);
                tracing::debug!(group = %self.info.id, size = jobs.len(), seq = self.head.seq, "batch durable");
                if self.head.seq > before.seq {
                    self.heads.moved(&self.info.id, self.head.seq);
                }
                let mut answers = answers;
                self.give_head(&mut answers);
                let mut answers = answers.into_iter();
                finish(&self.metrics, jobs, |_| {
                    answers
                        .next()
                        .unwrap_or_else(|| Err(ApiError::Internal("committing".into())))
                });
            }
            Err(e) => {
                tracing::error!(group = %self.info.id, code = e.code(), "batch failed; nothing in it was committed");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.head = log::head(&self.conn).unwrap_or(before);
                stats
                    .storage_full
                    .store(matches!(e, ApiError::StorageFull(_)), Relaxed);
                let mut fixed = fixed.into_iter();
                finish(&self.metrics, jobs, |_| {
                    fixed.next().flatten().unwrap_or_else(|| Err(e.clone()))
                });
            }
        }
    }

    /// One try at the batch: every commit not left out, in order, taking
    /// more from the mailbox while the batch may grow.
    fn attempt(
        &mut self,
        jobs: &mut Vec<Job>,
        fixed: &mut Vec<Option<Answer>>,
        broken: &mut BTreeMap<String, String>,
        mailbox: &Mailbox,
        started: Instant,
    ) -> Result<Vec<Answer>, Attempt> {
        let failed = |e| Attempt::Failed(ApiError::sqlite("writing a batch", e));
        let conn = &self.conn;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
        let batch = Batch::load(conn, &self.info, &self.budget, self.limits, broken.clone())
            .map_err(failed)?;
        let run = |stmt: &str| -> Result<(), Attempt> {
            conn.prepare_cached(stmt)
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
                .map_err(failed)
        };
        let start_seq = self.head.seq;
        let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
        let mut i = 0;
        loop {
            if i == jobs.len() {
                if jobs.len() >= MAX_BATCH || started.elapsed() >= BATCH_TIME {
                    break;
                }
                match mailbox.next() {
                    Some(j) => {
                        jobs.push(j);
                        fixed.push(None);
                    }
                    None => break,
                }
            }
            if let Some(answer) = &fixed[i] {
                answers.push(answer.clone());
                i += 1;
                continue;
            }
            run("SAVEPOINT pdb_commit")?;
            let result = commit::process(
                conn,
                &self.info,
                &self.key,
                &mut self.head,
                &jobs[i].input,
                &batch,
            );
            crate::failpoint::hit("writer", &jobs[i].input.idempotency_key);
            if conn.is_autocommit() {
                broken.extend(batch.broken.take());
                match batch.running.take() {
                    Some(p) => {
                        broken.insert(p, "its SQL ran out of memory".into());
                    }
                    None => {
                        fixed[i] = Some(result.and(Err(ApiError::Internal("committing".into()))))
                    }
                }
                return Err(Attempt::Lost);
            }
            if result.is_err() {
                run("ROLLBACK TO pdb_commit")?;
            }
            run("RELEASE pdb_commit")?;
            answers.push(result);
            i += 1;
        }
        if self.head.seq > start_seq {
            let refilled = super::projections::after_batch(conn, &batch, self.head.seq);
            if conn.is_autocommit() {
                broken.extend(batch.broken.take());
                if let Some(p) = batch.running.take() {
                    broken.insert(p, "its SQL ran out of memory".into());
                }
                return Err(Attempt::Lost);
            }
            refilled.map_err(Attempt::Failed)?;
        }
        super::projections::record_broken(conn, &batch).map_err(Attempt::Failed)?;
        // The head row moves once per batch; the in-memory head is the
        // truth between commits of one batch.
        log::set_head(conn, &self.head).map_err(failed)?;
        let synced = Instant::now();
        conn.execute_batch("COMMIT").map_err(failed)?;
        self.metrics
            .fsync_seconds
            .observe(synced.elapsed().as_secs_f64());
        Ok(answers)
    }

    /// The signed head, once per batch, for the answers whose commit is
    /// the head now (the batch's last, or a replay of it): their client is
    /// current without reading the log. The others are followed by newer
    /// commits and get none.
    fn give_head(&self, answers: &mut [Answer]) {
        let at_head = |a: &Answer| a.as_ref().is_ok_and(|r| r.certificate.seq == self.head.seq);
        if !answers.iter().any(at_head) {
            return;
        }
        let head = self.info.sign_head(&self.key, &self.head);
        for r in answers.iter_mut().flatten() {
            if r.certificate.seq == head.seq {
                r.head = Some(head.clone());
            }
        }
    }

    /// After a panic (a bug) in a batch or a migration: whatever its
    /// transaction wrote is rolled back and the head is the file's again,
    /// so the group goes on with its next job. The jobs get `internal`.
    pub fn recover(&mut self, context: &str) -> ApiError {
        tracing::error!(group = %self.info.id, "a bug: the writer panicked while {context}; its transaction was rolled back");
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if let Ok(head) = log::head(&self.conn) {
            self.head = head;
        }
        ApiError::Internal(context.to_string())
    }

    /// `storage_full` when the group's file system has less free space
    /// than the reserve.
    fn short_of_space(&self) -> Option<ApiError> {
        let free = crate::store::disk::free_bytes(&self.dir)?;
        (free < self.reserve_bytes).then(|| {
            ApiError::StorageFull(format!(
                "the witness's disk has {free} bytes free, below its reserve of {}; retry later",
                self.reserve_bytes
            ))
        })
    }
}

/// Answers every job, in order, with what `answer` gives for it.
fn finish(metrics: &Metrics, jobs: Vec<Job>, mut answer: impl FnMut(usize) -> Answer) {
    for (i, job) in jobs.into_iter().enumerate() {
        let a = answer(i);
        metrics.commit(match &a {
            Ok(r) if r.replay => "replayed",
            Ok(_) => "accepted",
            Err(e) => e.code(),
        });
        let _ = job.reply.send(a);
    }
}
