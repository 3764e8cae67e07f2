//! The packages users install, end to end. `scripts/package.sh` turns the
//! built workspace into the wheel, the npm tarball and the witness archive;
//! the wheel goes into a fresh virtual environment, the tarball into a fresh
//! Node project, and the README's quickstart runs through them against the
//! witness binary from the archive, configured by the archive's example env
//! file: open, write, sync, and a second device sees the row.

use pdb_e2e::{agent, target_binary, TempDir, TOKEN};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The workspace version: what the packages and `pdb_version()` must say.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const DDL: &str = "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT, done INTEGER)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Runs a command to success; returns stdout + stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The last line of a host script's stdout, which is one JSON object.
fn last_json(text: &str) -> Json {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The one file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn only_file(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dist")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{prefix}*{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one file")
}

struct Dist {
    wheel: PathBuf,
    npm: PathBuf,
    /// The witness archive, unpacked.
    witness: PathBuf,
}

/// Builds the packages once per test run, into target/tmp.
fn dist() -> &'static Dist {
    static DIST: OnceLock<Dist> = OnceLock::new();
    DIST.get_or_init(|| {
        // The build the packages are made of (target_binary asserts it exists).
        target_binary("libpdb.so");
        target_binary("pdb-witness");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create target/tmp/packages");
        let out = dir.join("dist");
        // --no-build: the workspace is built (the tests run from it), and a
        // cargo build now would replace binaries other tests are running.
        run(Command::new("bash")
            .arg(repo().join("scripts/package.sh"))
            .arg("--no-build")
            .arg("--out")
            .arg(&out));
        let platform = format!("linux_{}", std::env::consts::ARCH);
        let wheel = only_file(&out, &format!("personaldb-{VERSION}-"), ".whl");
        assert!(
            wheel.ends_with(format!("personaldb-{VERSION}-py3-none-{platform}.whl")),
            "wheel tags: {}",
            wheel.display()
        );
        let npm = only_file(&out, &format!("personaldb-{VERSION}"), ".tgz");
        let archive = only_file(&out, &format!("pdb-witness-{VERSION}-"), ".tar.gz");
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir));
        let name = archive
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .expect("archive name");
        let sums = std::fs::read_to_string(out.join("SHA256SUMS")).expect("SHA256SUMS");
        assert_eq!(sums.lines().count(), 3, "{sums}");
        Dist {
            wheel,
            npm,
            witness: dir.join(name),
        }
    })
}

/// `KEY=value` lines of an env file, as systemd's EnvironmentFile reads them.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("env file")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The witness from the archive, started the way its systemd unit does:
/// a clean environment plus the example env file, with the data directory,
/// a free loopback port and a known admin token on top.
struct ShippedWitness {
    child: Child,
    url: String,
}

impl ShippedWitness {
    fn start(d: &Dist, dir: &Path) -> ShippedWitness {
        let log = std::fs::File::create(dir.join("witness.log")).expect("log file");
        let mut child = Command::new(d.witness.join("pdb-witness"))
            .arg("serve")
            .env_clear()
            .envs(env_file(&d.witness.join("pdb-witness.env")))
            .env("PDB_DATA_DIR", dir.join("data"))
            .env("PDB_LISTEN", "127.0.0.1:0")
            .env("PDB_ADMIN_TOKEN", TOKEN)
            .env("PDB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the shipped pdb-witness");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_else(|| {
            panic!("witness printed nothing; see {}/witness.log", dir.display())
        });
        let url = first.rsplit(' ').next().expect("url").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{first}");
        std::thread::spawn(move || for _ in lines {});
        ShippedWitness { child, url }
    }

    fn create_group(&self, group: &str, ddl: &str) {
        let mut r = agent()
            .post(format!("{}/v1/groups", self.url))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send_json(json!({ "group": group, "schema_sql": ddl }))
            .expect("POST /v1/groups");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 201, "create group: {body}");
    }
}

impl Drop for ShippedWitness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PY_QUICKSTART: &str = r#"
import json, sqlite3, sys
import personaldb

