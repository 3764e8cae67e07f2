//! The history a witness keeps: idempotent replay, the rebase_if_clean
//! policy, concurrent clients, paging, crash safety and the verifier.

use pdb_e2e::*;
use pdb_protocol::wire::{CommitResponse, Policy};
use pdb_protocol::{hex, sha256, CommitRecord, Value};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DDL: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, client INTEGER NOT NULL, n INTEGER, note TEXT);";

fn item(id: i64, client: i64, n: i64) -> Vec<u8> {
    changeset(
        "items",
        &[1, 0, 0, 0],
        vec![insert(vec![
            Value::Integer(id),
            Value::Integer(client),
            Value::Integer(n),
            Value::text("x"),
        ])],
    )
}

fn commits_path(g: &GroupRef) -> String {
    format!("/v1/groups/{}/commits", g.group)
}

/// Checks the whole log as a client would: contiguous sequence numbers,
/// every certificate signed by the witness, each binding the previous
/// head and its changeset; replaying the changesets into an empty database
/// gives the signed head's state root. Returns the idempotency keys.
fn check_history(w: &Witness, g: &GroupRef, tables: &[&str]) -> Vec<String> {
    let head = w.head(&g.group);
    let commits = w.all_commits(&g.group);
    assert_eq!(
        commits.len() as u64,
        head.seq,
        "one log entry per sequence number"
    );
    let db = rusqlite::Connection::open_in_memory().unwrap();
    for sql in g.schema.ddl() {
        db.execute_batch(&sql).unwrap();
    }
    let mut prev: Option<[u8; 32]> = None;
    let mut keys = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        assert_eq!(c["seq"].as_u64(), Some(i as u64 + 1), "no gaps");
        let cert: pdb_protocol::wire::CertificateJson =
            serde_json::from_value(c["certificate"].clone()).unwrap();
        let signed = to_signed(&cert.signed);
        let rec: CommitRecord = signed.commit(&w.public_key).expect("certificate verifies");
        let cs = pdb_protocol::wire::unb64(c["changeset"].as_str().unwrap()).unwrap();
        assert_eq!(rec.seq, i as u64 + 1);
        assert_eq!(rec.changeset_digest, sha256(&cs));
        if let Some(p) = prev {
            assert_eq!(rec.prev_head, p, "chain is linked");
        }
        prev = Some(sha256(&signed.bytes));
        apply_changeset(&db, &cs);
        assert_eq!(
            rec.state_root,
            local_root(&db, tables),
            "root after commit {}",
            rec.seq
        );
        keys.push(rec.idempotency_key);
    }
    if let Some(p) = prev {
        assert_eq!(hex(&p), head.head_hash);
    }
    assert_eq!(hex(&local_root(&db, tables)), head.state_root);
    keys
}

#[test]
fn replay_returns_the_original_certificate_even_after_the_head_moved() {
    let dir = TempDir::new("replay");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    let h0 = w.head("g");
    let body = g.commit_body(
        h0.seq,
        &h0.head_hash,
        "same-key",
        &item(1, 1, 1),
        Policy::Strict,
    );
    let first = w.post(&commits_path(&g), &body);
    assert_eq!(first.status, 201, "{first:?}");
    let first: CommitResponse = serde_json::from_value(first.body).unwrap();
    assert!(!first.replay);
    // Immediately, and after other commits moved the head.
    for round in 0..3 {
        let again = w.post(&commits_path(&g), &body);
        assert_eq!(again.status, 200, "{again:?}");
        let again: CommitResponse = serde_json::from_value(again.body).unwrap();
        assert!(again.replay);
        assert_eq!(
            again.certificate, first.certificate,
            "the original certificate"
        );
        let r = w.commit_at_head(
            &g,
            &format!("other-{round}"),
            &item(10 + round, 2, 0),
            Policy::Strict,
        );
        assert_eq!(r.status, 201);
    }
    // Also after a restart.
    drop(w);
    let w = Witness::start(dir.path());
    let again = w.post(&commits_path(&g), &body);
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body["certificate"],
        serde_json::to_value(&first.certificate).unwrap()
    );
    let keys = check_history(&w, &g, &["items"]);
    assert_eq!(
        keys.iter().filter(|k| *k == "same-key").count(),
        1,
        "applied once"
    );
}

