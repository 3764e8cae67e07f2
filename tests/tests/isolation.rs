//! One caller cannot hurt another, against a real witness: hostile write
//! rules, visibility rules and projection queries are stopped by their
//! budget while a second group's commits and reads keep completing and the
//! admin repairs the first; read-only bypasses are refused when defined;
//! cursors never wrap; floods of idle connections and stalled bodies leave
//! others served; hyper's own errors are JSON; a full disk is
//! `storage_full`; shutdown ends whatever runs.
//!
//! No timing thresholds: every wait is a generous bound on completion.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::{json, Value as Json};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DDL: &str = "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, owner TEXT);";
/// Never ends on its own.
const SPIN: &str =
    "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c) > 0";
/// Small budgets keep each hostile evaluation short.
const BUDGET: [&str; 4] = ["--sql-steps", "2000000", "--sql-millis", "30000"];

fn start(dir: &TempDir, extra: &[&str]) -> Witness {
    let mut args: Vec<&str> = BUDGET.to_vec();
    args.extend_from_slice(extra);
    Witness::start_with(dir.path(), 0, &args)
}

fn task(id: i64, title: &str, owner: &str) -> Vec<u8> {
    changeset(
        "tasks",
        &[1, 0, 0],
        vec![insert(vec![
            Value::Integer(id),
            Value::text(title),
            Value::text(owner),
        ])],
    )
}

/// Commits one new task at the group's current head (rebasing if others
/// got in first).
fn commit(w: &Witness, g: &GroupRef, key: &str, id: i64, title: &str) -> Reply {
    w.commit_at_head(g, key, &task(id, title, "ops"), Policy::RebaseIfClean)
}

