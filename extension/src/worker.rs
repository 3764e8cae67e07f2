//! The background worker (`pdb_sync_start` / `pdb_sync_stop`) and
//! `pdb_wait`: live sync, one worker per database file per process.
//!
//! A worker is two threads. The *sync thread* owns a connection of its
//! own to the file; it notices local writes from any connection by
//! `PRAGMA data_version` (polled, cheap) and syncs once they settle (a
//! burst becomes one commit), and syncs when the *watch thread* says the
//! witness's head moved. The watch thread long-polls
//! `GET /v1/groups/<g>/head?after=<verified head>&wait=<s>` and checks the
//! answer's signature before it wakes anyone. A failure of the retry
//! class (network, witness overloaded or restarting) is retried with
//! exponential backoff and jitter, honouring `Retry-After`; a failure of
//! the stop class (unauthorized, app upgrade required, ...) parks the
//! worker, which says why in `pdb_status().worker` and tries again once
//! the token, the stored settings or the app's schema range change, and
//! — for a stop the witness's side can lift — now and then by itself
//! (capped, jittered backoff). While idle it pulls about once a minute
//! even with watches (a missed wake-up never leaves it behind).
//!
//! Library lifetime: SQLite unloads an extension's library when the
//! connection that loaded it closes, and the worker's threads run code
//! of the library. The first `pdb_sync_start` therefore pins the library
//! for the rest of the process (`dlopen` of itself with `RTLD_NODELETE`):
//! the code a worker runs can never go away under it. The worker stops
//! by itself once every connection that started it has closed (a
//! destructor SQLite calls on close), and an `atexit` handler stops every
//! worker and waits (bounded) for it before the process ends, so it is
//! never inside a transaction when the process goes.

use crate::db::{Db, Owned};
use crate::error::{Class, Error, Result};
use crate::state;
use pdb_protocol::{now_ms, KeyChain};
use serde_json::{json, Value as Json};
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How the worker runs (`pdb_sync_start`'s options).
#[derive(Clone, Debug)]
pub struct Options {
    /// Local writes are pushed once none came for this long...
    pub debounce_ms: u64,
    /// ...or this long after the first, whichever is sooner.
    pub max_delay_ms: u64,
    /// How often local writes are looked for.
    pub poll_ms: u64,
    /// Longest wait asked of the witness per head watch (bounded by its
    /// `max_wait_seconds` and the network timeout).
    pub wait_seconds: u64,
    /// Without head watches (an older witness), pull this often.
    pub pull_every_ms: u64,
    /// Retry backoff: first and longest delay.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The worker connection's busy timeout.
    pub busy_timeout_ms: u64,
    /// While idle, pull about this often (±20 %) even with head watches:
    /// a watch wake-up missed never leaves the device behind for longer.
    pub idle_pull_ms: u64,
    /// Parked by a stop the witness's side can lift (`unknown_head`,
    /// `key_fork`, `unauthorized`, ...): ask again after this long,
    /// doubling (with jitter) up to the second.
    pub stop_probe_min_ms: u64,
    pub stop_probe_max_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debounce_ms: 30,
            max_delay_ms: 300,
            poll_ms: 20,
            wait_seconds: 25,
            pull_every_ms: 30_000,
            min_backoff_ms: 250,
            max_backoff_ms: 30_000,
            busy_timeout_ms: 5_000,
            idle_pull_ms: 60_000,
            stop_probe_min_ms: 30_000,
            stop_probe_max_ms: 600_000,
        }
    }
}

