//! A device never gets stuck: each situation that used to wedge sync, end
//! to end against the real witness. After any answer, any local state and
//! any crash, the next pdb_sync makes progress or names what must change;
//! once that changes, sync resumes by itself; no row is dropped silently;
//! no step here writes a pdb_ table by hand.

use pdb_e2e::*;
use serde_json::Value as Json;

const DDL: &str =
    "CREATE TABLE people(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT, note TEXT);";
const TABLES: &[&str] = &["people"];

struct Setup {
    dir: TempDir,
    w: Witness,
}

fn setup(label: &str, flags: &[&str]) -> Setup {
    let dir = TempDir::new(label);
    let w = Witness::start_with(dir.path(), 0, flags);
    w.create_group("g", DDL);
    Setup { dir, w }
}

impl Setup {
    fn device(&self, name: &str, policy: &str) -> Device {
        let d = Device::new(&self.dir.path().join(format!("{name}.db")));
        d.open(&self.w, "g", policy).expect("pdb_open");
        d
    }

    fn device_at(&self, name: &str, url: &str) -> Device {
        let d = Device::new(&self.dir.path().join(format!("{name}.db")));
        d.open_url(url, "g", "remote_wins").expect("pdb_open");
        d
    }
}

/// Inserts `n` people `p<i>` (from `from`) with a note of `note` bytes,
/// in one local transaction.
fn people(d: &Device, from: usize, n: usize, note: usize) {
    d.exec("BEGIN");
    for i in from..from + n {
        d.conn
            .execute(
                "INSERT INTO people VALUES (?1, ?2, 'n', ?3)",
                rusqlite::params![format!("p{i:06}"), format!("{i}@x"), "x".repeat(note)],
            )
            .unwrap();
    }
    d.exec("COMMIT");
}

fn status(d: &Device) -> Json {
    d.call("pdb_status()").unwrap()
}

fn ids(d: &Device) -> Vec<String> {
    let mut st = d
        .conn
        .prepare("SELECT coalesce(id, 'NULL') FROM people ORDER BY 1")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every device syncs twice, then all hold the same rows, verify, and
/// have nothing pending.
fn converged(devices: &[&Device]) {
    for _ in 0..2 {
        for d in devices {
            d.sync().expect("sync");
        }
    }
    let first = devices[0].dump(TABLES);
    for d in devices {
        assert_eq!(d.dump(TABLES), first, "same rows, same bytes");
        let v = d.call("pdb_verify()").unwrap();
        assert_eq!(v["ok"], true, "{v}");
        let s = status(d);
        assert_eq!(s["pending_rows"], 0, "{s}");
        assert_eq!(s["state"], "healthy", "{s}");
    }
}

#[test]
fn a_null_key_is_refused_at_write_time_and_an_old_one_waits_visibly() {
    let s = setup("nullkey", &[]);
    // Rows that were there before sync started, one with a NULL key
    // (SQLite allows it in a rowid table's TEXT PRIMARY KEY).
    let a = Device::new(&s.dir.path().join("a.db"));
    a.exec(DDL);
    a.exec("INSERT INTO people VALUES (NULL, 'n@x', 'no key', ''), ('p1', 'a@x', 'Ann', '')");
    a.open(&s.w, "g", "remote_wins").unwrap();
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "the other row goes: {r}");
    assert_eq!(r["blocked"][0]["code"], "null_key", "{r}");
    let st = status(&a);
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["reason"]["code"], "null_key", "{st}");
    assert_eq!(st["reason"]["table"], "people", "{st}");
    assert!(
        st["reason"]["advice"].as_str().unwrap().contains("key"),
        "{st}"
    );
    assert_eq!(a.call("pdb_verify()").unwrap()["ok"], true);
    // A new NULL key is refused when it is written, with a clear error.
    let err = a
        .conn
        .execute_batch("INSERT INTO people VALUES (NULL, 'm@x', 'again', '')")
        .unwrap_err()
        .to_string();
    assert!(err.contains("NULL in a primary-key column"), "{err}");
    // The app gives the row a key: it syncs on the next call.
    a.exec("UPDATE people SET id = 'p2' WHERE id IS NULL");
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    assert_eq!(r["blocked"].as_array().unwrap().len(), 0, "{r}");
    let b = s.device("b", "remote_wins");
    assert_eq!(ids(&b), ["p1", "p2"]);
    converged(&[&a, &b]);
}

