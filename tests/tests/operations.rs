//! Operating a witness with many groups, against the real binary: groups
//! open on first use and close when idle (threads and open files do not
//! follow the number of groups), the group list is paged from the
//! directory, members survive in the directory, WAL files are cut back
//! after long reads and at shutdown, metrics are served, and a backup
//! taken under load restores every acknowledged commit while devices that
//! synced past it are told so.
//!
//! No timing thresholds: every wait is a generous bound on completion.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::{json, Value as Json};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, note TEXT);";

fn row(id: i64, note: &str) -> Vec<u8> {
    changeset(
        "t",
        &[1, 0],
        vec![insert(vec![Value::Integer(id), Value::text(note)])],
    )
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < until, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (threads, open files) of a process.
fn proc_stats(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (threads, fds)
}

fn wal_size(data: &Path, group: &str) -> u64 {
    std::fs::metadata(data.join(format!("groups/{group}.sqlite-wal")))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn groups_open_on_first_use_close_when_idle_and_list_in_pages() {
    let dir = TempDir::new("ops-many");
    let data = dir.path().join("data");
    let carol = add_token(&data, "carol");
    // Every group open at once would be 120 groups' files and more.
    let bounded = |idle: &'static str| {
        [
            "--max-open-groups",
            "20",
            "--group-idle-secs",
            idle,
            "--writer-threads",
            "4",
            "--blocking-jobs",
            "4",
        ]
    };
    let mut w = Witness::start_with(dir.path(), 0, &bounded("3600"));
    let n = 120;
    for i in 0..n {
        let g = w.create_group(&format!("g{i:03}"), DDL);
        let r = w.commit_at_head(&g, "first", &row(1, "x"), Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
    }
    for g in ["g005", "g050", "g100"] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/{g}/members/carol"),
            Some(TOKEN),
            Some(&json!({"role": "reader"})),
        );
        assert_eq!(r.status, 200);
    }
    // Never more open than the bound once nothing uses them; a closed
    // group leaves no WAL behind, and a stopped witness none at all.
    let open = |w: &Witness| w.get("/healthz").body["open_groups"].as_u64().unwrap();
    eventually("at most 20 open", || open(&w) <= 20);
    let walless = (0..n)
        .filter(|i| wal_size(&data, &format!("g{i:03}")) == 0)
        .count();
    assert!(walless >= n - 20, "{walless} groups without a WAL");
    assert!(w.terminate().success());
    for i in 0..n {
        assert_eq!(wal_size(&data, &format!("g{i:03}")), 0, "g{i:03}");
    }

    // A restart opens nothing: threads and files do not follow groups.
    let w = Witness::start_with(dir.path(), 0, &bounded("1"));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // main, tokio's workers, 4 writers, at most 4 + 16 blocking threads.
    let most_threads = 1 + cores + 4 + 20 + 4;
    let (threads, fds) = proc_stats(w.pid());
    assert!(
        threads <= most_threads && fds < 60,
        "{threads} threads, {fds} files at start"
    );
    for i in 0..n {
        let g = GroupRef::from_json(&w.get(&format!("/v1/groups/g{i:03}")).body);
        let r = w.commit_at_head(&g, "second", &row(2, "y"), Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let (threads, fds) = proc_stats(w.pid());
    assert!(
        threads <= most_threads && fds < 60 + 9 * 20,
        "{threads} threads, {fds} files after writing every group"
    );
    eventually("idle groups closed", || open(&w) == 0);

    // The list, in pages, from the directory.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let r = w.get(&format!("/v1/groups?limit=50&after={after}"));
        assert_eq!(r.status, 200, "{r:?}");
        seen.extend(
            r.body["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_string()),
        );
        match r.body["next_after"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    let all: Vec<String> = (0..n).map(|i| format!("g{i:03}")).collect();
    assert_eq!(seen, all);
    let r = w.get("/v1/groups?prefix=g01");
    assert_eq!(r.body["groups"].as_array().unwrap().len(), 10, "{r:?}");
    let r = w.request("GET", "/v1/groups", Some(&carol), None);
    assert_eq!(r.body["groups"], json!(["g005", "g050", "g100"]), "{r:?}");
    for bad in [
        "limit=0",
        "limit=1001",
        "after=G1",
        "prefix=a%20b",
        "nope=1",
    ] {
        let r = w.get(&format!("/v1/groups?{bad}"));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}: {r:?}");
    }

    // Metrics, for the operator only.
    let m = raw_request(
        w.port(),
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(m.status, 200, "{m:?}");
    assert!(m.header("content-type").unwrap().contains("openmetrics"));
    for series in [
        "pdb_commits_total{result=\"accepted\"} 120",
        "pdb_groups 120",
        "pdb_open_groups ",
        "pdb_batch_commits_count ",
        "pdb_fsync_seconds_bucket",
        "pdb_request_seconds_count{endpoint=\"commits\",status=\"201\"} 120",
        "pdb_connections ",
        "pdb_open_wal_bytes ",
        "pdb_errors_total{code=\"bad_request\"} 5",
    ] {
        assert!(m.body.contains(series), "no {series} in\n{}", m.body);
    }
    let r = w.request("GET", "/metrics", Some(&carol), None);
    assert_eq!((r.status, r.code()), (403, "unauthorized"));
}

#[test]
fn members_of_older_group_files_move_into_the_directory() {
    let dir = TempDir::new("ops-import");
    let data = dir.path().join("data");
    let dora = add_token(&data, "dora");
    let mut w = Witness::start(dir.path());
    w.create_group("old", DDL);
    w.terminate();
    // As an older witness left it: members in the group file, no
    // directory.
    let db = rusqlite::Connection::open(data.join("groups/old.sqlite")).unwrap();
    db.execute(
        "INSERT INTO pdb_members(identity, role, version) VALUES ('dora', 'reader', 1)",
        [],
    )
    .unwrap();
    drop(db);
    for f in [
        "directory.sqlite",
        "directory.sqlite-wal",
        "directory.sqlite-shm",
    ] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let w = Witness::start(dir.path());
    let r = w.request("GET", "/v1/groups/old/head", Some(&dora), None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.request("GET", "/v1/groups", Some(&dora), None);
    assert_eq!(r.body["groups"], json!(["old"]));
}

#[test]
fn wal_is_cut_back_after_a_long_read_and_gone_after_shutdown() {
    let dir = TempDir::new("ops-wal");
    let data = dir.path().join("data");
    let mut w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    let note = "n".repeat(8 * 1024);
    let mut id = 0;
    let mut commit = |w: &Witness| {
        id += 1;
        let r = w.commit_at_head(&g, &format!("k{id}"), &row(id, &note), Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
    };
    commit(&w);
    // A long read (like `verify` or a snapshot) holds checkpoints back.
    let reader = rusqlite::Connection::open_with_flags(
        data.join("groups/g.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let limit = 4 * 1024 * 1024;
    let mut n = 0;
    while wal_size(&data, "g") <= 2 * limit {
        commit(&w);
        n += 1;
        assert!(n < 5000, "bounded");
    }
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // Once it is gone, the WAL is cut back to the limit.
    let mut more = 0;
    while wal_size(&data, "g") > limit {
        commit(&w);
        more += 1;
        assert!(more < 5000, "the WAL stayed at {}", wal_size(&data, "g"));
    }
    // And a clean stop leaves none.
    assert!(w.terminate().success());
    assert_eq!(wal_size(&data, "g"), 0);
    let (ok, out) = verify_cli(&data);
    assert!(ok, "{out}");
}

#[test]
fn a_backup_under_load_restores_every_acknowledged_commit() {
    let dir = TempDir::new("ops-backup");
    let data = dir.path().join("data");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    w.create_group("other", DDL);
    let r = w.request(
        "PUT",
        "/v1/groups/g/members/pat",
        Some(TOKEN),
        Some(&json!({"role": "writer"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(w.post("/v1/groups/g/snapshots", &Json::Null).status, 201);
    // Commits go on while the backup runs; every acknowledgement is noted
    // with when it arrived.
    let acked: Arc<Mutex<Vec<(Instant, u64, String)>>> = Arc::default();
    let busy = Arc::new(AtomicBool::new(true));
    let w = Arc::new(w);
    let load = {
        let (w, g, acked, busy) = (w.clone(), g.clone(), acked.clone(), busy.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while busy.load(Ordering::SeqCst) && i < 100_000 {
                i += 1;
                let r = w.commit_at_head(
                    &g,
                    &format!("load-{i}"),
                    &row(i, "load"),
                    Policy::RebaseIfClean,
                );
                assert_eq!(r.status, 201, "{r:?}");
                let c = &r.body["certificate"];
                acked.lock().unwrap().push((
                    Instant::now(),
                    c["seq"].as_u64().unwrap(),
                    c["head_hash"].as_str().unwrap().to_string(),
                ));
            }
        })
    };
    eventually("some commits", || acked.lock().unwrap().len() > 20);
    let backup = dir.path().join("backup");
    let started = Instant::now();
    let out = witness_command(&data, &["backup", "--to", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("commits after the backup", || {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 > started)
            .count()
            > 10
    });
    busy.store(false, Ordering::SeqCst);
    load.join().unwrap();
    let manifest: Json =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    let backed = manifest["groups"]["g"]["seq"].as_u64().unwrap();
    let before: Vec<(u64, String)> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.0 < started)
        .map(|a| (a.1, a.2.clone()))
        .collect();
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|(s, _)| *s <= backed),
        "backup at {backed}"
    );
    // A device that synced past the backup point.
    let ddir = TempDir::new("ops-backup-dev");
    let d = Device::new(&ddir.path().join("d.db"));
    d.open(&w, "g", "remote_wins").unwrap();
    d.exec("INSERT INTO t VALUES (900001, 'after the backup')");
    d.sync().unwrap();
    let ahead = w.head("g");
    assert!(ahead.seq > backed);
    let port = w.port();
    let mut w = Arc::try_unwrap(w).ok().expect("only owner");
    assert!(w.terminate().success());

    // Restore into an empty data directory; a full one is refused.
    let restored = dir.path().join("restored");
    let out = witness_command(&data, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(!out.status.success(), "restored over a live data directory");
    let out = witness_command(
        &restored.join("data"),
        &["restore", "--from", backup.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, text) = verify_cli(&restored.join("data"));
    assert!(ok, "{text}");
    // Where the devices know it.
    let w2 = Witness::start_on(&restored, port);
    assert_eq!(w2.head("g").seq, backed);
    let log: Vec<Json> = w2.all_commits("g");
    for (seq, hash) in &before {
        let c = &log[(*seq - 1) as usize];
        assert_eq!(
            c["certificate"]["head_hash"].as_str().unwrap(),
            hash,
            "commit {seq}"
        );
    }
    // Members and snapshots came back too.
    let m = w2.get("/v1/groups/g/members");
    assert_eq!(m.body["members"][0]["identity"], "pat", "{m:?}");
    assert_eq!(w2.get("/v1/groups/g/snapshots/latest").status, 200);
    assert_eq!(w2.get("/v1/groups").body["groups"], json!(["g", "other"]));
    // The device ahead of it is told so, clearly, and nothing forks.
    let r = w2.get(&format!("/v1/groups/g/commits?after={}", ahead.seq));
    assert_eq!((r.status, r.code()), (409, "unknown_head"), "{r:?}");
    let r = w2.get(&format!(
        "/v1/groups/g/commits?after={backed}&after_hash={}",
        "00".repeat(32)
    ));
    assert_eq!((r.status, r.code()), (409, "unknown_head"), "{r:?}");
    let body = g.commit_body(
        ahead.seq,
        &ahead.head_hash,
        "late",
        &row(900002, "x"),
        Policy::RebaseIfClean,
    );
    let r = w2.post("/v1/groups/g/commits", &body);
    assert_eq!((r.status, r.code()), (409, "unknown_head"), "{r:?}");
    assert_eq!(w2.head("g").seq, backed, "nothing changed");
    let err = d.sync().unwrap_err();
    assert!(err.contains("unknown_head"), "{err}");
}