/// Parses `pdb_sync_start`'s options JSON (unknown keys are refused).
pub fn parse_options(text: Option<&str>) -> Result<Options> {
    let mut o = Options::default();
    let Some(text) = text else { return Ok(o) };
    let v: Json = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("options must be a JSON object ({e})")))?;
    let Some(map) = v.as_object() else {
        return Err(Error::invalid("options must be a JSON object"));
    };
    for (k, v) in map {
        let n = v.as_u64().ok_or_else(|| {
            Error::invalid(format!(
                "option {k:?} must be a whole number of milliseconds (or seconds for wait_seconds)"
            ))
        })?;
        let (slot, lo, hi) = match k.as_str() {
            "debounce_ms" => (&mut o.debounce_ms, 0, 10_000),
            "max_delay_ms" => (&mut o.max_delay_ms, 0, 60_000),
            "poll_ms" => (&mut o.poll_ms, 5, 10_000),
            "wait_seconds" => (&mut o.wait_seconds, 0, 3600),
            "pull_every_ms" => (&mut o.pull_every_ms, 100, 86_400_000),
            "min_backoff_ms" => (&mut o.min_backoff_ms, 10, 3_600_000),
            "max_backoff_ms" => (&mut o.max_backoff_ms, 10, 3_600_000),
            "busy_timeout_ms" => (&mut o.busy_timeout_ms, 0, 600_000),
            "idle_pull_ms" => (&mut o.idle_pull_ms, 100, 86_400_000),
            "stop_probe_min_ms" => (&mut o.stop_probe_min_ms, 10, 86_400_000),
            "stop_probe_max_ms" => (&mut o.stop_probe_max_ms, 10, 86_400_000),
            _ => return Err(Error::invalid(format!("unknown option {k:?}"))),
        };
        if !(lo..=hi).contains(&n) {
            return Err(Error::invalid(format!("option {k:?} must be {lo} to {hi}")));
        }
        *slot = n;
    }
    o.max_backoff_ms = o.max_backoff_ms.max(o.min_backoff_ms);
    o.stop_probe_max_ms = o.stop_probe_max_ms.max(o.stop_probe_min_ms);
    Ok(o)
}

/// What the watch thread needs, published by the sync thread after each
/// sync.
#[derive(Clone)]
struct Target {
    witness: crate::client::HttpWitness,
    keys: KeyChain,
    group: String,
    /// The verified head: watch for a head past it.
    after: u64,
    /// Seconds per watch; `None`: the witness cannot watch (poll).
    wait: Option<u64>,
}

/// One worker's shared state.
struct Ctl {
    /// Asked to end (pdb_sync_stop, its connections closed, exit).
    stop: bool,
    /// The watch thread saw the head move (or failed: sync tells why).
    remote: bool,
    /// `pdb_sync_start` again while parked: try now.
    kick: bool,
    state: &'static str,
    reason: Json,
    last_error: Option<String>,
    next_retry_ms: Option<u64>,
    /// The last failure carried a `Retry-After`: no wake-up (a head
    /// watch finding the witness again, a head that moved) brings the
    /// retry before this.
    not_before: Option<Instant>,
    /// The watch thread panicked more than it may restart: nobody
    /// watches, the sync thread pulls every `pull_every_ms` instead.
    watch_dead: bool,
    syncs: u64,
    failures: u32,
    last_sync_ms: Option<u64>,
    started_ms: u64,
    /// The verified head after the last sync.
    head_seq: Option<u64>,
    target: Option<Target>,
    /// Threads still running (sync, watch).
    threads: usize,
    /// Connections that started it (they stop it when they all close).
    owners: HashSet<usize>,
    options: Options,
}

struct Worker {
    /// Unique in the process: tells this worker from an earlier one for
    /// the same file.
    id: u64,
    file: String,
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

impl Worker {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the worker's condition up to `d` (woken by any change).
    fn sleep<'a>(&self, g: MutexGuard<'a, Ctl>, d: Duration) -> MutexGuard<'a, Ctl> {
        match self.cv.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

fn workers() -> &'static Mutex<HashMap<String, Arc<Worker>>> {
    static W: OnceLock<Mutex<HashMap<String, Arc<Worker>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

fn registry() -> MutexGuard<'static, HashMap<String, Arc<Worker>>> {
    workers().lock().unwrap_or_else(|p| p.into_inner())
}

/// Notified whenever a worker finished a sync (for `pdb_wait`).
fn synced() -> &'static (Mutex<u64>, Condvar) {
    static S: OnceLock<(Mutex<u64>, Condvar)> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn announce_sync() {
    let (m, cv) = synced();
    *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    cv.notify_all();
}

