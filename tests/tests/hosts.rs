//! The built libpdb loaded into the hosts users have: the sqlite3 CLI,
//! Python's sqlite3 (/usr/bin/python3) and Node (better-sqlite3@12), all
//! syncing through one real witness; the SQL walkthrough; and the
//! function list against the README.

use pdb_e2e::*;
use std::path::Path;
use std::process::Command;

// `score REAL` with integral values: SQLite 3.40 (the CLI and Python here)
// hands those out as integers through RETURNING; sync must not trip on it.
const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n INTEGER, score REAL);";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("start host");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "host failed: {text}");
    text
}

fn cli(db: &Path, script: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3 CLI (apt: sqlite3)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("Error"),
        "sqlite3: {text}"
    );
    text
}

#[test]
fn cli_python_and_node_sync_through_one_witness() {
    let dir = TempDir::new("hosts");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let ext = extension_path();

    // sqlite3 CLI
    let out = cli(
        &dir.path().join("cli.db"),
        &format!(
            ".load {}\n.bail on\nSELECT pdb_open('{}', 'g', json_object('token', '{TOKEN}'));\nINSERT INTO notes VALUES (1, 'from the CLI', 1, 2.0);\nSELECT json_extract(pdb_sync(), '$.pushed');\n",
            ext.display(),
            w.url
        ),
    );
    assert!(out.trim_end().ends_with('1'), "{out}");

    // Python
    let py = format!(
        r#"
import sqlite3, json
db = sqlite3.connect({db:?})
db.enable_load_extension(True)
db.load_extension({ext:?})
db.enable_load_extension(False)
opened = json.loads(db.execute("SELECT pdb_open(?, 'g', json_object('token', ?))", ({url:?}, {TOKEN:?})).fetchone()[0])
assert opened["pulled"] == 1, opened
db.execute("INSERT INTO notes VALUES (2, 'from Python', 2, 3.0)")
db.execute("UPDATE notes SET score = 4.0 WHERE id = 1")
db.commit()
r = json.loads(db.execute("SELECT pdb_sync()").fetchone()[0])
assert r["pushed"] == 1, r
assert json.loads(db.execute("SELECT pdb_verify()").fetchone()[0])["ok"]
print("python ok", [tuple(x) for x in db.execute("SELECT id, body FROM notes ORDER BY id")])
"#,
        db = dir.path().join("py.db").display().to_string(),
        ext = ext.display().to_string(),
        url = w.url
    );
    let out = run(Command::new("/usr/bin/python3").arg("-c").arg(&py));
    assert!(
        out.contains("python ok [(1, 'from the CLI'), (2, 'from Python')]"),
        "{out}"
    );

    // Node with better-sqlite3@12 (installed by scripts/setup.sh)
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let js = format!(
        r#"
const Database = require('better-sqlite3');
const db = new Database({db:?});
db.loadExtension({ext:?});
const opened = JSON.parse(db.prepare("SELECT pdb_open(?, 'g', json_object('token', ?))").pluck().get({url:?}, {TOKEN:?}));
if (opened.pulled < 1) throw new Error(JSON.stringify(opened));
db.prepare("INSERT INTO notes VALUES (3, 'from Node', 3, 5.0)").run();
const r = JSON.parse(db.prepare("SELECT pdb_sync()").pluck().get());
if (r.pushed !== 1) throw new Error(JSON.stringify(r));
console.log("node ok", JSON.stringify(db.prepare("SELECT id FROM notes ORDER BY id").pluck().all()));
"#,
        db = dir.path().join("node.db").display().to_string(),
        ext = ext.display().to_string(),
        url = w.url
    );
    let out = run(Command::new("node")
        .arg("-e")
        .arg(&js)
        .current_dir(&node_dir));
    assert!(out.contains("node ok [1,2,3]"), "{out}");

    // The CLI device catches up with both.
    let out = cli(
        &dir.path().join("cli.db"),
        &format!(
            ".load {}\nSELECT json_extract(pdb_sync(), '$.pulled');\nSELECT group_concat(body, '|') FROM (SELECT body FROM notes ORDER BY id);\nSELECT json_extract(pdb_verify(), '$.ok');\n",
            ext.display()
        ),
    );
    assert!(out.contains("from the CLI|from Python|from Node"), "{out}");
    assert!(out.trim_end().ends_with('1'), "{out}");
}