mode, url, token, path = sys.argv[1:5]
db = sqlite3.connect(path)
personaldb.load(db)
out = {
    "version": personaldb.__version__,
    "pdb_version": personaldb.version(db),
    "module": personaldb.__file__,
    "library": personaldb.loadable_path(),
    "opened": personaldb.open(db, url, "tasks", token=token),
}
if mode == "write":
    db.execute("INSERT INTO tasks VALUES ('t-py', 'Buy milk (Python)', 0)")
    db.commit()
    out["synced"] = personaldb.sync(db)
    # Plain SQL keeps working beside the layer.
    out["head_sql"] = json.loads(db.execute("SELECT pdb_head()").fetchone()[0])
    out["commit"] = personaldb.commit(db)
    # The background worker is not in libpdb yet: a clear error until it is.
    has_worker = db.execute(
        "SELECT count(*) FROM pragma_function_list WHERE name = 'pdb_sync_start'"
    ).fetchone()[0]
    if has_worker:
        out["sync_start"] = personaldb.sync_start(db)["worker"]
        out["wait"] = personaldb.wait(db, out["head_sql"]["seq"], 0)["reached"]
        out["changes"] = personaldb.changes(db)
        out["sync_stop"] = personaldb.sync_stop(db)["worker"]
    else:
        try:
            personaldb.sync_start(db)
            out["sync_start"] = "no error"
        except personaldb.FunctionUnavailable as e:
            out["sync_start"] = str(e)
    # The check load() makes, shown with a connection class that lacks
    # enable_load_extension as an interpreter built without it does.
    class NoLoading(sqlite3.Connection):
        @property
        def enable_load_extension(self):
            raise AttributeError("enable_load_extension")
    try:
        personaldb.load(sqlite3.connect(":memory:", factory=NoLoading))
        out["no_loading"] = "no error"
    except personaldb.ExtensionLoadingUnavailable as e:
        out["no_loading"] = str(e)
else:
    out["synced"] = personaldb.sync(db)
out["head"] = personaldb.head(db)
out["status"] = personaldb.status(db)
out["verify"] = personaldb.verify(db)
out["rows"] = [list(r) for r in db.execute("SELECT id, title FROM tasks ORDER BY id")]
print(json.dumps(out))
"#;

/// A fresh virtual environment of `python` with the wheel installed.
fn venv_with_wheel(python: &Path, dir: &Path, wheel: &Path) -> PathBuf {
    let venv = dir.join("venv");
    run(Command::new(python).arg("-m").arg("venv").arg(&venv));
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--no-index", "--no-deps", "--quiet"])
        .args(["--disable-pip-version-check"])
        .arg(wheel));
    venv.join("bin/python")
}

