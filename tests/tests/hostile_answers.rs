//! Answers that try to hurt the device rather than fool it: an answer far
//! larger than its endpoint needs must end in a clear error, never in the
//! host process holding it all or aborting; a page that makes no progress
//! must end the pull, not loop; a key chain that forks from the trusted one
//! is refused by name. Hosts are real: Python (/usr/bin/python3) as its own
//! process, and rusqlite.

use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";
const HUGE: usize = 200 << 20;

fn setup(label: &str) -> (TempDir, Witness) {
    let dir = TempDir::new(label);
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    (dir, w)
}

/// A server that answers every request with `HUGE` bytes of a JSON
/// string (written in 1 MiB pieces, as long as the client reads).
fn huge_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"public_key\":\"",
                    HUGE + 17
                );
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let piece = vec![b'a'; 1 << 20];
                for _ in 0..HUGE >> 20 {
                    if s.write_all(&piece).is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"\",\"version\":\"x\"}");
            });
        }
    });
    url
}

/// Runs a Python script (the extension's path in `EXT`, the database in
/// `DB`); its output, whatever its exit status, and whether it succeeded.
fn python(db: &Path, script: &str) -> (bool, String) {
    let prelude = r#"
import sqlite3, json, os, resource
db = sqlite3.connect(os.environ["DB"])
db.enable_load_extension(True)
db.load_extension(os.environ["EXT"])
db.enable_load_extension(False)
def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{prelude}\n{script}"))
        .env("DB", db)
        .env("EXT", extension_path())
        .output()
        .expect("start python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The peak resident memory the script printed as `maxrss_mib=N`.
fn maxrss(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("maxrss_mib="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {out}"))
}

#[test]
fn a_200_mib_answer_to_the_witness_info_is_a_clear_error_and_the_host_lives() {
    let dir = TempDir::new("huge-info");
    let url = huge_server();
    let (ok, out) = python(
        &dir.path().join("py.db"),
        &format!(
            r#"
try:
    db.execute("SELECT pdb_open(?, 'g', json_object('token', 't'))", ({url:?},)).fetchone()
    print("opened?!")
except sqlite3.OperationalError as e:
    print("error:", e)
print("maxrss_mib=%d" % maxrss_mib())
print("alive")
"#
        ),
    );
    assert!(ok, "the host died: {out}");
    assert!(out.contains("alive"), "{out}");
    assert!(out.contains("error: pdb_open: response_too_large"), "{out}");
    // It was never held: far less than the 200 MiB sent.
    assert!(maxrss(&out) < 100, "{out}");
}

/// Pads every page of commits with 200 MiB.
fn pad_pages(path: &str, j: &mut Json) {
    if path.contains("/commits?") {
        j["padding"] = json!("x".repeat(HUGE));
    }
}

#[test]
fn a_200_mib_page_during_sync_is_a_clear_error_and_sync_resumes_after() {
    let (dir, w) = setup("huge-page");
    let proxy = Proxy::start(&w.url);
    let db = dir.path().join("py.db");
    let (ok, out) = python(
        &db,
        &format!(
            r#"
db.execute("SELECT pdb_open(?, 'g', json_object('token', ?))", ({url:?}, {TOKEN:?})).fetchone()
db.execute("INSERT INTO notes VALUES (1, 'kept')")
db.commit()
print(db.execute("SELECT pdb_sync()").fetchone()[0])
"#,
            url = proxy.url
        ),
    );
    assert!(ok, "{out}");
    // Another device commits, so the next sync has a page to pull.
    let other = Device::new(&dir.path().join("other.db"));
    other.open(&w, "g", "remote_wins").unwrap();
    other.exec("INSERT INTO notes VALUES (2, 'from the other device')");
    other.sync().unwrap();

    proxy.set(ProxyMode::TamperGet(pad_pages));
    let (ok, out) = python(
        &db,
        r#"
try:
    db.execute("SELECT pdb_sync()").fetchone()
    print("synced?!")
except sqlite3.OperationalError as e:
    print("error:", e)
s = json.loads(db.execute("SELECT pdb_status()").fetchone()[0])
print("code=%s state=%s" % (s["reason"]["code"], s["state"]))
print("maxrss_mib=%d" % maxrss_mib())
"#,
    );
    assert!(ok, "the host died: {out}");
    assert!(out.contains("error: pdb_sync: response_too_large"), "{out}");
    assert!(
        out.contains("code=response_too_large state=waiting"),
        "{out}"
    );
    assert!(maxrss(&out) < 150, "{out}");

    // Once answers are honest again, sync goes on from where it was.
    proxy.set(ProxyMode::Pass);
    let (ok, out) = python(
        &db,
        r#"
r = json.loads(db.execute("SELECT pdb_sync()").fetchone()[0])
print("pulled=%d" % r["pulled"])
print([tuple(x) for x in db.execute("SELECT id, body FROM notes ORDER BY id")])
"#,
    );
    assert!(ok, "{out}");
    assert!(out.contains("pulled=1"), "{out}");
    assert!(out.contains("(2, 'from the other device')"), "{out}");
}

/// The genuine log entry at seq 1, replayed by `stall_pages`.
static FIRST: Mutex<Option<Json>> = Mutex::new(None);
/// Pages of commits the stalling proxy answered.
static STALLED: AtomicU64 = AtomicU64::new(0);
/// After this many, the proxy relays honestly (so a device that loops
/// would end up synced, and the test fail, instead of hanging).
const STALL_AT_MOST: u64 = 200;

/// Answers a page after seq 1 with only the (genuine, signed) entry at
/// seq 1 — the device's own head — and `next_after` set, under the
/// genuine signed head.
fn stall_pages(path: &str, j: &mut Json) {
    if !path.contains("/commits?after=1&") || STALLED.load(Ordering::SeqCst) >= STALL_AT_MOST {
        return;
    }
    STALLED.fetch_add(1, Ordering::SeqCst);
    if let Some(e) = FIRST.lock().unwrap().clone() {
        j["commits"] = json!([e]);
        j["next_after"] = json!(1);
    }
}

#[test]
fn a_replayed_page_that_makes_no_progress_ends_the_pull() {
    let (dir, w) = setup("stall");
    let proxy = Proxy::start(&w.url);
    let a = Device::new(&dir.path().join("a.db"));
    a.open_url(&proxy.url, "g", "remote_wins").unwrap();
    a.exec("INSERT INTO notes VALUES (1, 'first')");
    a.sync().unwrap();
    let b = Device::new(&dir.path().join("b.db"));
    b.open(&w, "g", "remote_wins").unwrap();
    for i in 2..4 {
        b.exec(&format!("INSERT INTO notes VALUES ({i}, 'more')"));
        b.sync().unwrap();
    }
    *FIRST.lock().unwrap() = Some(w.all_commits("g")[0].clone());

    proxy.set(ProxyMode::TamperGet(stall_pages));
    let err = a.sync().unwrap_err();
    assert!(err.contains("no_progress"), "{err}");
    // One page asked for, and refused: no loop.
    assert_eq!(STALLED.load(Ordering::SeqCst), 1);
    let s = a.call("pdb_status()").unwrap();
    assert_eq!(s["reason"]["code"], "no_progress", "{s}");
    assert_eq!(a.dump(&["notes"]).len(), 1);

    // Honest answers again: the device catches up.
    proxy.set(ProxyMode::Pass);
    let r = a.sync().unwrap();
    assert_eq!(r["pulled"], 2, "{r}");
    assert_eq!(a.dump(&["notes"]), b.dump(&["notes"]));
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp {} {}", from.display(), to.display());
}

#[test]
fn a_rotation_chain_that_forks_from_the_trusted_one_is_refused_by_name() {
    let (dir, mut w) = setup("fork");
    let port = w.port();
    let a = Device::new(&dir.path().join("a.db"));
    a.open(&w, "g", "remote_wins").unwrap();
    a.exec("INSERT INTO notes VALUES (1, 'before the rotation')");
    a.sync().unwrap();

    // An old backup holds K1.
    w.terminate();
    let backup = TempDir::new("fork-backup");
    copy_dir(&dir.path().join("data"), &backup.path().join("data"));
    // The real witness rotates K1 → K2; the device follows.
    let out = witness_command(&dir.path().join("data"), &["rotate-key"]);
    assert!(out.status.success(), "{out:?}");
    let mut w = Witness::start_on(dir.path(), port);
    a.sync().unwrap();
    assert_eq!(a.call("pdb_status()").unwrap()["state"], "healthy");

    // Whoever holds the backup rotates K1 → K3 and answers on the same
    // address.
    w.terminate();
    let out = witness_command(&backup.path().join("data"), &["rotate-key"]);
    assert!(out.status.success(), "{out:?}");
    let mut forked = Witness::start_on(backup.path(), port);
    let err = a.sync().unwrap_err();
    assert!(err.contains("key_fork"), "{err}");
    let s = a.call("pdb_status()").unwrap();
    assert_eq!(s["reason"]["code"], "key_fork", "{s}");
    assert_eq!(s["state"], "blocked", "{s}");
    // Still refused on the next try, and when opened again.
    assert!(a.sync().unwrap_err().contains("key_fork"));
    let again = a.open(&forked, "g", "remote_wins").unwrap_err();
    assert!(again.contains("key_fork"), "{again}");

    // The true witness back: sync resumes.
    forked.terminate();
    let _w = Witness::start_on(dir.path(), port);
    a.exec("INSERT INTO notes VALUES (2, 'after')");
    a.sync().unwrap();
    assert_eq!(a.call("pdb_status()").unwrap()["state"], "healthy");
    assert_eq!(a.call("pdb_verify()").unwrap()["ok"], true);
}

#[test]
fn rotate_key_refuses_a_start_before_a_time_the_witness_already_signed() {
    let (dir, mut w) = setup("rotate-clock");
    let a = Device::new(&dir.path().join("a.db"));
    a.open(&w, "g", "remote_wins").unwrap();
    a.exec("INSERT INTO notes VALUES (1, 'signed')");
    a.sync().unwrap();
    w.terminate();
    let data = dir.path().join("data");
    // As if the witness's clock had run 400 days ahead when it signed its
    // last entry, and was corrected since.
    let group = rusqlite::Connection::open(data.join("groups").join("g.sqlite")).unwrap();
    let ahead = pdb_protocol::now_ms() as i64 + 400 * 86_400_000;
    group
        .execute("UPDATE pdb_head SET time_ms = ?1", [ahead])
        .unwrap();
    let out = witness_command(&data, &["rotate-key"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refusing to rotate"), "{text}");
    assert!(!data.join("witness.key.next").exists());
    assert!(
        !data.join("rotations.json").exists() || {
            let r = std::fs::read_to_string(data.join("rotations.json")).unwrap();
            r.trim() == "[]"
        }
    );
    // Once the clock is past it, the rotation goes ahead.
    group
        .execute(
            "UPDATE pdb_head SET time_ms = ?1",
            [ahead - 401 * 86_400_000],
        )
        .unwrap();
    drop(group);
    let out = witness_command(&data, &["rotate-key"]);
    assert!(out.status.success(), "{out:?}");
}

static EMPTY_PAGES: AtomicU64 = AtomicU64::new(0);

/// Answers every projection page with no rows and `next_after` one past
/// where it was asked (bounded, so a broken fix fails instead of hanging).
fn empty_projection_pages(path: &str, j: &mut Json) {
    if !path.contains("/projections/notes_view?") || EMPTY_PAGES.load(Ordering::SeqCst) >= 200 {
        return;
    }
    EMPTY_PAGES.fetch_add(1, Ordering::SeqCst);
    let after: i64 = path
        .split("after=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    j["rows"] = json!([]);
    j["next_after"] = json!(after + 1);
}

#[test]
fn a_projection_page_that_holds_nothing_but_says_more_follow_ends_the_read() {
    let (dir, w) = setup("empty-projection-pages");
    let r = w.request(
        "PUT",
        "/v1/groups/g/projections/notes_view",
        Some(TOKEN),
        Some(&json!({"table": "notes", "columns": ["id", "body"]})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let proxy = Proxy::start(&w.url);
    let a = Device::new(&dir.path().join("a.db"));
    a.open_url(&proxy.url, "g", "remote_wins").unwrap();
    a.exec("INSERT INTO notes VALUES (1, 'first'), (2, 'second')");
    a.sync().unwrap();
    a.exec("CREATE VIRTUAL TABLE temp.v USING pdb_projection('notes_view')");

    proxy.set(ProxyMode::TamperGet(empty_projection_pages));
    let err = a
        .conn
        .query_row("SELECT count(*) FROM temp.v", [], |r| r.get::<_, i64>(0))
        .expect_err("an empty page that says more follow must end the read")
        .to_string();
    assert!(err.contains("no_progress"), "{err}");
    assert_eq!(
        EMPTY_PAGES.load(Ordering::SeqCst),
        1,
        "one page asked for, and refused: no loop"
    );

    // Honest answers again: the projection reads in full.
    proxy.set(ProxyMode::Pass);
    let n: i64 = a
        .conn
        .query_row("SELECT count(*) FROM temp.v", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}
