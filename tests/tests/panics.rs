//! A panic never leaves work half done. Panics are injected through the
//! test-only `PDB_TEST_PANIC` hook (read once per process): in the
//! extension, inside `db::transaction` after its writes (a real Python
//! host); in the witness, inside a pooled writer's job after the commit was
//! applied in the batch's transaction. The transaction rolls back, the
//! host's connection is never left inside it, the job fails with
//! `internal`, the writer threads survive and the group keeps accepting
//! commits.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::Value as Json;
use std::process::Command;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";

/// Runs a Python script (with `panic` set as PDB_TEST_PANIC when given)
/// and returns the JSON it printed last.
fn python(script: &str, panic: Option<&str>) -> Json {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    match panic {
        Some(p) => cmd.env("PDB_TEST_PANIC", p),
        None => cmd.env_remove("PDB_TEST_PANIC"),
    };
    let out = cmd.output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("python printed {stdout}"))
}

fn prelude(db: &str) -> String {
    format!(
        r#"
import sqlite3, json
db = sqlite3.connect({db:?}, isolation_level=None)
db.enable_load_extension(True)
db.load_extension({ext:?})
db.enable_load_extension(False)
def one(sql):
    return db.execute(sql).fetchone()[0]
def status():
    return json.loads(one("SELECT pdb_status()"))
def error(sql):
    try:
        db.execute(sql).fetchall()
        return None
    except sqlite3.Error as e:
        return str(e)
"#,
        ext = extension_path().display().to_string()
    )
}

#[test]
fn a_panic_inside_an_extension_transaction_rolls_it_back() {
    let dir = TempDir::new("panic-ext");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let db = dir.path().join("a.db").display().to_string();
    let p = prelude(&db);

    // A device with one pending row (rollback journal, the default).
    let r = python(
        &format!(
            r#"{p}
db.execute("SELECT pdb_open(?, 'g', json_object('token', ?))", ({url:?}, {TOKEN:?})).fetchall()
db.execute("INSERT INTO notes VALUES (1, 'pending')")
print(json.dumps(status()))
"#,
            url = w.url
        ),
        None,
    );
    assert_eq!(r["pending_rows"], 1, "{r}");

    // Every transaction of the extension panics after its writes.
    let r = python(
        &format!(
            r#"{p}
out = {{}}
# In autocommit: pdb_commit's BEGIN IMMEDIATE and its writes are undone.
out["commit"] = error("SELECT pdb_commit()")
out["in_transaction"] = db.in_transaction
out["outbox"] = one("SELECT count(*) FROM pdb_outbox")
out["host_commit"] = error("COMMIT")
# Inside the host's own transaction: only our savepoint is undone.
db.execute("BEGIN")
db.execute("INSERT INTO notes VALUES (2, 'the host''s own')")
out["nested_commit"] = error("SELECT pdb_commit()")
out["still_in_host_transaction"] = db.in_transaction
out["outbox_inside"] = one("SELECT count(*) FROM pdb_outbox")
db.execute("COMMIT")
out["sync"] = error("SELECT pdb_sync()")
out["after_sync_in_transaction"] = db.in_transaction
out["outbox_after"] = one("SELECT count(*) FROM pdb_outbox")
out["rows"] = [list(r) for r in db.execute("SELECT id, body FROM notes ORDER BY id")]
print(json.dumps(out))
"#
        ),
        Some("transaction"),
    );
    for k in ["commit", "nested_commit", "sync"] {
        let e = r[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} did not fail: {r}"));
        assert!(e.contains("internal error"), "{k}: {e}");
    }
    assert_eq!(
        r["in_transaction"], false,
        "left inside BEGIN IMMEDIATE: {r}"
    );
    assert_eq!(r["outbox"], 0, "{r}");
    assert!(
        r["host_commit"]
            .as_str()
            .is_some_and(|e| e.contains("no transaction is active")),
        "the host's COMMIT found a transaction to commit: {r}"
    );
    assert_eq!(r["still_in_host_transaction"], true, "{r}");
    assert_eq!(r["outbox_inside"], 0, "{r}");
    assert_eq!(r["after_sync_in_transaction"], false, "{r}");
    assert_eq!(r["outbox_after"], 0, "{r}");
    assert_eq!(
        r["rows"],
        serde_json::json!([[1, "pending"], [2, "the host's own"]]),
        "{r}"
    );
    assert_eq!(w.head("g").seq, 0, "nothing reached the witness");

    // Without the panic, the next sync carries both rows.
    let r = python(
        &format!(
            r#"{p}
sync = json.loads(one("SELECT pdb_sync()"))
status = json.loads(one("SELECT pdb_status()"))
verify = json.loads(one("SELECT pdb_verify()"))
print(json.dumps({{"sync": sync, "status": status, "verify": verify}}))
"#
        ),
        None,
    );
    assert_eq!(r["status"]["pending_rows"], 0, "{r}");
    assert_eq!(r["status"]["state"], "healthy", "{r}");
    assert_eq!(r["verify"]["ok"], true, "{r}");
    let commits = w.all_commits("g");
    assert_eq!(commits.len(), 1, "{commits:?}");
}

#[test]
fn a_panic_in_a_pooled_writer_fails_the_job_and_the_group_goes_on() {
    let dir = TempDir::new("panic-writer");
    let mut cmd = Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--writer-threads", "2"])
        .env("PDB_ADMIN_TOKEN", TOKEN)
        .env("PDB_TEST_PANIC", "writer:boom");
    let w = Witness::launch(dir.path(), cmd);
    let g = w.create_group("g", DDL);
    let row = |id: i64, body: &str| {
        changeset(
            "notes",
            &[1, 0],
            vec![insert(vec![Value::Integer(id), Value::text(body)])],
        )
    };
    // More panics than the pool has threads: each job fails with
    // `internal`; were a thread lost to each, none would be left.
    for _ in 0..3 {
        let r = w.commit_at_head(&g, "boom", &row(1, "panics"), Policy::Strict);
        assert_eq!((r.status, r.code()), (500, "internal"), "{r:?}");
    }
    // The batch's transaction was rolled back and the head not moved:
    // a commit on the same base goes through, on the same group.
    assert_eq!(w.head("g").seq, 0);
    let r = w.commit_at_head(&g, "fine-1", &row(1, "accepted"), Policy::Strict);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["certificate"]["seq"], 1, "{r:?}");
    // And again, after another panic.
    let r = w.commit_at_head(&g, "boom", &row(2, "panics"), Policy::Strict);
    assert_eq!((r.status, r.code()), (500, "internal"), "{r:?}");
    let r = w.commit_at_head(&g, "fine-2", &row(2, "accepted"), Policy::Strict);
    assert_eq!(r.status, 201, "{r:?}");
    let commits = w.all_commits("g");
    assert_eq!(commits.len(), 2, "{commits:?}");
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