/// The file a worker is for: the database's path.
fn file_of(db: &Db) -> Result<String> {
    db.file()?.ok_or_else(|| {
        Error::invalid("the background worker needs a database file (this one is in memory or temporary); call pdb_sync() instead")
    })
}

/// `pdb_sync_start([options])`.
pub fn start(db: Db, options: Options) -> Result<Json> {
    let file = file_of(&db)?;
    if !state::is_open(&db)? {
        return Err(Error::invalid(
            "this database is not open for sync; call pdb_open(url, group, options) first",
        ));
    }
    pin_library()?;
    let conn = db.raw() as usize;
    let mut reg = registry();
    if let Some(w) = reg.get(&file).cloned() {
        let mut c = w.lock();
        if !c.stop {
            let new_owner = c.owners.insert(conn);
            c.kick = true;
            c.options = options;
            drop(c);
            w.cv.notify_all();
            drop(reg);
            if new_owner {
                watch_close(&db, &file, w.id)?;
            }
            return Ok(json!({ "worker": "running", "file": file }));
        }
        // Still ending: a new one takes its place once it has.
    }
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let w = Arc::new(Worker {
        id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        file: file.clone(),
        ctl: Mutex::new(Ctl {
            stop: false,
            remote: false,
            kick: false,
            state: "starting",
            reason: Json::Null,
            last_error: None,
            next_retry_ms: None,
            not_before: None,
            watch_dead: false,
            syncs: 0,
            failures: 0,
            last_sync_ms: None,
            started_ms: now_ms(),
            head_seq: None,
            target: None,
            threads: 2,
            owners: HashSet::from([conn]),
            options,
        }),
        cv: Condvar::new(),
    });
    let (a, b) = (w.clone(), w.clone());
    let spawned = std::thread::Builder::new()
        .name("pdb-sync".into())
        .spawn(move || sync_thread(a))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("pdb-watch".into())
                .spawn(move || watch_thread(b))
        });
    if let Err(e) = spawned {
        w.lock().stop = true;
        w.cv.notify_all();
        return Err(Error::invalid(format!(
            "starting the worker's threads: {e}"
        )));
    }
    let id = w.id;
    reg.insert(file.clone(), w);
    drop(reg);
    watch_close(&db, &file, id)?;
    Ok(json!({ "worker": "started", "file": file }))
}

/// `pdb_sync_stop()`: asks this file's worker to end and waits (up to
/// two seconds) for its sync thread to leave the database.
pub fn stop(db: Db) -> Result<Json> {
    let file = file_of(&db)?;
    let Some(w) = registry().remove(&file) else {
        return Ok(json!({ "worker": "not_running", "file": file }));
    };
    let ended = end(&w, Duration::from_secs(2));
    Ok(json!({ "worker": if ended { "stopped" } else { "stopping" }, "file": file }))
}

/// Asks `w` to end; waits up to `d` for its sync thread (the watch
/// thread may still be in a long poll: it ends when that answers, and
/// the library stays loaded for it).
fn end(w: &Worker, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut c = w.lock();
    c.stop = true;
    w.cv.notify_all();
    while c.state != "ended" {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        c = w.sleep(c, deadline - now);
    }
    true
}

/// The worker's part of `pdb_status()`: `null` when none runs for this
/// file in this process.
pub fn status(db: &Db) -> Result<Json> {
    let Some(file) = db.file()? else {
        return Ok(Json::Null);
    };
    let Some(w) = registry().get(&file).cloned() else {
        return Ok(Json::Null);
    };
    let c = w.lock();
    Ok(json!({
        "state": c.state,
        "reason": c.reason,
        "last_error": c.last_error,
        "next_retry_ms": c.next_retry_ms,
        "syncs": c.syncs,
        "failures": c.failures,
        "last_sync_ms": c.last_sync_ms,
        "started_ms": c.started_ms,
        "head_seq": c.head_seq,
        "watching": c.target.as_ref().map(|t| t.wait.is_some() && !c.watch_dead),
    }))
}

// --- Connections closing, the process exiting, the library pinned ------

struct Owner {
    file: String,
    conn: usize,
    worker: u64,
}