#[test]
fn rebase_if_clean_accepts_untouched_rows_only() {
    let dir = TempDir::new("policy");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    assert_eq!(
        w.commit_at_head(&g, "a", &item(1, 1, 0), Policy::Strict)
            .status,
        201
    );
    let base = w.head("g");
    // Someone else changes row 1 and inserts row 2.
    let upd = {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(DDL).unwrap();
        db.execute_batch("INSERT INTO items VALUES (1, 1, 0, 'x')")
            .unwrap();
        session_changeset(
            &db,
            "UPDATE items SET n = 5 WHERE id = 1; INSERT INTO items VALUES (2, 9, 0, 'y');",
        )
    };
    assert_eq!(w.commit_at_head(&g, "b", &upd, Policy::Strict).status, 201);
    let path = commits_path(&g);
    // From the old base: strict is stale, rebase_if_clean on a fresh row is accepted.
    let fresh = item(3, 1, 0);
    let r = w.post(
        &path,
        &g.commit_body(base.seq, &base.head_hash, "c", &fresh, Policy::Strict),
    );
    assert_eq!((r.status, r.code()), (409, "stale_head"));
    let r = w.post(
        &path,
        &g.commit_body(
            base.seq,
            &base.head_hash,
            "c",
            &fresh,
            Policy::RebaseIfClean,
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
    // A row changed since the base is refused even with the policy.
    let touch = {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(DDL).unwrap();
        db.execute_batch("INSERT INTO items VALUES (1, 1, 5, 'x')")
            .unwrap();
        session_changeset(&db, "UPDATE items SET note = 'mine' WHERE id = 1")
    };
    let before = w.head("g");
    let r = w.post(
        &path,
        &g.commit_body(
            base.seq,
            &base.head_hash,
            "d",
            &touch,
            Policy::RebaseIfClean,
        ),
    );
    assert_eq!((r.status, r.code()), (409, "stale_head"), "{r:?}");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("items"));
    assert_eq!(w.head("g").head_hash, before.head_hash);
    check_history(&w, &g, &["items"]);
}

#[test]
fn eight_concurrent_clients_make_one_linear_chain() {
    let dir = TempDir::new("concurrent");
    let w = Arc::new(Witness::start(dir.path()));
    let g = w.create_group("g", DDL);
    const CLIENTS: i64 = 8;
    const EACH: i64 = 40;
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (w, g, accepted) = (w.clone(), g.clone(), accepted.clone());
            std::thread::spawn(move || {
                for i in 0..EACH {
                    // Alternate: strict commits retried on stale_head, and
                    // rebase_if_clean commits that go straight through.
                    let key = format!("c{c}-{i}");
                    let cs = item(c * 1000 + i, c, i);
                    let policy = if i % 2 == 0 {
                        Policy::Strict
                    } else {
                        Policy::RebaseIfClean
                    };
                    loop {
                        let r = w.commit_at_head(&g, &key, &cs, policy);
                        match (r.status, r.code()) {
                            (201, _) => {
                                accepted
                                    .lock()
                                    .unwrap()
                                    .push((key.clone(), r.body["certificate"].clone()));
                                break;
                            }
                            (409, "stale_head") => continue,
                            _ => panic!("{key}: {r:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let keys = check_history(&w, &g, &["items"]);
    assert_eq!(keys.len() as i64, CLIENTS * EACH, "no lost commit");
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no duplicate");
    // Each client saw exactly the certificate that is in the log.
    let log: BTreeMap<u64, Json> = w
        .all_commits("g")
        .into_iter()
        .map(|c| (c["seq"].as_u64().unwrap(), c["certificate"].clone()))
        .collect();
    for (key, cert) in accepted.lock().unwrap().iter() {
        let seq = cert["seq"].as_u64().unwrap();
        assert_eq!(&log[&seq], cert, "{key}");
    }
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn catch_up_pages_are_bounded_and_complete() {
    let dir = TempDir::new("paging");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    for i in 0..25 {
        assert_eq!(
            w.commit_at_head(&g, &format!("k{i}"), &item(i, 0, i), Policy::Strict)
                .status,
            201
        );
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let r = w.get(&format!("/v1/groups/g/commits?after={after}&limit=10"));
        assert_eq!(r.status, 200);
        let page = r.body["commits"].as_array().unwrap();
        assert!(page.len() <= 10);
        seen.extend(page.iter().map(|c| c["seq"].as_u64().unwrap()));
        verify_head(
            &serde_json::from_value(r.body["head"].clone()).unwrap(),
            &w.public_key,
        );
        match r.body["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<u64>>());
    let r = w.get("/v1/groups/g/commits?after=25");
    assert_eq!(r.body["commits"].as_array().unwrap().len(), 0);
    assert!(r.body["next_after"].is_null());
    for bad in ["limit=0", "limit=1001", "after=-1", "after=x", "foo=1"] {
        let r = w.get(&format!("/v1/groups/g/commits?{bad}"));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }
}

/// An item whose note is `note_bytes` long.
fn big_item(id: i64, note_bytes: usize) -> Vec<u8> {
    changeset(
        "items",
        &[1, 0, 0, 0],
        vec![insert(vec![
            Value::Integer(id),
            Value::Integer(0),
            Value::Integer(id),
            Value::text(&"n".repeat(note_bytes)),
        ])],
    )
}

#[test]
fn catch_up_pages_are_bounded_by_bytes_and_a_larger_commit_still_arrives() {
    let dir = TempDir::new("pagebytes");
    let w = Witness::start_with(dir.path(), 0, &["--max-page-bytes", "10000"]);
    let g = w.create_group("g", DDL);
    // The witness says what it accepts and serves.
    let info = w.request("GET", "/v1/witness", None, None).body;
    assert_eq!(info["limits"]["max_page_bytes"], 10000, "{info}");
    assert_eq!(info["limits"]["max_body_bytes"], 8 * 1024 * 1024, "{info}");
    assert_eq!(info["limits"]["max_page_commits"], 1000, "{info}");
    assert!(info["limits"]["keep_log_commits"].is_null(), "{info}");
    // Ten commits of ~3 kB, one of ~50 kB (larger than a page), five more.
    let sizes: Vec<usize> = (0..10)
        .map(|_| 3000)
        .chain([50_000])
        .chain([3000; 5])
        .collect();
    for (i, n) in sizes.iter().enumerate() {
        let r = w.commit_at_head(
            &g,
            &format!("k{i}"),
            &big_item(i as i64, *n),
            Policy::Strict,
        );
        assert_eq!(r.status, 201, "{r:?}");
    }
    let (mut after, mut pages, mut seen) = (0, Vec::new(), Vec::new());
    for _ in 0..100 {
        let r = w.get(&format!("/v1/groups/g/commits?after={after}&limit=1000"));
        assert_eq!(r.status, 200, "{r:?}");
        let page = r.body["commits"].as_array().unwrap().clone();
        let bytes: usize = page
            .iter()
            .map(|c| unb64(c["changeset"].as_str().unwrap()).len())
            .sum();
        // Under the bound, or over it by the one commit that crossed it.
        let last = page
            .last()
            .map(|c| unb64(c["changeset"].as_str().unwrap()).len())
            .unwrap_or(0);
        assert!(bytes - last < 10000, "page of {bytes} bytes");
        pages.push(page.len());
        seen.extend(page.iter().map(|c| c["seq"].as_u64().unwrap()));
        match r.body["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, (1..=16).collect::<Vec<u64>>(), "every commit, once");
    // 80 kB of changesets in pages of about 10 kB.
    assert!(pages.len() >= 5, "pages {pages:?}");
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

fn unb64(s: &str) -> Vec<u8> {
    pdb_protocol::wire::unb64(s).expect("base64")
}

#[test]
fn kill_9_while_committing_loses_no_certified_commit() {
    let dir = TempDir::new("kill9");
    let mut w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    let certified: Arc<Mutex<Vec<(String, Json)>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3i64 {
        let url = w.url.clone();
        let stop = Instant::now() + Duration::from_millis(700);
        let threads: Vec<_> = (0..6i64)
            .map(|c| {
                let (g, certified, url) = (g.clone(), certified.clone(), url.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    let mut i = 0;
                    // Keep committing until the witness is gone.
                    loop {
                        let key = format!("r{round}-c{c}-{i}");
                        let cs = item(round * 1_000_000 + c * 10_000 + i, c, i);
                        let head = agent
                            .get(format!("{url}/v1/groups/g/head"))
                            .header("Authorization", &format!("Bearer {TOKEN}"))
                            .call();
                        let Ok(mut head) = head else { return };
                        let Ok(head): Result<Json, _> = head.body_mut().read_json() else {
                            return;
                        };
                        let (Some(seq), Some(hash)) =
                            (head["seq"].as_u64(), head["head_hash"].as_str())
                        else {
                            return;
                        };
                        let body = g.commit_body(seq, hash, &key, &cs, Policy::RebaseIfClean);
                        let r = agent
                            .post(format!("{url}/v1/groups/g/commits"))
                            .header("Authorization", &format!("Bearer {TOKEN}"))
                            .send_json(&body);
                        let Ok(mut r) = r else { return };
                        if r.status().as_u16() == 201 {
                            if let Ok(b) = r.body_mut().read_json::<Json>() {
                                certified
                                    .lock()
                                    .unwrap()
                                    .push((key, b["certificate"].clone()));
                            }
                        }
                        i += 1;
                        if Instant::now() > stop + Duration::from_secs(5) {
                            return;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        w.kill9();
        for t in threads {
            t.join().unwrap();
        }
        w = Witness::start(dir.path());
    }
    let certified = certified.lock().unwrap();
    assert!(
        certified.len() > 30,
        "the clients got certificates before each kill ({})",
        certified.len()
    );
    let log: BTreeMap<u64, Json> = w
        .all_commits("g")
        .into_iter()
        .map(|c| (c["seq"].as_u64().unwrap(), c["certificate"].clone()))
        .collect();
    for (key, cert) in certified.iter() {
        let seq = cert["seq"].as_u64().unwrap();
        assert_eq!(
            log.get(&seq),
            Some(cert),
            "certified commit {key} is in the log"
        );
    }
    check_history(&w, &g, &["items"]);
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn the_verifier_catches_tampering_on_disk() {
    let dir = TempDir::new("tamper");
    let mut w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    for i in 0..5 {
        assert_eq!(
            w.commit_at_head(&g, &format!("k{i}"), &item(i, 0, i), Policy::Strict)
                .status,
            201
        );
    }
    assert_eq!(w.terminate().code(), Some(0), "graceful shutdown exits 0");
    let data = w.data_dir.clone();
    let (ok, out) = verify_cli(&data);
    assert!(ok, "{out}");
    assert!(out.contains("5 commits"), "{out}");
    let file = data.join("groups/g.sqlite");
    let db = rusqlite::Connection::open(&file).unwrap();
    // Change the replica behind the log's back.
    db.execute("UPDATE items SET n = 99 WHERE id = 2", [])
        .unwrap();
    let (ok, out) = verify_cli(&data);
    assert!(!ok && out.contains("does not match"), "{out}");
    db.execute("UPDATE items SET n = 2 WHERE id = 2", [])
        .unwrap();
    assert!(verify_cli(&data).0);
    // Change a logged changeset.
    let cs: Vec<u8> = db
        .query_row("SELECT changeset FROM pdb_log WHERE seq = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut bad = cs.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    db.execute("UPDATE pdb_log SET changeset = ?1 WHERE seq = 3", [&bad])
        .unwrap();
    let (ok, out) = verify_cli(&data);
    assert!(!ok && out.contains("commit 3"), "{out}");
    db.execute("UPDATE pdb_log SET changeset = ?1 WHERE seq = 3", [&cs])
        .unwrap();
    // Forge a certificate byte.
    let rec: Vec<u8> = db
        .query_row("SELECT record FROM pdb_log WHERE seq = 4", [], |r| r.get(0))
        .unwrap();
    let mut forged = rec.clone();
    forged[20] ^= 1;
    db.execute("UPDATE pdb_log SET record = ?1 WHERE seq = 4", [&forged])
        .unwrap();
    let (ok, out) = verify_cli(&data);
    assert!(!ok && out.contains("signature"), "{out}");
}

#[test]
fn groups_can_be_created_from_the_command_line_while_stopped() {
    let dir = TempDir::new("cli");
    let mut w = Witness::start(dir.path());
    let schema = dir.path().join("schema.sql");
    std::fs::write(&schema, DDL).unwrap();
    let run = |data: &std::path::Path| {
        std::process::Command::new(target_binary("pdb-witness"))
            .arg("--data-dir")
            .arg(data)
            .args(["create-group", "--group", "cli", "--schema"])
            .arg(&schema)
            .output()
            .unwrap()
    };
    let out = run(&w.data_dir);
    assert!(!out.status.success(), "refused while the witness runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("running witness"));
    w.terminate();
    let out = run(&w.data_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = Witness::start(dir.path());
    let r = w.get("/v1/groups/cli");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["head"]["seq"], 0);
    assert_eq!(
        w.commit_at_head(
            &GroupRef::from_json(&r.body),
            "k",
            &item(1, 1, 1),
            Policy::Strict
        )
        .status,
        201
    );
}

#[test]
fn values_are_certified_exactly_as_sqlite_stores_them() {
    let dir = TempDir::new("values");
    let w = Witness::start(dir.path());
    let ddl = "CREATE TABLE v(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, a ANY);";
    let g = w.create_group("v", ddl);
    let rows = vec![
        // Affinity at work: text into INTEGER, integer into REAL, number into TEXT.
        vec![
            Value::Integer(1),
            Value::text("42"),
            Value::Integer(3),
            Value::Integer(7),
            Value::Blob(vec![]),
            Value::Real(-0.0),
        ],
        vec![
            Value::Integer(2),
            Value::Integer(i64::MIN),
            Value::Real(-0.0),
            Value::text("ünï ✓ \u{0}"),
            Value::Blob(vec![0; 70_000]),
            Value::Null,
        ],
        vec![
            Value::Integer(3),
            Value::Integer(i64::MAX),
            Value::Real(f64::MAX),
            Value::Text(vec![0xff, 0xfe]),
            Value::Null,
            Value::text("x"),
        ],
        vec![
            Value::Integer(4),
            Value::Real(1.5),
            Value::text("2.5"),
            Value::Real(1e-300),
            Value::Blob(vec![1]),
            Value::Integer(0),
        ],
    ];
    for (i, r) in rows.into_iter().enumerate() {
        let cs = changeset("v", &[1, 0, 0, 0, 0, 0], vec![insert(r)]);
        assert_eq!(
            w.commit_at_head(&g, &format!("k{i}"), &cs, Policy::Strict)
                .status,
            201
        );
    }
    let upd = changeset(
        "v",
        &[1, 0, 0, 0, 0, 0],
        vec![pdb_protocol::Change {
            op: pdb_protocol::Op::Update,
            indirect: false,
            old: vec![
                Some(Value::Integer(1)),
                Some(Value::Integer(42)),
                None,
                None,
                None,
                None,
            ],
            new: vec![None, Some(Value::text("43")), None, None, None, None],
        }],
    );
    let r = w.commit_at_head(&g, "upd", &upd, Policy::Strict);
    assert_eq!(
        r.status, 201,
        "old values compare against the stored (converted) value: {r:?}"
    );
    check_history(&w, &g, &["v"]);
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
