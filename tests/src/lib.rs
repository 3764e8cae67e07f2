//! Harness for end-to-end tests and the benchmark: starts the real
//! `pdb-witness` binary on a loopback port and talks to it over real HTTP.
//!
//! The binary must be built first (`cargo build --release` does it; the
//! README's test command runs it). It is looked up next to the test
//! executable, so a `--release` test run uses the release witness.

pub mod jwt;
pub mod pki;

use ed25519_dalek::VerifyingKey;
use pdb_protocol::records::Signed;
use pdb_protocol::wire::{b64, BaseRef, CommitRequest, HeadJson, Policy, SignedJson};
use pdb_protocol::{unhex32, Changeset, TableChanges, Value};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// `target/<profile>/<name>`, found from the running executable
/// (`target/<profile>/deps/<test>` or `target/<profile>/<bin>`).
pub fn target_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// Runs the built `pdb-witness` on the data directory `data` with `args`
/// (an offline command, or one that reaches the witness running there).
pub fn witness_command(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(target_binary("pdb-witness"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run pdb-witness")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "pdb-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // PDB_KEEP_TMP=1 keeps test data for a post-mortem.
        if std::env::var_os("PDB_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running witness process.
pub struct Witness {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub public_key: VerifyingKey,
    agent: ureq::Agent,
    port: u16,
}

pub struct Reply {
    pub status: u16,
    pub body: Json,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Witness {
    /// Starts a witness on a free loopback port with its data in `dir`.
    pub fn start(dir: &Path) -> Witness {
        Self::start_on(dir, 0)
    }

    /// Starts on a given port (0 = any free one).
    pub fn start_on(dir: &Path, port: u16) -> Witness {
        Self::start_with(dir, port, &[])
    }

    /// Starts with extra `serve` flags.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Witness {
        let mut cmd = Command::new(target_binary("pdb-witness"));
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("PDB_ADMIN_TOKEN", TOKEN);
        Self::launch(dir, cmd)
    }

    /// Starts a prepared `pdb-witness` command whose data directory is
    /// `dir/data`: its log goes to `dir/witness.log`, and the URL it
    /// prints first is where it is reached.
    pub fn launch(dir: &Path, cmd: Command) -> Witness {
        Self::launch_with(dir, cmd, agent())
    }

    /// [`Witness::launch`], talking to it with `agent` (one that trusts
    /// the witness's TLS certificate, for a witness serving https).
    pub fn launch_with(dir: &Path, mut cmd: Command, agent: ureq::Agent) -> Witness {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("witness.log"))
            .expect("log file");
        if !cmd.get_envs().any(|(k, _)| k == "PDB_LOG") {
            // PDB_TEST_LOG=debug (say) makes the witnesses of a test run log more.
            let level = std::env::var("PDB_TEST_LOG").unwrap_or_else(|_| "warn".into());
            cmd.env("PDB_LOG", level);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pdb-witness");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_else(|| {
            panic!("witness printed nothing; see {}/witness.log", dir.display())
        });
        let url = first
            .rsplit(' ')
            .next()
            .expect("url on the first line")
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let info: Json = agent
            .get(format!("{url}/v1/witness"))
            .call()
            .expect("GET /v1/witness")
            .body_mut()
            .read_json()
            .expect("witness json");
        let key = unhex32(info["public_key"].as_str().expect("public_key")).expect("hex key");
        Witness {
            child: Some(child),
            url,
            data_dir: dir.join("data"),
            public_key: VerifyingKey::from_bytes(&key).expect("valid key"),
            agent,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill -TERM");
        c.wait().expect("wait")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Json>,
    ) -> Reply {
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.cloned().unwrap_or(Json::Null))
            }
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Json::String(text));
        Reply { status, body }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, Some(TOKEN), None)
    }

    pub fn post(&self, path: &str, body: &Json) -> Reply {
        self.request("POST", path, Some(TOKEN), Some(body))
    }

    pub fn create_group(&self, group: &str, ddl: &str) -> GroupRef {
        let r = self.post("/v1/groups", &json!({ "group": group, "schema_sql": ddl }));
        assert_eq!(r.status, 201, "create group: {r:?}");
        GroupRef::from_json(&r.body)
    }

    /// Commits `cs` on the group's current head.
    pub fn commit_at_head(&self, g: &GroupRef, key: &str, cs: &[u8], policy: Policy) -> Reply {
        let h = self.head(&g.group);
        self.post(
            &format!("/v1/groups/{}/commits", g.group),
            &g.commit_body(h.seq, &h.head_hash, key, cs, policy),
        )
    }

    /// The verified head of a group.
    pub fn head(&self, group: &str) -> HeadJson {
        let r = self.get(&format!("/v1/groups/{group}/head"));
        assert_eq!(r.status, 200, "head: {r:?}");
        let head: HeadJson = serde_json::from_value(r.body).expect("head json");
        verify_head(&head, &self.public_key);
        head
    }

    /// Every commit of a group, through the paged catch-up endpoint.
    pub fn all_commits(&self, group: &str) -> Vec<Json> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let r = self.get(&format!(
                "/v1/groups/{group}/commits?after={after}&limit=1000"
            ));
            assert_eq!(r.status, 200, "commits: {r:?}");
            let page = r.body["commits"].as_array().cloned().unwrap_or_default();
            out.extend(page);
            match r.body["next_after"].as_u64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    /// Runs `pdb-witness verify` on this witness's data directory.
    pub fn verify_cli(&self) -> (bool, String) {
        verify_cli(&self.data_dir)
    }
}

