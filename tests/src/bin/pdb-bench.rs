//! `pdb-bench`: figures for the witness and the extension, each beside a
//! baseline measured in the same run on the same disk, so ratios hold on a
//! noisy machine.
//!
//!   cargo run --release -p pdb-e2e --bin pdb-bench [-- --seconds 3 --rows 100000]
//!   cargo run --release -p pdb-e2e --bin pdb-bench -- --only isolation
//!
//! 1. Durable commits: 1-row changesets on one group with 1, 8 and 64
//!    concurrent clients (commits/s, p50, p99, commits per fsync), against
//!    durable single-row SQLite transactions (WAL, synchronous=FULL).
//! 2. Capture overhead: inserting and updating N rows in a synced table
//!    against an identical table that is not synced.
//! 3. Applying N pulled row changes (pdb_open of a fresh device) against
//!    SQLite's own session apply of the same changeset.
//! 4. Projections: commit throughput with 0, 1 and 5 projections on the
//!    group (8 clients), and projection read latency beside a head read.
//! 5. Isolation: a second group's commit p50/p99 (8 clients) while 4
//!    clients commit to a first group whose write rule exceeds its budget
//!    on every commit, beside the same figures with no hostile group.
//! 6. Trust: 1-row `pdb_sync()` round trips over TLS beside plain HTTP
//!    (loopback), and signed-head reads with a JWT of each algorithm
//!    beside the same read with a static token.
//! 7. Many groups (`--groups`, default 1,000, 10,000 and 100,000, each
//!    with a small table and three commits): the witness's start-up time,
//!    memory, threads and open files, idle and after commits to random
//!    groups, and memory once every group has closed again; commit p50/p99 to random groups among 10,000 beside the same
//!    run's single-group figures.
//! 8. Bootstrapping a fresh device from a snapshot of a B-row group
//!    (`--bootstrap-rows`, default 1,000,000, about 100 MB) against `cp` of
//!    the same database and against replaying the whole log; peak memory of
//!    client and witness, at B/10 rows and at B rows.
//! 9. Catching up by bytes: a fresh device behind C commits of M MB each
//!    (`--catchup-commits`, default 100, `--catchup-mb`, default 6) pulls
//!    them in pages bounded by bytes; its time and the peak memory of
//!    client and witness, beside the log's size and `cp` of the witness's
//!    group file.
//! 10. Migrations: adding a column with a default to an R-row group
//!     (`--migration-rows`, default 1,000,000): the witness's time for the
//!     migration and a device's for pulling it, beside SQLite's own
//!     `ALTER TABLE ... ADD COLUMN` on a copy of the same database.
//! 11. Live sync (`--only live`): propagation latency of a 1-row write
//!     from device A to device B, both with background workers (A's
//!     commit → B's verified head has it, seen by `pdb_wait`), p50/p99,
//!     beside one HTTP round trip to the witness in the same run; and the
//!     witness's memory and CPU with 1,000 idle head watches open.
//! 12. What one sync costs (`--only cost`): a 1-row `pdb_sync()` and an
//!     idle one, p50/p99, bytes on the wire each way (a counting relay on
//!     loopback), requests per sync and the witness's own time for the
//!     push (its metrics), beside one HTTP round trip to the witness.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::Value as Json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DDL: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, client INTEGER NOT NULL, n INTEGER, note TEXT);";

fn main() {
    let mut seconds = 3.0f64;
    let mut rows = 100_000i64;
    let mut boot_rows = 1_000_000i64;
    let mut only: Option<String> = None;
    let mut group_counts = vec![1_000usize, 10_000, 100_000];
    let (mut catchup_commits, mut catchup_mb) = (100u64, 6.0f64);
    let mut migration_rows = 1_000_000i64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--only" {
            only = Some(args.next().unwrap_or_else(|| usage()));
            continue;
        }
        if a == "--groups" {
            group_counts = args
                .next()
                .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| usage());
            continue;
        }
        let mut val = || {
            args.next()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--seconds" => seconds = val(),
            "--rows" => rows = val() as i64,
            "--bootstrap-rows" => boot_rows = val() as i64,
            "--catchup-commits" => catchup_commits = val() as u64,
            "--catchup-mb" => catchup_mb = val(),
            "--migration-rows" => migration_rows = val() as i64,
            _ => usage(),
        }
    }
    let run_for = Duration::from_secs_f64(seconds);
    let dir = TempDir::new("bench");
    println!(
        "pdb-bench: {seconds}s per throughput figure, {rows} rows for the extension figures, data in {}",
        dir.path().display()
    );
    // Automatic snapshots off, so none runs behind a measurement.
    let manual = [
        "--snapshot-every-commits",
        "0",
        "--snapshot-every-bytes",
        "0",
    ];
    let runs = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let w = Arc::new(Witness::start_with(dir.path(), 0, &manual));
    if runs("commits") {
        commits(&w, dir.path(), run_for);
    }
    if runs("extension") {
        extension(&w, dir.path(), rows);
    }
    if runs("projections") {
        projections(&w, run_for);
    }
    if runs("isolation") {
        isolation(&w, run_for);
    }
    if runs("cost") {
        sync_cost(&w);
    }
    drop(w);
    if runs("trust") {
        trust(dir.path(), &manual);
    }
    if runs("groups") {
        many_groups(dir.path(), &group_counts, run_for, &manual);
    }
    if boot_rows > 0 && runs("bootstrap") {
        println!();
        println!("== bootstrap of a fresh device (python3 host), baselines in the same run ==");
        for n in [boot_rows / 10, boot_rows] {
            bootstrap(&dir.path().join(format!("boot-{n}")), n, &manual);
        }
    }
    if catchup_commits > 0 && runs("catchup") {
        catchup(
            &dir.path().join("catchup"),
            catchup_commits,
            catchup_mb,
            &manual,
        );
    }
    if migration_rows > 0 && runs("migration") {
        migration(&dir.path().join("migration"), migration_rows, &manual);
    }
    if runs("live") {
        live(&dir.path().join("live"), &manual);
    }
    let w = Witness::start_with(dir.path(), 0, &manual);
    let (ok, out) = w.verify_cli();
    println!(
        "\nverify after the run: {}",
        if ok { "ok" } else { out.trim() }
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: pdb-bench [--seconds S] [--rows N] [--bootstrap-rows B] [--groups 1000,10000,100000] [--catchup-commits C] [--catchup-mb M] [--migration-rows R] [--only commits|extension|projections|isolation|trust|groups|bootstrap|catchup|migration|live|cost]"
    );
    std::process::exit(2)
}

