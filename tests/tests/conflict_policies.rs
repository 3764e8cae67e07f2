//! The conflict policies do what their names say, and differ: each row of
//! the table in docs/extension.md ("Conflict policies"), end to end. Device
//! `a` commits first (the remote side); device `b` (the local side) then
//! syncs under the policy.

use pdb_e2e::*;
use serde_json::Value as Json;

const DDL: &str =
    "CREATE TABLE people(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT, note TEXT);";

type Row = (String, String, String);

fn rows(d: &Device) -> Vec<Row> {
    let mut st = d
        .conn
        .prepare("SELECT id, email, name FROM people ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn row(id: &str, email: &str, name: &str) -> Row {
    (id.into(), email.into(), name.into())
}

/// (kind, kept) of every conflict b recorded, by row key.
fn conflicts(d: &Device) -> Vec<(String, String, String)> {
    let mut st = d
        .conn
        .prepare("SELECT pk, kind, kept FROM pdb_conflicts ORDER BY pk, id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Both sides of the five situations; returns (a, b) after b's sync.
fn play(policy: &str) -> (TempDir, Witness, Device, Device, Json) {
    let dir = TempDir::new("policies");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let dev = |name: &str| {
        let d = Device::new(&dir.path().join(format!("{name}.db")));
        d.open(&w, "g", policy).unwrap();
        d
    };
    let (a, b) = (dev("a"), dev("b"));
    a.exec(
        "INSERT INTO people VALUES
           ('c1', 'c1@x', 'base', ''), ('c2', 'c2@x', 'base', ''),
           ('c3', 'c3@x', 'base', ''), ('c5', 'c5@x', 'base', '')",
    );
    a.sync().unwrap();
    b.sync().unwrap();
    // Remote side (a).
    a.exec(
        "UPDATE people SET name = 'A' WHERE id = 'c1';
         UPDATE people SET name = 'A' WHERE id = 'c2';
         DELETE FROM people WHERE id = 'c3';
         INSERT INTO people VALUES ('k4', 'a4@x', 'A', '');
         UPDATE people SET id = 'c5x' WHERE id = 'c5';",
    );
    a.sync().unwrap();
    // Local side (b).
    b.exec(
        "UPDATE people SET name = 'B' WHERE id = 'c1';
         DELETE FROM people WHERE id = 'c2';
         UPDATE people SET name = 'B' WHERE id = 'c3';
         INSERT INTO people VALUES ('k4', 'b4@x', 'B', '');
         UPDATE people SET name = 'B' WHERE id = 'c5';",
    );
    let r = b.sync().unwrap();
    (dir, w, a, b, r)
}

fn settle(a: &Device, b: &Device) {
    for _ in 0..2 {
        b.sync().unwrap();
        a.sync().unwrap();
    }
    assert_eq!(rows(a), rows(b));
    for d in [a, b] {
        assert_eq!(d.call("pdb_verify()").unwrap()["ok"], true);
        assert_eq!(d.call("pdb_status()").unwrap()["state"], "healthy");
    }
}

#[test]
fn remote_wins_takes_the_remote_side_and_records_the_local_one() {
    let (_dir, _w, a, b, r) = play("remote_wins");
    // c1, c2, c3, c5 one each; k4 two columns.
    assert_eq!(r["conflicts"], 6, "{r}");
    assert_eq!(
        rows(&b),
        vec![
            row("c1", "c1@x", "A"),     // same column: remote
            row("c2", "c2@x", "A"),     // local delete vs remote update: remote
            row("c5x", "c5@x", "base"), // key changed remotely: only the new key
            row("k4", "a4@x", "A"),     // same key inserted: remote columns
        ]
    );
    assert!(conflicts(&b).iter().all(|(_, _, kept)| kept == "remote"));
    settle(&a, &b);
}

#[test]
fn local_wins_keeps_the_local_side_and_pushes_it() {
    let (_dir, _w, a, b, r) = play("local_wins");
    assert_eq!(r["conflicts"], 7, "{r}");
    assert_eq!(
        rows(&b),
        vec![
            row("c1", "c1@x", "B"),     // same column: local
            row("c3", "c3@x", "B"),     // local update vs remote delete: back
            row("c5x", "c5@x", "base"), // see below
            row("k4", "b4@x", "B"),     // same key inserted: local columns
        ]
    );
    // c5: the local edit won over the remote delete, then the re-keyed row
    // took its UNIQUE email: the edit was set aside, recorded.
    let c = conflicts(&b);
    assert!(
        c.contains(&(r#"["c5"]"#.into(), "row".into(), "local".into())),
        "{c:?}"
    );
    assert!(
        c.contains(&(r#"["c5"]"#.into(), "constraint".into(), "remote".into())),
        "{c:?}"
    );
    assert_eq!(c.iter().filter(|x| x.2 == "local").count(), 6, "{c:?}");
    settle(&a, &b);
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn manual_decides_nothing_until_the_app_resolves() {
    let (_dir, _w, a, b, r) = play("manual");
    assert_eq!(r["conflicts"], 7, "{r}");
    // The table keeps the local side (c5's edit aside: the re-keyed row
    // took its email), nothing of it is pushed, every conflict is open.
    assert_eq!(
        rows(&b),
        vec![
            row("c1", "c1@x", "B"),
            row("c3", "c3@x", "B"),
            row("c5x", "c5@x", "base"),
            row("k4", "b4@x", "B"),
        ]
    );
    assert!(conflicts(&b).iter().all(|(_, _, kept)| kept == "open"));
    let st = b.call("pdb_status()").unwrap();
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["open_conflicts"], 7, "{st}");
    a.sync().unwrap();
    assert_eq!(rows(&a).iter().filter(|r| r.2 == "B").count(), 0);
    // The app takes the remote side everywhere but c1.
    let open: Vec<(i64, String)> = {
        let mut st = b
            .conn
            .prepare("SELECT id, pk FROM pdb_conflicts WHERE kept = 'open' ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for (id, pk) in open {
        let side = if pk == r#"["c1"]"# { "local" } else { "remote" };
        b.call(&format!("pdb_resolve({id}, '{side}')")).unwrap();
    }
    settle(&a, &b);
    assert_eq!(
        rows(&a),
        vec![
            row("c1", "c1@x", "B"),
            row("c2", "c2@x", "A"),
            row("c5x", "c5@x", "base"),
            row("k4", "a4@x", "A"),
        ]
    );
}