/// `pdb-witness add-token`: a static token for `identity` (its hash goes
/// to the tokens file under `data`; a witness running there makes it
/// through its API, with the admin token [`TOKEN`]).
pub fn add_token(data: &Path, identity: &str) -> String {
    let out = Command::new(target_binary("pdb-witness"))
        .arg("--data-dir")
        .arg(data)
        .args(["add-token", "--identity", identity])
        .env("PDB_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run add-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn verify_cli(data_dir: &Path) -> (bool, String) {
    let out = Command::new(target_binary("pdb-witness"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("verify")
        .output()
        .expect("run verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn verify_head(head: &HeadJson, key: &VerifyingKey) {
    let signed = to_signed(&head.signed);
    let rec = signed.head(key).expect("head signature verifies");
    assert_eq!(rec.seq, head.seq);
    assert_eq!(pdb_protocol::hex(&rec.head_hash), head.head_hash);
}

pub fn to_signed(s: &SignedJson) -> Signed {
    s.to_signed().expect("well-formed signed record")
}

/// What a client must send with each commit for one group.
#[derive(Clone, Debug)]
pub struct GroupRef {
    pub group: String,
    pub schema_version: u32,
    pub schema_hash: String,
    /// The group's schema, as the witness serves it (structured data).
    pub schema: pdb_protocol::Schema,
}

impl GroupRef {
    pub fn from_json(v: &Json) -> GroupRef {
        GroupRef {
            group: v["group"].as_str().expect("group").to_string(),
            schema_version: v["schema"]["version"].as_u64().expect("version") as u32,
            schema_hash: v["schema"]["hash"].as_str().expect("hash").to_string(),
            schema: serde_json::from_value::<pdb_protocol::wire::SchemaJson>(v["schema"].clone())
                .expect("schema")
                .schema()
                .expect("a valid schema"),
        }
    }

    pub fn commit_body(
        &self,
        base_seq: u64,
        base_hash: &str,
        key: &str,
        cs: &[u8],
        policy: Policy,
    ) -> Json {
        serde_json::to_value(CommitRequest {
            base: BaseRef {
                seq: base_seq,
                hash: base_hash.to_string(),
            },
            schema_version: self.schema_version,
            schema_hash: self.schema_hash.clone(),
            idempotency_key: key.to_string(),
            changeset: b64(cs),
            policy,
            client_time: None,
        })
        .expect("commit json")
    }
}

/// A one-table changeset built with the protocol codec.
pub fn changeset(table: &str, pk_flags: &[u8], changes: Vec<pdb_protocol::Change>) -> Vec<u8> {
    Changeset {
        tables: vec![TableChanges {
            name: table.to_string(),
            pk_flags: pk_flags.to_vec(),
            changes,
        }],
    }
    .encode()
}

pub fn insert(values: Vec<Value>) -> pdb_protocol::Change {
    pdb_protocol::Change {
        op: pdb_protocol::Op::Insert,
        indirect: false,
        old: vec![],
        new: values.into_iter().map(Some).collect(),
    }
}

/// Runs SQL on a scratch copy of a database and returns the changeset of
/// what it did, captured by SQLite's own session extension.
pub fn session_changeset(db: &rusqlite::Connection, sql: &str) -> Vec<u8> {
    let mut s = rusqlite::session::Session::new(db).expect("session");
    s.attach::<&str>(None).expect("attach");
    db.execute_batch(sql).expect("run sql");
    let mut out = Vec::new();
    s.changeset_strm(&mut out).expect("changeset");
    out
}

/// Applies a changeset to a local database, failing on any conflict.
pub fn apply_changeset(db: &rusqlite::Connection, cs: &[u8]) {
    db.apply_strm(&mut &cs[..], None::<fn(&str) -> bool>, |_, _| {
        rusqlite::session::ConflictAction::SQLITE_CHANGESET_ABORT
    })
    .expect("apply changeset");
}

/// The state root of a local database's tables, computed from scratch.
pub fn local_root(db: &rusqlite::Connection, tables: &[&str]) -> [u8; 32] {
    let mut root = pdb_protocol::StateRoot::empty();
    for t in tables {
        let mut st = db.prepare(&format!("SELECT * FROM \"{t}\"")).expect("scan");
        let n = st.column_count();
        let mut rows = st.query([]).expect("rows");
        while let Some(r) = rows.next().expect("row") {
            let row: Vec<Value> = (0..n)
                .map(|i| match r.get_ref(i).expect("value") {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
                    rusqlite::types::ValueRef::Real(f) => Value::Real(f),
                    rusqlite::types::ValueRef::Text(t) => Value::Text(t.to_vec()),
                    rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                })
                .collect();
            root.add_row(t, &row);
        }
    }
    root.digest()
}

/// The built extension, as `.load` takes it (no `.so`).
pub fn extension_path() -> PathBuf {
    let so = target_binary("libpdb.so");
    so.with_extension("")
}

/// One device: a database file with the extension loaded, through
/// rusqlite's bundled SQLite (a real host like any other).
pub struct Device {
    pub conn: rusqlite::Connection,
    pub path: PathBuf,
}

impl Device {
    pub fn new(path: &Path) -> Device {
        let conn = rusqlite::Connection::open(path).expect("open device db");
        // SAFETY: loading our own freshly built extension.
        unsafe {
            conn.load_extension_enable().expect("enable loading");
            conn.load_extension(extension_path(), None::<&str>)
                .expect("load libpdb");
        }
        conn.load_extension_disable().expect("disable loading");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        Device {
            conn,
            path: path.to_path_buf(),
        }
    }

    /// `SELECT <expr>` returning JSON text; errors as SQLite's message.
    pub fn call(&self, expr: &str) -> Result<Json, String> {
        self.conn
            .query_row(&format!("SELECT {expr}"), [], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())
            .map(|s| serde_json::from_str(&s).unwrap_or(Json::String(s)))
    }

    pub fn open(&self, w: &Witness, group: &str, policy: &str) -> Result<Json, String> {
        self.open_url(&w.url, group, policy)
    }

    pub fn open_url(&self, url: &str, group: &str, policy: &str) -> Result<Json, String> {
        self.call(&format!(
            "pdb_open('{url}', '{group}', json_object('token', '{TOKEN}', 'policy', '{policy}'))"
        ))
    }

    pub fn sync(&self) -> Result<Json, String> {
        self.call("pdb_sync()")
    }

    pub fn exec(&self, sql: &str) {
        self.conn
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of `tables` with exact types and bytes, in key order.
    pub fn dump(&self, tables: &[&str]) -> Vec<String> {
        dump(&self.conn, tables)
    }
}

pub fn dump(conn: &rusqlite::Connection, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1, 2"))
            .expect("dump");
        let n = st.column_count();
        let mut rows = st.query([]).expect("rows");
        while let Some(r) = rows.next().expect("row") {
            let cells: Vec<String> = (0..n)
                .map(|i| match r.get_ref(i).expect("cell") {
                    rusqlite::types::ValueRef::Null => "null".to_string(),
                    rusqlite::types::ValueRef::Integer(i) => format!("int:{i}"),
                    rusqlite::types::ValueRef::Real(f) => format!("real:{:016x}", f.to_bits()),
                    rusqlite::types::ValueRef::Text(t) => format!("text:{}", pdb_protocol::hex(t)),
                    rusqlite::types::ValueRef::Blob(b) => format!("blob:{}", pdb_protocol::hex(b)),
                })
                .collect();
            out.push(format!("{t}|{}", cells.join("|")));
        }
    }
    out
}

/// What the fake witness does to the traffic it relays.
#[derive(Clone)]
pub enum ProxyMode {
    /// Relay faithfully.
    Pass,
    /// Relay commit POSTs to the witness, then drop the connection before
    /// the answer, this many times.
    DropCommitResponses(usize),
    /// Relay, then let a function rewrite the JSON answer to a GET.
    TamperGet(fn(&str, &mut Json)),
    /// Refuse connections' requests by closing them (witness "down").
    Down,
    /// Relay this many snapshot data requests, then drop the rest.
    DataThenDrop(usize),
    /// Flip one byte in every snapshot data answer.
    TamperData,
    /// Relay, and keep each GET answer by path (see `Replay`).
    Record,
    /// Answer GETs with the answers kept under `Record` (an attacker
    /// replaying old, genuinely signed answers); relay the rest.
    Replay,
    /// Answer every request itself with this status, extra header lines
    /// (each ending in CRLF) and body, as a broken proxy or a witness
    /// with a full disk would.
    Answer(u16, &'static str, &'static str),
    /// Like `Answer`, for POSTs only; GETs are relayed (a witness whose
    /// commit side is overloaded while its heads still answer).
    AnswerPosts(u16, &'static str, &'static str),
    /// Read the request, then answer nothing while the mode stays (at
    /// most 60 s): a hung witness.
    Hang,
}

/// A fake witness: relays HTTP to a real one and can lose or tamper with
/// answers. One request per connection (`Connection: close`).
pub struct Proxy {
    pub url: String,
    pub mode: std::sync::Arc<std::sync::Mutex<ProxyMode>>,
    pub relayed_commits: std::sync::Arc<AtomicU64>,
    /// The Range header of every snapshot data request seen.
    pub ranges: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// `METHOD path` of every request seen, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    target: String,
}

/// GET answers kept by `ProxyMode::Record`: path → (status, body).
type Recorded = std::sync::Mutex<std::collections::HashMap<String, (u16, Vec<u8>)>>;

fn recorded() -> &'static Recorded {
    static R: std::sync::OnceLock<Recorded> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mode = std::sync::Arc::new(std::sync::Mutex::new(ProxyMode::Pass));
        let relayed = std::sync::Arc::new(AtomicU64::new(0));
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (m, r, g, q, to) = (
            mode.clone(),
            relayed.clone(),
            ranges.clone(),
            requests.clone(),
            target.to_string(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (m, r, g, q, target) = (m.clone(), r.clone(), g.clone(), q.clone(), to.clone());
                std::thread::spawn(move || {
                    let _ = relay(stream, &target, &m, &r, &g, &q);
                });
            }
        });
        Proxy {
            url,
            mode,
            relayed_commits: relayed,
            ranges,
            requests,
            target: target.to_string(),
        }
    }

    /// Switches the mode; `Record` starts from nothing kept.
    pub fn set(&self, mode: ProxyMode) {
        if matches!(mode, ProxyMode::Record) {
            let prefix = format!("{}/", self.target);
            recorded()
                .lock()
                .expect("recorded")
                .retain(|k, _| !k.starts_with(&prefix));
        }
        *self.mode.lock().expect("mode") = mode;
    }
}

fn relay(
    mut stream: std::net::TcpStream,
    target: &str,
    mode: &std::sync::Mutex<ProxyMode>,
    relayed: &AtomicU64,
    ranges: &std::sync::Mutex<Vec<String>>,
    requests: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut auth, mut len, mut range) = (String::new(), 0usize, String::new());
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => auth = v.trim().to_string(),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "range" => range = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    requests
        .lock()
        .expect("requests")
        .push(format!("{method} {path}"));
    let current = mode.lock().expect("mode").clone();
    match current {
        ProxyMode::Down => return Ok(()),
        ProxyMode::AnswerPosts(status, headers, text) if method == "POST" => {
            write!(
                stream,
                "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )?;
            return stream.flush();
        }
        ProxyMode::Answer(status, headers, text) => {
            write!(
                stream,
                "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )?;
            return stream.flush();
        }
        ProxyMode::Hang => {
            for _ in 0..600 {
                if !matches!(*mode.lock().expect("mode"), ProxyMode::Hang) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        _ => {}
    }
    let key = format!("{target}{path}");
    if matches!(current, ProxyMode::Replay) && method == "GET" {
        let kept = recorded().lock().expect("recorded").get(&key).cloned();
        if let Some((status, bytes)) = kept {
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            )?;
            stream.write_all(&bytes)?;
            return Ok(());
        }
    }
    let agent = agent();
    let url = format!("{target}{path}");
    let is_data = path.ends_with("/data");
    if is_data {
        ranges.lock().expect("ranges").push(range.clone());
        if let ProxyMode::DataThenDrop(n) = current {
            if n == 0 {
                return Ok(());
            }
            *mode.lock().expect("mode") = ProxyMode::DataThenDrop(n - 1);
        }
    }
    let resp = if method == "POST" {
        agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(&body[..])
    } else if !range.is_empty() {
        agent
            .get(&url)
            .header("Authorization", &auth)
            .header("Range", &range)
            .call()
    } else {
        agent.get(&url).header("Authorization", &auth).call()
    };
    let mut resp = match resp {
        Ok(r) => r,
        Err(_) => return Ok(()),
    };
    let status = resp.status().as_u16();
    let content_range = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("Content-Range: {v}\r\n"))
        .unwrap_or_default();
    let mut bytes = resp
        .body_mut()
        .with_config()
        .limit(512 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    if matches!(current, ProxyMode::Record) && method == "GET" {
        recorded()
            .lock()
            .expect("recorded")
            .insert(key, (status, bytes.clone()));
    }
    let is_commit = method == "POST" && path.ends_with("/commits");
    if is_commit {
        relayed.fetch_add(1, Ordering::SeqCst);
    }
    match current {
        ProxyMode::DropCommitResponses(n) if is_commit && n > 0 => {
            *mode.lock().expect("mode") = ProxyMode::DropCommitResponses(n - 1);
            return Ok(());
        }
        ProxyMode::TamperGet(f) if method == "GET" && !is_data => {
            if let Ok(mut j) = serde_json::from_slice::<Json>(&bytes) {
                f(&path, &mut j);
                bytes = j.to_string().into_bytes();
            }
        }
        ProxyMode::TamperData if is_data && !bytes.is_empty() => {
            let i = bytes.len() / 2;
            bytes[i] ^= 0x40;
        }
        _ => {}
    }
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/octet-stream\r\n{content_range}Content-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )?;
    stream.write_all(&bytes)?;
    stream.flush()
}

/// An answer read off a raw connection: status, headers (names lower
/// case) and body.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address
/// `from` (127.0.0.x), so tests can act as several client addresses.
pub fn connect_from(from: [u8; 4], port: u16) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&std::net::SocketAddr::from((from, 0)).into())
        .expect("bind source address");
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    s.into()
}