fn commits(w: &Arc<Witness>, dir: &Path, run_for: Duration) {
    let baseline = sqlite_baseline(dir, run_for);
    println!();
    println!("== durable commits, 1-row changesets, one group ==");
    println!(
        "baseline: durable single-row SQLite transactions (WAL, synchronous=FULL, same disk): {baseline:.0}/s"
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10} {:>10} {:>16}",
        "clients", "commits/s", "x baseline", "p50 ms", "p99 ms", "commits/fsync"
    );
    let g = w.create_group("bench", DDL);
    let mut next_id = 0i64;
    for clients in [1usize, 8, 64] {
        let stats = |w: &Witness| {
            let s = w.get("/v1/groups/bench/stats").body;
            (
                s["batches"].as_u64().unwrap_or(0),
                s["requests"].as_u64().unwrap_or(0),
            )
        };
        let (b0, r0) = stats(w);
        let (rate, p50, p99) = witness_commits(w, &g, clients, run_for, &mut next_id);
        let (b1, r1) = stats(w);
        println!(
            "{clients:>8} {rate:>12.0} {:>12.2} {:>10.2} {:>10.2} {:>16.1}",
            rate / baseline,
            p50,
            p99,
            (r1 - r0) as f64 / (b1 - b0).max(1) as f64
        );
    }
}

