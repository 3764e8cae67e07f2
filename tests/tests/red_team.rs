//! Found by attacking the witness as hostile users, careless users and
//! operators would; each test failed before its fix:
//!
//! - the admins of one group, flooding slow projection definitions, held
//!   every blocking slot of the witness and another group's reads got
//!   `503 overloaded`.
//!
//! No timing thresholds: waits are generous bounds on completion.

use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::sync::Arc;

fn put(w: &Witness, path: &str, token: &str, body: Json) -> Reply {
    w.request("PUT", path, Some(token), Some(&body))
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