#[test]
fn python_quickstart_through_the_wheel_in_a_fresh_venv() {
    let d = dist();
    let dir = TempDir::new("pkg-python");
    let w = ShippedWitness::start(d, dir.path());
    w.create_group("tasks", DDL);
    // Debian's python3 can load extensions (the pyenv one on PATH cannot).
    let python = venv_with_wheel(Path::new("/usr/bin/python3"), dir.path(), &d.wheel);
    std::fs::write(dir.path().join("quickstart.py"), PY_QUICKSTART).unwrap();
    let device = |mode: &str, db: &str| {
        last_json(&run(Command::new(&python)
            .arg(dir.path().join("quickstart.py"))
            .args([mode, &w.url, TOKEN])
            .arg(dir.path().join(db))
            .env_remove("PYTHONPATH")
            .env("PYTHONNOUSERSITE", "1")))
    };

    let a = device("write", "a.db");
    assert_eq!(a["version"], VERSION, "{a}");
    assert_eq!(a["pdb_version"], VERSION, "{a}");
    let venv = dir.path().join("venv");
    for k in ["module", "library"] {
        let p = a[k].as_str().unwrap_or("");
        assert!(Path::new(p).starts_with(&venv), "{k} outside the venv: {p}");
    }
    assert!(
        a["library"].as_str().unwrap_or("").ends_with("/libpdb.so"),
        "{a}"
    );
    assert_eq!(a["synced"]["pushed"], 1, "{a}");
    assert_eq!(a["head_sql"], a["synced"]["head"], "{a}");
    assert_eq!(a["head"], a["head_sql"], "{a}");
    assert_eq!(a["verify"]["ok"], true, "{a}");
    // The background worker through the layer.
    assert_eq!(
        (&a["sync_start"], &a["wait"], &a["sync_stop"]),
        (&json!("started"), &json!(true), &json!("stopped")),
        "{a}"
    );
    assert_eq!(a["changes"], json!([]), "{a}");
    let msg = a["no_loading"].as_str().unwrap_or("");
    assert!(
        msg.contains("without extension loading")
            && msg.contains("--enable-loadable-sqlite-extensions"),
        "{msg}"
    );

    // A second device, another process: it sees the row.
    let b = device("read", "b.db");
    assert_eq!(
        b["rows"],
        json!([["t-py", "Buy milk (Python)"]]),
        "second device: {b}"
    );
    assert_eq!(b["head"], a["head"], "{b}");
    assert_eq!(b["verify"]["ok"], true, "{b}");
}

/// A Python 3.8+ interpreter whose sqlite3 cannot load extensions: python3
/// on PATH or a pyenv build (pyenv's default lacks extension loading).
fn python_without_extension_loading() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("python3")];
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(Ok(versions)) = pyenv.map(|p| std::fs::read_dir(p.join("versions"))) {
        let mut found: Vec<PathBuf> = versions
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin/python3"))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    let probe = "import sqlite3, sys; print(sys.version_info >= (3, 8) and not hasattr(sqlite3.Connection, 'enable_load_extension'))";
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", probe])
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "True")
            .unwrap_or(false)
    })
}

#[test]
fn load_on_a_python_without_extension_loading_says_what_to_do() {
    let Some(python) = python_without_extension_loading() else {
        // The quickstart test covers the same check with a stand-in class.
        eprintln!("no Python without extension loading here; nothing more to check");
        return;
    };
    let d = dist();
    let dir = TempDir::new("pkg-noext");
    let venv_python = venv_with_wheel(&python, dir.path(), &d.wheel);
    let script = r#"
import sqlite3, personaldb
try:
    personaldb.load(sqlite3.connect(":memory:"))
    print("loaded")
except personaldb.ExtensionLoadingUnavailable as e:
    print("refused:", e)
"#;
    let out = run(Command::new(&venv_python)
        .args(["-c", script])
        .env_remove("PYTHONPATH"));
    assert!(
        out.starts_with("refused: personaldb.load:"),
        "{python:?}: {out}"
    );
    for needle in [
        "built without extension loading",
        "/usr/bin/python3",
        "--enable-loadable-sqlite-extensions",
        venv_python.to_str().unwrap_or("?"),
    ] {
        assert!(out.contains(needle), "{needle:?} missing: {out}");
    }
}

const NODE_QUICKSTART: &str = r#"
'use strict';
const { load, getLoadablePath, version } = require('personaldb');
const Database = require('better-sqlite3');

const [mode, url, token, file] = process.argv.slice(2);
const db = new Database(file);
load(db);
const one = (sql, ...args) => db.prepare(sql).pluck().get(...args);
const out = {
  version,
  library: getLoadablePath(),
  module: require.resolve('personaldb'),
  pdb_version: one('SELECT pdb_version()'),
  opened: JSON.parse(one("SELECT pdb_open(?, 'tasks', json_object('token', ?))", url, token)),
};
if (mode === 'write') {
  db.prepare("INSERT INTO tasks VALUES ('t-node', 'Buy bread (Node)', 0)").run();
}
out.synced = JSON.parse(one('SELECT pdb_sync()'));
out.head = JSON.parse(one('SELECT pdb_head()'));
out.verify = JSON.parse(one('SELECT pdb_verify()'));
out.rows = db.prepare('SELECT id, title FROM tasks ORDER BY id').raw().all();

