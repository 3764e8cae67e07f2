//! Snapshots and bootstrap: new devices start from a signed snapshot and
//! equal the others; devices behind a pruned log restart from one (never
//! dropping local changes); downloads resume; tampering is rejected; a
//! snapshot made while clients commit matches its head.

use pdb_e2e::*;
use pdb_protocol::wire::{unb64, Policy, SnapshotJson};
use pdb_protocol::{sha256, Value};
use serde_json::Value as Json;
use std::sync::Arc;

const DDL: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL, score REAL, data BLOB);";
const TABLES: &[&str] = &["items"];
/// Automatic snapshots off: the tests make them when they want them.
const MANUAL: &[&str] = &[
    "--snapshot-every-commits",
    "0",
    "--snapshot-every-bytes",
    "0",
];

fn device(dir: &TempDir, name: &str, url: &str) -> Device {
    let d = Device::new(&dir.path().join(format!("{name}.db")));
    d.open_url(url, "g", "remote_wins").expect("pdb_open");
    d
}

fn fill(d: &Device, from: i64, n: i64) {
    d.exec("BEGIN");
    for i in from..from + n {
        d.conn
            .execute(
                "INSERT INTO items VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    i,
                    format!("item {i} with a longer label to take some room"),
                    i as f64 / 4.0,
                    vec![i as u8; 16]
                ],
            )
            .unwrap();
    }
    d.exec("COMMIT");
}

fn snapshot(w: &Witness) -> SnapshotJson {
    let r = w.post("/v1/groups/g/snapshots", &Json::Null);
    assert_eq!(r.status, 201, "{r:?}");
    serde_json::from_value(r.body).unwrap()
}

fn same(a: &Device, b: &Device) {
    assert_eq!(a.dump(TABLES), b.dump(TABLES));
    assert_eq!(
        a.call("pdb_head()").unwrap()["state_root"],
        b.call("pdb_head()").unwrap()["state_root"]
    );
    assert_eq!(b.call("pdb_verify()").unwrap()["ok"], true);
}

