//! The extension when things go wrong: lost responses, a fake witness
//! that tampers, an unreachable witness, refused access, a local schema
//! that differs, and processes killed in the middle of pdb_sync.

use pdb_e2e::*;
use serde_json::Value as Json;
use std::time::Duration;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n INTEGER);";

fn setup(label: &str) -> (TempDir, Witness) {
    let dir = TempDir::new(label);
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    (dir, w)
}

fn device(dir: &TempDir, name: &str, url: &str) -> Device {
    let d = Device::new(&dir.path().join(format!("{name}.db")));
    d.open_url(url, "g", "remote_wins").expect("pdb_open");
    d
}

fn notes(d: &Device) -> Vec<String> {
    d.dump(&["notes"])
}

#[test]
fn a_lost_commit_response_is_never_applied_twice() {
    let (dir, w) = setup("lost");
    let proxy = Proxy::start(&w.url);
    let a = device(&dir, "a", &proxy.url);
    a.exec("INSERT INTO notes VALUES (1, 'once', 1)");
    proxy.set(ProxyMode::DropCommitResponses(1));
    let err = a.sync().unwrap_err();
    assert!(err.contains("pdb_sync: answer lost"), "{err}");
    // The witness did accept it.
    assert_eq!(w.all_commits("g").len(), 1);
    // Someone else commits meanwhile.
    let b = device(&dir, "b", &w.url);
    b.exec("INSERT INTO notes VALUES (2, 'other', 2)");
    b.sync().unwrap();
    proxy.set(ProxyMode::Pass);
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "the retry replays: {r}");
    assert_eq!(w.all_commits("g").len(), 2, "no duplicate commit");
    b.sync().unwrap();
    assert_eq!(notes(&a), notes(&b));
    assert_eq!(notes(&a).len(), 2);
    let certs: i64 = a
        .conn
        .query_row(
            "SELECT count(*) FROM pdb_certificates WHERE mine = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(certs, 1);
    assert_eq!(a.call("pdb_verify()").unwrap()["ok"], true);
}

#[test]
fn a_lost_response_recognised_when_the_commit_comes_back_in_a_pull() {
    let (dir, w) = setup("lostpull");
    let proxy = Proxy::start(&w.url);
    let a = device(&dir, "a", &proxy.url);
    a.exec("INSERT INTO notes VALUES (1, 'mine', 1)");
    proxy.set(ProxyMode::DropCommitResponses(1));
    assert!(a.sync().is_err());
    proxy.set(ProxyMode::Pass);
    // pdb_open pulls before anything is pushed again: the commit comes
    // back from the log and is recognised by its idempotency key.
    let r = a.open_url(&proxy.url, "g", "remote_wins").unwrap();
    assert_eq!(r["pulled"], 1, "{r}");
    let s = a.call("pdb_status()").unwrap();
    assert!(s["outbox"].is_null(), "{s}");
    assert_eq!(s["pending_rows"], 0, "{s}");
    let before = proxy
        .relayed_commits
        .load(std::sync::atomic::Ordering::SeqCst);
    a.sync().unwrap();
    assert_eq!(
        proxy
            .relayed_commits
            .load(std::sync::atomic::Ordering::SeqCst),
        before,
        "nothing is sent again"
    );
    assert_eq!(w.all_commits("g").len(), 1);
}

fn tamper_head(_: &str, j: &mut Json) {
    if let Some(rec) = j["head"]["signed"]["record"].as_str() {
        let mut b = pdb_protocol::wire::unb64(rec).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        j["head"]["signed"]["record"] = Json::String(pdb_protocol::wire::b64(&b));
    }
}

fn tamper_certificate(_: &str, j: &mut Json) {
    if let Some(c) = j["commits"].get_mut(0) {
        let s = c["certificate"]["signed"]["signature"]
            .as_str()
            .unwrap()
            .to_string();
        let mut b = pdb_protocol::wire::unb64(&s).unwrap();
        b[5] ^= 1;
        c["certificate"]["signed"]["signature"] = Json::String(pdb_protocol::wire::b64(&b));
    }
}

