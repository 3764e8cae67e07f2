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

fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(target_binary("pdb-witness"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

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
    ok(cli(&data, &["backup", "--to", backup.to_str().unwrap()]));
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
    ok(cli(
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

    // The others recover in place, keeping their pending rows.
    let r = b.call("pdb_recover('in_place')").unwrap();
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
}

#[test]
fn a_device_behind_nothing_lost_or_a_replayed_state_changes_nothing() {
    let dir = TempDir::new("recover-replay");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let proxy = Proxy::start(&w.url);
    let devs = TempDir::new("recover-replay-devs");
    let d = Device::new(&devs.path().join("d.db"));
    d.open_url(&proxy.url, "g", "remote_wins").unwrap();
    d.exec("INSERT INTO t VALUES ('r1', 'one', 1)");
    d.sync().unwrap();
    // Nothing was restored: pdb_recover says so and changes nothing.
    let e = d.call("pdb_recover('recommit')").unwrap_err();
    assert!(
        e.contains("not_restored") || e.contains("nothing to recover"),
        "{e}"
    );
    let e = d.call("pdb_recover('sideways')").unwrap_err();
    assert!(e.contains("'recommit'"), "{e}");

    // An attacker keeps the answers a fresh open gets at this point...
    let scratch = Device::new(&devs.path().join("scratch.db"));
    proxy.set(ProxyMode::Record);
    scratch.open_url(&proxy.url, "g", "remote_wins").unwrap();
    proxy.set(ProxyMode::Pass);
    // ...the device moves on (and sees a later signed head)...
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    d.exec("UPDATE t SET note = 'later' WHERE id = 'r1'; INSERT INTO t VALUES ('r2', 'two', 2)");
    d.sync().unwrap();
    let before = (d.dump(&["t"]), d.call("pdb_head()").unwrap());
    // ...and then replays them: the device seems ahead of the witness.
    proxy.set(ProxyMode::Replay);
    for mode in ["recommit", "in_place"] {
        let e = d.call(&format!("pdb_recover('{mode}')")).unwrap_err();
        assert!(e.contains("replayed"), "{e}");
        assert_eq!((d.dump(&["t"]), d.call("pdb_head()").unwrap()), before);
        assert_eq!(count(&d, "SELECT count(*) FROM pdb_lost_commits"), 0);
    }
    proxy.set(ProxyMode::Pass);
    d.sync().unwrap();
    assert!(verified(&d));
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
    ok(cli(&data, &["backup", "--to", backup.to_str().unwrap()]));
    let backed = w.head("g").seq;
    a.exec("UPDATE t SET note = 'one, later' WHERE id = 'r1'; DELETE FROM t WHERE id = 'r2'");
    a.sync().unwrap();
    a.exec("INSERT INTO t VALUES ('r3', 'three, never pushed', 3)");
    let port = w.port();
    let mut w = w;
    assert!(w.terminate().success());
    let restored = dir.path().join("restored");
    ok(cli(
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