/// Registers `on_owner_closed` for this connection.
fn watch_close(db: &Db, file: &str, worker: u64) -> Result<()> {
    let owner = Box::into_raw(Box::new(Owner {
        file: file.to_string(),
        conn: db.raw() as usize,
        worker,
    }));
    // On failure SQLite has called the destructor (which frees it).
    db.on_close("pdb_worker_owner", owner.cast(), on_owner_closed)
}

/// SQLite's destructor for the owner function: the connection is closing
/// (or started the worker again). Never blocks.
unsafe extern "C" fn on_owner_closed(app: *mut c_void) {
    if app.is_null() {
        return;
    }
    // SAFETY: `app` is the Box made in watch_close, handed back once.
    let owner = unsafe { Box::from_raw(app.cast::<Owner>()) };
    let _ = std::panic::catch_unwind(|| {
        let mut reg = registry();
        let Some(w) = reg.get(&owner.file).cloned() else {
            return;
        };
        if w.id != owner.worker {
            // An earlier worker's registration, replaced.
            return;
        }
        let mut c = w.lock();
        c.owners.remove(&owner.conn);
        if c.owners.is_empty() {
            c.stop = true;
            drop(c);
            w.cv.notify_all();
            reg.remove(&owner.file);
        }
    });
}

/// Keeps this library loaded for the rest of the process (idempotent),
/// and stops workers before the process exits.
fn pin_library() -> Result<()> {
    static PINNED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PINNED
        .get_or_init(|| {
            // SAFETY: dladdr on an address of this library fills `info`
            // with its file name (owned by the loader); dlopen with
            // RTLD_NOLOAD only adds a reference to the loaded library, and
            // RTLD_NODELETE makes it stay for the process's life.
            unsafe {
                let mut info: libc::Dl_info = std::mem::zeroed();
                let here = pin_library as *const c_void;
                if libc::dladdr(here, &mut info) == 0 || info.dli_fname.is_null() {
                    return Err("dladdr found no library".into());
                }
                let h = libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
                if h.is_null() {
                    return Err("dlopen could not pin the library".into());
                }
                libc::atexit(at_exit);
            }
            Ok(())
        })
        .clone()
        .map_err(|e| {
            Error::invalid(format!(
                "cannot keep the extension loaded for a worker: {e}"
            ))
        })
}

/// Before the process exits: every worker is asked to end, and given a
/// moment to leave the database.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let all: Vec<Arc<Worker>> = registry().drain().map(|(_, w)| w).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        for w in &all {
            w.lock().stop = true;
            w.cv.notify_all();
        }
        for w in &all {
            end(w, deadline.saturating_duration_since(Instant::now()));
        }
    });
}

// --- The sync thread --------------------------------------------------

fn sync_thread(w: Arc<Worker>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&w)));
    let mut c = w.lock();
    c.state = "ended";
    c.stop = true;
    c.target = None;
    c.threads = c.threads.saturating_sub(1);
    drop(c);
    w.cv.notify_all();
    announce_sync();
}

/// What parks the worker until it changes: the token and settings sync
/// uses, and the app's schema range.
fn fingerprint(db: &Db) -> String {
    let get = |k: &str| {
        state::get(db, k)
            .ok()
            .flatten()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    };
    let token = crate::token::get(db).ok().flatten().unwrap_or_default();
    let token = pdb_protocol::hex(&pdb_protocol::sha256(token.as_bytes()));
    [
        token,
        get("token"),
        get("url"),
        get("app_schema_min"),
        get("app_schema_max"),
        get("schema_version"),
        // pdb_recover moves the head to the witness's history.
        get("head_hash"),
    ]
    .join("|")
}

