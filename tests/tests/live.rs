//! Live sync: the background worker in real hosts (a Python process and a
//! Node process, each with the built libpdb), a real witness on loopback.
//! A write in one appears in the other with no pdb_sync() call; a witness
//! restart and a network cut heal by themselves; an unauthorized answer
//! stops the worker saying why; closing the connection or exiting while
//! the worker runs leaves the file writable; a host writing all the time
//! never sees SQLITE_BUSY; a stop from one witness answer lifts by itself,
//! a Retry-After holds the retry, a missed watch wake-up is caught by the
//! idle pull, a watch that keeps panicking is replaced by polling. Devices
//! are separate processes on
//! rollback-journal files (SQLite's default), written to also by this
//! process without the extension. Every wait is bounded; no timing
//! thresholds.

use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";

/// The longest any one step may take before the test fails (a bound, not
/// a measurement).
const BOUND: Duration = Duration::from_secs(60);

/// A host process driven line by line: each command is a JSON object,
/// each answer a JSON line.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    name: &'static str,
}

const PY_HOST: &str = r#"
import json, os, sqlite3, sys, threading, time
path, ext = sys.argv[1], sys.argv[2]
db = None
def connect():
    global db
    # Autocommit; a write waits up to 5 s for a lock (the busy timeout).
    db = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
    db.enable_load_extension(True)
    db.load_extension(ext)
    db.enable_load_extension(False)
connect()
def answer(v):
    sys.stdout.write(json.dumps(v) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "sql":
            answer({"rows": [list(r) for r in db.execute(cmd["sql"], cmd.get("params", [])).fetchall()]})
        elif op == "writes":
            # cmd["n"] single-row writes, as fast as they go; errors counted.
            errors = []
            for i in range(cmd["n"]):
                try:
                    db.execute("INSERT OR REPLACE INTO notes VALUES (?, ?)", (cmd["from"] + i, "w%d" % i))
                except sqlite3.Error as e:
                    errors.append("%s (%s)" % (e, getattr(e, "sqlite_errorname", "?")))
            answer({"errors": errors})
        elif op == "close":
            db.close(); db = None
            answer({"closed": True})
        elif op == "reopen":
            connect(); answer({"open": True})
        elif op == "exit":
            answer({"exiting": True})
            sys.exit(0)
        else:
            answer({"error": "unknown op " + op})
    except sqlite3.Error as e:
        answer({"error": str(e)})
"#;

const NODE_HOST: &str = r#"
const Database = require('better-sqlite3');
const readline = require('node:readline');
const [path, ext] = process.argv.slice(1);
let db = null;
function connect() {
  db = new Database(path, { timeout: 5000 });
  db.loadExtension(ext);
}
connect();
const answer = (v) => process.stdout.write(JSON.stringify(v) + '\n');
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  try {
    if (cmd.op === 'sql') {
      const st = db.prepare(cmd.sql);
      const rows = st.reader ? st.raw().all(...(cmd.params || [])) : (st.run(...(cmd.params || [])), []);
      answer({ rows });
    } else if (cmd.op === 'writes') {
      const errors = [];
      const ins = db.prepare('INSERT OR REPLACE INTO notes VALUES (?, ?)');
      for (let i = 0; i < cmd.n; i++) {
        try { ins.run(cmd.from + i, 'w' + i); } catch (e) { errors.push(`${e.message} (${e.code})`); }
      }
      answer({ errors });
    } else if (cmd.op === 'close') {
      db.close(); db = null; answer({ closed: true });
    } else if (cmd.op === 'reopen') {
      connect(); answer({ open: true });
    } else if (cmd.op === 'exit') {
      answer({ exiting: true });
      process.exit(0);
    } else {
      answer({ error: 'unknown op ' + cmd.op });
    }
  } catch (e) {
    answer({ error: e.message });
  }
});
"#;

impl Host {
    fn python(db: &Path) -> Host {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-c").arg(PY_HOST);
        Host::spawn("python", cmd, db)
    }

