//! After a restore, against the real witness binary and the real
//! extension: devices that synced past the backup point are told which
//! recovery to run, the device that synced last re-commits what the
//! witness lost (edits and deletes included) without undoing what others
//! committed to the restored witness since, the other devices recover in
//! place keeping their pending rows, and every copy ends equal and
//! verified. A replayed older state (a hostile proxy) is refused and
//! changes nothing.

use pdb_e2e::*;
use serde_json::Value as Json;
use std::path::Path;
use std::process::Command;

const DDL: &str = "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, note TEXT, n INTEGER);";

fn ok(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status(d: &Device) -> Json {
    d.call("pdb_status()").unwrap()
}

fn verified(d: &Device) -> bool {
    d.call("pdb_verify()").unwrap()["ok"] == true
}

fn count(d: &Device, sql: &str) -> i64 {
    d.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The dump of table t holding these rows.
fn rows(want: &[(&str, &str, i64)]) -> Vec<String> {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    for (id, note, n) in want {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            rusqlite::params![id, note, n],
        )
        .unwrap();
    }
    dump(&conn, &["t"])
}

#[test]
fn a_restored_witness_is_recovered_by_recommit_then_in_place() {
    let dir = TempDir::new("recover");
    let data = dir.path().join("data");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let devs = TempDir::new("recover-devs");
    let a = Device::new(&devs.path().join("a.db"));
    let b = Device::new(&devs.path().join("b.db"));
    let c = Device::new(&devs.path().join("c.db"));
    for d in [&a, &b, &c] {
        d.open(&w, "g", "remote_wins").unwrap();
    }
    a.exec(
        "INSERT INTO t VALUES ('r1', 'one', 1), ('r2', 'two', 2), ('r3', 'three', 3), \
         ('r4', 'four', 4), ('r5', 'five', 5)",
    );
    a.sync().unwrap();
    b.sync().unwrap();
    c.sync().unwrap();
    let backup = dir.path().join("backup");
    ok(witness_command(
        &data,
        &["backup", "--to", backup.to_str().unwrap()],
    ));
    let backed = w.head("g").seq;

    // After the backup: b edits, a pulls it, then deletes, edits and
    // inserts; b writes a row it does not sync. a synced last.
    b.exec("UPDATE t SET note = 'one, edited by b' WHERE id = 'r1'");
    b.sync().unwrap();
    a.sync().unwrap();
    a.exec("DELETE FROM t WHERE id = 'r2'; UPDATE t SET n = 30 WHERE id = 'r3'; INSERT INTO t VALUES ('r6', 'six', 6)");
    a.sync().unwrap();
    b.exec("INSERT INTO t VALUES ('r7', 'seven, pending on b', 7)");
    let a_state = a.dump(&["t"]);
    assert_eq!(w.head("g").seq, backed + 2);

    // The witness goes back to the backup, at the same address.
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let restored = dir.path().join("restored");
    ok(witness_command(
        &restored.join("data"),
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    let w = Witness::start_on(&restored, port);
    assert_eq!(w.head("g").seq, backed);

    // c never synced past the backup: it goes on, and edits a row the
    // lost history did not touch — the restored witness's own history.
    c.exec("UPDATE t SET note = 'four, edited by c after the restore' WHERE id = 'r4'");
    c.sync().unwrap();

    // a and b are stopped, and told which recovery to run.
    for (d, lost) in [(&a, 2), (&b, 1)] {
        let e = d.sync().unwrap_err();
        assert!(e.contains("unknown_head"), "{e}");
        assert!(e.contains("pdb_recover"), "{e}");
        let s = status(d);
        assert_eq!(s["state"], "blocked", "{s}");
        assert_eq!(s["reason"]["code"], "unknown_head", "{s}");
        assert!(
            s["reason"]["advice"]
                .as_str()
                .unwrap()
                .contains("pdb_recover('recommit')"),
            "{s}"
        );
        // The witness's history went on from an earlier point than theirs.
        assert_eq!(s["restored"]["kind"], "forked", "{s}");
        assert_eq!(s["restored"]["device_seq"], backed + lost, "{s}");
    }

    // In place on a device holding commits the witness lost is refused
    // (it would drop them), naming what to run, and changes nothing.
    let e = a.call("pdb_recover('in_place')").unwrap_err();
    assert!(e.contains("lost_commits_here"), "{e}");
    assert!(e.contains("pdb_recover('recommit')"), "{e}");
    assert_eq!(a.dump(&["t"]), a_state);
    assert_eq!(count(&a, "SELECT count(*) FROM pdb_lost_commits"), 0);

    // The device that synced last re-commits what the witness lost.
    let r = a.call("pdb_recover('recommit')").unwrap();
    assert_eq!(r["mode"], "recommit", "{r}");
    assert_eq!(r["shared_seq"], backed, "{r}");
    assert_eq!(r["lost_commits"], 2, "{r}");
    assert!(r["sync"]["pushed"].as_u64().unwrap() >= 1, "{r}");
    assert!(verified(&a));
    assert_eq!(status(&a)["state"], "healthy");
    assert!(status(&a)["restored"].is_null());
    // Its rows are what it held (b's edit it had pulled, its delete, its
    // edit and insert), with c's later edit kept, not undone.
    let mut want = vec![
        ("r1", "one, edited by b", 1),
        ("r3", "three", 30),
        ("r4", "four, edited by c after the restore", 4),
        ("r5", "five", 5),
        ("r6", "six", 6),
    ];
    assert_eq!(a.dump(&["t"]), rows(&want));
    assert_ne!(a_state, rows(&want), "c's edit is new");
    // Who wrote the lost commits is kept.
    assert_eq!(count(&a, "SELECT count(*) FROM pdb_lost_commits"), 2);

    // b wrote a lost commit too: in place is refused until told that
    // what it lost is committed again (a pulled b's edit and re-committed
    // it); then it installs the witness's state, keeping pending rows.
    let e = b.call("pdb_recover('in_place')").unwrap_err();
    assert!(e.contains("lost_commits_here"), "{e}");
    let e = b
        .call("pdb_recover('recommit', json_object('discard_lost', 1))")
        .unwrap_err();
    assert!(e.contains("in_place"), "{e}");
    let r = b
        .call("pdb_recover('in_place', json_object('discard_lost', 1))")
        .unwrap();
    assert_eq!(r["mode"], "in_place", "{r}");
    assert!(verified(&b));
    b.sync().unwrap();
    a.sync().unwrap();
    c.sync().unwrap();
    let end = a.dump(&["t"]);
    want.push(("r7", "seven, pending on b", 7));
    assert_eq!(end, rows(&want));
    assert_eq!(b.dump(&["t"]), end);
    assert_eq!(c.dump(&["t"]), end);
    for d in [&a, &b, &c] {
        assert!(verified(d));
        assert_eq!(status(d)["state"], "healthy", "{}", status(d));
    }
    assert!(w.head("g").seq > backed + 1);
    // No scratch copy is left beside any database file.
    for f in ["a.db", "b.db", "c.db"] {
        let scratch = devs.path().join(format!("{f}-pdb-recover"));
        assert!(!scratch.exists(), "{}", scratch.display());
    }
}

/// A witness with group "g", a device `a` (at `dir/devs/a.db`) that synced
/// one commit past a backup, and the witness restarted from that backup
/// on the same port (`open_opts`: more pdb_open options, each `, 'k', v`).
/// Returns the witness and the backup's head seq.
fn restored(dir: &Path, a: &Device, open_opts: &str) -> (Witness, u64) {
    let w = Witness::start(dir);
    w.create_group("g", DDL);
    a.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{TOKEN}', 'policy', 'remote_wins'{open_opts}))",
        w.url
    ))
    .unwrap();
    a.exec("INSERT INTO t VALUES ('r1', 'one', 1)");
    a.sync().unwrap();
    let backup = dir.join("backup");
    ok(witness_command(
        &dir.join("data"),
        &["backup", "--to", backup.to_str().unwrap()],
    ));
    let backed = w.head("g").seq;
    a.exec("INSERT INTO t VALUES ('r2', 'two', 2)");
    a.sync().unwrap();
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let restored = dir.join("restored");
    ok(witness_command(
        &restored.join("data"),
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    (Witness::start_on(&restored, port), backed)
}

#[test]
fn the_restore_advice_clears_once_the_witness_holds_this_head_again() {
    let dir = TempDir::new("recover-clears");
    let devs = TempDir::new("recover-clears-devs");
    let a = Device::new(&devs.path().join("a.db"));
    let (w, _) = restored(dir.path(), &a, "");
    let e = a.sync().unwrap_err();
    assert!(e.contains("unknown_head"), "{e}");
    assert_eq!(status(&a)["restored"]["kind"], "behind", "{}", status(&a));

    // The operator brings the witness back on its own data (the restore
    // was a mistake): nothing is lost, and nothing more to recover.
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let w = Witness::start_on(dir.path(), port);
    let e = a.call("pdb_recover('in_place')").unwrap_err();
    assert!(e.contains("not_restored"), "{e}");
    assert!(status(&a)["restored"].is_null(), "{}", status(&a));

    // The advice also goes with a sync that verifies a head on this
    // database's history (an unknown_head seen again, then healthy).
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let w2 = Witness::start_on(&dir.path().join("restored"), port);
    assert!(a.sync().unwrap_err().contains("unknown_head"));
    assert!(!status(&a)["restored"].is_null(), "{}", status(&a));
    let mut w2 = w2;
    assert!(w2.terminate().success());
    let _w = Witness::start_on(dir.path(), port);
    a.sync().unwrap();
    let s = status(&a);
    assert_eq!(s["state"], "healthy", "{s}");
    assert!(s["restored"].is_null(), "{s}");
    drop(w);
}

/// Runs a Python host on the database `db` (with `PDB_TEST_PANIC` set to
/// `panic` when given) and returns its exit status and what it printed.
fn python(db: &Path, script: &str, panic: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(format!(
        r#"
import sqlite3, json, os
db = sqlite3.connect({db:?}, isolation_level=None)
db.enable_load_extension(True)
db.load_extension({ext:?})
db.enable_load_extension(False)
def one(sql):
    return db.execute(sql).fetchone()[0]
def error(sql):
    try:
        db.execute(sql).fetchall()
        return None
    except sqlite3.Error as e:
        return str(e)
one("SELECT pdb_set_token('{TOKEN}')")
{script}
"#,
        db = db.display().to_string(),
        ext = extension_path().display().to_string(),
    ));
    match panic {
        Some(p) => cmd.env("PDB_TEST_PANIC", p),
        None => cmd.env_remove("PDB_TEST_PANIC"),
    };
    let out = cmd.output().expect("run python");
    // What it printed last is the last line.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

#[test]
fn the_scratch_copy_is_private_holds_no_token_and_never_stays() {
    let dir = TempDir::new("recover-scratch");
    let devs = TempDir::new("recover-scratch-devs");
    let path = devs.path().join("a.db");
    let scratch = devs.path().join("a.db-pdb-recover");
    let a = Device::new(&path);
    // The app keeps its token out of the file (store_token 0): it is
    // handed to each process (pdb_set_token).
    let (_w, _) = restored(dir.path(), &a, ", 'store_token', json('false')");
    drop(a);

    // A host that crashes in the middle of a recovery leaves the scratch
    // copy: readable by this user only, and without the token.
    let (ok, out) = python(
        &path,
        "print(error(\"SELECT pdb_sync()\"))\nprint(one(\"SELECT pdb_recover('recommit')\"))",
        Some("abort:recover_attached"),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("unknown_head"), "{out}");
    let bytes = std::fs::read(&scratch).expect("the crashed recovery's scratch file");
    assert!(bytes.len() > 4096, "{}", bytes.len());
    assert!(
        !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the token is in the scratch file"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&scratch).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // The next open removes it; a recovery that panics detaches and
    // removes its copy (the connection can attach again at once).
    let (ok, out) = python(
        &path,
        &format!(
            "s = {s:?}\n\
             e1 = error(\"SELECT pdb_open('{url}', 'g', json_object('token', '{TOKEN}', 'store_token', json('false')))\")\n\
             gone_after_open = not os.path.exists(s)\n\
             e2 = error(\"SELECT pdb_recover('recommit')\")\n\
             print(json.dumps({{'open': e1, 'gone_after_open': gone_after_open, 'recover': e2, \
             'gone_after_panic': not os.path.exists(s), \
             'attach': error(\"ATTACH DATABASE ':memory:' AS pdb_recover\")}}))",
            s = scratch.display().to_string(),
            url = _w.url,
        ),
        Some("recover_attached"),
    );
    assert!(ok, "{out}");
    let v: Json = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(v["open"].as_str().unwrap().contains("unknown_head"), "{v}");
    assert_eq!(v["gone_after_open"], true, "{v}");
    assert!(
        v["recover"].as_str().unwrap().contains("internal error"),
        "{v}"
    );
    assert_eq!(v["gone_after_panic"], true, "{v}");
    assert!(v["attach"].is_null(), "{v}");

    // The recovery runs to the end, and leaves nothing behind.
    let (ok, out) = python(
        &path,
        "print(one(\"SELECT pdb_recover('recommit')\"))\nprint(one(\"SELECT pdb_status()\"))",
        None,
    );
    assert!(ok, "{out}");
    let s: Json = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(s["state"], "healthy", "{s}");
    assert!(!scratch.exists());
    assert!(std::fs::read_dir(devs.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("pdb-recover")));
}

#[test]
fn a_witness_behind_its_last_device_gets_the_lost_history_back() {
    let dir = TempDir::new("recover-behind");
    let data = dir.path().join("data");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let devs = TempDir::new("recover-behind-devs");
    let a = Device::new(&devs.path().join("a.db"));
    let b = Device::new(&devs.path().join("b.db"));
    a.open(&w, "g", "local_wins").unwrap();
    b.open(&w, "g", "remote_wins").unwrap();
    a.exec("INSERT INTO t VALUES ('r1', 'one', 1), ('r2', 'two', 2)");
    a.sync().unwrap();
    b.sync().unwrap();
    let backup = dir.path().join("backup");
    ok(witness_command(
        &data,
        &["backup", "--to", backup.to_str().unwrap()],
    ));
    let backed = w.head("g").seq;
    a.exec("UPDATE t SET note = 'one, later' WHERE id = 'r1'; DELETE FROM t WHERE id = 'r2'");
    a.sync().unwrap();
    a.exec("INSERT INTO t VALUES ('r3', 'three, never pushed', 3)");
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let restored = dir.path().join("restored");
    ok(witness_command(
        &restored.join("data"),
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    let w = Witness::start_on(&restored, port);

    // Nobody committed since: the witness is at an earlier point of a's
    // own history, and a knows how many commits it lost.
    let e = a.sync().unwrap_err();
    assert!(e.contains("unknown_head"), "{e}");
    let s = status(&a);
    assert_eq!(s["restored"]["kind"], "behind", "{s}");
    assert_eq!(s["restored"]["lost_commits"], 1, "{s}");
    assert_eq!(s["restored"]["witness_seq"], backed, "{s}");
    // b never synced past the backup: it goes on as before.
    b.sync().unwrap();

    let r = a.call("pdb_recover('recommit')").unwrap();
    assert_eq!(r["shared_seq"], backed, "{r}");
    assert_eq!(r["lost_commits"], 1, "{r}");
    assert!(verified(&a));
    b.sync().unwrap();
    let want = rows(&[("r1", "one, later", 1), ("r3", "three, never pushed", 3)]);
    assert_eq!(a.dump(&["t"]), want);
    assert_eq!(b.dump(&["t"]), want);
    assert!(verified(&b));
    // The re-commits are a's: the witness's log names a's caller.
    let author = count(
        &a,
        "SELECT count(*) FROM pdb_certificates WHERE seq > 1 AND mine = 1",
    );
    assert!(author >= 1, "{author}");
    assert!(w.head("g").seq > backed);
}