fn run(w: &Worker) {
    let busy = w.lock().options.busy_timeout_ms;
    let conn = match Owned::open(&w.file, i32::try_from(busy).unwrap_or(i32::MAX)) {
        Ok(c) => c,
        Err(e) => {
            let mut c = w.lock();
            c.state = "stopped";
            c.last_error = Some(e.to_string());
            c.reason = json!({"code": "local_error", "message": e.to_string(), "advice": "the worker could not open the database file; call pdb_sync_start again"});
            return;
        }
    };
    let db = conn.db();
    let mut version = conn.data_version().unwrap_or(0);
    // Due now: the first sync, or a retry at this time.
    let mut due: Option<Instant> = Some(Instant::now());
    // The last sync failed and is retried at `due` (backoff): local writes
    // wait for that retry instead of bringing it forward.
    let mut backing_off = false;
    let mut parked: Option<Parked> = None;
    let mut last_check = Instant::now();
    let mut last_pull = Instant::now();
    // The safety net: an idle worker pulls at this time even while head
    // watches work (a wake-up missed leaves it behind no longer).
    let mut idle_pull = Instant::now() + around(w.lock().options.idle_pull_ms);
    loop {
        let o = {
            let mut c = w.lock();
            if c.stop {
                return;
            }
            if std::mem::take(&mut c.kick) {
                parked = None;
                due = Some(Instant::now());
            }
            if std::mem::take(&mut c.remote) && parked.is_none() {
                // Never before a Retry-After the witness asked for: a herd
                // of devices would send their bodies straight back into an
                // overloaded witness the moment its head answers again.
                let now = Instant::now();
                due = Some(c.not_before.map_or(now, |t| t.max(now)));
            }
            c.options.clone()
        };
        // Parked by a stop-class failure: look (every second) for what
        // would change the answer here, and ask the witness again now and
        // then when its side can lift the stop.
        if let Some(p) = &parked {
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                if fingerprint(&db) != p.fingerprint {
                    parked = None;
                    due = Some(Instant::now());
                }
            }
        }
        if let Some(Parked {
            probe: Some((at, _)),
            ..
        }) = &parked
        {
            if *at <= Instant::now() && due.is_none() {
                due = Some(Instant::now());
            }
        }
        // Local writes: sync once they settle — unless a retry is due
        // already: then it carries them (an app writing all the time must
        // not turn an outage's backoff into a reconnect per write).
        if let Ok(v) = conn.data_version() {
            if v != version {
                version = v;
                if parked.is_none() && !backing_off {
                    settle(w, &conn, &mut version, &o);
                    due = Some(due.map_or(Instant::now(), |d| d.min(Instant::now())));
                }
            }
        }
        if parked.is_none() && !backing_off && due.is_none() {
            // Without head watches (or with the watch thread gone), pull
            // now and then; with them, now and then too, more rarely.
            let polling = {
                let c = w.lock();
                c.watch_dead || c.target.as_ref().is_some_and(|t| t.wait.is_none())
            };
            if (polling && last_pull.elapsed() >= Duration::from_millis(o.pull_every_ms))
                || Instant::now() >= idle_pull
            {
                due = Some(Instant::now());
            }
        }
        match due {
            Some(t) if t <= Instant::now() => {
                due = None;
                last_pull = Instant::now();
                let was = parked.take();
                match once(w, &db) {
                    Ok(()) => backing_off = false,
                    Err(Next::Retry(after)) => {
                        backing_off = true;
                        due = Some(Instant::now() + after);
                    }
                    Err(Next::Park { probe }) => {
                        backing_off = false;
                        let probe = probe.then(|| {
                            let n = was
                                .and_then(|p| p.probe)
                                .map_or(1, |(_, n)| n.saturating_add(1));
                            let after = spread(o.stop_probe_min_ms, o.stop_probe_max_ms, n, None);
                            w.lock().next_retry_ms =
                                Some(now_ms().saturating_add(after.as_millis() as u64));
                            (Instant::now() + after, n)
                        });
                        parked = Some(Parked {
                            fingerprint: fingerprint(&db),
                            probe,
                        });
                        last_check = Instant::now();
                    }
                }
                idle_pull = Instant::now() + around(o.idle_pull_ms);
                // `version` stays: writes by others during the sync are
                // seen next turn (our own do not move our data_version).
            }
            _ => {
                let c = w.lock();
                if !c.stop && !c.remote && !c.kick {
                    let _c = w.sleep(c, Duration::from_millis(o.poll_ms));
                }
            }
        }
    }
}

/// What holds a parked worker.
struct Parked {
    /// The settings it parked under: a change lifts it.
    fingerprint: String,
    /// A stop the witness's side can lift: when to ask again, and how
    /// many times it has been asked.
    probe: Option<(Instant, u32)>,
}