// node:sqlite where this Node has it with extension loading (22.13+).
let sqlite = null;
try { sqlite = require('node:sqlite'); } catch (_) { /* Node 20: absent */ }
if (sqlite && typeof sqlite.DatabaseSync.prototype.loadExtension === 'function') {
  const n = new sqlite.DatabaseSync(file + '.node-sqlite', { allowExtension: true });
  load(n);
  out.node_sqlite_version = n.prepare('SELECT pdb_version() AS v').get().v;
  try { load(new sqlite.DatabaseSync(':memory:')); } catch (e) { out.node_sqlite_refusal = e.message; }
} else {
  // Its branch, with a stand-in that refuses as DatabaseSync does when
  // opened without allowExtension.
  const standIn = {
    enableLoadExtension() {
      const e = new Error('Cannot enable extension loading because it was disabled at database creation.');
      e.code = 'ERR_INVALID_STATE';
      throw e;
    },
    loadExtension() { throw new Error('not reached'); },
  };
  try { load(standIn); } catch (e) { out.node_sqlite_refusal = e.message; }
}
console.log(JSON.stringify(out));
"#;

const TS_CHECK: &str = r#"
import { load, getLoadablePath, version, BetterSqlite3Database, NodeSqliteDatabase } from 'personaldb';

const better: BetterSqlite3Database = { loadExtension: (_path: string) => undefined };
const nodeSqlite: NodeSqliteDatabase = {
  enableLoadExtension: (_allow: boolean) => {},
  loadExtension: (_path: string) => {},
};
load(better);
load(nodeSqlite);
const path: string = getLoadablePath();
const v: string = version;
// @ts-expect-error a number is not a database
load(42);
export { path, v };
"#;