#[test]
fn a_fresh_device_starts_from_the_newest_snapshot_and_equals_the_others() {
    let dir = TempDir::new("boot");
    let w = Witness::start_with(dir.path(), 0, MANUAL);
    w.create_group("g", DDL);
    let a = device(&dir, "a", &w.url);
    for round in 0..3 {
        fill(&a, round * 100, 100);
        a.sync().unwrap();
    }
    let m = snapshot(&w);
    assert_eq!((m.seq, m.rows), (3, 300));
    a.exec("UPDATE items SET label = 'after the snapshot' WHERE id < 10; DELETE FROM items WHERE id >= 290;");
    a.sync().unwrap();
    let b = device(&dir, "b", &w.url);
    let opened = b.call("pdb_status()").unwrap();
    assert!(
        opened["bootstrap"].is_null(),
        "progress is cleared: {opened}"
    );
    same(&a, &b);
    let log: i64 = b
        .conn
        .query_row("SELECT count(*) FROM pdb_certificates", [], |r| r.get(0))
        .unwrap();
    assert_eq!(log, 1, "only the commit after the snapshot was pulled");
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn a_device_behind_the_pruned_log_restarts_from_a_snapshot_and_keeps_its_local_changes() {
    let dir = TempDir::new("pruned");
    let mut args = MANUAL.to_vec();
    args.extend(["--prune-log", "--keep-log-commits", "0"]);
    let w = Witness::start_with(dir.path(), 0, &args);
    w.create_group("g", DDL);
    let behind = device(&dir, "behind", &w.url);
    let busy = device(&dir, "busy", &w.url);
    let a = device(&dir, "a", &w.url);
    for round in 0..3 {
        fill(&a, round * 50, 50);
        a.sync().unwrap();
    }
    let m = snapshot(&w);
    // The log before the snapshot is gone: catch-up from there says so.
    let r = w.get("/v1/groups/g/commits?after=0");
    assert_eq!((r.status, r.code()), (410, "snapshot_required"), "{r:?}");
    assert_eq!(r.body["error"]["snapshot"]["seq"], m.seq);
    // Retries of pruned commits still replay (the certificates are kept).
    assert_eq!(w.get("/v1/groups/g/commits?after=3").status, 200);
    a.exec("INSERT INTO items VALUES (1000, 'after', NULL, NULL)");
    a.sync().unwrap();
    // No local changes: it restarts from the snapshot, then catches up.
    let r = behind.sync().unwrap();
    assert_eq!(r["pulled"], 1, "{r}");
    same(&a, &behind);
    // Local changes: re-based on the snapshot, then pushed.
    busy.exec("INSERT INTO items VALUES (5000, 'mine, not synced', 1.0, NULL)");
    let r = busy.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    let st = busy.call("pdb_status()").unwrap();
    assert_eq!(st["pending_rows"], 0, "{st}");
    a.sync().unwrap();
    same(&a, &busy);
    let (ok, out) = w.verify_cli();
    assert!(
        ok,
        "the verifier replays a pruned log from its snapshot: {out}"
    );
}

#[test]
fn pruning_keeps_a_window_of_commits_before_the_snapshot() {
    let dir = TempDir::new("window");
    let mut args = MANUAL.to_vec();
    args.extend(["--prune-log", "--keep-log-commits", "2"]);
    let w = Witness::start_with(dir.path(), 0, &args);
    w.create_group("g", DDL);
    let info = w.request("GET", "/v1/witness", None, None).body;
    assert_eq!(info["limits"]["keep_log_commits"], 2, "{info}");
    let a = device(&dir, "a", &w.url);
    let near = device(&dir, "near", &w.url);
    for round in 0..3 {
        fill(&a, round * 10, 10);
        a.sync().unwrap();
        if round == 0 {
            near.sync().unwrap();
        }
    }
    let m = snapshot(&w);
    assert_eq!(m.seq, 3);
    // Commits 2 and 3 are kept: a device at 1 catches up from the log.
    assert_eq!(w.get("/v1/groups/g/commits?after=1").status, 200);
    let r = w.get("/v1/groups/g/commits?after=0");
    assert_eq!((r.status, r.code()), (410, "snapshot_required"), "{r:?}");
    let r = near.sync().unwrap();
    assert_eq!(r["pulled"], 2, "from the log, not a snapshot: {r}");
    same(&a, &near);
    let (ok, out) = w.verify_cli();
    assert!(
        ok,
        "the verifier restarts from the snapshot after the window: {out}"
    );
    // A second snapshot moves the window; the verifier still passes.
    fill(&a, 100, 10);
    a.sync().unwrap();
    assert_eq!(snapshot(&w).seq, 4);
    let r = w.get("/v1/groups/g/commits?after=1");
    assert_eq!((r.status, r.code()), (410, "snapshot_required"), "{r:?}");
    assert_eq!(w.get("/v1/groups/g/commits?after=2").status, 200);
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let dir = TempDir::new("resume");
    let w = Witness::start_with(dir.path(), 0, MANUAL);
    w.create_group("g", DDL);
    let a = device(&dir, "a", &w.url);
    fill(&a, 0, 40_000);
    a.sync().unwrap();
    let m = snapshot(&w);
    assert!(
        m.size > 3 * 1024 * 1024,
        "a snapshot of several ranges ({} bytes)",
        m.size
    );
    let proxy = Proxy::start(&w.url);
    proxy.set(ProxyMode::DataThenDrop(2));
    let b = Device::new(&dir.path().join("b.db"));
    let err = b.open_url(&proxy.url, "g", "remote_wins").unwrap_err();
    assert!(err.contains("call again to resume"), "{err}");
    // Another connection sees how far it got.
    let other = Device::new(&b.path);
    let st = other.call("pdb_status()").unwrap();
    assert_eq!(st["bootstrap"]["phase"], "download", "{st}");
    assert_eq!(st["bootstrap"]["bytes"], 2 * 1024 * 1024, "{st}");
    assert!(
        b.dump(TABLES).is_empty(),
        "nothing installed from a partial download"
    );
    proxy.set(ProxyMode::Pass);
    let before = proxy.ranges.lock().unwrap().len();
    let r = b.open_url(&proxy.url, "g", "remote_wins").unwrap();
    assert_eq!(r["bootstrapped_from"], m.seq, "{r}");
    let ranges = proxy.ranges.lock().unwrap()[before..].to_vec();
    assert!(
        ranges[0].starts_with(&format!("bytes={}-", 2 * 1024 * 1024)),
        "resumed: {ranges:?}"
    );
    same(&a, &b);
}

fn tamper_manifest_chunks(path: &str, j: &mut Json) {
    if path.ends_with("/snapshots/latest") {
        j["chunks"] = serde_json::json!([0, 7]);
    }
}

fn tamper_manifest_record(path: &str, j: &mut Json) {
    if path.ends_with("/snapshots/latest") {
        let mut b = unb64(j["signed"]["record"].as_str().unwrap()).unwrap();
        let i = b.len() - 20;
        b[i] ^= 1;
        j["signed"]["record"] = Json::String(pdb_protocol::wire::b64(&b));
    }
}

#[test]
fn tampered_snapshot_bytes_or_manifests_are_rejected() {
    let dir = TempDir::new("tampersnap");
    let w = Witness::start_with(dir.path(), 0, MANUAL);
    w.create_group("g", DDL);
    let a = device(&dir, "a", &w.url);
    fill(&a, 0, 500);
    a.sync().unwrap();
    snapshot(&w);
    let proxy = Proxy::start(&w.url);
    for (what, mode) in [
        ("bytes", ProxyMode::TamperData),
        ("chunk list", ProxyMode::TamperGet(tamper_manifest_chunks)),
        (
            "signed record",
            ProxyMode::TamperGet(tamper_manifest_record),
        ),
    ] {
        proxy.set(mode);
        let b = Device::new(&dir.path().join(format!("b-{}.db", what.replace(' ', "-"))));
        let err = b.open_url(&proxy.url, "g", "remote_wins").unwrap_err();
        assert!(
            err.contains("digest") || err.contains("manifest"),
            "{what}: {err}"
        );
        assert!(b.dump(TABLES).is_empty(), "{what}: nothing installed");
        proxy.set(ProxyMode::Pass);
        b.open_url(&proxy.url, "g", "remote_wins").unwrap();
        same(&a, &b);
    }
}

#[test]
fn a_snapshot_made_while_four_clients_commit_matches_its_head() {
    let dir = TempDir::new("snapload");
    let w = Arc::new(Witness::start_with(dir.path(), 0, MANUAL));
    let g = w.create_group("g", DDL);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4i64)
        .map(|c| {
            let (w, g, stop) = (w.clone(), g.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let cs = changeset(
                        "items",
                        &[1, 0, 0, 0],
                        vec![insert(vec![
                            Value::Integer(c * 1_000_000 + i),
                            Value::text("x"),
                            Value::Real(0.5),
                            Value::Null,
                        ])],
                    );
                    let r = w.commit_at_head(&g, &format!("c{c}-{i}"), &cs, Policy::RebaseIfClean);
                    assert!(r.status == 201 || r.code() == "stale_head", "{r:?}");
                    i += 1;
                }
            })
        })
        .collect();
    // Each snapshot is checked right away, while the clients go on
    // committing (only the newest two are kept on disk).
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        let m = snapshot(&w);
        assert!(m.seq > 0);
        let rec = m
            .signed
            .to_signed()
            .unwrap()
            .snapshot(&w.public_key)
            .expect("manifest verifies");
        // The head it names is the certified one at that sequence number.
        let page = w.get(&format!("/v1/groups/g/commits?after={}&limit=1", m.seq - 1));
        let cert = &page.body["commits"][0]["certificate"];
        assert_eq!(cert["head_hash"], Json::String(m.head_hash.clone()));
        assert_eq!(cert["state_root"], Json::String(m.state_root.clone()));
        // Its bytes hold exactly the rows that give that root.
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < m.size {
            let mut r = agent()
                .get(format!("{}/v1/groups/g/snapshots/{}/data", w.url, m.seq))
                .header("Authorization", &format!("Bearer {TOKEN}"))
                .header("Range", &format!("bytes={}-", bytes.len()))
                .call()
                .unwrap();
            assert_eq!(r.status().as_u16(), 206);
            bytes.extend(
                r.body_mut()
                    .with_config()
                    .limit(16 << 20)
                    .read_to_vec()
                    .unwrap(),
            );
        }
        assert_eq!(sha256(&bytes), rec.digest);
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(DDL).unwrap();
        apply_changeset(&db, &bytes);
        assert_eq!(local_root(&db, TABLES), rec.state_root);
        let rows: i64 = db
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows as u64, rec.rows);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
