//! The extension in a real host (rusqlite's bundled SQLite) against a real
//! witness: capture, exact values, sync, rebase, conflicts, convergence.

use pdb_e2e::*;
use serde_json::Value as Json;

const DDL: &str = "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, owner TEXT, done INTEGER, data BLOB);
                   CREATE TABLE tags(task INTEGER NOT NULL, tag TEXT NOT NULL, note, PRIMARY KEY(task, tag)) WITHOUT ROWID;";
const TABLES: &[&str] = &["tasks", "tags"];

struct Setup {
    dir: TempDir,
    w: Witness,
}

fn setup(label: &str) -> Setup {
    let dir = TempDir::new(label);
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    Setup { dir, w }
}

impl Setup {
    fn device(&self, name: &str, policy: &str) -> Device {
        let d = Device::new(&self.dir.path().join(format!("{name}.db")));
        d.open(&self.w, "g", policy).expect("pdb_open");
        d
    }
}

/// Settles the open conflicts (policy manual) as an app would: the
/// first it sees by keeping the local side, the next the remote, ...
fn resolve_open(d: &Device, turn: &mut usize) -> usize {
    let ids: Vec<i64> = {
        let mut st = d
            .conn
            .prepare("SELECT id FROM pdb_conflicts WHERE kept = 'open' ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for id in &ids {
        let side = if turn.is_multiple_of(2) {
            "local"
        } else {
            "remote"
        };
        *turn += 1;
        d.call(&format!("pdb_resolve({id}, '{side}')")).unwrap();
    }
    ids.len()
}

fn converged(devices: &[&Device]) {
    let mut turn = 0;
    for _ in 0..10 {
        let mut open = 0;
        for d in devices {
            d.sync().expect("final sync");
            open += resolve_open(d, &mut turn);
        }
        if open == 0 {
            break;
        }
    }
    for d in devices {
        d.sync().expect("second final sync");
    }
    let first = devices[0].dump(TABLES);
    let head = devices[0].call("pdb_head()").unwrap();
    for d in devices {
        assert_eq!(d.dump(TABLES), first, "same rows, same bytes");
        let h = d.call("pdb_head()").unwrap();
        assert_eq!(h["state_root"], head["state_root"]);
        assert_eq!(h["seq"], head["seq"]);
        let v = d.call("pdb_verify()").unwrap();
        assert_eq!(v["ok"], Json::Bool(true), "{v}");
        let s = d.call("pdb_status()").unwrap();
        assert_eq!(s["pending_rows"], 0, "{s}");
        assert!(s["outbox"].is_null(), "{s}");
    }
}

#[test]
fn values_survive_exactly() {
    let s = setup("values");
    let a = s.device("a", "remote_wins");
    let b = s.device("b", "remote_wins");
    a.exec(
        "INSERT INTO tasks VALUES (1, 'héllo ✓ 🎉', NULL, 9223372036854775807, x'');
         INSERT INTO tasks VALUES (2, '', 'x', -9223372036854775808, x'00ff00');
         INSERT INTO tasks VALUES (3, NULL, NULL, NULL, NULL);
         INSERT INTO tasks VALUES (4, 'r', 'o', 0, zeroblob(100000));
         INSERT INTO tags VALUES (1, 'a', 1.5), (1, 'b', -0.25e-300), (2, 'a', 'text'), (2, 'z', x'01');",
    );
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    b.sync().unwrap();
    assert_eq!(b.dump(TABLES), a.dump(TABLES));
    assert_eq!(a.dump(TABLES).len(), 8);
    converged(&[&a, &b]);
}

#[test]
fn writes_from_a_connection_without_the_extension_are_captured() {
    let s = setup("plainconn");
    let a = s.device("a", "remote_wins");
    let b = s.device("b", "remote_wins");
    {
        let plain = rusqlite::Connection::open(&a.path).unwrap();
        plain
            .execute_batch("INSERT INTO tasks(id, title) VALUES (10, 'from a plain connection'); UPDATE tasks SET done = 1 WHERE id = 10;")
            .unwrap();
        // A rolled-back transaction leaves nothing behind.
        plain
            .execute_batch("BEGIN; INSERT INTO tasks(id, title) VALUES (11, 'never'); DELETE FROM tasks WHERE id = 10; ROLLBACK;")
            .unwrap();
    }
    let st = a.call("pdb_status()").unwrap();
    assert_eq!(st["pending_rows"], 1, "{st}");
    a.sync().unwrap();
    b.sync().unwrap();
    assert_eq!(b.dump(&["tasks"]), a.dump(&["tasks"]));
    assert_eq!(b.dump(&["tasks"]).len(), 1);
}

#[test]
fn opening_again_is_harmless() {
    let s = setup("reopen");
    let a = s.device("a", "remote_wins");
    a.exec("INSERT INTO tasks(id, title) VALUES (1, 'x')");
    a.sync().unwrap();
    a.exec("INSERT INTO tasks(id, title) VALUES (2, 'pending')");
    let before = (a.dump(TABLES), a.call("pdb_head()").unwrap());
    for _ in 0..2 {
        let r = a.open(&s.w, "g", "remote_wins").unwrap();
        assert_eq!(r["pulled"], 0, "{r}");
    }
    assert_eq!((a.dump(TABLES), a.call("pdb_head()").unwrap()), before);
    let st = a.call("pdb_status()").unwrap();
    assert_eq!(st["pending_rows"], 1, "{st}");
    let triggers: i64 = a
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'tasks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 6);
    assert_eq!(a.sync().unwrap()["pushed"], 1);
    // Another group on the same database is refused.
    s.w.create_group("other", DDL);
    let err = a.open(&s.w, "other", "remote_wins").unwrap_err();
    assert!(err.contains("already open for group"), "{err}");
}

#[test]
fn a_commit_carries_the_net_change_per_row() {
    let s = setup("net");
    let a = s.device("a", "remote_wins");
    a.exec("INSERT INTO tasks(id, title) VALUES (1, 'x'); DELETE FROM tasks WHERE id = 1;");
    let c = a.call("pdb_commit()").unwrap();
    assert_eq!(c["sealed"], false, "insert then delete is nothing: {c}");
    a.exec("INSERT INTO tasks(id, title) VALUES (2, 'x'); UPDATE tasks SET title = 'y' WHERE id = 2; UPDATE tasks SET title = 'z' WHERE id = 2;");
    let c = a.call("pdb_commit()").unwrap();
    assert_eq!(
        (c["sealed"].clone(), c["rows"].clone()),
        (Json::Bool(true), Json::from(1)),
        "{c}"
    );
    a.sync().unwrap();
    a.exec("UPDATE tasks SET title = 'w' WHERE id = 2; UPDATE tasks SET title = 'z' WHERE id = 2;");
    let c = a.call("pdb_commit()").unwrap();
    assert_eq!(
        c["sealed"], false,
        "changed and changed back is nothing: {c}"
    );
    // INSERT OR REPLACE over an existing row is an update of it.
    a.exec("INSERT OR REPLACE INTO tasks(id, title) VALUES (2, 'replaced')");
    let r = a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    let b = s.device("b", "remote_wins");
    assert_eq!(b.dump(&["tasks"]), a.dump(&["tasks"]));
}

#[test]
fn column_changes_on_both_sides_merge_and_conflicts_follow_the_policy() {
    for policy in ["remote_wins", "local_wins", "manual"] {
        let s = setup("policy");
        let a = s.device("a", policy);
        let b = s.device("b", policy);
        a.exec("INSERT INTO tasks(id, title, owner, done) VALUES (1, 't', 'ann', 0)");
        a.sync().unwrap();
        b.sync().unwrap();
        // Different columns: both survive. Same column: a conflict.
        a.exec("UPDATE tasks SET title = 'from a', owner = 'a-owner' WHERE id = 1");
        b.exec("UPDATE tasks SET done = 1, owner = 'b-owner' WHERE id = 1");
        a.sync().unwrap();
        let r = b.sync().unwrap();
        assert_eq!(r["conflicts"], 1, "{policy}: {r}");
        if policy == "manual" {
            // Open: the row keeps the local side and waits for the app.
            let st = b.call("pdb_status()").unwrap();
            assert_eq!(st["open_conflicts"], 1, "{st}");
            assert_eq!(st["blocked"][0]["code"], "open_conflict", "{st}");
            a.sync().unwrap();
            let owner: String = a
                .conn
                .query_row("SELECT owner FROM tasks WHERE id = 1", [], |r| r.get(0))
                .unwrap();
            assert_eq!(owner, "a-owner", "nothing of b's row was pushed yet");
            let id: i64 = b
                .conn
                .query_row(
                    "SELECT id FROM pdb_conflicts WHERE kept = 'open'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let r = b.call(&format!("pdb_resolve({id}, 'local')")).unwrap();
            assert_eq!(r["open"], false, "{r}");
            let err = b.call(&format!("pdb_resolve({id}, 'remote')")).unwrap_err();
            assert!(err.contains("not open"), "{err}");
            b.sync().unwrap();
        }
        a.sync().unwrap();
        let row: (String, String, i64) = a
            .conn
            .query_row(
                "SELECT title, owner, done FROM tasks WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let owner = if policy == "remote_wins" {
            "a-owner"
        } else {
            "b-owner"
        };
        assert_eq!(row, ("from a".into(), owner.into(), 1), "{policy}");
        let c: (String, String, String, String) = b
            .conn
            .query_row(
                "SELECT col, local_value, remote_value, kept FROM pdb_conflicts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let kept = match policy {
            "remote_wins" => "remote",
            _ => "local",
        };
        assert_eq!(
            c,
            (
                "owner".into(),
                "b-owner".into(),
                "a-owner".into(),
                kept.into()
            ),
            "{policy}"
        );
        converged(&[&a, &b]);
    }
}

/// A tiny deterministic generator, so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_edit(d: &Device, rng: &mut Rng) {
    let id = rng.below(12) as i64;
    let v = rng.below(1000) as i64;
    let sql = match rng.below(9) {
        7 => format!(
            "UPDATE OR IGNORE tasks SET id = {} WHERE id = {id}",
            (id + 5) % 12
        ),
        8 => format!(
            "INSERT OR REPLACE INTO tasks(id, title, data) VALUES ({id}, 'r{v}', x'{:04x}')",
            v
        ),
        0 | 1 => format!(
            "INSERT OR IGNORE INTO tasks(id, title, owner, done) VALUES ({id}, 't{v}', 'o{}', {})",
            v % 3,
            v % 2
        ),
        2 => format!("UPDATE tasks SET title = 'u{v}' WHERE id = {id}"),
        3 => format!(
            "UPDATE tasks SET done = {}, owner = 'p{v}' WHERE id = {id}",
            v % 2
        ),
        4 => format!("DELETE FROM tasks WHERE id = {id}"),
        5 => format!(
            "INSERT OR REPLACE INTO tags VALUES ({}, 'k{}', {v})",
            id % 4,
            v % 3
        ),
        _ => format!("DELETE FROM tags WHERE task = {}", id % 4),
    };
    d.exec(&sql);
}

#[test]
fn devices_converge_under_random_offline_workloads() {
    let policies = ["remote_wins", "local_wins", "manual"];
    // PDB_SEEDS=N runs more seeds (the suite runs 15).
    let seeds: u64 = std::env::var("PDB_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    for seed in 1..=seeds {
        let n_dev = 2 + (seed % 2) as usize;
        let policy = policies[(seed % 3) as usize];
        let s = setup("converge");
        let devices: Vec<Device> = (0..n_dev)
            .map(|i| s.device(&format!("d{i}"), policy))
            .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        for _round in 0..6 {
            for d in &devices {
                for _ in 0..rng.below(6) {
                    random_edit(d, &mut rng);
                }
            }
            // Some devices sync, in a random order; the rest stay offline.
            for _ in 0..n_dev {
                let d = &devices[rng.below(n_dev as u64) as usize];
                if rng.below(3) > 0 {
                    d.sync().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                }
            }
        }
        let refs: Vec<&Device> = devices.iter().collect();
        converged(&refs);
        let (ok, out) = s.w.verify_cli();
        assert!(ok, "seed {seed}: {out}");
    }
}
