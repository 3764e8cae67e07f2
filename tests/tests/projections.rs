//! The task app: every device is local-first, the witness serves open
//! tasks by assignee. A caller sees exactly their own rows, never
//! another's, before and after commits that move tasks between assignees,
//! over HTTP and through the extension's `pdb_projection` virtual table.

use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::collections::BTreeSet;

const DDL: &str = "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT NOT NULL, assignee TEXT, done INTEGER NOT NULL DEFAULT 0);";

struct App {
    _dir: TempDir,
    w: Witness,
    people: Vec<(String, String, Device)>,
}

fn app() -> App {
    let dir = TempDir::new("taskapp");
    let data = dir.path().join("data");
    let names = ["alice", "bob", "carol"];
    let tokens: Vec<String> = names.iter().map(|n| add_token(&data, n)).collect();
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);
    for n in names {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/tasks/members/{n}"),
            Some(TOKEN),
            Some(&json!({"role": "writer"})),
        );
        assert_eq!(r.status, 200);
    }
    let r = w.request(
        "PUT",
        "/v1/groups/tasks/projections/open_tasks",
        Some(TOKEN),
        Some(&json!({
            "table": "tasks",
            "columns": ["id", "title", "assignee"],
            "where": "done = 0",
            "visibility": "assignee = :caller",
        })),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["incremental"], true);
    let people = names
        .iter()
        .zip(tokens)
        .map(|(n, t)| {
            let d = Device::new(&dir.path().join(format!("{n}.db")));
            d.call(&format!(
                "pdb_open('{}', 'tasks', json_object('token', '{t}'))",
                w.url
            ))
            .unwrap();
            (n.to_string(), t, d)
        })
        .collect();
    App {
        _dir: dir,
        w,
        people,
    }
}

/// What the projection shows `who`, over HTTP, with the head it reflects.
fn visible_http(a: &App, token: &str) -> (BTreeSet<String>, u64) {
    let mut ids = BTreeSet::new();
    let mut after = 0;
    loop {
        let r = a.w.request(
            "GET",
            &format!("/v1/groups/tasks/projections/open_tasks?after={after}&limit=2"),
            Some(token),
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        for row in r.body["rows"].as_array().unwrap() {
            ids.insert(row[0].as_str().unwrap().to_string());
        }
        let head: pdb_protocol::wire::HeadJson =
            serde_json::from_value(r.body["head"].clone()).unwrap();
        verify_head(&head, &a.w.public_key);
        match r.body["next_after"].as_u64() {
            Some(n) => after = n,
            None => return (ids, head.seq),
        }
    }
}

fn visible_vtab(d: &Device) -> BTreeSet<String> {
    let mut st = d
        .conn
        .prepare("SELECT id, assignee FROM open_tasks")
        .unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The truth, from a device's synced copy.
fn expected(d: &Device, who: &str) -> BTreeSet<String> {
    let mut st = d
        .conn
        .prepare("SELECT id FROM tasks WHERE done = 0 AND assignee = ?1")
        .unwrap();
    st.query_map([who], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn each_caller_sees_exactly_their_own_open_tasks_as_tasks_move() {
    let a = app();
    for (_, _, d) in &a.people {
        d.exec("CREATE VIRTUAL TABLE temp.open_tasks USING pdb_projection('open_tasks')");
    }
    let (_, _, alice) = &a.people[0];
    alice.exec(
        "INSERT INTO tasks(id, title, assignee) VALUES ('t1', 'milk', 'alice'), ('t2', 'report', 'bob'), ('t3', 'call', 'carol'), ('t4', 'plan', 'alice');
         INSERT INTO tasks(id, title, assignee, done) VALUES ('t5', 'old', 'alice', 1);",
    );
    alice.sync().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..12 {
        // Someone moves a task to someone else, or finishes or reopens one,
        // on their own device, offline, then syncs.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let (_, _, d) = &a.people[(rng % 3) as usize];
        d.sync().unwrap();
        let task = format!("t{}", 1 + (rng >> 8) % 5);
        let to = ["alice", "bob", "carol"][((rng >> 16) % 3) as usize];
        let sql = match (rng >> 24) % 3 {
            0 => format!("UPDATE tasks SET done = 1 - done WHERE id = '{task}'"),
            _ => format!("UPDATE tasks SET assignee = '{to}' WHERE id = '{task}'"),
        };
        d.exec(&sql);
        d.sync().unwrap();
        let head = a.w.head("tasks").seq;
        for (who, token, dev) in &a.people {
            dev.sync().unwrap();
            let truth = expected(dev, who);
            let (http, seq) = visible_http(&a, token);
            assert_eq!(
                seq, head,
                "round {round}: the read states the head it reflects"
            );
            assert_eq!(http, truth, "round {round}: {who} over HTTP");
            assert_eq!(
                visible_vtab(dev),
                truth,
                "round {round}: {who} through pdb_projection"
            );
        }
    }
    // Nobody ever sees a row that is not theirs: check the assignee column.
    for (who, token, _) in &a.people {
        let r = a.w.request(
            "GET",
            "/v1/groups/tasks/projections/open_tasks",
            Some(token),
            None,
        );
        for row in r.body["rows"].as_array().unwrap() {
            assert_eq!(row[2], Json::String(who.clone()));
        }
    }
    // A query that reads outside the group's tables is refused.
    let r = a.w.request(
        "PUT",
        "/v1/groups/tasks/projections/sneaky",
        Some(TOKEN),
        Some(&json!({"query": "SELECT * FROM pdb_members"})),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    // Writers may not define projections.
    let (_, bob_token, _) = &a.people[1];
    let r = a.w.request(
        "PUT",
        "/v1/groups/tasks/projections/mine",
        Some(bob_token),
        Some(&json!({"query": "SELECT id FROM tasks"})),
    );
    assert_eq!((r.status, r.code()), (403, "unauthorized"));
    let (ok, out) = a.w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn a_query_projection_is_recomputed_and_its_parameters_are_bound() {
    let a = app();
    let r = a.w.request(
        "PUT",
        "/v1/groups/tasks/projections/load",
        Some(TOKEN),
        Some(&json!({"query": "SELECT assignee, count(*) AS open FROM tasks WHERE done = 0 GROUP BY assignee", "visibility": "assignee = :caller"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["incremental"], false);
    let (_, _, alice) = &a.people[0];
    alice.exec("INSERT INTO tasks(id, title, assignee) VALUES ('a', 'x', 'alice'), ('b', 'y', 'alice'), ('c', 'z', 'bob')");
    alice.sync().unwrap();
    let (_, alice_token, _) = &a.people[0];
    let r = a.w.request(
        "GET",
        "/v1/groups/tasks/projections/load",
        Some(alice_token),
        None,
    );
    assert_eq!(r.body["rows"], json!([["alice", 2]]), "{r:?}");
    let (_, bob_token, _) = &a.people[1];
    let r = a.w.request(
        "GET",
        "/v1/groups/tasks/projections/load",
        Some(bob_token),
        None,
    );
    assert_eq!(r.body["rows"], json!([["bob", 1]]), "{r:?}");
    // The caller is a bound value: the operator (identity "operator (admin token)") is
    // nobody's assignee and sees nothing.
    let r = a.w.request(
        "GET",
        "/v1/groups/tasks/projections/load",
        Some(TOKEN),
        None,
    );
    assert_eq!(r.body["rows"], json!([]), "{r:?}");
}