/// Autocommitted single-row inserts: one fsync each.
fn sqlite_baseline(dir: &Path, run_for: Duration) -> f64 {
    let db = rusqlite::Connection::open(dir.join("baseline.sqlite")).expect("open");
    db.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .expect("wal");
    db.execute_batch("PRAGMA synchronous = FULL;")
        .expect("pragmas");
    db.execute_batch(DDL).expect("ddl");
    let mut st = db
        .prepare("INSERT INTO items VALUES (?1, 1, ?1, 'x')")
        .expect("prepare");
    let start = Instant::now();
    let mut n = 0i64;
    while start.elapsed() < run_for {
        st.execute([n]).expect("insert");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Each client commits fresh rows back to back, building on the head of
/// its own last certificate (rebase_if_clean, as an app client would).
fn witness_commits(
    w: &Arc<Witness>,
    g: &GroupRef,
    clients: usize,
    run_for: Duration,
    next_id: &mut i64,
) -> (f64, f64, f64) {
    let first = *next_id;
    *next_id += clients as i64 * 10_000_000;
    let head = w.head(&g.group);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (url, g) = (w.url.clone(), g.clone());
            let (mut seq, mut hash) = (head.seq, head.head_hash.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut lat = Vec::new();
                let mut i = 0i64;
                while start.elapsed() < run_for {
                    let id = first + c as i64 * 10_000_000 + i;
                    let cs = changeset(
                        "items",
                        &[1, 0, 0, 0],
                        vec![insert(vec![
                            Value::Integer(id),
                            Value::Integer(c as i64),
                            Value::Integer(i),
                            Value::text("x"),
                        ])],
                    );
                    let body =
                        g.commit_body(seq, &hash, &format!("b{id}"), &cs, Policy::RebaseIfClean);
                    let t = Instant::now();
                    let mut r = agent
                        .post(format!("{url}/v1/groups/{}/commits", g.group))
                        .header("Authorization", &format!("Bearer {TOKEN}"))
                        .send_json(&body)
                        .expect("commit");
                    let status = r.status().as_u16();
                    let body: Json = r.body_mut().read_json().expect("json");
                    lat.push(t.elapsed());
                    assert_eq!(status, 201, "{body}");
                    seq = body["certificate"]["seq"].as_u64().expect("seq");
                    hash = body["certificate"]["head_hash"]
                        .as_str()
                        .expect("hash")
                        .to_string();
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    (lat.len() as f64 / elapsed, pct(0.50), pct(0.99))
}

const TASKS: &str =
    "(id INTEGER PRIMARY KEY, title TEXT NOT NULL, owner TEXT, done INTEGER NOT NULL, score REAL)";

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn fill(d: &Device, table: &str, rows: i64) -> f64 {
    timed(|| {
        d.exec("BEGIN");
        let mut st = d
            .conn
            .prepare_cached(&format!("INSERT INTO {table} VALUES (?1, ?2, ?3, ?4, ?5)"))
            .expect("prepare");
        for i in 0..rows {
            st.execute(rusqlite::params![
                i,
                format!("task number {i}"),
                format!("owner{}", i % 50),
                i % 2,
                i as f64 * 0.5
            ])
            .expect("insert");
        }
        drop(st);
        d.exec("COMMIT");
    })
}

fn extension(w: &Witness, dir: &Path, rows: i64) {
    w.create_group("tasks", &format!("CREATE TABLE tasks{TASKS};"));
    let a = Device::new(&dir.join("device-a.db"));
    a.open(w, "tasks", "remote_wins").expect("open");
    a.exec(&format!("CREATE TABLE plain{TASKS};"));

    println!();
    println!("== capture overhead, {rows} rows in one transaction (same schema; 'plain' is not synced) ==");
    let plain_ins = fill(&a, "plain", rows);
    let synced_ins = fill(&a, "tasks", rows);
    println!(
        "insert: plain {:.3}s, synced {:.3}s, ratio {:.2}x",
        plain_ins,
        synced_ins,
        synced_ins / plain_ins
    );
    let push = timed(|| {
        let r = a.sync().expect("sync");
        assert_eq!(r["pushed"], 1, "{r}");
    });
    println!("(pdb_sync pushing those {rows} rows as one commit: {push:.3}s)");
    let upd = |t: &str| {
        timed(|| {
            a.exec(&format!(
                "UPDATE {t} SET done = 1 - done, score = score + 1"
            ))
        })
    };
    let plain_upd = upd("plain");
    let synced_upd = upd("tasks");
    println!(
        "update: plain {:.3}s, synced {:.3}s, ratio {:.2}x",
        plain_upd,
        synced_upd,
        synced_upd / plain_upd
    );

    println!();
    println!("== applying {rows} pulled row changes (one commit of {rows} inserts) ==");
    let b = Device::new(&dir.join("device-b.db"));
    let pulled = timed(|| {
        let r = b.open(w, "tasks", "remote_wins").expect("open b");
        assert_eq!(r["pulled"], 1, "{r}");
    });
    let page = w.get("/v1/groups/tasks/commits?after=0&limit=1");
    let cs = pdb_protocol::wire::unb64(page.body["commits"][0]["changeset"].as_str().expect("cs"))
        .expect("b64");
    let base = rusqlite::Connection::open(dir.join("session-apply.db")).expect("open");
    base.execute_batch(&format!("CREATE TABLE tasks{TASKS};"))
        .expect("ddl");
    let session = timed(|| {
        base.execute_batch("BEGIN").expect("begin");
        apply_changeset(&base, &cs);
        base.execute_batch("COMMIT").expect("commit");
    });
    assert_eq!(dump(&base, &["tasks"]), b.dump(&["tasks"]));
    // What the state root alone costs: every row of the changeset hashed
    // into the LtHash once (an apply does this for every changed row).
    let decoded = pdb_protocol::Changeset::decode(&cs).expect("decode");
    let hashing = timed(|| {
        let mut root = pdb_protocol::StateRoot::empty();
        for c in &decoded.tables[0].changes {
            let row: Vec<Value> = c
                .new
                .iter()
                .map(|v| v.clone().unwrap_or(Value::Null))
                .collect();
            root.add_row("tasks", &row);
        }
        std::hint::black_box(root.digest());
    });
    println!(
        "pdb_open of a fresh device (fetch, verify, apply, root check): {pulled:.3}s; SQLite session apply of the same changeset: {session:.3}s; ratio {:.2}x",
        pulled / session
    );
    println!(
        "(of which state-root hashing of {rows} rows costs {hashing:.3}s on its own, {:.2}x the session apply)",
        hashing / session
    );
}

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Opens a fresh device in a python3 host; returns (seconds, peak MiB, result).
fn python_open(url: &str, group: &str, db: &Path) -> (f64, f64, Json) {
    let script = format!(
        r#"
import sqlite3, time, json
db = sqlite3.connect({db:?})
db.enable_load_extension(True)
db.load_extension({ext:?})
t = time.time()
r = db.execute("SELECT pdb_open(?, ?, json_object('token', ?))", ({url:?}, {group:?}, {TOKEN:?})).fetchone()[0]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
print(json.dumps({{"seconds": time.time() - t, "peak_kib": peak, "result": json.loads(r)}}))
"#,
        db = db.display().to_string(),
        ext = extension_path().display().to_string(),
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    let v: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "python host failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        v["seconds"].as_f64().unwrap_or(0.0),
        v["peak_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        v["result"].clone(),
    )
}

fn bootstrap(dir: &Path, n: i64, manual: &[&str]) {
    std::fs::create_dir_all(dir).expect("dir");
    let w = Witness::start_with(dir, 0, manual);
    let g = w.create_group(
        "big",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL, score REAL, data BLOB);",
    );
    let per_commit = 20_000i64;
    let load = timed(|| {
        let mut from = 0;
        while from < n {
            let changes = (from..(from + per_commit).min(n))
                .map(|i| {
                    insert(vec![
                        Value::Integer(i),
                        Value::text(&format!(
                            "item {i:>9} with a label long enough to look like real data"
                        )),
                        Value::Real(i as f64 / 8.0),
                        Value::Blob((i as u64).to_le_bytes().repeat(2)),
                    ])
                })
                .collect();
            let cs = changeset("items", &[1, 0, 0, 0], changes);
            let r = w.commit_at_head(&g, &format!("load-{from}"), &cs, Policy::Strict);
            assert_eq!(r.status, 201, "{r:?}");
            from += per_commit;
        }
    });
    // Replaying the whole log: a fresh device while there is no snapshot.
    let (replay, _, r) = python_open(&w.url, "big", &dir.join("replay.db"));
    assert!(r["bootstrapped_from"].is_null(), "{r}");
    let m = timed(|| {
        assert_eq!(w.post("/v1/groups/big/snapshots", &Json::Null).status, 201);
    });
    // Measure the witness's peak while serving a bootstrap, from a fresh start.
    drop(w);
    let w = Witness::start_with(dir, 0, manual);
    let before = peak_mib(w.pid());
    let (boot, client_peak, r) = python_open(&w.url, "big", &dir.join("boot.db"));
    assert!(r["bootstrapped_from"].as_u64().is_some(), "{r}");
    let witness_peak = peak_mib(w.pid());
    let size = std::fs::metadata(dir.join("boot.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let cp = timed(|| {
        let ok = std::process::Command::new("cp")
            .arg(dir.join("boot.db"))
            .arg(dir.join("copy.db"))
            .status()
            .expect("cp")
            .success();
        assert!(ok);
    });
    println!(
        "{n} rows ({:.0} MB database; loaded in {load:.1}s, snapshot made in {m:.2}s): bootstrap {boot:.2}s | cp {cp:.2}s ({:.1}x) | log replay {replay:.2}s ({:.2}x) | peak memory: client {client_peak:.0} MiB, witness {witness_peak:.0} MiB (at start {before:.0} MiB)",
        size as f64 / 1e6,
        boot / cp.max(1e-9),
        boot / replay
    );
}

/// A fresh device behind `commits` commits of about `mb` MB each catches
/// up through pages bounded by bytes; peak memory of both sides.
fn catchup(dir: &Path, commits: u64, mb: f64, manual: &[&str]) {
    std::fs::create_dir_all(dir).expect("dir");
    println!();
    println!(
        "== catching up {commits} commits of {mb} MB each (pages bounded by bytes), baselines in the same run =="
    );
    let w = Witness::start_with(dir, 0, manual);
    let g = w.create_group(
        "behind",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL);",
    );
    // Rows of about 200 bytes.
    let per_commit = ((mb * 1e6) / 212.0) as i64;
    let mut log_bytes = 0u64;
    let load = timed(|| {
        for c in 0..commits as i64 {
            let changes = (0..per_commit)
                .map(|i| {
                    let id = c * per_commit + i;
                    insert(vec![
                        Value::Integer(id),
                        Value::text(&format!("{id:>12} {}", "x".repeat(186))),
                    ])
                })
                .collect();
            let cs = changeset("items", &[1, 0], changes);
            log_bytes += cs.len() as u64;
            let r = w.commit_at_head(&g, &format!("big-{c}"), &cs, Policy::Strict);
            assert_eq!(r.status, 201, "{r:?}");
        }
    });
    // The witness's peak while serving the catch-up, from a fresh start.
    drop(w);
    let w = Witness::start_with(dir, 0, manual);
    let before = peak_mib(w.pid());
    let (secs, client_peak, r) = python_open(&w.url, "behind", &dir.join("device.db"));
    assert_eq!(r["pulled"].as_u64(), Some(commits), "{r}");
    let witness_peak = peak_mib(w.pid());
    let file = w.data_dir.join("groups").join("behind.sqlite");
    let cp = timed(|| {
        let ok = std::process::Command::new("cp")
            .arg(&file)
            .arg(dir.join("copy.sqlite"))
            .status()
            .expect("cp")
            .success();
        assert!(ok);
    });
    let page = w.request("GET", "/v1/witness", None, None).body["limits"]["max_page_bytes"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "{commits} commits, {:.0} MB of changesets ({per_commit} rows each; loaded in {load:.1}s): catch-up {secs:.1}s ({:.1} MB/s) | cp of the witness's file {cp:.2}s | peak memory: client {client_peak:.0} MiB, witness {witness_peak:.0} MiB (at start {before:.0} MiB) | page bound {:.1} MiB",
        log_bytes as f64 / 1e6,
        log_bytes as f64 / 1e6 / secs.max(1e-9),
        page as f64 / 1048576.0
    );
}

/// Adding a column with a default to an `n`-row group: the witness's
/// migration and a device's pull of it, beside SQLite's own ALTER TABLE
/// on a copy of the device's database.
fn migration(dir: &Path, n: i64, manual: &[&str]) {
    std::fs::create_dir_all(dir).expect("dir");
    println!();
    println!("== adding a column with a default to a {n}-row group, baseline in the same run ==");
    let w = Witness::start_with(dir, 0, manual);
    let g = w.create_group(
        "wide",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL, score REAL);",
    );
    let per_commit = 20_000i64;
    let mut from = 0;
    while from < n {
        let changes = (from..(from + per_commit).min(n))
            .map(|i| {
                insert(vec![
                    Value::Integer(i),
                    Value::text(&format!("item {i:>9}")),
                    Value::Real(i as f64 / 4.0),
                ])
            })
            .collect();
        let cs = changeset("items", &[1, 0, 0], changes);
        let r = w.commit_at_head(&g, &format!("load-{from}"), &cs, Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
        from += per_commit;
    }
    assert_eq!(w.post("/v1/groups/wide/snapshots", &Json::Null).status, 201);
    let d = Device::new(&dir.join("device.db"));
    d.open(&w, "wide", "remote_wins").expect("pdb_open");
    let copy = dir.join("copy.db");
    let ok = std::process::Command::new("cp")
        .arg(dir.join("device.db"))
        .arg(&copy)
        .status()
        .expect("cp")
        .success();
    assert!(ok);
    let ddl = "ALTER TABLE items ADD COLUMN flag INTEGER NOT NULL DEFAULT 0";
    let sqlite = timed(|| {
        let c = rusqlite::Connection::open(&copy).expect("copy");
        c.execute_batch(&format!("PRAGMA synchronous = FULL; {ddl}"))
            .expect("alter");
    });
    let witness = timed(|| {
        let r = w.post(
            "/v1/groups/wide/migrations",
            &serde_json::json!({ "ddl": ddl }),
        );
        assert_eq!(r.status, 201, "{r:?}");
    });
    let device = timed(|| {
        let r = d.sync().expect("pull the migration");
        assert_eq!(r["migrations"], 1, "{r}");
    });
    let v = d.call("pdb_verify()").expect("verify");
    assert_eq!(v["ok"], Json::Bool(true), "{v}");
    println!(
        "{n} rows: witness migration {witness:.2}s ({:.0}x) | device pull {device:.2}s ({:.0}x) | SQLite ALTER TABLE ADD COLUMN on a copy {:.1} ms",
        witness / sqlite.max(1e-9),
        device / sqlite.max(1e-9),
        sqlite * 1e3
    );
}

fn latency_ms(w: &Witness, path: &str, n: usize) -> (f64, f64) {
    let mut lat: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = w.get(path);
            assert_eq!(r.status, 200, "{r:?}");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (lat[n / 2], lat[(n * 99 / 100).min(n - 1)])
}

fn projections(w: &Arc<Witness>, run_for: Duration) {
    println!();
    println!("== projections: commit cost (8 clients, 1-row commits) and read latency ==");
    let mut base = 0.0;
    let mut next_id = 0i64;
    for k in [0usize, 1, 5] {
        let name = format!("proj{k}");
        let g = w.create_group(&name, DDL);
        for j in 0..k {
            let def = serde_json::json!({
                "table": "items",
                "columns": ["id", "client", "n"],
                "where": format!("n % {} = 0", j + 1),
                "visibility": "client = 0 OR :role = 'admin'",
            });
            let r = w.request(
                "PUT",
                &format!("/v1/groups/{name}/projections/p{j}"),
                Some(TOKEN),
                Some(&def),
            );
            assert_eq!(r.status, 200, "{r:?}");
        }
        let (rate, p50, _) = witness_commits(w, &g, 8, run_for, &mut next_id);
        if k == 0 {
            base = rate;
        }
        println!(
            "{k} projection(s): {rate:.0} commits/s ({:.2}x of none), p50 {p50:.2} ms",
            rate / base
        );
    }
    let (h50, h99) = latency_ms(w, "/v1/groups/proj1/head", 300);
    let (p50, p99) = latency_ms(w, "/v1/groups/proj1/projections/p0?limit=100", 300);
    println!(
        "read 100 rows of a projection: p50 {p50:.2} ms, p99 {p99:.2} ms; beside a signed head read: p50 {h50:.2} ms, p99 {h99:.2} ms"
    );
}

/// Never ends on its own: every commit under it runs out of its budget.
const SPIN: &str =
    "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c) > 0";

fn isolation(w: &Arc<Witness>, run_for: Duration) {
    println!();
    println!(
        "== isolation: a group's commits (8 clients) beside a group whose rule exceeds its budget on every commit (4 clients) =="
    );
    let calm = w.create_group("calm", DDL);
    let hostile = w.create_group("hostile", DDL);
    let r = w.request(
        "PUT",
        "/v1/groups/hostile/rules/items",
        Some(TOKEN),
        Some(&serde_json::json!({ "expr": SPIN })),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let mut next_id = 0i64;
    let (rate0, p50_0, p99_0) = witness_commits(w, &calm, 8, run_for, &mut next_id);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..4)
        .map(|c| {
            let (w, g, stop) = (w.clone(), hostile.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let cs = changeset(
                        "items",
                        &[1, 0, 0, 0],
                        vec![insert(vec![
                            Value::Integer(c * 1_000_000_000 + i),
                            Value::Integer(c),
                            Value::Integer(i),
                            Value::text("x"),
                        ])],
                    );
                    let t = Instant::now();
                    let r = w.commit_at_head(&g, &format!("h{c}-{i}"), &cs, Policy::RebaseIfClean);
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    assert_eq!(r.code(), "rule_error", "{r:?}");
                }
                lat
            })
        })
        .collect();
    // Let the attack reach its stride before measuring beside it.
    std::thread::sleep(Duration::from_millis(500));
    let (rate1, p50_1, p99_1) = witness_commits(w, &calm, 8, run_for, &mut next_id);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused: Vec<f64> = attackers
        .into_iter()
        .flat_map(|t| t.join().expect("attacker"))
        .collect();
    refused.sort_by(f64::total_cmp);
    println!(
        "{:>28} {:>12} {:>10} {:>10}",
        "", "commits/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:>28} {rate0:>12.0} {p50_0:>10.2} {p99_0:>10.2}",
        "alone (baseline)"
    );
    println!(
        "{:>28} {rate1:>12.0} {p50_1:>10.2} {p99_1:>10.2}",
        "beside the hostile group"
    );
    println!(
        "{:>28} {:>12.2} {:>10.2} {:>10.2}",
        "ratio (beside / alone)",
        rate1 / rate0,
        p50_1 / p50_0,
        p99_1 / p99_0
    );
    if !refused.is_empty() {
        println!(
            "hostile commits refused with rule_error: {}, each after p50 {:.0} ms (its budget)",
            refused.len(),
            refused[refused.len() / 2]
        );
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1);
    (
        v.get(n / 2).copied().unwrap_or(0.0),
        v.get((n * 99 / 100).min(n - 1)).copied().unwrap_or(0.0),
    )
}

/// 1-row `pdb_sync()` round trips from one device: ms each.
fn sync_times(d: &Device, n: i64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            d.exec(&format!("INSERT INTO items VALUES ({i}, 1, {i}, 'x')"));
            let t = Instant::now();
            d.sync().expect("sync");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Requests and seconds the witness spent, by endpoint and status, between
/// two readings of its metrics (the metrics reads themselves left out).
fn metrics_delta(
    before: &std::collections::BTreeMap<(String, String), (u64, f64)>,
    after: &std::collections::BTreeMap<(String, String), (u64, f64)>,
) -> Vec<(String, u64, f64)> {
    after
        .iter()
        .filter(|((e, _), _)| e != "metrics")
        .filter_map(|((e, s), (n, t))| {
            let (n0, t0) = before
                .get(&(e.clone(), s.clone()))
                .copied()
                .unwrap_or((0, 0.0));
            (n > &n0).then(|| (format!("{e} {s}"), n - n0, t - t0))
        })
        .collect()
}

fn sync_cost(w: &Witness) {
    println!();
    println!("== what one pdb_sync() costs (loopback; times from a device connected directly, bytes from one behind a counting relay; witness time from its metrics) ==");
    let n = 300;
    w.create_group("cost", DDL);
    let counter = ByteCounter::start(&w.url["http://".len()..]);
    let dir = TempDir::new("bench-cost");
    let a = Device::new(&dir.path().join("a.db"));
    a.open(w, "cost", "remote_wins").expect("open a");
    let c = Device::new(&dir.path().join("c.db"));
    c.open_url(&counter.url, "cost", "remote_wins")
        .expect("open c");
    let b = Device::new(&dir.path().join("b.db"));
    b.open(w, "cost", "remote_wins").expect("open b");
    a.exec("INSERT INTO items VALUES (1, 1, 0, 'x')");
    c.exec("INSERT INTO items VALUES (2, 2, 0, 'x')");
    for _ in 0..20 {
        for (d, id) in [(&a, 1), (&c, 2)] {
            d.exec(&format!("UPDATE items SET n = n + 1 WHERE id = {id}"));
            d.sync().expect("warm-up sync");
        }
    }
    let (r50, r99) = latency_ms(w, "/v1/groups/cost/head", n);
    // n syncs of `d`, each after a 1-row update when `update`: time p50
    // and p99, bytes up and down per sync, and the witness's requests.
    let measure = |d: &Device, id: i64, update: bool| {
        let (bytes0, m0) = (counter.bytes(), request_metrics(w));
        let times: Vec<f64> = (0..n)
            .map(|_| {
                if update {
                    d.exec(&format!("UPDATE items SET n = n + 1 WHERE id = {id}"));
                }
                let t = Instant::now();
                let r = d.sync().expect("sync");
                let took = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(r["pushed"], u64::from(update), "{r}");
                took
            })
            .collect();
        let (bytes1, m1) = (counter.bytes(), request_metrics(w));
        let per = |x: u64| x as f64 / n as f64;
        let calls = metrics_delta(&m0, &m1);
        let (p50, p99) = percentiles(times);
        (
            p50,
            p99,
            per(bytes1.0 - bytes0.0),
            per(bytes1.1 - bytes0.1),
            calls,
        )
    };
    let push = measure(&a, 1, true);
    let idle = measure(&a, 1, false);
    c.sync().expect("sync c");
    let push_bytes = measure(&c, 2, true);
    let idle_bytes = measure(&c, 2, false);
    let witness_push = push
        .4
        .iter()
        .find(|(k, _, _)| k == "commits 201")
        .map_or(0.0, |(_, c, t)| t / *c as f64 * 1000.0);
    println!(
        "{:>28} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p99 ms", "B up", "B down", "requests"
    );
    println!("{:>28} {r50:>9.3} {r99:>9.3}", "HTTP round trip (GET head)");
    for (name, t, bytes) in [
        ("1-row pdb_sync()", &push, &push_bytes),
        ("idle pdb_sync()", &idle, &idle_bytes),
    ] {
        let requests: u64 = t.4.iter().map(|(_, c, _)| c).sum();
        println!(
            "{name:>28} {:>9.3} {:>9.3} {:>10.0} {:>10.0} {:>10.2}",
            t.0,
            t.1,
            bytes.2,
            bytes.3,
            requests as f64 / n as f64
        );
        let by: Vec<String> = t.4.iter().map(|(k, c, _)| format!("{k}: {c}")).collect();
        println!("{:>28} ({})", "", by.join(", "));
    }
    println!(
        "witness's own time per push (mean, from its metrics): {witness_push:.3} ms; 1-row sync p50 / that: {:.2}x; 1-row sync p50 / round trip p50: {:.2}x",
        push.0 / witness_push,
        push.0 / r50
    );
    b.sync().expect("sync b");
    for d in [&a, &c] {
        d.sync().expect("sync");
        assert_eq!(d.dump(&["items"]), b.dump(&["items"]));
        assert_eq!(d.call("pdb_verify()").expect("verify")["ok"], true);
    }
}

fn trust(dir: &Path, manual: &[&str]) {
    use jsonwebtoken::Algorithm;
    println!();
    println!("== trust: pdb_sync() over TLS beside plain HTTP (loopback, 1-row commits), JWT verification per request ==");
    let n = 200;
    let plain_dir = dir.join("plain");
    std::fs::create_dir_all(&plain_dir).expect("dir");
    let plain = Witness::start_with(&plain_dir, 0, manual);
    plain.create_group("g", DDL);
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("dir");
    let pki = pki::make(&tls_dir, "bench", &["127.0.0.1"]);
    let mut cmd = std::process::Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(tls_dir.join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .args(manual)
        .env("PDB_ADMIN_TOKEN", TOKEN);
    let tls = Witness::launch_with(&tls_dir, cmd, pki::agent(&pki.ca_pem));
    tls.create_group("g", DDL);
    let a = Device::new(&plain_dir.join("a.db"));
    a.open(&plain, "g", "remote_wins").expect("open");
    let b = Device::new(&tls_dir.join("b.db"));
    b.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{TOKEN}', 'ca_file', '{}'))",
        tls.url,
        pki.ca_file.display()
    ))
    .expect("open over TLS");
    let (h50, h99) = percentiles(sync_times(&a, n));
    let (t50, t99) = percentiles(sync_times(&b, n));
    println!("{:>26} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!("{:>26} {h50:>10.2} {h99:>10.2}", "http (baseline)");
    println!("{:>26} {t50:>10.2} {t99:>10.2}", "https");
    println!("{:>26} {:>10.2} {:>10.2}", "ratio", t50 / h50, t99 / h99);
    drop((plain, tls));

    // A witness that knows a key for every algorithm; signed-head reads,
    // each with a static token (baseline) and a JWT of each algorithm.
    let jwt_dir = dir.join("jwt");
    std::fs::create_dir_all(&jwt_dir).expect("dir");
    let keys = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .map(|a| jwt::public_pem(a).display().to_string())
        .join(",");
    let mut args: Vec<&str> = manual.to_vec();
    args.extend([
        "--jwt-public-key-file",
        &keys,
        "--jwt-hs256-secret",
        jwt::HS256_SECRET,
        "--jwt-audience",
        "bench",
    ]);
    let w = Witness::start_with(&jwt_dir, 0, &args);
    w.create_group("g", DDL);
    let r = w.request(
        "PUT",
        "/v1/groups/g/members/jwt:reader",
        Some(TOKEN),
        Some(&serde_json::json!({"role": "reader"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let reads = |token: &str| {
        let lat: Vec<f64> = (0..300)
            .map(|_| {
                let t = Instant::now();
                let r = w.request("GET", "/v1/groups/g/head", Some(token), None);
                assert_eq!(r.status, 200, "{r:?}");
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        percentiles(lat)
    };
    let (s50, s99) = reads(TOKEN);
    println!(
        "{:>26} {:>10} {:>10} {:>18}",
        "head read with", "p50 ms", "p99 ms", "p50 - baseline µs"
    );
    println!(
        "{:>26} {s50:>10.3} {s99:>10.3} {:>18}",
        "admin token (baseline)", ""
    );
    for alg in [
        Algorithm::HS256,
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
    ] {
        let t = jwt::token(alg, &jwt::claims("reader", "", "bench"));
        let (p50, p99) = reads(&t);
        println!(
            "{:>26} {p50:>10.3} {p99:>10.3} {:>18.0}",
            format!("{alg:?} JWT"),
            (p50 - s50) * 1000.0
        );
    }
}
const SMALL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";

/// (resident MiB, threads, open files) of a process now.
fn footprint(pid: u32) -> (f64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (field("VmRSS:") / 1024.0, field("Threads:") as usize, fds)
}

fn small_row(id: i64) -> Vec<u8> {
    changeset(
        "t",
        &[1, 0],
        vec![insert(vec![Value::Integer(id), Value::text("x")])],
    )
}

/// Commits one row to `g` on its genesis head (rebase_if_clean: the row is
/// new, so it lands on the current head); returns the latency.
fn commit_on_genesis(agent: &ureq::Agent, url: &str, g: &(GroupRef, String), id: i64) -> Duration {
    let body = g.0.commit_body(
        0,
        &g.1,
        &format!("r{id}"),
        &small_row(id),
        Policy::RebaseIfClean,
    );
    let t = Instant::now();
    let mut r = agent
        .post(format!("{url}/v1/groups/{}/commits", g.0.group))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(&body)
        .expect("commit");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 201, "{text}");
    t.elapsed()
}

/// p50 and p99 in ms.
fn duration_percentiles(mut lat: Vec<Duration>) -> (f64, f64) {
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (pct(0.5), pct(0.99))
}

/// `clients` threads commit for `run_for`, each to groups `pick` chooses.
fn commit_load(
    url: &str,
    groups: &Arc<Vec<(GroupRef, String)>>,
    clients: usize,
    run_for: Duration,
    first_id: i64,
    pick: fn(usize, u64) -> usize,
) -> (f64, f64, f64) {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (url, groups) = (url.to_string(), groups.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut lat = Vec::new();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                let mut i = 0i64;
                while start.elapsed() < run_for {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let g = &groups[pick(groups.len(), seed)];
                    i += 1;
                    let id = first_id + c as i64 * 100_000_000 + i;
                    lat.push(commit_on_genesis(&agent, &url, g, id));
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let (p50, p99) = duration_percentiles(lat);
    (rate, p50, p99)
}

fn many_groups(dir: &Path, counts: &[usize], run_for: Duration, manual: &[&str]) {
    println!();
    println!("== many groups: each with a small table and 3 commits; --max-open-groups 1000 (default), --group-idle-secs 5 ==");
    println!("   RSS before (idle after start), during (commits to random groups), after (every group closed again)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>8} {:>8} {:>12} {:>10} {:>8} {:>8} {:>6} {:>9} {:>10}",
        "groups",
        "setup s",
        "start ms",
        "idle MiB",
        "threads",
        "files",
        "disk MiB",
        "load MiB",
        "threads",
        "files",
        "open",
        "KiB/open",
        "after MiB"
    );
    let mut flags: Vec<&str> = manual.to_vec();
    flags.extend(["--group-idle-secs", "5"]);
    let manual = &flags[..];
    let mut random_figures = None;
    for &n in counts {
        let d = dir.join(format!("groups-{n}"));
        std::fs::create_dir_all(&d).expect("dir");
        let mut w = Witness::start_with(&d, 0, manual);
        let setup = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let made: Vec<(GroupRef, String)> = {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (url, next) = (w.url.clone(), next.clone());
                    std::thread::spawn(move || {
                        let agent = agent();
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                return mine;
                            }
                            let mut r = agent
                                .post(format!("{url}/v1/groups"))
                                .header("Authorization", &format!("Bearer {TOKEN}"))
                                .send_json(serde_json::json!({"group": format!("u{i:06}"), "schema_sql": SMALL}))
                                .expect("create");
                            let body: Json = r.body_mut().read_json().expect("json");
                            let g = GroupRef::from_json(&body);
                            let genesis = body["head"]["head_hash"].as_str().expect("hash").to_string();
                            let g = (g, genesis);
                            for k in 0..3 {
                                commit_on_genesis(&agent, &url, &g, k);
                            }
                            mine.push(g);
                        }
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("creator"))
                .collect()
        };
        let setup_s = setup.elapsed().as_secs_f64();
        w.terminate();
        let disk = dir_bytes(&d.join("data")) as f64 / (1024.0 * 1024.0);
        // Start-up: from spawn to answering.
        let t = Instant::now();
        let w = Witness::start_with(&d, 0, manual);
        let start_ms = t.elapsed().as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_secs(2));
        let (idle_mib, idle_threads, idle_fds) = footprint(w.pid());
        let groups = Arc::new(made);
        // Commits to random groups among (up to) 10,000, then the
        // footprint with the open-group cache full.
        let among = Arc::new(groups[..groups.len().min(10_000)].to_vec());
        let random = commit_load(&w.url, &among, 8, run_for, 1_000_000, |len, r| {
            (r % len as u64) as usize
        });
        let (load_mib, load_threads, load_fds) = footprint(w.pid());
        let open_groups = |w: &Witness| w.get("/healthz").body["open_groups"].as_u64().unwrap_or(0);
        let open = open_groups(&w);
        let per_open = (load_mib - idle_mib) * 1024.0 / open.max(1) as f64;
        // Memory follows the groups in use: once all have closed again
        // (they leave the count when taken out, and their files when
        // closed: a checkpoint each).
        let until = Instant::now() + Duration::from_secs(300);
        while (open_groups(&w) > 0 || footprint(w.pid()).2 > idle_fds + 16)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(1));
        let (after_mib, _, _) = footprint(w.pid());
        println!(
            "{n:>8} {setup_s:>10.1} {start_ms:>10.0} {idle_mib:>10.1} {idle_threads:>8} {idle_fds:>8} {disk:>12.0} {load_mib:>10.1} {load_threads:>8} {load_fds:>8} {open:>6} {per_open:>9.0} {after_mib:>10.1}"
        );
        if n >= 10_000 && random_figures.is_none() {
            let single = Arc::new(vec![groups[0].clone()]);
            let one = commit_load(&w.url, &single, 8, run_for, 2_000_000_000, |_, _| 0);
            random_figures = Some((random, one));
        }
        drop(w);
        let _ = std::fs::remove_dir_all(&d);
    }
    if let Some(((r_rate, r50, r99), (s_rate, s50, s99))) = random_figures {
        println!();
        println!("commits, 8 clients, 1-row changesets:");
        println!(
            "{:>36} {:>12} {:>10} {:>10}",
            "", "commits/s", "p50 ms", "p99 ms"
        );
        println!(
            "{:>36} {s_rate:>12.0} {s50:>10.2} {s99:>10.2}",
            "one group (baseline, same run)"
        );
        println!(
            "{:>36} {r_rate:>12.0} {r50:>10.2} {r99:>10.2}",
            "random groups among 10,000"
        );
        println!(
            "{:>36} {:>12.2} {:>10.2} {:>10.2}",
            "ratio (random / one)",
            r_rate / s_rate,
            r50 / s50,
            r99 / s99
        );
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// p50 and p99 of samples, in ms.
fn p50_p99(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Live sync: A→B propagation with workers beside an HTTP round trip;
/// the witness with 1,000 idle head watches.
fn live(dir: &Path, manual: &[&str]) {
    println!();
    println!("== live sync: background workers and head watches ==");
    std::fs::create_dir_all(dir).expect("dir");
    let mut flags = manual.to_vec();
    flags.extend([
        "--max-watchers-per-caller",
        "2000",
        "--max-connections-per-ip",
        "4096",
    ]);
    let w = Witness::start_with(dir, 0, &flags);
    w.create_group(
        "g",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);",
    );
    // One HTTP round trip: a signed-head read, loopback, 200 times.
    let a0 = agent();
    let url = format!("{}/v1/groups/g/head", w.url);
    let mut rt = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut r = a0
            .get(&url)
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .expect("head");
        let _ = r.body_mut().read_to_string();
        rt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (rt50, rt99) = p50_p99(rt);

    let a = Device::new(&dir.join("a.db"));
    let b = Device::new(&dir.join("b.db"));
    for d in [&a, &b] {
        // WAL, as an app running a worker should (docs/extension.md).
        d.exec("PRAGMA journal_mode = WAL");
        d.open(&w, "g", "remote_wins").expect("open");
        d.call("pdb_sync_start('{\"debounce_ms\": 0, \"max_delay_ms\": 0, \"poll_ms\": 5}')")
            .expect("worker");
    }
    // Each write is one commit: B waits for the next sequence number.
    let n = 200;
    let mut lat = Vec::new();
    for i in 0..n {
        let next = b.call("pdb_head()").expect("head")["seq"]
            .as_i64()
            .unwrap_or(0)
            + 1;
        let t = Instant::now();
        a.exec(&format!("INSERT INTO notes VALUES ({i}, 'x')"));
        let r = b.call(&format!("pdb_wait({next}, 30000)")).expect("wait");
        assert_eq!(r["reached"], true, "{r}");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = p50_p99(lat);
    println!("{:>44} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!(
        "{:>44} {rt50:>10.2} {rt99:>10.2}",
        "one HTTP round trip (signed head)"
    );
    println!(
        "{:>44} {p50:>10.2} {p99:>10.2}",
        format!("write in A → in B's verified head ({n})")
    );
    println!(
        "(A's worker notices the write by polling data_version every 5 ms here, 20 ms by default, then seals, pushes and the witness's watch wakes B's)"
    );
    for d in [&a, &b] {
        d.call("pdb_sync_stop()").expect("stop");
    }

    // 1,000 idle head watches: raw connections, each one request sent and
    // never answered (nothing commits), bounded at 60 s by the wait.
    let head = w.head("g").seq;
    let (rss0, threads0, _) = footprint(w.pid());
    let mut watches = Vec::new();
    for _ in 0..1000 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port())).expect("connect");
        use std::io::Write;
        write!(
            s,
            "GET /v1/groups/g/head?after={head}&wait=60 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .expect("send");
        watches.push(s);
    }
    let metrics = || {
        raw_request(
            w.port(),
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .body
    };
    let mut waiting = false;
    for _ in 0..500 {
        // (The stopped workers' watches may still wait: at least 1,000.)
        let m = metrics();
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("pdb_waiters "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= 1000 {
            waiting = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (rss1, threads1, fds1) = footprint(w.pid());
    let cpu0 = cpu_seconds(w.pid());
    let idle = Duration::from_secs(5);
    std::thread::sleep(idle);
    let cpu = cpu_seconds(w.pid()) - cpu0;
    println!(
        "witness with 1,000 idle head watches{}: RSS {rss0:.1} → {rss1:.1} MiB ({:.1} KiB per watch), threads {threads0} → {threads1}, open files {fds1}, CPU {:.2}% over {}s idle",
        if waiting { "" } else { " (NOT all waiting)" },
        (rss1 - rss0) * 1024.0 / 1000.0,
        cpu / idle.as_secs_f64() * 100.0,
        idle.as_secs()
    );
    // One commit answers them all.
    let c = Device::new(&dir.join("c.db"));
    c.open(&w, "g", "remote_wins").expect("open");
    c.exec("INSERT INTO notes VALUES (100000, 'wake')");
    let t = Instant::now();
    c.sync().expect("sync");
    let mut answered = 0;
    for s in &mut watches {
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        if read_answer(s).is_ok_and(|r| r.status == 200) {
            answered += 1;
        }
    }
    println!(
        "one commit answered {answered} of 1,000 watches in {:.0} ms (sync and all answers read)",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
