//! What one `pdb_sync()` costs on the wire: a device that pushes does not
//! download its own commit, a 1-row sync is one request and a small one,
//! a sync with nothing to do is one request — and the pushing device's
//! verified copy is the other devices'.

use pdb_e2e::*;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n INTEGER);";

/// Requests the witness answered between two readings of its metrics
/// (the readings left out), by "endpoint status".
fn requests(
    before: &std::collections::BTreeMap<(String, String), (u64, f64)>,
    after: &std::collections::BTreeMap<(String, String), (u64, f64)>,
) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|((e, _), _)| e != "metrics")
        .filter_map(|((e, s), (n, _))| {
            let n0 = before.get(&(e.clone(), s.clone())).map_or(0, |v| v.0);
            (*n > n0).then(|| (format!("{e} {s}"), n - n0))
        })
        .collect()
}

struct Setup {
    _dir: TempDir,
    w: Witness,
    counter: ByteCounter,
    /// Reaches the witness through the counter.
    a: Device,
    b: Device,
}

fn setup(label: &str) -> Setup {
    let dir = TempDir::new(label);
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let counter = ByteCounter::start(&w.url["http://".len()..]);
    let a = Device::new(&dir.path().join("a.db"));
    a.open_url(&counter.url, "g", "remote_wins").unwrap();
    let b = Device::new(&dir.path().join("b.db"));
    b.open(&w, "g", "remote_wins").unwrap();
    Setup {
        _dir: dir,
        w,
        counter,
        a,
        b,
    }
}

/// Both devices verified, at the same head, with the same rows.
fn converged(s: &Setup) {
    s.b.sync().unwrap();
    assert_eq!(s.a.dump(&["notes"]), s.b.dump(&["notes"]));
    assert_eq!(
        s.a.call("pdb_head()").unwrap(),
        s.b.call("pdb_head()").unwrap()
    );
    for d in [&s.a, &s.b] {
        assert_eq!(d.call("pdb_verify()").unwrap()["ok"], true);
    }
}

#[test]
fn a_one_row_sync_is_one_small_request_and_an_idle_one_is_one_request() {
    let s = setup("cost-small");
    s.a.exec("INSERT INTO notes VALUES (1, 'first', 0)");
    s.a.sync().unwrap();
    for i in 1..=3 {
        s.a.exec(&format!("UPDATE notes SET n = {i} WHERE id = 1"));
        let (bytes, m) = (s.counter.bytes(), request_metrics(&s.w));
        let r = s.a.sync().unwrap();
        assert_eq!(
            (r["pushed"].as_i64(), r["pulled"].as_i64()),
            (Some(1), Some(0)),
            "{r}"
        );
        let calls = requests(&m, &request_metrics(&s.w));
        assert_eq!(
            calls,
            vec![("commits 201".to_string(), 1)],
            "one POST, nothing read back"
        );
        let (up, down) = (s.counter.bytes().0 - bytes.0, s.counter.bytes().1 - bytes.1);
        // HTTP headers included; it was 4.7 KB when the commit came back
        // with the log (and the log was read twice).
        assert!(up + down < 1600, "{up} B up, {down} B down");
    }
    // Nothing to push, nothing new: one request.
    for _ in 0..3 {
        let m = request_metrics(&s.w);
        let r = s.a.sync().unwrap();
        assert_eq!(
            (r["pushed"].as_i64(), r["pulled"].as_i64()),
            (Some(0), Some(0)),
            "{r}"
        );
        let calls = requests(&m, &request_metrics(&s.w));
        assert_eq!(calls, vec![("commits 200".to_string(), 1)]);
    }
    let st = s.a.call("pdb_status()").unwrap();
    assert_eq!(st["state"], "healthy", "{st}");
    assert!(st["last_sync_ms"].is_i64(), "{st}");
    converged(&s);
}

#[test]
fn a_device_does_not_download_its_own_large_commit() {
    let s = setup("cost-large");
    s.a.exec("BEGIN");
    for i in 0..2_000 {
        s.a.exec(&format!(
            "INSERT INTO notes VALUES ({i}, '{}', {i})",
            "x".repeat(100)
        ));
    }
    s.a.exec("COMMIT");
    let before = s.counter.bytes();
    let r = s.a.sync().unwrap();
    assert_eq!(r["pushed"], 1, "{r}");
    let (up, down) = (
        s.counter.bytes().0 - before.0,
        s.counter.bytes().1 - before.1,
    );
    assert!(up > 200_000, "the commit went up: {up} B");
    assert!(down < 2_000, "and did not come back: {down} B down");
    converged(&s);
}

#[test]
fn a_commit_accepted_after_another_devices_is_pulled_and_both_agree() {
    let s = setup("cost-between");
    s.a.exec("INSERT INTO notes VALUES (1, 'a', 1)");
    s.a.sync().unwrap();
    s.b.sync().unwrap();
    // b commits after a's head; a's next commit is accepted on top of it
    // (rebase_if_clean): a pulls b's commit and its own with it.
    s.b.exec("INSERT INTO notes VALUES (2, 'b', 2)");
    s.b.sync().unwrap();
    s.a.exec("UPDATE notes SET n = 10 WHERE id = 1");
    let r = s.a.sync().unwrap();
    assert_eq!(
        (r["pushed"].as_i64(), r["pulled"].as_i64()),
        (Some(1), Some(2)),
        "{r}"
    );
    converged(&s);
    assert_eq!(s.a.dump(&["notes"]).len(), 2);
}