/// `ms` ± 20 %, at random.
fn around(ms: u64) -> Duration {
    let spread = ms / 5;
    Duration::from_millis(ms - spread + random() % (2 * spread + 1))
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_or(0, |()| u64::from_le_bytes(b))
}

/// Waits until local writes settle: no new one for `debounce_ms`, or
/// `max_delay_ms` after the first.
fn settle(w: &Worker, conn: &Owned, version: &mut i64, o: &Options) {
    let first = Instant::now();
    let mut quiet = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(quiet) >= Duration::from_millis(o.debounce_ms)
            || now.duration_since(first) >= Duration::from_millis(o.max_delay_ms)
        {
            return;
        }
        let step = Duration::from_millis(o.debounce_ms.clamp(1, 10));
        {
            let c = w.lock();
            if c.stop {
                return;
            }
            let _c = w.sleep(c, step);
        }
        if let Ok(v) = conn.data_version() {
            if v != *version {
                *version = v;
                quiet = Instant::now();
            }
        }
    }
}

enum Next {
    /// Try again after this long.
    Retry(Duration),
    /// Wait for the cause to change; `probe`: the witness's side can
    /// change it too, so ask again now and then.
    Park { probe: bool },
}

/// Stops only this side can lift (the app's schema range, a table of the
/// app's own): the witness is not asked again until they change here.
const LOCAL_STOPS: &[&str] = &["app_upgrade_required", "local_table_exists"];

/// One sync, its outcome recorded for `pdb_status` and the watch thread
/// told the new head.
fn once(w: &Worker, db: &Db) -> std::result::Result<(), Next> {
    w.lock().state = "syncing";
    let result = {
        let _one = sync_lock(&w.file);
        // A panic (a bug) is a local failure like any other: its
        // transaction rolled back as it unwound, the worker retries later.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::sync::sync(*db)))
            .unwrap_or_else(|_| {
                Err(Error::invalid(
                    "internal error (a bug; the sync's unfinished transaction was rolled back)",
                ))
            })
    };
    let target = target(w, db);
    let mut c = w.lock();
    c.target = target;
    c.head_seq = c.target.as_ref().map(|t| t.after).or(c.head_seq);
    let out = match result {
        Ok(_) => {
            c.state = "idle";
            c.reason = Json::Null;
            c.last_error = None;
            c.next_retry_ms = None;
            c.not_before = None;
            c.syncs += 1;
            c.failures = 0;
            c.last_sync_ms = Some(now_ms());
            Ok(())
        }
        Err(e) => {
            c.last_error = Some(e.to_string());
            c.failures = c.failures.saturating_add(1);
            let busy = matches!(e.sqlite_code(), Some((5 | 6, _)));
            if e.class() == Some(Class::Stop) && !busy {
                let code = e.code().unwrap_or("stopped");
                let local =
                    matches!(e.root(), Error::Stopped { .. }) && LOCAL_STOPS.contains(&code);
                c.state = "stopped";
                c.next_retry_ms = None;
                c.not_before = None;
                c.reason = json!({
                    "code": code,
                    "class": "stop",
                    "message": e.to_string(),
                    "advice": if local {
                        "see pdb_status().reason; the worker tries again by itself once the token, pdb_open's settings or the app's schema versions change, or on pdb_sync_start"
                    } else {
                        "see pdb_status().reason; the worker asks the witness again by itself (next_retry_ms, backing off to 10 minutes) and resumes once the answer no longer stops it, or at once when the token, pdb_open's settings or the app's schema versions change, or on pdb_sync_start"
                    },
                });
                Err(Next::Park { probe: !local })
            } else {
                let delay = backoff(&c.options, c.failures, e.retry_after());
                // Wake-ups wait for a retry the witness timed.
                c.not_before = e.retry_after().map(|_| Instant::now() + delay);
                c.state = "backoff";
                // A wake-up the watch thread sent during this sync (its own
                // failure, most likely) is answered by this one.
                c.remote = false;
                c.next_retry_ms = Some(now_ms() + delay.as_millis() as u64);
                c.reason = json!({
                    "code": e.code().unwrap_or(if busy { "busy" } else { "retry" }),
                    "class": e.class().map_or("local", |k| k.name()),
                    "message": e.to_string(),
                    "advice": "nothing to do: the worker retries by itself",
                });
                Err(Next::Retry(delay))
            }
        }
    };
    drop(c);
    w.cv.notify_all();
    announce_sync();
    out
}