#[test]
fn node_quickstart_through_the_npm_package_in_a_fresh_project() {
    let d = dist();
    let dir = TempDir::new("pkg-node");
    let w = ShippedWitness::start(d, dir.path());
    w.create_group("tasks", DDL);
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("package.json"), r#"{"name":"app","private":true}"#).unwrap();
    // The tarball is installed for real; it has no dependencies, so npm
    // needs no registry (--offline).
    run(Command::new("npm")
        .args([
            "install",
            "--offline",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .arg(&d.npm)
        .current_dir(&app));
    let manifest: Json = serde_json::from_str(
        &std::fs::read_to_string(app.join("node_modules/personaldb/package.json")).unwrap(),
    )
    .unwrap();
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(manifest["version"], VERSION, "{manifest}");
    assert_eq!(manifest["os"], json!(["linux"]), "{manifest}");
    assert_eq!(manifest["cpu"], json!([cpu]), "{manifest}");
    assert_eq!(manifest["libc"], json!(["glibc"]), "{manifest}");
    assert_eq!(manifest["types"], "index.d.ts", "{manifest}");

    // better-sqlite3 compiles for about a minute when installed; the app
    // uses the build scripts/setup.sh made for the host tests (NODE_PATH).
    let node_path = repo().join("tests/node/node_modules");
    assert!(
        node_path.join("better-sqlite3").exists(),
        "better-sqlite3 is missing: run scripts/setup.sh"
    );
    std::fs::write(app.join("quickstart.js"), NODE_QUICKSTART).unwrap();
    let device = |mode: &str, db: &str| {
        last_json(&run(Command::new("node")
            .arg("quickstart.js")
            .args([mode, &w.url, TOKEN])
            .arg(dir.path().join(db))
            .env("NODE_PATH", &node_path)
            .current_dir(&app)))
    };
    let a = device("write", "a.db");
    assert_eq!(a["version"], VERSION, "{a}");
    assert_eq!(a["pdb_version"], VERSION, "{a}");
    let installed = app.join("node_modules/personaldb");
    for k in ["module", "library"] {
        let p = a[k].as_str().unwrap_or("");
        assert!(Path::new(p).starts_with(&installed), "{k}: {p}");
    }
    assert_eq!(a["synced"]["pushed"], 1, "{a}");
    assert_eq!(a["verify"]["ok"], true, "{a}");
    if let Some(v) = a.get("node_sqlite_version") {
        assert_eq!(v, VERSION, "{a}");
    }
    let refusal = a["node_sqlite_refusal"].as_str().unwrap_or("");
    assert!(refusal.contains("allowExtension: true"), "{refusal}");

    let b = device("read", "b.db");
    assert_eq!(b["rows"], json!([["t-node", "Buy bread (Node)"]]), "{b}");
    assert_eq!(b["head"], a["head"], "{b}");

    // ES modules get the same names.
    std::fs::write(
        app.join("esm.mjs"),
        "import { load, getLoadablePath, version } from 'personaldb';\nconsole.log(typeof load, typeof getLoadablePath, version);\n",
    )
    .unwrap();
    let out = run(Command::new("node").arg("esm.mjs").current_dir(&app));
    assert_eq!(out.trim(), format!("function function {VERSION}"));

    // The types compile in strict mode against the installed package.
    let tsc = repo().join("packages/node/node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "{} is missing: run scripts/setup.sh",
        tsc.display()
    );
    std::fs::write(app.join("check.ts"), TS_CHECK).unwrap();
    run(Command::new(&tsc)
        .args(["--noEmit", "--strict", "--module", "nodenext"])
        .arg("check.ts")
        .current_dir(&app));
}

#[test]
fn the_witness_archive_ships_binary_readme_config_and_unit() {
    let d = dist();
    let mut files: Vec<String> = std::fs::read_dir(&d.witness)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "pdb-witness",
            "pdb-witness.env",
            "pdb-witness.service"
        ]
    );
    let bin = d.witness.join("pdb-witness");
    let out = run(Command::new(&bin).arg("--version"));
    assert_eq!(out.trim(), format!("pdb-witness {VERSION}"));

    // The example configuration names every variable `serve` reads, and
    // nothing else (PDB_LOG is the log filter, read by the logger).
    let help = run(Command::new(&bin).args(["serve", "--help"]));
    let mut read: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    read.push("PDB_LOG".into());
    read.sort();
    read.dedup();
    let example = std::fs::read_to_string(d.witness.join("pdb-witness.env")).unwrap();
    let mut named: Vec<String> = example
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter(|l| l.starts_with("PDB_") && l.contains('='))
        .filter_map(|l| l.split('=').next())
        .map(str::to_string)
        .collect();
    named.sort();
    named.dedup();
    assert_eq!(named, read, "pdb-witness.env against `serve --help`");

    // The unit starts what the README installs, where it installs it.
    let unit = std::fs::read_to_string(d.witness.join("pdb-witness.service")).unwrap();
    let readme = std::fs::read_to_string(d.witness.join("README.md")).unwrap();
    for (line, path) in [
        (
            "ExecStart=/usr/local/bin/pdb-witness serve",
            "/usr/local/bin/pdb-witness",
        ),
        (
            "EnvironmentFile=/etc/pdb-witness/pdb-witness.env",
            "/etc/pdb-witness/pdb-witness.env",
        ),
        ("User=pdb-witness", "useradd --system"),
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
        assert!(readme.contains(path), "README lacks {path}");
    }
    assert!(readme.contains(&format!("version {VERSION}")), "{readme}");

    // systemd's own checker, where this machine has it: the unit pointed at
    // the unpacked files must parse without a single complaint.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = TempDir::new("pkg-unit");
        let local = unit
            .replace("/usr/local/bin/pdb-witness", &bin.display().to_string())
            .replace(
                "/etc/pdb-witness/pdb-witness.env",
                &d.witness.join("pdb-witness.env").display().to_string(),
            );
        let path = dir.path().join("pdb-witness.service");
        std::fs::write(&path, local).unwrap();
        let out = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path));
        assert!(out.trim().is_empty(), "systemd-analyze verify: {out}");
    }
}