    fn node(db: &Path) -> Host {
        let mut cmd = Command::new("node");
        cmd.arg("-e")
            .arg(NODE_HOST)
            .arg("--")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("node"));
        Host::spawn("node", cmd, db)
    }

    fn spawn(name: &'static str, mut cmd: Command, db: &Path) -> Host {
        let mut child = cmd
            .arg(db)
            .arg(extension_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Host {
            stdin: child.stdin.take(),
            child,
            lines,
            name,
        }
    }

    fn send(&mut self, cmd: Json) -> Json {
        let stdin = self.stdin.as_mut().expect("host stdin");
        writeln!(stdin, "{cmd}").expect("write to host");
        stdin.flush().expect("flush");
        let line = self
            .lines
            .recv_timeout(BOUND)
            .unwrap_or_else(|e| panic!("{}: no answer to {cmd}: {e}", self.name));
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{}: {line}", self.name))
    }

    /// Rows of a query; panics on an error.
    fn sql(&mut self, sql: &str, params: Json) -> Vec<Json> {
        let r = self.send(json!({"op": "sql", "sql": sql, "params": params}));
        match r["rows"].as_array() {
            Some(rows) => rows.clone(),
            None => panic!("{}: {sql}: {r}", self.name),
        }
    }

    /// A pdb_* function's JSON answer.
    fn call(&mut self, expr: &str) -> Json {
        let rows = self.sql(&format!("SELECT {expr}"), json!([]));
        let text = rows[0][0].as_str().expect("text").to_string();
        serde_json::from_str(&text).expect("json")
    }

    /// A pdb_* function's error message.
    fn fails(&mut self, expr: &str) -> String {
        let r = self.send(json!({"op": "sql", "sql": format!("SELECT {expr}"), "params": []}));
        r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {expr} did not fail: {r}", self.name))
            .to_string()
    }

    fn open(&mut self, url: &str, token: &str) {
        let r = self.call(&format!(
            "pdb_open('{url}', 'g', json_object('token', '{token}'))"
        ));
        assert!(r["head"].is_object(), "{}: {r}", self.name);
    }

    fn body(&mut self, id: i64) -> Option<String> {
        let rows = self.sql("SELECT body FROM notes WHERE id = ?", json!([id]));
        rows.first().and_then(|r| r[0].as_str().map(str::to_string))
    }

    fn status(&mut self) -> Json {
        self.call("pdb_status()")
    }

    /// Waits (bounded) until `f` holds of this host.
    fn until(&mut self, what: &str, mut f: impl FnMut(&mut Host) -> bool) {
        let start = std::time::Instant::now();
        while start.elapsed() < BOUND {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let s = self.status();
        panic!("{}: {what} did not happen; status {s}", self.name);
    }

    fn saw(&mut self, id: i64, body: &str) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < BOUND {
            if self.body(id).as_deref() == Some(body) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    fn sees(&mut self, id: i64, body: &str) {
        self.until(&format!("row {id} = {body:?}"), |h| {
            h.body(id).as_deref() == Some(body)
        });
    }

    /// Ends the host the way the test said, and its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < BOUND, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay that can cut every connection and refuse new ones (a
/// network outage), then heal.
struct Cut {
    url: String,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections clients tried, refused ones included.
    attempts: Arc<AtomicU64>,
}

impl Cut {
    fn start(target_port: u16) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let attempts: Arc<AtomicU64> = Arc::default();
        let (d, o, n) = (down.clone(), open.clone(), attempts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut kept = o.lock().unwrap();
                kept.retain(|s| s.peer_addr().is_ok());
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        kept.push(c);
                    }
                }
                drop(kept);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Cut {
            url,
            down,
            open,
            attempts,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn db_path(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(format!("{name}.db"))
}

#[test]
fn python_and_node_workers_carry_writes_both_ways_without_pdb_sync() {
    let dir = TempDir::new("live");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let mut py = Host::python(&db_path(&dir, "py"));
    let mut node = Host::node(&db_path(&dir, "node"));
    py.open(&w.url, TOKEN);
    node.open(&w.url, TOKEN);
    // Without a worker nothing moves by itself; pdb_status says none runs.
    assert!(py.status()["worker"].is_null());
    for h in [&mut py, &mut node] {
        let r = h.call("pdb_sync_start()");
        assert_eq!(r["worker"], "started", "{r}");
        // A second start is harmless.
        let r = h.call("pdb_sync_start('{\"debounce_ms\": 20}')");
        assert_eq!(r["worker"], "running", "{r}");
    }
    assert!(py
        .fails("pdb_sync_start('{\"nope\": 1}')")
        .contains("unknown option"));

    py.sql("INSERT INTO notes VALUES (1, 'from python')", json!([]));
    if !node.saw(1, "from python") {
        panic!(
            "python: {}\nnode: {}\nwitness head {}",
            py.status(),
            node.status(),
            w.head("g").seq
        );
    }
    node.sql("INSERT INTO notes VALUES (2, 'from node')", json!([]));
    node.sql(
        "UPDATE notes SET body = 'edited by node' WHERE id = 1",
        json!([]),
    );
    py.sees(2, "from node");
    py.sees(1, "edited by node");

    // pdb_wait: Node waits for the head Python is at.
    let seq = py.call("pdb_head()")["seq"].as_i64().unwrap();
    let r = node.call(&format!("pdb_wait({seq}, 30000)"));
    assert_eq!(r["reached"], true, "{r}");
    let r = node.call(&format!("pdb_wait({}, 0)", seq + 1000));
    assert_eq!(r["reached"], false, "{r}");
    assert!(node.fails("pdb_wait(1, -5)").contains("timeout_ms"));

    // pdb_changes: what the remote commits changed, by table and key.
    let rows = py.sql(
        "SELECT tbl, key, op FROM pdb_changes ORDER BY id",
        json!([]),
    );
    assert!(
        rows.contains(&json!(["notes", "[2]", "insert"]))
            && rows.contains(&json!(["notes", "[1]", "update"])),
        "{rows:?}"
    );
    // Its own commits are not listed.
    assert!(
        !rows.contains(&json!(["notes", "[1]", "insert"])),
        "{rows:?}"
    );

    // A burst of 50 writes (each its own transaction) goes in a few
    // commits, not one per write.
    let before = w.head("g").seq;
    let r = py.send(json!({"op": "writes", "n": 50, "from": 100}));
    assert_eq!(r["errors"], json!([]), "{r}");
    node.sees(149, "w49");
    let commits = w.head("g").seq - before;
    assert!(commits < 50, "{commits} commits for 50 writes");

    let s = node.status();
    assert_eq!(s["state"], "healthy", "{s}");
    assert_eq!(s["worker"]["state"], "idle", "{s}");
    assert_eq!(s["worker"]["watching"], true, "{s}");
    for h in [&mut py, &mut node] {
        assert_eq!(h.call("pdb_sync_stop()")["worker"], "stopped");
        assert_eq!(h.call("pdb_sync_stop()")["worker"], "not_running");
        assert!(h.status()["worker"].is_null());
    }
    // Stopped: a write stays local until a sync.
    py.sql("INSERT INTO notes VALUES (3, 'after stop')", json!([]));
    assert_eq!(py.status()["pending_rows"], 1);
    assert_eq!(py.call("pdb_sync()")["pushed"], 1);
    assert_eq!(py.send(json!({"op": "exit"}))["exiting"], true);
    assert!(py.wait().success());
    assert_eq!(node.send(json!({"op": "exit"}))["exiting"], true);
    assert!(node.wait().success());
}

/// A plain connection to `path` in this test's own process: it never
/// loaded the extension (rollback journal, as the host left the file).
fn plain_write(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    c.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn devices_in_separate_processes_carry_writes_of_a_plain_connection() {
    let dir = TempDir::new("live-procs");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    // A's process starts its worker first; B's process is started after,
    // and a third process (this one, without the extension) writes to A.
    let a_path = db_path(&dir, "a");
    let mut a = Host::python(&a_path);
    a.open(&w.url, TOKEN);
    assert_eq!(a.call("pdb_sync_start()")["worker"], "started");
    let mut b = Host::node(&db_path(&dir, "b"));
    b.open(&w.url, TOKEN);
    assert_eq!(b.call("pdb_sync_start()")["worker"], "started");
    for h in [&mut a, &mut b] {
        let mode = h.sql("PRAGMA journal_mode", json!([]));
        assert_eq!(mode, vec![json!(["delete"])], "{}", h.name);
    }
    for i in 1..=5 {
        let body = format!("plain write {i}");
        plain_write(
            &a_path,
            &format!("INSERT INTO notes VALUES ({i}, '{body}')"),
        );
        if !b.saw(i, &body) {
            panic!(
                "B never saw row {i}\nA: {}\nB: {}\nwitness head {}",
                a.status(),
                b.status(),
                w.head("g").seq
            );
        }
        // And back: B's host writes, A's worker pulls it.
        b.sql("INSERT INTO notes VALUES (?, 'from b')", json!([100 + i]));
        a.sees(100 + i, "from b");
    }
    for h in [&mut a, &mut b] {
        h.until("everything synced", |h| {
            let s = h.status();
            s["pending_rows"] == 0 && s["worker"]["state"] == "idle"
        });
        assert_eq!(h.call("pdb_verify()")["ok"], true);
    }
}

#[test]
fn a_pull_the_app_keeps_from_committing_is_retried_not_left_open() {
    let dir = TempDir::new("live-held");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let a_path = db_path(&dir, "a");
    let mut a = Host::python(&a_path);
    a.open(&w.url, TOKEN);
    a.call("pdb_sync_start()");
    let mut b = Host::python(&db_path(&dir, "b"));
    b.open(&w.url, TOKEN);
    b.call("pdb_sync_start('{\"busy_timeout_ms\": 200, \"min_backoff_ms\": 50, \"max_backoff_ms\": 200}')");
    // B's app holds a read transaction (rollback journal: a shared lock),
    // so B's worker cannot commit the pull of A's write.
    b.sql("BEGIN", json!([]));
    b.sql("SELECT count(*) FROM notes", json!([]));
    plain_write(&a_path, "INSERT INTO notes VALUES (1, 'held back')");
    b.until("B's worker to find the file busy", |h| {
        h.status()["worker"]["failures"].as_u64().unwrap_or(0) >= 1
    });
    // The failed COMMIT rolled the pull back: the worker holds no lock
    // and no transaction, so the app's reads and writes go on...
    b.sql("COMMIT", json!([]));
    b.sql("INSERT INTO notes VALUES (2, 'from b')", json!([]));
    // ...and the retry pulls once the app lets go.
    b.sees(1, "held back");
    a.sees(2, "from b");
    for h in [&mut a, &mut b] {
        h.until("everything synced", |h| {
            let s = h.status();
            s["pending_rows"] == 0 && s["worker"]["state"] == "idle"
        });
        assert_eq!(h.call("pdb_verify()")["ok"], true);
    }
}

#[test]
fn a_witness_restart_and_a_network_cut_heal_by_themselves() {
    let dir = TempDir::new("live-heal");
    let mut w = Witness::start(dir.path());
    let port = w.port();
    w.create_group("g", DDL);
    let net = Cut::start(port);
    let mut a = Host::python(&db_path(&dir, "a"));
    let mut b = Host::node(&db_path(&dir, "b"));
    a.open(&net.url, TOKEN);
    b.open(&net.url, TOKEN);
    for h in [&mut a, &mut b] {
        // Retries come quickly in a test.
        h.call("pdb_sync_start('{\"min_backoff_ms\": 50, \"max_backoff_ms\": 500}')");
    }
    a.sql("INSERT INTO notes VALUES (1, 'before')", json!([]));
    b.sees(1, "before");

    // The network goes (every connection dropped, new ones refused).
    net.cut();
    a.sql("INSERT INTO notes VALUES (2, 'during the cut')", json!([]));
    a.until("the worker to retry", |h| {
        let s = h.status();
        s["worker"]["state"] == "backoff" && s["state"] == "waiting"
    });
    let s = a.status();
    assert_eq!(s["worker"]["reason"]["class"], "retry", "{s}");
    assert!(s["worker"]["next_retry_ms"].is_u64(), "{s}");
    net.heal();
    b.sees(2, "during the cut");

    // The witness restarts: both workers carry on by themselves.
    assert!(w.terminate().success());
    b.sql(
        "INSERT INTO notes VALUES (3, 'while the witness was down')",
        json!([]),
    );
    b.until("the worker to retry", |h| {
        h.status()["worker"]["state"] == "backoff"
    });
    let w2 = Witness::start_on(dir.path(), port);
    a.sees(3, "while the witness was down");
    a.sql(
        "INSERT INTO notes VALUES (4, 'after the restart')",
        json!([]),
    );
    b.sees(4, "after the restart");
    for h in [&mut a, &mut b] {
        h.until("healthy", |h| h.status()["state"] == "healthy");
        assert_eq!(h.call("pdb_verify()")["ok"], true);
    }
    drop(w2);
}

#[test]
fn an_app_writing_through_an_outage_does_not_bring_retries_forward() {
    let dir = TempDir::new("live-herd");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let net = Cut::start(w.port());
    let mut a = Host::python(&db_path(&dir, "a"));
    a.open(&net.url, TOKEN);
    // A long backoff (30 to 60 s): nothing the test does below takes
    // that long, so any attempt meanwhile was brought forward.
    a.call("pdb_sync_start('{\"min_backoff_ms\": 60000, \"max_backoff_ms\": 60000}')");
    a.sql("INSERT INTO notes VALUES (1, 'before')", json!([]));
    a.until("the row to sync", |h| h.status()["pending_rows"] == 0);

    net.cut();
    a.sql("INSERT INTO notes VALUES (2, 'during the cut')", json!([]));
    a.until("the worker to back off", |h| {
        h.status()["worker"]["state"] == "backoff"
    });
    let s = a.status();
    let (failures, next) = (
        s["worker"]["failures"].clone(),
        s["worker"]["next_retry_ms"].clone(),
    );
    assert!(next.is_u64(), "{s}");
    let tried = net.attempts();
    // The app keeps writing, in bursts the worker would each sync.
    for burst in 0..10 {
        let r = a.send(json!({"op": "writes", "n": 20, "from": 100 + 20 * burst}));
        assert_eq!(r["errors"], json!([]), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = a.status();
    assert_eq!(
        (&s["worker"]["failures"], &s["worker"]["next_retry_ms"]),
        (&failures, &next),
        "local writes brought the retry forward: {s}"
    );
    assert_eq!(net.attempts(), tried, "connections tried while backing off");
    assert_eq!(s["worker"]["state"], "backoff", "{s}");

    // The network heals; a kick (or the retry, or the watch finding the
    // witness again) carries everything written meanwhile.
    net.heal();
    assert_eq!(a.call("pdb_sync_start()")["worker"], "running");
    a.until("everything to sync", |h| {
        let s = h.status();
        s["pending_rows"] == 0 && s["worker"]["state"] == "idle"
    });
    assert_eq!(
        w.head("g").seq as i64,
        a.call("pdb_head()")["seq"].as_i64().unwrap()
    );
}

#[test]
fn an_unauthorized_answer_stops_the_worker_saying_why() {
    let dir = TempDir::new("live-unauth");
    let wendy = add_token(&dir.path().join("data"), "wendy");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let grant = |role: Option<&str>| {
        let r = w.request(
            if role.is_some() { "PUT" } else { "DELETE" },
            "/v1/groups/g/members/wendy",
            Some(TOKEN),
            role.map(|r| json!({ "role": r })).as_ref(),
        );
        assert!(r.status < 300, "{r:?}");
    };
    grant(Some("writer"));
    let mut h = Host::python(&db_path(&dir, "wendy"));
    h.open(&w.url, &wendy);
    h.call("pdb_sync_start('{\"min_backoff_ms\": 50, \"max_backoff_ms\": 500}')");
    h.sql("INSERT INTO notes VALUES (1, 'allowed')", json!([]));
    h.until("the row to sync", |h| h.status()["pending_rows"] == 0);

    // Her membership is revoked: the worker stops and says why.
    grant(None);
    h.sql("INSERT INTO notes VALUES (2, 'refused')", json!([]));
    h.until("the worker to stop", |h| {
        h.status()["worker"]["state"] == "stopped"
    });
    let s = h.status();
    assert_eq!(s["worker"]["reason"]["code"], "unauthorized", "{s}");
    assert_eq!(s["state"], "blocked", "{s}");
    assert_eq!(s["reason"]["code"], "unauthorized", "{s}");
    assert_eq!(s["pending_rows"], 1, "the row stays, pending: {s}");

    // Access comes back; pdb_sync_start again resumes it.
    grant(Some("writer"));
    assert_eq!(h.call("pdb_sync_start()")["worker"], "running");
    h.until("the row to sync", |h| {
        let s = h.status();
        s["pending_rows"] == 0 && s["worker"]["state"] == "idle"
    });
    let r = w.all_commits("g");
    assert_eq!(r.len(), 2, "{r:?}");
}

/// A file no process holds a lock on: a write transaction goes at once.
fn writable(path: &Path) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("PRAGMA busy_timeout = 0; BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS probe(x); INSERT INTO probe VALUES (1); COMMIT;")
        .expect("the file is writable, with no lock left behind");
}

#[test]
fn closing_or_exiting_while_the_worker_runs_leaves_the_file_clean() {
    let dir = TempDir::new("live-exit");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    for (i, host) in ["python", "node"].into_iter().enumerate() {
        let path = db_path(&dir, host);
        let new = |p: &Path| {
            if host == "python" {
                Host::python(p)
            } else {
                Host::node(p)
            }
        };
        let mut h = new(&path);
        h.open(&w.url, TOKEN);
        let base = 1000 * (i as i64 + 1);
        // The connection closes while the worker syncs a stream of writes.
        h.call("pdb_sync_start()");
        let r = h.send(json!({"op": "writes", "n": 30, "from": base}));
        assert_eq!(r["errors"], json!([]), "{r}");
        assert_eq!(h.send(json!({"op": "close"}))["closed"], true, "{host}");
        // The worker ends with the connections that started it: a new
        // connection in the same process sees none running, and syncs.
        assert_eq!(h.send(json!({"op": "reopen"}))["open"], true);
        h.until("the closed connection's worker to end", |h| {
            h.status()["worker"].is_null()
        });
        h.call("pdb_sync()");
        assert_eq!(h.status()["pending_rows"], 0);
        // The process exits while the worker syncs a stream of writes.
        h.call("pdb_sync_start()");
        let r = h.send(json!({"op": "writes", "n": 30, "from": base + 100}));
        assert_eq!(r["errors"], json!([]), "{r}");
        assert_eq!(h.send(json!({"op": "exit"}))["exiting"], true);
        let status = h.wait();
        assert!(status.success(), "{host} exited with {status:?}");
        writable(&path);
        // Nothing was lost: another process syncs what is left.
        let mut again = new(&path);
        again.call("pdb_sync()");
        let s = again.status();
        assert_eq!(
            (s["pending_rows"].as_i64(), s["state"].as_str()),
            (Some(0), Some("healthy")),
            "{s}"
        );
        assert_eq!(again.call("pdb_verify()")["ok"], true);
    }
}

#[test]
fn a_host_writing_all_the_time_never_sees_busy() {
    let dir = TempDir::new("live-busy");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let mut py = Host::python(&db_path(&dir, "py"));
    let mut node = Host::node(&db_path(&dir, "node"));
    py.open(&w.url, TOKEN);
    node.open(&w.url, TOKEN);
    for h in [&mut py, &mut node] {
        h.call("pdb_sync_start('{\"debounce_ms\": 0, \"max_delay_ms\": 0}')");
    }
    // Both write in rounds while their workers push and pull each
    // other's rows (a write of one host is pulled into the other while it
    // writes): no write fails, within a 5 s busy timeout.
    for round in 0..5 {
        for (i, h) in [&mut py, &mut node].into_iter().enumerate() {
            let from = 10_000 * (i as i64 + 1) + 100 * round;
            let r = h.send(json!({"op": "writes", "n": 100, "from": from}));
            assert_eq!(r["errors"], json!([]), "{}: {r}", h.name);
        }
    }
    node.sees(10_499, "w99");
    py.sees(20_499, "w99");
    for h in [&mut py, &mut node] {
        h.until("everything synced", |h| {
            let s = h.status();
            s["pending_rows"] == 0 && s["state"] == "healthy"
        });
    }
    let count = |h: &mut Host| h.sql("SELECT count(*) FROM notes", json!([]))[0][0].clone();
    let n = count(&mut py);
    assert_eq!(n, json!(1000));
    node.until("the same rows", |h| count(h) == json!(1000));
}

/// How many requests of the proxy's log, from `from` on, `f` picks.
fn requests_since(p: &Proxy, from: usize, f: impl Fn(&str) -> bool) -> usize {
    let log = p.requests.lock().unwrap();
    log[from.min(log.len())..].iter().filter(|r| f(r)).count()
}

/// Waits (bounded) until the proxy has seen, from `from` on, a request
/// `f` picks.
fn until_request(p: &Proxy, from: usize, what: &str, f: impl Fn(&str) -> bool) {
    let start = std::time::Instant::now();
    while requests_since(p, from, &f) == 0 {
        assert!(start.elapsed() < BOUND, "no {what} seen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_watch(r: &str) -> bool {
    r.starts_with("GET ") && r.contains("/head?") && r.contains("wait=")
}

#[test]
fn a_stop_from_one_witness_answer_lifts_by_itself() {
    // One injected 409 unknown_head (no key needed to send it) parked the
    // worker until the app intervened; now a parked worker asks again now
    // and then and resumes once the answer no longer stops it.
    let dir = TempDir::new("live-probe");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let proxy = Proxy::start(&w.url);
    let mut a = Host::python(&db_path(&dir, "a"));
    a.open(&proxy.url, TOKEN);
    a.call(
        "pdb_sync_start('{\"min_backoff_ms\": 50, \"max_backoff_ms\": 500, \"stop_probe_min_ms\": 200, \"stop_probe_max_ms\": 1000}')",
    );
    a.sql("INSERT INTO notes VALUES (1, 'before')", json!([]));
    a.until("the row to sync", |h| h.status()["pending_rows"] == 0);

    proxy.set(ProxyMode::Answer(
        409,
        "Content-Type: application/json\r\n",
        r#"{"error":{"code":"unknown_head","message":"injected","retryable":false}}"#,
    ));
    a.sql("INSERT INTO notes VALUES (2, 'while refused')", json!([]));
    a.until("the worker to stop", |h| {
        h.status()["worker"]["state"] == "stopped"
    });
    let s = a.status();
    assert_eq!(s["worker"]["reason"]["code"], "unknown_head", "{s}");
    assert!(
        s["worker"]["next_retry_ms"].is_u64(),
        "a stop the witness can lift says when it asks again: {s}"
    );
    // It keeps asking while the answer stops it (each probe one sync).
    let from = proxy.requests.lock().unwrap().len();
    until_request(&proxy, from, "probe", |r| !is_watch(r));
    assert_eq!(a.status()["worker"]["state"], "stopped");

    // The cause goes: with no call from the app, sync resumes.
    proxy.set(ProxyMode::Pass);
    a.until("sync to resume by itself", |h| {
        let s = h.status();
        s["pending_rows"] == 0 && s["worker"]["state"] == "idle"
    });
    assert_eq!(w.all_commits("g").len(), 2);
    assert_eq!(a.call("pdb_verify()")["ok"], true);
}

#[test]
fn a_retry_after_holds_the_retry_when_the_watch_finds_the_witness_again() {
    let dir = TempDir::new("live-retry-after");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let proxy = Proxy::start(&w.url);
    let mut a = Host::python(&db_path(&dir, "a"));
    a.open(&proxy.url, TOKEN);
    a.call(
        "pdb_sync_start('{\"min_backoff_ms\": 50, \"max_backoff_ms\": 500, \"wait_seconds\": 1}')",
    );
    a.sql("INSERT INTO notes VALUES (1, 'before')", json!([]));
    a.until("the row to sync", |h| h.status()["pending_rows"] == 0);

    // The commit side is overloaded and asks for an hour; heads answer.
    proxy.set(ProxyMode::AnswerPosts(
        503,
        "Content-Type: application/json\r\nRetry-After: 3600\r\n",
        r#"{"error":{"code":"overloaded","message":"injected","retryable":true}}"#,
    ));
    a.sql("INSERT INTO notes VALUES (2, 'held back')", json!([]));
    a.until("the worker to back off", |h| {
        h.status()["worker"]["state"] == "backoff"
    });
    let s = a.status();
    let (failures, next) = (
        s["worker"]["failures"].clone(),
        s["worker"]["next_retry_ms"].clone(),
    );
    assert!(next.is_u64(), "{s}");
    let posts = requests_since(&proxy, 0, |r| r.starts_with("POST "));

    // The watch fails (the witness unreachable), then finds it again: a
    // probe without waiting, then a long poll — the "recovered" wake-up.
    let down = proxy.requests.lock().unwrap().len();
    proxy.set(ProxyMode::Down);
    until_request(&proxy, down, "watch probe after a failure", |r| {
        is_watch(r) && r.ends_with("wait=0")
    });
    let up = proxy.requests.lock().unwrap().len();
    proxy.set(ProxyMode::Pass);
    until_request(&proxy, up, "watch probe answered", |r| {
        is_watch(r) && r.ends_with("wait=0")
    });
    until_request(&proxy, up, "long poll after the recovery", |r| {
        is_watch(r) && !r.ends_with("wait=0")
    });
    // The sync thread wakes within a poll (20 ms) when woken; give it far
    // more than that to show it was not.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        requests_since(&proxy, 0, |r| r.starts_with("POST ")),
        posts,
        "a commit was sent before the witness's Retry-After"
    );
    let s = a.status();
    assert_eq!(
        (&s["worker"]["failures"], &s["worker"]["next_retry_ms"]),
        (&failures, &next),
        "{s}"
    );
    assert_eq!(s["worker"]["state"], "backoff", "{s}");
    // The app may still ask for it.
    assert_eq!(a.call("pdb_sync_start()")["worker"], "running");
    a.until("the row to sync", |h| h.status()["pending_rows"] == 0);
}

/// The head a watch is answered with in the test below (a genuinely
/// signed, older one).
static OLD_HEAD: std::sync::OnceLock<Json> = std::sync::OnceLock::new();

#[test]
fn a_missed_watch_wake_up_is_caught_by_the_idle_pull() {
    let dir = TempDir::new("live-idle-pull");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let proxy = Proxy::start(&w.url);
    let mut a = Host::python(&db_path(&dir, "a"));
    let mut b = Host::node(&db_path(&dir, "b"));
    a.open(&w.url, TOKEN);
    b.open(&proxy.url, TOKEN);
    b.call("pdb_sync_start('{\"wait_seconds\": 1, \"idle_pull_ms\": 500}')");
    b.until("the worker to watch", |h| {
        h.status()["worker"]["watching"] == true
    });
    let seq = w.head("g").seq;
    let old = w.get(&format!("/v1/groups/g/head?after={seq}&wait=0"));
    assert_eq!(old.status, 200, "{old:?}");
    OLD_HEAD.set(old.body).unwrap();
    // Every watch is answered "nothing new" (a wake-up missed, forever).
    proxy.set(ProxyMode::TamperGet(|path, j| {
        if path.contains("/head?") && path.contains("wait=") {
            *j = OLD_HEAD.get().unwrap().clone();
        }
    }));
    let from = proxy.requests.lock().unwrap().len();
    a.sql("INSERT INTO notes VALUES (1, 'missed')", json!([]));
    a.call("pdb_sync()");
    b.sees(1, "missed");
    assert!(
        requests_since(&proxy, from, is_watch) > 0,
        "the watch was answered meanwhile"
    );
}

#[test]
fn a_watch_that_keeps_panicking_is_replaced_by_polling() {
    let dir = TempDir::new("live-watch-panic");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let mut a = Host::python(&db_path(&dir, "a"));
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(PY_HOST)
        .env("PDB_TEST_PANIC", "worker_watch");
    let mut b = Host::spawn("python", cmd, &db_path(&dir, "b"));
    a.open(&w.url, TOKEN);
    b.open(&w.url, TOKEN);
    b.call("pdb_sync_start('{\"min_backoff_ms\": 10, \"max_backoff_ms\": 50, \"pull_every_ms\": 200}')");
    // Restarted a few times, then reported: nobody watches.
    b.until("the worker to say it does not watch", |h| {
        h.status()["worker"]["watching"] == false
    });
    a.sql("INSERT INTO notes VALUES (1, 'polled')", json!([]));
    a.call("pdb_sync()");
    b.sees(1, "polled");
    assert_eq!(b.status()["worker"]["state"], "idle");
}