/// What the watch thread needs, from the database as it is now.
fn target(w: &Worker, db: &Db) -> Option<Target> {
    let l = state::load(*db).ok()?;
    let witness = l.witness().ok()?;
    let o = w.lock().options.clone();
    let timeout_s = crate::transport::Transport::load(db)
        .map(|t| t.timeout_ms / 1000)
        .unwrap_or(60);
    let wait = l
        .limits
        .max_wait_seconds
        .map(|m| m.min(o.wait_seconds).min(timeout_s.saturating_sub(2)));
    Some(Target {
        witness,
        keys: l.key.clone(),
        group: l.group.clone(),
        after: l.head().ok()?.seq,
        wait,
    })
}

/// Exponential backoff with full jitter, at least the witness's
/// `Retry-After`.
fn backoff(o: &Options, failures: u32, retry_after: Option<u64>) -> Duration {
    spread(o.min_backoff_ms, o.max_backoff_ms, failures, retry_after)
}

/// `min` × 2^(n−1), at most `max`, with full jitter (between half and
/// all of it), at least `retry_after` seconds.
fn spread(min: u64, max: u64, failures: u32, retry_after: Option<u64>) -> Duration {
    let exp = min
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
        .min(max);
    let r = random();
    // Between half and all of it.
    let ms = exp / 2 + r % (exp / 2 + 1);
    let floor = retry_after.unwrap_or(0).saturating_mul(1000);
    Duration::from_millis(ms.max(floor))
}

/// One sync at a time per file in this process (the worker and
/// `pdb_sync()` from any connection).
pub fn sync_lock(file: &str) -> SyncGuard {
    static BUSY: OnceLock<(Mutex<HashSet<String>>, Condvar)> = OnceLock::new();
    let (m, cv) = BUSY.get_or_init(Default::default);
    let mut set = m.lock().unwrap_or_else(|p| p.into_inner());
    while set.contains(file) {
        set = match cv.wait(set) {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
    }
    set.insert(file.to_string());
    SyncGuard {
        file: file.to_string(),
        lock: (m, cv),
    }
}

pub struct SyncGuard {
    file: String,
    lock: (&'static Mutex<HashSet<String>>, &'static Condvar),
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let (m, cv) = self.lock;
        m.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.file);
        cv.notify_all();
    }
}

// --- The watch thread -------------------------------------------------

/// How often a panicking watch is started again before the worker does
/// without it (and pulls every `pull_every_ms`).
const WATCH_RESTARTS: u32 = 5;

fn watch_thread(w: Arc<Worker>) {
    let mut panics = 0u32;
    while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| watch(&w))).is_err() {
        // A bug: start it again after a backoff, a few times, then let
        // the sync thread poll instead — never `watching: true` with
        // nobody watching.
        panics += 1;
        let mut c = w.lock();
        if panics > WATCH_RESTARTS {
            c.watch_dead = true;
            drop(c);
            w.cv.notify_all();
            break;
        }
        let until = Instant::now() + backoff(&c.options, panics, None);
        while !c.stop && Instant::now() < until {
            c = w.sleep(c, until.saturating_duration_since(Instant::now()));
        }
        if c.stop {
            break;
        }
    }
    let mut c = w.lock();
    c.threads = c.threads.saturating_sub(1);
    drop(c);
    w.cv.notify_all();
}