#[test]
fn two_devices_take_the_same_unique_value_and_both_catch_up() {
    for policy in ["remote_wins", "local_wins", "manual"] {
        let s = setup("unique", &[]);
        let a = s.device("a", policy);
        let b = s.device("b", policy);
        a.exec("INSERT INTO people VALUES ('p1', 'same@x', 'Ann', 'from a')");
        a.sync().unwrap();
        b.exec("INSERT INTO people VALUES ('p2', 'same@x', 'Bob', 'from b')");
        b.exec("INSERT INTO people VALUES ('p3', 'other@x', 'Cy', 'unrelated')");
        // The witness refuses p2; p3 goes anyway; a's p1 arrives (pulling is
        // never blocked) and p2 is set aside, recorded with its values.
        let r = b.sync().unwrap();
        assert_eq!(r["pushed"], 1, "{policy}: {r}");
        assert_eq!(r["conflicts"], 1, "{policy}: {r}");
        assert_eq!(ids(&b), ["p1", "p3"], "{policy}");
        let (id, kind, local, kept): (i64, String, String, String) = b
            .conn
            .query_row(
                "SELECT id, kind, local_value, kept FROM pdb_conflicts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(kind, "constraint", "{policy}");
        assert!(local.contains("from b"), "{policy}: {local}");
        let open = if policy == "manual" { "open" } else { "remote" };
        assert_eq!(kept, open, "{policy}");
        if policy == "manual" {
            let err = b.call(&format!("pdb_resolve({id}, 'local')")).unwrap_err();
            assert!(err.contains("other values"), "{err}");
            let r = b.call(&format!("pdb_resolve({id}, 'remote')")).unwrap();
            assert_eq!(r["kept"], "remote", "{r}");
        }
        // The app puts Bob back with another address: it syncs.
        b.exec("INSERT INTO people VALUES ('p2', 'bob@x', 'Bob', 'from b')");
        converged(&[&a, &b]);
        assert_eq!(ids(&a), ["p1", "p2", "p3"], "{policy}");
    }
}

#[test]
fn a_row_a_write_rule_refuses_waits_and_the_rest_syncs() {
    let s = setup("rule", &[]);
    let proxy = Proxy::start(&s.w.url);
    let a = s.device_at("a", &proxy.url);
    let r = s.w.request(
        "PUT",
        "/v1/groups/g/rules/people",
        Some(TOKEN),
        Some(&serde_json::json!({"expr": "new.name IS NOT 'forbidden'"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    a.exec("INSERT INTO people VALUES ('p1', 'a@x', 'forbidden', ''), ('p2', 'b@x', 'fine', '')");
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    let st = status(&a);
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["blocked"][0]["key"], serde_json::json!(["p1"]), "{st}");
    assert_eq!(st["blocked"][0]["code"], "unauthorized", "{st}");
    // Not sent again while nothing changed.
    let sent = || {
        proxy
            .relayed_commits
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = sent();
    assert_eq!(a.sync().unwrap()["pushed"], 0);
    assert_eq!(sent(), before, "nothing sent");
    // Fixed: it goes on the next sync.
    a.exec("UPDATE people SET name = 'allowed' WHERE id = 'p1'");
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    assert_eq!(status(&a)["state"], "healthy");
    let b = s.device("b", "remote_wins");
    converged(&[&a, &b]);
}

#[test]
fn a_batch_larger_than_a_request_goes_in_parts_and_an_oversized_row_waits() {
    let s = setup("parts", &["--max-body-bytes", "65536"]);
    let a = s.device("a", "remote_wins");
    let b = s.device("b", "remote_wins");
    people(&a, 0, 2000, 160);
    a.conn
        .execute(
            "INSERT INTO people VALUES ('big', 'big@x', 'n', ?1)",
            [&"y".repeat(100_000)],
        )
        .unwrap();
    let r = a.sync().unwrap();
    assert!(r["pushed"].as_u64().unwrap() >= 6, "several commits: {r}");
    assert_eq!(r["blocked"][0]["code"], "row_too_large", "{r}");
    b.sync().unwrap();
    assert_eq!(ids(&b).len(), 2000);
    // Every commit fitted the witness's limit.
    for c in s.w.all_commits("g") {
        assert!(c["changeset"].as_str().unwrap().len() < 65536);
    }
    a.exec("UPDATE people SET note = 'smaller now' WHERE id = 'big'");
    assert_eq!(a.sync().unwrap()["pushed"], 1);
    converged(&[&a, &b]);
}

#[test]
fn a_hundred_thousand_pending_rows_sync_under_the_default_limits() {
    let s = setup("hundredk", &[]);
    let a = s.device("a", "remote_wins");
    let b = s.device("b", "remote_wins");
    people(&a, 0, 100_000, 160);
    let r = a.sync().unwrap();
    assert!(r["pushed"].as_u64().unwrap() >= 3, "{r}");
    let r = b.sync().unwrap();
    assert_eq!(r["pulled"], a.call("pdb_head()").unwrap()["seq"], "{r}");
    assert_eq!(b.call("pdb_verify()").unwrap()["rows"], 100_000);
    converged(&[&a, &b]);
}

#[test]
fn a_device_behind_commits_larger_than_a_page_catches_up() {
    let s = setup("bigpages", &["--max-page-bytes", "20000"]);
    let a = s.device("a", "remote_wins");
    let b = s.device("b", "remote_wins");
    for round in 0..5 {
        people(&a, round, 1, 50_000);
        a.sync().unwrap();
    }
    let r = b.sync().unwrap();
    assert_eq!(r["pulled"], 5, "{r}");
    converged(&[&a, &b]);
}

#[test]
fn a_device_with_pending_rows_behind_a_pruned_log_rebases_on_the_snapshot() {
    let flags = [
        "--snapshot-every-commits",
        "0",
        "--snapshot-every-bytes",
        "0",
        "--prune-log",
        "--keep-log-commits",
        "0",
    ];
    let s = setup("prunedpending", &flags);
    let proxy = Proxy::start(&s.w.url);
    let a = s.device("a", "remote_wins");
    let behind = s.device_at("behind", &proxy.url);
    a.exec("INSERT INTO people VALUES ('p1', 'a@x', 'Ann', 'base'), ('p2', 'b@x', 'Bob', 'base')");
    a.sync().unwrap();
    behind.sync().unwrap();
    // Offline on `behind`: an edit of a row a also edits, a new row, and a
    // commit whose answer is lost (it lands; the device does not know).
    behind.exec("UPDATE people SET note = 'behind' WHERE id = 'p1'");
    proxy.set(ProxyMode::DropCommitResponses(1));
    let err = behind.sync().unwrap_err();
    assert!(err.contains("answer lost"), "{err}");
    proxy.set(ProxyMode::Pass);
    behind.exec("UPDATE people SET name = 'Bobby' WHERE id = 'p2'");
    behind.exec("INSERT INTO people VALUES ('p3', 'c@x', 'Cy', 'new')");
    a.sync().unwrap();
    a.exec("UPDATE people SET name = 'Annie' WHERE id = 'p1'; UPDATE people SET note = 'a' WHERE id = 'p2'");
    a.sync().unwrap();
    let r = s.w.post("/v1/groups/g/snapshots", &Json::Null);
    assert_eq!(r.status, 201, "{r:?}");
    let r = s.w.get("/v1/groups/g/commits?after=1");
    assert_eq!(r.code(), "snapshot_required", "the log is pruned: {r:?}");
    // It restarts from the snapshot by itself, its own commit recognised,
    // its pending rows merged in.
    let r = behind.sync().unwrap();
    assert_eq!(r["pushed"], 2, "the replay, then the re-based rows: {r}");
    let row = |d: &Device, id: &str| -> (String, String) {
        d.conn
            .query_row("SELECT name, note FROM people WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    };
    assert_eq!(row(&behind, "p1"), ("Annie".into(), "behind".into()));
    assert_eq!(row(&behind, "p2"), ("Bobby".into(), "a".into()));
    converged(&[&a, &behind]);
    // Its lost-answer commit is in the log once: a's two, behind's lost
    // one, behind's re-based rows.
    assert_eq!(s.w.head("g").seq, 4);
    let (ok, out) = s.w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn errors_say_what_happened() {
    let s = setup("errors", &[]);
    let proxy = Proxy::start(&s.w.url);
    let a = s.device_at("a", &proxy.url);
    a.exec("INSERT INTO people VALUES ('p1', 'a@x', 'Ann', '')");
    // A proxy's HTML error page: its status is shown.
    proxy.set(ProxyMode::Answer(
        502,
        "Content-Type: text/html\r\n",
        "<html>Bad Gateway</html>",
    ));
    let err = a.sync().unwrap_err();
    assert!(
        err.starts_with("pdb_sync: unreadable answer: HTTP 502"),
        "{err}"
    );
    assert!(err.contains("Bad Gateway"), "{err}");
    assert_eq!(status(&a)["state"], "waiting");
    // A witness whose disk is full: its own code, and when to retry.
    proxy.set(ProxyMode::Answer(
        507,
        "Content-Type: application/json\r\nRetry-After: 30\r\n",
        r#"{"error":{"code":"storage_full","message":"the witness's disk is full","retryable":true}}"#,
    ));
    let err = a.sync().unwrap_err();
    assert!(err.starts_with("pdb_sync: storage_full: "), "{err}");
    assert!(err.contains("retry after 30 s"), "{err}");
    let st = status(&a);
    assert_eq!(st["state"], "waiting", "{st}");
    assert_eq!(st["reason"]["code"], "storage_full", "{st}");
    assert_eq!(st["reason"]["retry_after_s"], 30, "{st}");
    // A hung witness: the timeout pdb_open set ends the call.
    proxy.set(ProxyMode::Pass);
    let h = Device::new(&s.dir.path().join("h.db"));
    h.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{TOKEN}', 'timeout_ms', 500))",
        proxy.url
    ))
    .unwrap();
    proxy.set(ProxyMode::Hang);
    let err = h.sync().unwrap_err();
    assert!(err.starts_with("pdb_sync: answer lost: "), "{err}");
    proxy.set(ProxyMode::Pass);
    // Nothing listening: unreachable, from pdb_open and pdb_sync alike.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let d = Device::new(&s.dir.path().join("d.db"));
    let err = d.open_url(&url, "g", "remote_wins").unwrap_err();
    assert!(err.starts_with("pdb_open: witness unreachable: "), "{err}");
    // Bad options change nothing and say which.
    let err = d
        .call(&format!(
            "pdb_open('{url}', 'g', json_object('timeout_ms', -1))"
        ))
        .unwrap_err();
    assert!(err.contains("timeout_ms"), "{err}");
    // Every situation healed: a syncs by itself.
    assert_eq!(a.sync().unwrap()["pushed"], 1);
    assert_eq!(status(&a)["state"], "healthy");
}

#[test]
fn status_says_healthy_waiting_or_blocked_and_the_heads_age() {
    let dir = TempDir::new("glance");
    let bob = add_token(&dir.path().join("data"), "bob");
    let mut s = Setup {
        w: Witness::start(dir.path()),
        dir,
    };
    s.w.create_group("g", DDL);
    let member = |w: &Witness, method: &str| {
        let r = w.request(
            method,
            "/v1/groups/g/members/bob",
            Some(TOKEN),
            Some(&serde_json::json!({"role": "writer"})),
        );
        assert_eq!(r.status, 200, "{r:?}");
    };
    member(&s.w, "PUT");
    let a = Device::new(&s.dir.path().join("a.db"));
    a.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{bob}'))",
        s.w.url
    ))
    .unwrap();
    let st = status(&a);
    assert_eq!(st["state"], "healthy", "{st}");
    assert!(st["head_age_ms"].as_i64().unwrap() >= 0, "{st}");
    assert!(st["verified_ago_ms"].as_i64().unwrap() >= 0, "{st}");
    let port = s.w.port();
    s.w.kill9();
    a.exec("INSERT INTO people VALUES ('p1', 'a@x', 'Ann', '')");
    assert!(a.sync().is_err());
    let st = status(&a);
    assert_eq!(st["state"], "waiting", "{st}");
    assert!(
        st["reason"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{st}"
    );
    s.w = Witness::start_on(s.dir.path(), port);
    a.sync().unwrap();
    assert_eq!(status(&a)["state"], "healthy");
    // A caller whose access is gone: blocked, and on what.
    member(&s.w, "DELETE");
    a.exec("INSERT INTO people VALUES ('p2', 'b@x', 'Bob', '')");
    assert!(a.sync().is_err());
    let st = status(&a);
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["reason"]["code"], "unauthorized", "{st}");
    assert!(
        st["reason"]["advice"].as_str().unwrap().contains("token"),
        "{st}"
    );
    assert_eq!(st["pending_rows"], 1, "nothing local is lost: {st}");
    // Access back: sync resumes by itself.
    member(&s.w, "PUT");
    assert_eq!(a.sync().unwrap()["pushed"], 1);
    assert_eq!(status(&a)["state"], "healthy");
}
