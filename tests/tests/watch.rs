//! Watching a group's head: `GET /v1/groups/<g>/head?after=SEQ&wait=S`
//! answers as soon as the head passes SEQ, or with the current head when
//! the wait ends; waits are bounded per caller and in total, do not count
//! as calls in progress, and end on shutdown.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::Value as Json;

const DDL: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT);";

fn item(id: i64) -> Vec<u8> {
    changeset(
        "items",
        &[1, 0],
        vec![insert(vec![Value::Integer(id), Value::text("x")])],
    )
}

/// A head watch by `token` in a thread of its own; its answer when it
/// comes.
fn watch(w: &Witness, token: &str, query: &str) -> std::thread::JoinHandle<(u16, Json)> {
    let url = format!("{}/v1/groups/g/head?{query}", w.url);
    let auth = format!("Bearer {token}");
    std::thread::spawn(move || {
        let mut r = agent()
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .expect("watch");
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap_or(Json::Null))
    })
}

#[test]
fn a_watch_answers_when_the_head_passes_or_the_wait_ends() {
    let dir = TempDir::new("watch");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    let info = w.request("GET", "/v1/witness", None, None).body;
    assert_eq!(info["limits"]["max_wait_seconds"], 60, "{info}");
    // Already past: at once.
    assert_eq!(
        w.commit_at_head(&g, "k1", &item(1), Policy::Strict).status,
        201
    );
    let r = w.get("/v1/groups/g/head?after=0&wait=30");
    assert_eq!((r.status, r.body["seq"].as_u64()), (200, Some(1)), "{r:?}");
    // Waiting: answered by the next commit (the wait is far longer).
    let waiting = watch(&w, TOKEN, "after=1&wait=60");
    assert_eq!(
        w.commit_at_head(&g, "k2", &item(2), Policy::Strict).status,
        201
    );
    let (status, head) = waiting.join().unwrap();
    assert_eq!((status, head["seq"].as_u64()), (200, Some(2)), "{head}");
    let h: pdb_protocol::wire::HeadJson = serde_json::from_value(head).unwrap();
    verify_head(&h, &w.public_key);
    // Nothing moves: the current head when the wait ends.
    let r = w.get("/v1/groups/g/head?after=2&wait=1");
    assert_eq!((r.status, r.body["seq"].as_u64()), (200, Some(2)), "{r:?}");
    // Bad input is refused and changes nothing.
    for bad in [
        "after=1&wait=61",
        "wait=5",
        "after=x&wait=1",
        "after=1&nope=1",
    ] {
        let r = w.get(&format!("/v1/groups/g/head?{bad}"));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}: {r:?}");
    }
    // No access, no watch.
    let r = w.request(
        "GET",
        "/v1/groups/g/head?after=0&wait=1",
        Some("not-a-token"),
        None,
    );
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn watches_are_bounded_and_end_on_shutdown() {
    let dir = TempDir::new("watchbounds");
    let rita = add_token(&dir.path().join("data"), "rita");
    let mut w = Witness::start_with(
        dir.path(),
        0,
        &[
            "--max-watchers-per-caller",
            "2",
            "--max-calls-per-caller",
            "2",
        ],
    );
    w.create_group("g", DDL);
    let r = w.request(
        "PUT",
        "/v1/groups/g/members/rita",
        Some(TOKEN),
        Some(&serde_json::json!({"role": "reader"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // Two watches by one caller wait; while they do, their slots among
    // the caller's calls in progress (2 at most) are free: other calls
    // go (bounded waits until both are parked).
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (tx, t) = (tx.clone(), watch(&w, &rita, "after=0&wait=60"));
        std::thread::spawn(move || tx.send(t.join().unwrap()).unwrap());
    }
    let metrics = || {
        raw_request(
            w.port(),
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .body
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
    let both = (0..500).any(|_| {
        metrics().contains("pdb_waiters 2") || {
            pause();
            false
        }
    });
    assert!(both, "two watches wait: {}", metrics());
    let rita_get = |path: &str| w.request("GET", path, Some(&rita), None);
    let go = (0..500).any(|_| {
        rita_get("/v1/groups/g").status == 200 || {
            pause();
            false
        }
    });
    assert!(go, "calls go while the watches wait");
    // A third watch is refused: the caller's watches are bounded (a
    // refusal for calls in progress is a watch still reading its head).
    let mut refused = None;
    for _ in 0..500 {
        let r = rita_get("/v1/groups/g/head?after=0&wait=60");
        assert_eq!((r.status, r.code()), (429, "overloaded"), "{r:?}");
        if r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("watch")
        {
            refused = Some(r);
            break;
        }
        pause();
    }
    assert!(refused.is_some(), "the third watch is refused");
    assert!(rx.try_recv().is_err(), "both still wait");
    // Shutdown ends the waits: each gets the current head, and the
    // witness exits cleanly.
    let status = w.terminate();
    assert!(status.success(), "{status:?}");
    for _ in 0..2 {
        let (status, head) = rx.recv().unwrap();
        assert_eq!((status, head["seq"].as_u64()), (200, Some(0)), "{head}");
    }
}

#[test]
fn a_migration_moves_the_head_and_a_closed_group_keeps_its_watchers() {
    let dir = TempDir::new("watchmig");
    // One group open at once: touching another closes the watched one.
    let w = Witness::start_with(dir.path(), 0, &["--max-open-groups", "1"]);
    w.create_group("g", DDL);
    w.create_group("h", DDL);
    // A migration entry moves the head: the watch answers.
    let waiting = watch(&w, TOKEN, "after=0&wait=60");
    let r = w.post(
        "/v1/groups/g/migrations",
        &serde_json::json!({"ddl": "ALTER TABLE items ADD COLUMN n INTEGER"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let (status, head) = waiting.join().unwrap();
    assert_eq!((status, head["seq"].as_u64()), (200, Some(1)), "{head}");
    // The watched group closes (another is opened) while a watch waits;
    // the commit that reopens it still answers the watch.
    let waiting = watch(&w, TOKEN, "after=1&wait=60");
    let metrics = || {
        raw_request(
            w.port(),
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .body
    };
    for _ in 0..100 {
        if metrics().contains("pdb_waiters 1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(metrics().contains("pdb_waiters 1"), "{}", metrics());
    assert_eq!(w.get("/v1/groups/h").status, 200);
    let g = GroupRef::from_json(&w.get("/v1/groups/g").body);
    let c = changeset(
        "items",
        &[1, 0, 0],
        vec![insert(vec![
            Value::Integer(1),
            Value::text("x"),
            Value::Null,
        ])],
    );
    assert_eq!(w.commit_at_head(&g, "k1", &c, Policy::Strict).status, 201);
    let (status, head) = waiting.join().unwrap();
    assert_eq!((status, head["seq"].as_u64()), (200, Some(2)), "{head}");
}