/// Reads one HTTP/1.1 answer (with a content-length, or up to EOF) off a
/// raw stream.
pub fn read_answer(stream: &mut impl std::io::Read) -> std::io::Result<RawReply> {
    read_answer_to(stream, false)
}

/// Reads one answer; `to_head` is true for an answer to HEAD, which has
/// no body whatever its headers say.
pub fn read_answer_to(stream: &mut impl std::io::Read, to_head: bool) -> std::io::Result<RawReply> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        _ if to_head => {}
        Some(n) => {
            body.resize(n, 0);
            stream.read_exact(&mut body)?;
        }
        None => {
            stream.read_to_end(&mut body)?;
        }
    }
    Ok(RawReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// Sends `request` (raw bytes) on a fresh connection to the witness and
/// reads the answer.
pub fn raw_request(port: u16, request: &[u8]) -> RawReply {
    use std::io::Write;
    let mut s = connect_from([127, 0, 0, 1], port);
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(request).expect("send");
    read_answer(&mut s).expect("answer")
}

/// A plain TCP relay to a witness that counts the bytes each way (HTTP
/// headers included, as on the wire), for figures of what a call costs.
/// Connections are kept alive as the client keeps them.
pub struct ByteCounter {
    pub url: String,
    /// Bytes from clients to the witness, and back.
    pub up: std::sync::Arc<AtomicU64>,
    pub down: std::sync::Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: std::sync::Arc<AtomicU64>,
}

impl ByteCounter {
    /// Relays to `target` (`host:port`).
    pub fn start(target: &str) -> ByteCounter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind counter");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let up = std::sync::Arc::new(AtomicU64::new(0));
        let down = std::sync::Arc::new(AtomicU64::new(0));
        let connections = std::sync::Arc::new(AtomicU64::new(0));
        let (u, d, c, target) = (
            up.clone(),
            down.clone(),
            connections.clone(),
            target.to_string(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pipe = |from: std::net::TcpStream,
                            to: std::net::TcpStream,
                            n: std::sync::Arc<AtomicU64>| {
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut from, mut to) = (from, to);
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    n.fetch_add(k as u64, Ordering::SeqCst);
                                    if to.write_all(&buf[..k]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, s2, u.clone());
                pipe(server, c2, d.clone());
            }
        });
        ByteCounter {
            url,
            up,
            down,
            connections,
        }
    }

    /// (bytes up, bytes down) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }
}

/// The witness's request counters from `GET /metrics`: for each
/// (endpoint, status), (requests, seconds spent in all).
pub fn request_metrics(w: &Witness) -> std::collections::BTreeMap<(String, String), (u64, f64)> {
    let text = match w.get("/metrics").body {
        Json::String(s) => s,
        other => panic!("metrics: {other}"),
    };
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        let count = name == "pdb_request_seconds_count";
        if !count && name != "pdb_request_seconds_sum" {
            continue;
        }
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let e = out
            .entry((label("endpoint"), label("status")))
            .or_insert((0u64, 0f64));
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        if count {
            e.0 = v as u64;
        } else {
            e.1 = v;
        }
    }
    out
}