fn watch(w: &Worker) {
    let mut failures = 0u32;
    // The newest head seen announced (verified), so a head the sync has
    // not reached yet does not wake it twice.
    let mut seen = 0u64;
    loop {
        let (t, o) = {
            let mut c = w.lock();
            loop {
                if c.stop {
                    return;
                }
                // Watch once there is a target and no wake-up is pending.
                match &c.target {
                    Some(t) if t.wait.is_some() && !c.remote && c.state != "stopped" => break,
                    _ => c = w.sleep(c, Duration::from_millis(200)),
                }
            }
            (c.target.clone(), c.options.clone())
        };
        let Some(t) = t else { continue };
        crate::failpoint::hit("worker_watch");
        let after = t.after.max(seen);
        // After a failure, first ask without waiting: whether the witness
        // answers again is known at once.
        let wait = if failures > 0 { 0 } else { t.wait.unwrap_or(0) };
        let asked = Instant::now();
        let answer = t
            .witness
            .watch_head(after, wait)
            .and_then(|h| crate::signed::verify_head(&t.keys, &t.group, &h));
        match answer {
            Ok(head) => {
                // The witness answers again after failures: a sync waiting
                // out its backoff may go now.
                let recovered = failures > 0;
                failures = 0;
                if recovered && head.seq <= after {
                    let mut c = w.lock();
                    c.remote = true;
                    w.cv.notify_all();
                }
                if head.seq > after {
                    seen = head.seq;
                    let mut c = w.lock();
                    // Not when a sync got there meanwhile (our own push).
                    if c.target.as_ref().is_some_and(|t| t.after < head.seq) {
                        c.remote = true;
                        w.cv.notify_all();
                    }
                } else if t.wait == Some(0) {
                    // A witness that grants no wait: do not spin.
                    let c = w.lock();
                    let _c = w.sleep(c, Duration::from_millis(o.pull_every_ms));
                } else if wait > 0 && asked.elapsed() < Duration::from_secs(1) {
                    // Asked to wait, answered at once with nothing new (a
                    // broken or hostile witness or proxy): do not spin.
                    let mut c = w.lock();
                    let until = asked + Duration::from_secs(1);
                    while !c.stop && Instant::now() < until {
                        c = w.sleep(c, until.saturating_duration_since(Instant::now()));
                    }
                }
            }
            Err(e) => {
                // Let a sync find out what it is (and report it), then
                // wait before watching again.
                failures = failures.saturating_add(1);
                let delay = backoff(&o, failures, e.retry_after());
                let mut c = w.lock();
                // Not while the sync backs off from the same outage: that
                // would be one more attempt per watch failure.
                if e.class() != Some(Class::Retry) || (failures == 1 && c.state != "backoff") {
                    c.remote = true;
                    w.cv.notify_all();
                }
                let until = Instant::now() + delay;
                while !c.stop && Instant::now() < until {
                    c = w.sleep(c, until.saturating_duration_since(Instant::now()));
                }
            }
        }
    }
}

// --- pdb_wait -----------------------------------------------------------

/// The longest `pdb_wait` may block.
pub const MAX_WAIT_MS: i64 = 600_000;

/// `pdb_wait(seq, timeout_ms)`: returns once this database's verified
/// head is at `seq` or later, or when `timeout_ms` has passed (at most
/// [`MAX_WAIT_MS`]). Woken by this process's worker; changes by other
/// processes are seen within 50 ms.
pub fn wait(db: Db, seq: i64, timeout_ms: i64) -> Result<Json> {
    if seq < 0 || !(0..=MAX_WAIT_MS).contains(&timeout_ms) {
        return Err(Error::invalid(format!(
            "seq must be 0 or more and timeout_ms 0 to {MAX_WAIT_MS}"
        )));
    }
    if db.in_transaction()? {
        return Err(Error::invalid(
            "call it outside a transaction (inside one, the head it reads cannot move)",
        ));
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
    let (m, cv) = synced();
    loop {
        let seen = *m.lock().unwrap_or_else(|p| p.into_inner());
        let head = state::get_i64(&db, "head_seq")?.unwrap_or(0);
        if head >= seq {
            return Ok(json!({ "reached": true, "head_seq": head }));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(json!({ "reached": false, "head_seq": head }));
        }
        let step = (deadline - now).min(Duration::from_millis(50));
        let g = m.lock().unwrap_or_else(|p| p.into_inner());
        if *g == seen {
            let _ = cv.wait_timeout(g, step);
        }
    }
}