fn put(w: &Witness, path: &str, body: Json) -> Reply {
    w.request("PUT", path, Some(TOKEN), Some(&body))
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < until, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Commits and reads on `g` while `busy` is set; returns how many of each
/// completed (every one must succeed).
fn keep_working(w: &Witness, g: &GroupRef, busy: &AtomicBool, first_id: i64) -> u64 {
    let mut done = 0;
    let mut id = first_id;
    while busy.load(Ordering::SeqCst) || done < 5 {
        id += 1;
        let r = commit(w, g, &format!("good-{id}"), id, "fine");
        assert_eq!(r.status, 201, "the other group's commit: {r:?}");
        let page = w.get(&format!("/v1/groups/{}/commits?after=0&limit=5", g.group));
        assert_eq!(page.status, 200, "the other group's read: {page:?}");
        done += 1;
        assert!(done < 10_000, "bounded");
    }
    done
}

#[test]
fn a_hostile_rule_is_stopped_and_repaired_while_another_group_carries_on() {
    let dir = TempDir::new("iso-rule");
    let w = Arc::new(start(&dir, &[]));
    let bad = w.create_group("bad", DDL);
    let good = w.create_group("good", DDL);
    let r = put(&w, "/v1/groups/bad/rules/tasks", json!({ "expr": SPIN }));
    assert_eq!(r.status, 200, "a spinning rule only reads: {r:?}");

    // A stream of commits into the hostile group, each stopped by its
    // budget and refused with rule_error naming table, key and rule.
    let busy = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicU64::new(0));
    let hostile = {
        let (w, bad, busy, refused) = (w.clone(), bad.clone(), busy.clone(), refused.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while busy.load(Ordering::SeqCst) {
                n += 1;
                let r = commit(&w, &bad, &format!("bad-{n}"), n, "x");
                if r.status == 201 {
                    return n; // the rule was repaired
                }
                assert_eq!((r.status, r.code()), (422, "rule_error"), "{r:?}");
                assert_eq!(r.body["error"]["table"], "tasks");
                assert_eq!(r.body["error"]["key"], json!([n]));
                let m = r.body["error"]["message"].as_str().unwrap();
                assert!(
                    m.contains("write rule of table") && m.contains("steps"),
                    "{m}"
                );
                assert_eq!(r.body["error"]["retryable"], false);
                refused.fetch_add(1, Ordering::SeqCst);
                assert!(n < 10_000, "bounded");
            }
            n
        })
    };
    eventually("a hostile commit refused", || {
        refused.load(Ordering::SeqCst) > 0
    });
    // The other group goes on meanwhile.
    let running = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            eventually("more hostile commits", || {
                refused.load(Ordering::SeqCst) > 3
            });
            running.store(false, Ordering::SeqCst);
        });
        keep_working(&w, &good, &running, 0);
    });
    // The admin replaces the rule while commits keep hitting it.
    let r = put(
        &w,
        "/v1/groups/bad/rules/tasks",
        json!({ "expr": "new.owner = :caller OR 1" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let n = hostile.join().unwrap();
    busy.store(false, Ordering::SeqCst);
    assert!(n > 1);
    let r = commit(&w, &bad, "after-fix", 100_000, "ok");
    assert_eq!(r.status, 201, "{r:?}");
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn a_hostile_visibility_rule_cannot_starve_other_groups() {
    let dir = TempDir::new("iso-vis");
    let w = Arc::new(start(&dir, &["--group-reads", "2"]));
    let bad = w.create_group("bad", DDL);
    let good = w.create_group("good", DDL);
    assert_eq!(commit(&w, &bad, "b1", 1, "row").status, 201);
    let r = put(
        &w,
        "/v1/groups/bad/projections/p",
        json!({"table": "tasks", "columns": ["id", "owner"], "visibility": SPIN}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let port = w.port();

    // Readers that wait for their answer: each is stopped by the budget,
    // or told the group is busy; never a hang.
    let busy = Arc::new(AtomicBool::new(true));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (w, busy) = (w.clone(), busy.clone());
        readers.push(std::thread::spawn(move || {
            let mut n = 0;
            while busy.load(Ordering::SeqCst) && n < 200 {
                n += 1;
                let r = w.get("/v1/groups/bad/projections/p");
                if r.status == 404 {
                    break; // dropped by the admin
                }
                assert!(
                    (r.status, r.code()) == (422, "rule_error")
                        || (r.status, r.code()) == (503, "overloaded"),
                    "{r:?}"
                );
            }
        }));
    }
    // And hundreds of abandoned reads: sent, never waited for.
    let abandoned = std::thread::spawn(move || {
        for _ in 0..300 {
            let mut s = connect_from([127, 0, 0, 1], port);
            let _ = write!(
                s,
                "GET /v1/groups/bad/projections/p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            );
        }
    });
    let running = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            abandoned.join().unwrap();
            running.store(false, Ordering::SeqCst);
        });
        keep_working(&w, &good, &running, 0);
    });
    // The admin drops the projection meanwhile; the other group's head
    // answers the operator as always.
    let r = w.request("DELETE", "/v1/groups/bad/projections/p", Some(TOKEN), None);
    assert_eq!(r.status, 200, "{r:?}");
    busy.store(false, Ordering::SeqCst);
    for t in readers {
        t.join().unwrap();
    }
    w.head("good");
    assert_eq!(commit(&w, &bad, "b2", 2, "row").status, 201);
}

#[test]
fn hostile_projection_sql_is_refused_at_definition_or_marked_broken() {
    let dir = TempDir::new("iso-proj");
    let w = start(&dir, &[]);
    let g = w.create_group("g", DDL);
    assert_eq!(commit(&w, &g, "k1", 1, "calm").status, 201);
    // A query that never ends cannot even be filled.
    let r = put(
        &w,
        "/v1/groups/g/projections/q",
        json!({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"}),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("steps"),
        "{r:?}"
    );
    assert_eq!(w.get("/v1/groups/g/projections/q").status, 404);

    // A filter that spins only on some rows: defined fine, broken by the
    // first commit that reaches it; commits go on.
    let r = put(
        &w,
        "/v1/groups/g/projections/p",
        json!({"table": "tasks", "columns": ["id", "title"],
               "where": format!("CASE WHEN title = 'boom' THEN {SPIN} ELSE 1 END")}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        w.get("/v1/groups/g/projections/p").body["rows"],
        json!([[1, "calm"]])
    );
    assert_eq!(commit(&w, &g, "k2", 2, "boom").status, 201);
    assert_eq!(commit(&w, &g, "k3", 3, "calm").status, 201);
    let r = w.get("/v1/groups/g/projections/p");
    assert_eq!((r.status, r.code()), (422, "rule_error"), "{r:?}");
    let m = r.body["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("not maintained") && m.contains("commit 2"),
        "{m}"
    );
    let list = w.get("/v1/groups/g/projections");
    assert!(
        list.body["projections"][0]["broken"].is_string(),
        "{list:?}"
    );
    // Defining it again (sanely) brings it back, in step with the head.
    let r = put(
        &w,
        "/v1/groups/g/projections/p",
        json!({"table": "tasks", "columns": ["id", "title"], "where": "title <> 'boom'"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.get("/v1/groups/g/projections/p");
    assert_eq!(r.body["rows"], json!([[1, "calm"], [3, "calm"]]), "{r:?}");

    // Rules that try to take memory: one huge value, or many held at once.
    let doubling = "(WITH RECURSIVE c(x, s) AS (SELECT 1, 'ab' UNION ALL SELECT x + 1, s || s FROM c WHERE x < 40) SELECT max(length(s)) FROM c) > 0";
    let hoarding = "(WITH RECURSIVE c(x, s) AS (SELECT 1, 'a' UNION ALL SELECT x + 1, CASE WHEN length(s) < 65536 THEN s || s ELSE s END FROM c WHERE x < 5000) SELECT count(*) FROM (SELECT s || x AS t FROM c ORDER BY t)) > 0";
    for (n, (expr, says)) in [(doubling, "larger than"), (hoarding, "memory")]
        .into_iter()
        .enumerate()
    {
        let r = put(&w, "/v1/groups/g/rules/tasks", json!({ "expr": expr }));
        assert_eq!(r.status, 200, "{r:?}");
        let before = w.head("g");
        let r = commit(&w, &g, &format!("mem-{n}"), 50, "x");
        assert_eq!((r.status, r.code()), (422, "rule_error"), "{r:?}");
        let m = r.body["error"]["message"].as_str().unwrap();
        assert!(m.contains(says), "{says}: {m}");
        assert_eq!(w.head("g").head_hash, before.head_hash, "nothing changed");
    }
    let r = w.request("DELETE", "/v1/groups/g/rules/tasks", Some(TOKEN), None);
    assert_eq!(r.status, 200);
    assert_eq!(commit(&w, &g, "k4", 4, "calm").status, 201);
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn read_only_bypasses_are_refused_when_defined() {
    let dir = TempDir::new("iso-bypass");
    let w = start(&dir, &[]);
    w.create_group("g", DDL);
    let version = || {
        w.get("/v1/groups/g/rules").body["version"]
            .as_i64()
            .unwrap()
    };
    let v0 = version();
    let sneaky = [
        "EXISTS (SELECT 1 FROM pdb_members)",
        "(SELECT count(*) FROM pdb_access_log) >= 0",
        "(SELECT count(*) FROM sqlite_schema) > 0",
        "(SELECT count(*) FROM sqlite_master) > 0",
        "(SELECT count(*) FROM pragma_table_list) > 0",
        "(SELECT count(*) FROM pragma_database_list) > 0",
        "EXISTS (SELECT file FROM pragma_database_list)",
        "(SELECT count(*) FROM dbstat) > 0",
        "(SELECT count(*) FROM json_each('[1]')) > 0",
        "length(randomblob(900000000)) > 0",
        "length(zeroblob(900000000)) > 0",
        "length(printf('%.*c', 900000000, 'x')) > 0",
        "length(format('%s', 'x')) > 0",
        "random() > 0",
        "load_extension('/tmp/x') IS NULL",
        "sqlite_version() > ''",
        "(WITH pdb_x(v) AS (SELECT 1) SELECT count(*) FROM pdb_log) > 0",
        "(SELECT count(*) FROM main.pdb_row_version) > 0",
        "(SELECT count(*) FROM temp.sqlite_temp_master) >= 0",
        "1; DROP TABLE tasks",
        "nope(",
        "",
    ];
    for expr in sneaky {
        let r = put(&w, "/v1/groups/g/rules/tasks", json!({ "expr": expr }));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{expr}: {r:?}");
        let r = put(&w, "/v1/groups/g/rules/tasks", json!({ "update": expr }));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{expr}: {r:?}");
    }
    assert_eq!(version(), v0, "nothing was stored");
    assert_eq!(w.get("/v1/groups/g/rules").body["rules"], json!([]));
    let where_of = |e: &str| json!({"table": "tasks", "columns": ["id"], "where": e});
    let visible = |e: &str| json!({"table": "tasks", "columns": ["id"], "visibility": e});
    for expr in sneaky.iter().filter(|e| !e.is_empty()) {
        for def in [where_of(expr), visible(expr)] {
            let r = put(&w, "/v1/groups/g/projections/p", def);
            assert_eq!((r.status, r.code()), (400, "bad_request"), "{expr}: {r:?}");
        }
    }
    for query in [
        "SELECT * FROM pdb_members",
        "SELECT name FROM pragma_database_list",
        "SELECT * FROM sqlite_schema",
        "SELECT * FROM dbstat",
        "SELECT randomblob(10) AS r",
        "SELECT id AS pdb_k0 FROM tasks",
        "SELECT t.id FROM tasks AS t, pdb_proj_other AS o",
    ] {
        let r = put(&w, "/v1/groups/g/projections/p", json!({ "query": query }));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{query}: {r:?}");
    }
    assert_eq!(
        w.get("/v1/groups/g/projections").body["projections"],
        json!([])
    );
    // What is allowed still works: the group's tables, the listed functions.
    let r = put(
        &w,
        "/v1/groups/g/rules/tasks",
        json!({"expr": "lower(new.owner) = :caller AND NOT EXISTS (SELECT 1 FROM tasks WHERE title = new.title AND id <> new.id)"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn cursors_limits_and_ranges_are_validated_and_never_wrap() {
    let dir = TempDir::new("iso-numbers");
    let w = start(&dir, &[]);
    let g = w.create_group("g", DDL);
    for i in 1..=3 {
        assert_eq!(commit(&w, &g, &format!("k{i}"), i, "t").status, 201);
    }
    let r = put(
        &w,
        "/v1/groups/g/projections/p",
        json!({"table": "tasks", "columns": ["id"]}),
    );
    assert_eq!(r.status, 200);
    for base in ["/v1/groups/g/commits", "/v1/groups/g/projections/p"] {
        for after in [
            "9223372036854775808",
            "18446744073709551615",
            "-1",
            "1e3",
            "0x10",
            "",
        ] {
            let r = w.get(&format!("{base}?after={after}"));
            assert_eq!(
                (r.status, r.code()),
                (400, "bad_request"),
                "{base} after={after}: {r:?}"
            );
        }
        for limit in ["0", "1001", "4294967297", "-1"] {
            let r = w.get(&format!("{base}?limit={limit}"));
            assert_eq!(
                (r.status, r.code()),
                (400, "bad_request"),
                "{base} limit={limit}: {r:?}"
            );
        }
        let r = w.get(&format!("{base}?after=9223372036854775807"));
        if base.ends_with("commits") {
            // Past the head: a history this witness does not have.
            assert_eq!((r.status, r.code()), (409, "unknown_head"), "{r:?}");
        } else {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.body["rows"], json!([]), "past every row");
            assert!(r.body["next_after"].is_null());
        }
    }
    let snap = w.post("/v1/groups/g/snapshots", &Json::Null);
    assert_eq!(snap.status, 201);
    let seq = snap.body["seq"].as_u64().unwrap();
    for range in [
        "bytes=18446744073709551615-",
        "bytes=18446744073709551614-18446744073709551615",
    ] {
        let r = raw_request(
            w.port(),
            format!("GET /v1/groups/g/snapshots/{seq}/data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nRange: {range}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 416, "{range}: {r:?}");
        assert_eq!(r.json()["error"]["code"], "range_not_satisfiable");
    }
    for range in ["bytes=18446744073709551616-", "bytes=-5", "bytes=5-2x"] {
        let r = raw_request(
            w.port(),
            format!("GET /v1/groups/g/snapshots/{seq}/data HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nRange: {range}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "{range}: {r:?}");
    }
    let r = w.get("/v1/groups/g/snapshots/99999999999999999999/data");
    assert_eq!((r.status, r.code()), (404, "not_found"), "{r:?}");
    assert_eq!(w.all_commits("g").len(), 3);
}

/// Sends the head of a chunked commit and one chunk, then stalls.
fn stalled_body(from: [u8; 4], port: u16, chunk: usize) -> std::net::TcpStream {
    let mut s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // The witness may refuse (and close) before all of it is written: a
    // write that fails then is an answer too, read by `answered`.
    let _ = write!(
        s,
        "POST /v1/groups/good/commits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunk:x}\r\n"
    );
    let _ = s.write_all(&vec![b' '; chunk]);
    let _ = s.write_all(b"\r\n");
    s
}

/// Splits `streams` into those the witness answered (with the answers)
/// and those it keeps waiting, once `answered` of them have answers.
fn answered(
    streams: Vec<std::net::TcpStream>,
    answered: usize,
) -> (Vec<RawReply>, Vec<std::net::TcpStream>) {
    let has_data = |s: &std::net::TcpStream| {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let yes = matches!(s.peek(&mut b), Ok(n) if n > 0);
        s.set_nonblocking(false).unwrap();
        yes
    };
    eventually(&format!("{answered} answers"), || {
        streams.iter().filter(|s| has_data(s)).count() >= answered
    });
    let (mut replies, mut waiting) = (Vec::new(), Vec::new());
    for mut s in streams {
        if has_data(&s) {
            replies.push(read_answer(&mut s).unwrap());
        } else {
            waiting.push(s);
        }
    }
    (replies, waiting)
}

#[test]
fn floods_of_idle_connections_and_stalled_bodies_leave_others_served() {
    let dir = TempDir::new("iso-flood");
    let w = start(
        &dir,
        &[
            "--max-connections-per-ip",
            "40",
            "--max-buffered-bytes",
            "2097152",
            "--max-body-bytes",
            "262144",
            "--body-timeout-secs",
            "10",
            "--idle-timeout-secs",
            "10",
        ],
    );
    let good = w.create_group("good", DDL);
    let port = w.port();
    // 60 idle connections from one address: 40 stay open, the other 20 are
    // told why (429, JSON, Retry-After) and closed.
    let idle: Vec<_> = (0..60)
        .map(|_| connect_from([127, 0, 0, 2], port))
        .collect();
    let (refused, idle) = answered(idle, 20);
    assert_eq!(refused.len(), 20);
    for r in &refused {
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str()),
            (429, Some("overloaded")),
            "{r:?}"
        );
        assert!(r.header("retry-after").is_some());
    }
    // 30 bodies from another address that never finish, 128 KiB each so
    // far: past the address's share of bodies held (a quarter of 2 MiB)
    // the witness answers `overloaded` at once.
    let stalled: Vec<_> = (0..30)
        .map(|_| stalled_body([127, 0, 0, 3], port, 128 * 1024))
        .collect();
    let (over, stalled) = answered(stalled, 26);
    for r in &over {
        assert_eq!(r.json()["error"]["code"], "overloaded", "{r:?}");
        assert!(r.header("retry-after").is_some());
    }
    // Everyone else is served meanwhile.
    for i in 1..=20 {
        assert_eq!(commit(&w, &good, &format!("k{i}"), i, "t").status, 201);
        w.head("good");
    }
    // The stalled bodies end at their deadline with a clear 400; the idle
    // connections are closed.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let r = read_answer(&mut s).unwrap();
        assert_eq!(r.status, 400, "a stalled body: {r:?}");
        assert!(r.body.contains("did not arrive"), "{r:?}");
    }
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "an idle connection is closed"
        );
    }
    assert_eq!(w.all_commits("good").len(), 20);
}

#[test]
fn hypers_own_errors_have_json_bodies_too() {
    let dir = TempDir::new("iso-hyper");
    let w = start(&dir, &[]);
    let port = w.port();
    let r = raw_request(port, b"GARBAGE\r\n\r\n");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{r:?}"
    );
    let r = raw_request(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{r:?}"
    );
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw_request(port, big.as_bytes());
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (431, Some("headers_too_large")),
        "{r:?}"
    );
    // The witness's own answers keep their bodies and ids, on one
    // keep-alive connection, HEAD answers included.
    let mut s = connect_from([127, 0, 0, 1], port);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for req in [
        "HEAD /v1/groups HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-42\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/groups HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        s.write_all(req.as_bytes()).unwrap();
        let r = read_answer_to(&mut s, req.starts_with("HEAD")).unwrap();
        assert!(r.header("x-request-id").is_some(), "{req}: {r:?}");
        match req.split(' ').nth(1).unwrap() {
            "/nope" => {
                assert_eq!(r.status, 404);
                assert_eq!(r.header("x-request-id"), Some("trace-42"));
                assert_eq!(r.json()["error"]["code"], "not_found");
            }
            "/healthz" => assert_eq!(r.status, 200, "{r:?}"),
            _ if req.starts_with("HEAD") => assert_eq!((r.status, r.body.as_str()), (401, "")),
            _ => assert_eq!(
                (r.status, r.json()["error"]["code"].as_str()),
                (401, Some("unauthorized"))
            ),
        }
    }
}

#[test]
fn a_full_disk_is_storage_full_and_health_says_so() {
    let dir = TempDir::new("iso-full");
    let mut w = start(&dir, &[]);
    let g = w.create_group("g", DDL);
    assert_eq!(commit(&w, &g, "k1", 1, "t").status, 201);
    w.terminate();
    // A reserve larger than any disk: as if the disk were full.
    let w = Witness::start_with(dir.path(), 0, &["--reserve-bytes", "18446744073709551615"]);
    let health = raw_request(
        w.port(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health.status, 507, "{health:?}");
    assert_eq!(health.json()["error"]["code"], "storage_full");
    assert!(health.header("retry-after").is_some());
    let before = w.head("g");
    let body = g.commit_body(
        before.seq,
        &before.head_hash,
        "k2",
        &task(2, "t", "o"),
        Policy::Strict,
    );
    let r = raw_request(
        w.port(),
        format!(
            "POST /v1/groups/g/commits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.to_string().len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "storage_full");
    assert_eq!(r.json()["error"]["retryable"], true);
    assert!(r.header("retry-after").is_some());
    assert_eq!(w.head("g").head_hash, before.head_hash, "nothing changed");
    drop(w);
    let w = start(&dir, &[]);
    assert_eq!(w.get("/healthz").status, 200);
    assert_eq!(commit(&w, &g, "k2", 2, "t").status, 201);
}

#[test]
fn shutdown_finishes_whatever_admin_sql_is_running() {
    let dir = TempDir::new("iso-stop");
    // Budgets too large to end anything in this test's lifetime.
    let mut w = Witness::start_with(
        dir.path(),
        0,
        &[
            "--sql-steps",
            "1000000000000000",
            "--sql-millis",
            "100000000",
        ],
    );
    let g = w.create_group("g", DDL);
    let r = put(&w, "/v1/groups/g/rules/tasks", json!({ "expr": SPIN }));
    assert_eq!(r.status, 200);
    let url = w.url.clone();
    let spinning = std::thread::spawn(move || {
        // Answered or cut off by the shutdown; either way it ends.
        let body = {
            let h = agent()
                .get(format!("{url}/v1/groups/g/head"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .call()
                .unwrap()
                .body_mut()
                .read_json::<Json>()
                .unwrap();
            g.commit_body(
                h["seq"].as_u64().unwrap(),
                h["head_hash"].as_str().unwrap(),
                "spin",
                &task(1, "t", "o"),
                Policy::Strict,
            )
        };
        let _ = agent()
            .post(format!("{url}/v1/groups/g/commits"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send_json(body);
    });
    eventually("the writer is busy with the rule", || {
        w.get("/v1/groups/g/stats").body["busy_for_ms"].is_u64()
    });
    let status = w.terminate();
    assert!(status.success(), "{status:?}");
    spinning.join().unwrap();
}
