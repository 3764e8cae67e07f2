//! Found by attacking the witness as hostile users, careless users and
//! operators would; each test failed before its fix:
//!
//! - the admins of one group, flooding slow projection definitions, held
//!   every blocking slot of the witness and another group's reads got
//!   `503 overloaded`;
//! - tokens with made-up `kid`s made every JWKS-verified caller wait for
//!   the identity provider while it was slow;
//! - path segments were not percent-decoded: a grant to `jwt:auth0%7C1`
//!   went to that literal identity, a table named `my tasks` could get no
//!   rule;
//! - a snapshot left half-written by a killed witness stayed on disk
//!   forever.
//!
//! No timing thresholds: waits are generous bounds on completion.

use jsonwebtoken::Algorithm;
use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::{json, Value as Json};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn put(w: &Witness, path: &str, token: &str, body: Json) -> Reply {
    w.request("PUT", path, Some(token), Some(&body))
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < until, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A projection query whose every step rewrites a megabyte: it runs into
/// its time budget, never its step budget.
const SLOW_QUERY: &str = "WITH RECURSIVE s(big) AS (SELECT replace(replace(replace(replace(replace('aaaaaaaaaa','a','aaaaaaaaaa'),'a','aaaaaaaaaa'),'a','aaaaaaaaaa'),'a','aaaaaaaaaa'),'a','aaaaaaaaaa')), c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) SELECT count(*) AS n FROM c, s WHERE length(replace(big, 'a', 'bb')) > x";

#[test]
fn one_groups_admins_cannot_take_the_blocking_slots_every_group_needs() {
    let dir = TempDir::new("red-slots");
    let mallory = add_token(&dir.path().join("data"), "mallory");
    let carol = add_token(&dir.path().join("data"), "carol");
    // Few blocking slots, and short budgets: each definition's fill (ten
    // budgets) spins for a second, and they go one at a time.
    let w = Witness::start_with(
        dir.path(),
        0,
        &[
            "--blocking-jobs",
            "6",
            "--group-reads",
            "2",
            "--sql-millis",
            "100",
            "--sql-steps",
            "1000000000",
        ],
    );
    w.create_group("hostile", "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    w.create_group("quiet", "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    for (g, who, role) in [
        ("hostile", "mallory", "admin"),
        ("quiet", "carol", "reader"),
    ] {
        let r = put(
            &w,
            &format!("/v1/groups/{g}/members/{who}"),
            TOKEN,
            json!({ "role": role }),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let w = Arc::new(w);
    let hogs: Vec<_> = (0..12)
        .map(|i| {
            let (w, mallory) = (w.clone(), mallory.clone());
            std::thread::spawn(move || {
                let r = put(
                    &w,
                    &format!("/v1/groups/hostile/projections/hog{i}"),
                    &mallory,
                    json!({ "query": SLOW_QUERY }),
                );
                // Refused one way or another: its fill ran out of budget,
                // or the group had no slot for it.
                assert!(matches!(r.status, 400 | 503), "{r:?}");
            })
        })
        .collect();
    // Another group's reader keeps reading while the definitions wait.
    let mut reads = 0;
    while hogs.iter().any(|h| !h.is_finished()) || reads < 5 {
        let r = w.request("GET", "/v1/groups/quiet/head", Some(&carol), None);
        assert_eq!(r.status, 200, "the other group's read: {r:?}");
        reads += 1;
        assert!(reads < 100_000, "bounded");
    }
    for h in hogs {
        h.join().expect("hog");
    }
    // The hostile group's admin still gets through once the flood is over.
    let r = put(
        &w,
        "/v1/groups/hostile/projections/fine",
        &mallory,
        json!({ "query": "SELECT id FROM t" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn tokens_with_unknown_kids_do_not_hold_up_callers_the_jwks_cache_serves() {
    let dir = TempDir::new("red-jwks");
    let jwks = jwt::Jwks::start();
    let w = Witness::start_with(dir.path(), 0, &["--jwt-jwks-url", &jwks.url]);
    w.create_group("g", "CREATE TABLE t(id INTEGER PRIMARY KEY)");
    let r = put(
        &w,
        "/v1/groups/g/members/jwt:alice",
        TOKEN,
        json!({"role": "reader"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let claims = |sub: &str| json!({"sub": sub, "exp": jwt::now_secs() + 600});
    let alice = jwt::token(Algorithm::RS256, &claims("alice"));
    // The first use fetches the JWKS; it is cached from then on.
    let r = w.request("GET", "/v1/groups/g/head", Some(&alice), None);
    assert_eq!(r.status, 200, "{r:?}");

    // The identity provider stops answering. A token with a kid nobody
    // knows makes the witness fetch the JWKS again, which now hangs.
    jwks.hold.store(true, Ordering::SeqCst);
    let before = jwks.fetches.load(Ordering::SeqCst);
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("made-up".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("mallory"),
        &jwt::encoding_key(Algorithm::RS256),
    )
    .unwrap();
    let w = Arc::new(w);
    // The witness fetches again at most every 2 s: the attacker sends its
    // tokens until one makes it fetch (that request then hangs).
    let attacker = {
        let (w, fetches) = (w.clone(), jwks.fetches.clone());
        std::thread::spawn(move || {
            for _ in 0..10_000 {
                let r = w.request("GET", "/v1/groups/g/head", Some(&forged), None);
                if fetches.load(Ordering::SeqCst) > before {
                    return r;
                }
                assert_eq!(r.status, 401, "{r:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the witness never fetched the JWKS again");
        })
    };
    eventually("the witness fetching the JWKS again", || {
        jwks.fetches.load(Ordering::SeqCst) > before && !jwks.held.lock().unwrap().is_empty()
    });

    // Alice's token is served from the cache while that fetch hangs.
    let r = w.request("GET", "/v1/groups/g/head", Some(&alice), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        jwks.held_fetch_still_waiting(),
        "alice was answered only after the hanging JWKS fetch gave up"
    );
    jwks.release();
    let r = attacker.join().expect("attacker");
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn identities_and_table_names_in_paths_are_percent_decoded() {
    let dir = TempDir::new("red-paths");
    // Static token identities may hold '/', which a path segment can only
    // carry encoded.
    let alice = add_token(&dir.path().join("data"), "team/alice");
    let w = Witness::start(dir.path());
    w.create_group(
        "g",
        "CREATE TABLE \"my tasks\"(id INTEGER PRIMARY KEY, owner TEXT)",
    );
    let head_as_alice = || w.request("GET", "/v1/groups/g/head", Some(&alice), None);
    assert_eq!(head_as_alice().status, 403);

    let r = put(
        &w,
        "/v1/groups/g/members/team%2Falice",
        TOKEN,
        json!({"role": "writer"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["identity"], "team/alice", "{r:?}");
    assert_eq!(head_as_alice().status, 200);
    let members = w.get("/v1/groups/g/members");
    assert_eq!(
        members.body["members"],
        json!([{"identity": "team/alice", "role": "writer"}]),
        "{members:?}"
    );

    // A rule for the table whose name has a space; it holds for alice.
    let r = put(
        &w,
        "/v1/groups/g/rules/my%20tasks",
        TOKEN,
        json!({"expr": "new.owner = :caller"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["table"], "my tasks", "{r:?}");
    let g = GroupRef::from_json(&w.get("/v1/groups/g").body);
    let row = |id: i64, owner: &str| {
        changeset(
            "my tasks",
            &[1, 0],
            vec![insert(vec![Value::Integer(id), Value::text(owner)])],
        )
    };
    let h = w.head("g");
    let r = w.request(
        "POST",
        "/v1/groups/g/commits",
        Some(&alice),
        Some(&g.commit_body(h.seq, &h.head_hash, "a-1", &row(1, "bob"), Policy::Strict)),
    );
    assert_eq!(r.status, 403, "the rule refuses another owner: {r:?}");
    let r = w.request(
        "POST",
        "/v1/groups/g/commits",
        Some(&alice),
        Some(&g.commit_body(
            h.seq,
            &h.head_hash,
            "a-2",
            &row(1, "team/alice"),
            Policy::Strict,
        )),
    );
    assert_eq!(r.status, 201, "{r:?}");

    let r = w.request(
        "DELETE",
        "/v1/groups/g/members/team%2Falice",
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(head_as_alice().status, 403);
}

#[test]
fn a_snapshot_left_half_written_by_a_killed_witness_is_removed() {
    let dir = TempDir::new("red-snaptmp");
    let mut w = Witness::start(dir.path());
    let g = w.create_group("g", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    let cs = changeset(
        "t",
        &[1, 0],
        vec![insert(vec![Value::Integer(1), Value::text("x")])],
    );
    assert_eq!(w.commit_at_head(&g, "k1", &cs, Policy::Strict).status, 201);
    let r = w.post("/v1/groups/g/snapshots", &json!(null));
    assert_eq!(r.status, 201, "{r:?}");
    w.terminate();

    // What a witness killed while writing a snapshot leaves behind (its
    // process id is in the names).
    let snaps = dir.path().join("data/snapshots/g");
    let leftovers = [".4242424.tmp", ".4242424.manifest.tmp"];
    for f in leftovers {
        std::fs::write(snaps.join(f), vec![7u8; 64 * 1024]).unwrap();
    }
    let w = Witness::start(dir.path());
    let cs = changeset(
        "t",
        &[1, 0],
        vec![insert(vec![Value::Integer(2), Value::text("y")])],
    );
    assert_eq!(w.commit_at_head(&g, "k2", &cs, Policy::Strict).status, 201);
    let r = w.post("/v1/groups/g/snapshots", &json!(null));
    assert_eq!(r.status, 201, "{r:?}");
    for f in leftovers {
        assert!(!snaps.join(f).exists(), "{f} is still there");
    }
    let names: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "temporary files left: {names:?}"
    );
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