#[test]
fn the_sql_walkthrough_converges_two_devices() {
    let dir = TempDir::new("walkthrough");
    let w = Witness::start(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let schema = std::fs::read_to_string(root.join("sql/walkthrough_schema.sql")).unwrap();
    w.create_group("walkthrough", &schema);
    std::fs::write(
        dir.path().join("pdb_params.sql"),
        format!(
            ".load {}\n.parameter set @url '{}'\n.parameter set @group 'walkthrough'\n.parameter set @token '{TOKEN}'\n",
            extension_path().display(),
            w.url
        ),
    )
    .unwrap();
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sqlite3 < {}",
            root.join("sql/walkthrough.sql").display()
        ))
        .current_dir(dir.path()));
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"))
            .trim_start_matches(prefix)
            .to_string()
    };
    assert_eq!(
        line("A rows: "),
        "t1=Buy oat milk/1, t3=Call Bob/0",
        "{out}"
    );
    assert_eq!(line("A rows: "), line("B rows: "));
    assert_eq!(line("A root: "), line("B root: "));
    assert!(line("A root: ").ends_with("verified=1"), "{out}");

    // Part two: version 2 of the app, shipped from the CLI. The one error
    // is the version-1 install's sync stopping; everything else succeeds.
    let migrations = dir.path().join("sql/migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::copy(
        root.join("sql/migrations/walkthrough_002.sql"),
        migrations.join("walkthrough_002.sql"),
    )
    .unwrap();
    let v2 = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sqlite3 < {}",
            root.join("sql/walkthrough_v2.sql").display()
        ))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&v2.stdout).to_string(),
        String::from_utf8_lossy(&v2.stderr).to_string(),
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{out}{err}");
    assert!(errors[0].contains("app_upgrade_required"), "{out}{err}");
    assert!(err.contains("understands up to version 1"), "{err}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} ({:?}) in:\n{out}{err}", v2.status))
            .trim_start_matches(prefix)
            .to_string()
    };
    assert!(
        line("migrated to version ").starts_with("2 at seq "),
        "{out}"
    );
    assert_eq!(
        line("B stopped: "),
        "app_upgrade_required, still at schema version 1, 3 tasks here",
        "{out}"
    );
    assert_eq!(
        line("A v2 rows: "),
        "t1=Buy oat milk/1/-, t3=Call Bob/0/2026-12-24, t4=Plan the trip/0/-",
        "{out}"
    );
    assert_eq!(line("A v2 rows: "), line("B v2 rows: "));
    assert_eq!(line("A v2 root: "), line("B v2 root: "));
    assert!(
        line("A v2 root: ").ends_with("schema=2 verified=1"),
        "{out}"
    );
}

#[test]
fn loaded_functions_are_exactly_the_documented_ones() {
    let dir = TempDir::new("fnlist");
    let out = cli(
        &dir.path().join("f.db"),
        &format!(
            ".load {}\nSELECT DISTINCT name FROM pragma_function_list WHERE name LIKE 'pdb%' ORDER BY name;\nSELECT name, narg, flags FROM pragma_function_list WHERE name = 'pdb_sync';\n",
            extension_path().display()
        ),
    );
    let loaded: Vec<&str> = out.lines().filter(|l| !l.contains('|')).collect();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let mut documented: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `pdb_"))
        .map(|l| format!("pdb_{}", l.split('(').next().unwrap()))
        .collect();
    documented.sort();
    documented.dedup();
    assert_eq!(
        loaded, documented,
        "README's function table and the loaded functions differ"
    );
    // Network functions are not DETERMINISTIC (0x800) and are DIRECTONLY (0x80000).
    let flags: i64 = out
        .lines()
        .find(|l| l.starts_with("pdb_sync|"))
        .and_then(|l| l.rsplit('|').next())
        .and_then(|f| f.parse().ok())
        .expect("flags of pdb_sync");
    assert_eq!(flags & 0x800, 0, "pdb_sync must not be deterministic");
    assert_ne!(flags & 0x80000, 0, "pdb_sync is DIRECTONLY");
}