fn tamper_changeset(_: &str, j: &mut Json) {
    if let Some(c) = j["commits"].get_mut(0) {
        let mut cs = pdb_protocol::Changeset::decode(
            &pdb_protocol::wire::unb64(c["changeset"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        cs.tables[0].changes[0].new[1] = Some(pdb_protocol::Value::text("forged"));
        c["changeset"] = Json::String(pdb_protocol::wire::b64(&cs.encode()));
    }
}

#[test]
fn a_fake_witness_that_tampers_is_rejected_and_changes_nothing() {
    for (what, f) in [
        ("head", tamper_head as fn(&str, &mut Json)),
        ("certificate", tamper_certificate),
        ("changeset", tamper_changeset),
    ] {
        let (dir, w) = setup("tamper");
        let proxy = Proxy::start(&w.url);
        let a = device(&dir, "a", &w.url);
        let b = device(&dir, "b", &proxy.url);
        b.exec("INSERT INTO notes VALUES (100, 'local, unsynced', 0)");
        a.exec("INSERT INTO notes VALUES (1, 'real', 1)");
        a.sync().unwrap();
        let (rows, head) = (notes(&b), b.call("pdb_head()").unwrap());
        proxy.set(ProxyMode::TamperGet(f));
        let err = b.sync().unwrap_err();
        assert!(
            err.contains("rejected") || err.contains("does not match") || err.contains("differs"),
            "{what}: {err}"
        );
        assert_eq!(notes(&b), rows, "{what}: local rows untouched");
        assert_eq!(
            b.call("pdb_head()").unwrap(),
            head,
            "{what}: head untouched"
        );
        let st = b.call("pdb_status()").unwrap();
        assert!(st["last_error"].as_str().is_some(), "{what}: {st}");
        proxy.set(ProxyMode::Pass);
        b.sync().unwrap();
        a.sync().unwrap();
        assert_eq!(
            notes(&a),
            notes(&b),
            "{what}: recovers once the witness is honest"
        );
        assert_eq!(b.call("pdb_verify()").unwrap()["ok"], true);
    }
}

#[test]
fn a_witness_with_another_key_is_refused() {
    let (dir, w) = setup("otherkey");
    let a = device(&dir, "a", &w.url);
    let other_dir = TempDir::new("otherkey2");
    let other = Witness::start(other_dir.path());
    other.create_group("g", DDL);
    let err = a.open_url(&other.url, "g", "remote_wins").unwrap_err();
    assert!(err.contains("not the pinned key"), "{err}");
    let fresh = Device::new(&dir.path().join("pinned.db"));
    let err = fresh
        .call(&format!(
            "pdb_open('{}', 'g', json_object('token', '{TOKEN}', 'public_key', '{}'))",
            other.url,
            "ab".repeat(32)
        ))
        .unwrap_err();
    assert!(err.contains("not the pinned key"), "{err}");
}

#[test]
fn an_unreachable_witness_is_a_clear_error_and_local_work_goes_on() {
    let (dir, mut w) = setup("down");
    let a = device(&dir, "a", &w.url);
    a.exec("INSERT INTO notes VALUES (1, 'before', 1)");
    a.sync().unwrap();
    let port = w.port();
    w.kill9();
    a.exec("INSERT INTO notes VALUES (2, 'offline', 2); UPDATE notes SET n = 10 WHERE id = 1;");
    let err = a.sync().unwrap_err();
    assert!(err.starts_with("pdb_sync: witness unreachable"), "{err}");
    let st = a.call("pdb_status()").unwrap();
    assert!(
        st["last_error"].as_str().unwrap().contains("unreachable"),
        "{st}"
    );
    a.exec("INSERT INTO notes VALUES (3, 'still offline', 3)");
    assert_eq!(notes(&a).len(), 3);
    let w = Witness::start_on(dir.path(), port);
    let r = a.sync().unwrap();
    // The commit sealed before the failure is resent byte for byte (its
    // answer may have been lost); the later write goes in a commit of its own.
    assert_eq!(r["pushed"], 2, "{r}");
    let st = a.call("pdb_status()").unwrap();
    assert!(st["last_error"].is_null(), "{st}");
    let b = device(&dir, "b", &w.url);
    assert_eq!(notes(&a), notes(&b));
}

#[test]
fn refused_access_and_a_different_local_schema_stop_with_clear_errors() {
    let (dir, w) = setup("access");
    let d = Device::new(&dir.path().join("x.db"));
    let err = d
        .call(&format!(
            "pdb_open('{}', 'g', json_object('token', 'wrong'))",
            w.url
        ))
        .unwrap_err();
    assert!(err.starts_with("pdb_open: unauthorized"), "{err}");
    // A token that stops working: pdb_sync says so once, and stops.
    let a = device(&dir, "a", &w.url);
    a.exec("INSERT INTO notes VALUES (1, 'x', 1)");
    a.exec("UPDATE pdb_state SET v = 'revoked' WHERE k = 'token'");
    let t = std::time::Instant::now();
    let err = a.sync().unwrap_err();
    assert!(
        err.contains("unauthorized") && err.contains("sync stopped"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let st = a.call("pdb_status()").unwrap();
    assert!(
        st["last_error"].as_str().unwrap().contains("unauthorized"),
        "{st}"
    );
    assert_eq!(st["pending_rows"], 1, "nothing local is lost: {st}");
    // Local tables that differ from the group's schema.
    let m = Device::new(&dir.path().join("m.db"));
    m.exec("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)");
    let err = m.open(&w, "g", "remote_wins").unwrap_err();
    assert!(err.contains("schema_mismatch"), "{err}");
    // Bad arguments say which argument is wrong.
    let err = m.call("pdb_open(NULL, 'g')").unwrap_err();
    assert!(err.contains("argument 1"), "{err}");
    let err = m
        .call(&format!(
            "pdb_open('{}', 'g', '{{\"policy\": \"sometimes\"}}')",
            w.url
        ))
        .unwrap_err();
    assert!(err.contains("policy"), "{err}");
}

#[test]
fn killing_the_process_during_pdb_sync_loses_nothing_and_duplicates_nothing() {
    let (dir, w) = setup("killsync");
    let path = dir.path().join("k.db");
    {
        let d = Device::new(&path);
        d.open(&w, "g", "remote_wins").unwrap();
    }
    let ext = extension_path();
    let mut next = 0;
    for round in 0..6u64 {
        let mut script = format!(".load {}\n.timeout 10000\n", ext.display());
        for _ in 0..40 {
            next += 1;
            script.push_str(&format!(
                "INSERT INTO notes VALUES ({next}, 'r{round}', {next});\nUPDATE notes SET n = n + 1 WHERE id = {};\nSELECT pdb_sync();\n",
                (next + 1) / 2
            ));
        }
        let mut child = std::process::Command::new("sqlite3")
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sqlite3 CLI");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(40 + round * 37));
        let _ = child.kill();
        let _ = child.wait();
    }
    let a = Device::new(&path);
    a.sync().unwrap();
    a.sync().unwrap();
    let v = a.call("pdb_verify()").unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let b = device(&dir, "b", &w.url);
    assert_eq!(
        notes(&a),
        notes(&b),
        "everything local reached the witness, once"
    );
    let ids: Vec<i64> = {
        let mut st = a.conn.prepare("SELECT id FROM notes ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!ids.is_empty());
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
