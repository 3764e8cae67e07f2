//! The README's quickstart, run as written: every code block from
//! "## Quickstart" up to "### Changing the schema" is taken from README.md
//! itself and run in order, in a fresh directory that looks like a
//! checkout (the repository's files linked in, no data directory, no dist,
//! no venv) — the witness command, the group, a device token made the way
//! the README shows, the packages, the Python, Node and CLI snippets as
//! three devices of one group, the walkthrough — and the outputs the
//! README shows are checked. So the README cannot drift from the product.
//!
//! What the test changes, and only that: the witness listens on a free
//! port (the README's 127.0.0.1:7070 is replaced by it in every later
//! block) and nothing is rebuilt (`--no-build` for witness.sh and
//! package.sh: the build under test is the one cargo made; cargo holds
//! its lock while tests run); npm installs offline, better-sqlite3 coming
//! from the copy scripts/setup.sh built for the host tests; `export
//! PDB_ADMIN_TOKEN=...` gets the token the witness printed. The block that
//! runs the whole test suite is not run from inside it.

use pdb_e2e::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The fenced code blocks between two headings: (language, body).
fn blocks(text: &str, from: &str, to: &str) -> Vec<(String, String)> {
    let start = text.find(from).expect("start heading");
    let end = start + text[start..].find(to).expect("end heading");
    let mut out = Vec::new();
    let mut lines = text[start..end].lines();
    while let Some(l) = lines.next() {
        if let Some(lang) = l.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push((lang.trim().to_string(), body));
        }
    }
    out
}

/// `key: number` pairs in a text (`'pushed': 1`, `"pulled":0`, `pushed: 1`).
fn pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == '_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let key: String = b[s..i].iter().collect();
            let mut j = i;
            while j < b.len() && (b[j] == '\'' || b[j] == '"') {
                j += 1;
            }
            if j < b.len() && b[j] == ':' {
                j += 1;
                while j < b.len() && b[j] == ' ' {
                    j += 1;
                }
                let n = j;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > n {
                    out.push((key, b[n..j].iter().collect()));
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

/// What a block's comments say it prints: the `key: n` pairs of its
/// comments on result lines, and the first word of the comment of a line
/// that counts rows.
fn shown(block: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut p, mut counts) = (Vec::new(), Vec::new());
    for line in block.lines() {
        let comment = ["# ", "// ", "-- "]
            .iter()
            .filter_map(|m| line.find(m).map(|i| &line[i + m.len()..]))
            .next();
        let Some(c) = comment else { continue };
        if line.contains("pdb_sync") || line.contains("personaldb.sync") {
            p.extend(pairs(c));
        }
        if line.contains("count(*)") {
            let word = c.split_whitespace().next().unwrap_or("");
            counts.push(word.trim_end_matches(':').to_string());
        }
    }
    (p, counts)
}

fn run_bash(dir: &Path, script: &str, path_env: Option<&str>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["600", "bash", "-c", script])
        .current_dir(dir)
        .env_remove("PDB_ADMIN_TOKEN")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INDEX", "1")
        .env("NODE_PATH", repo().join("tests/node/node_modules"));
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "README block failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_quickstart_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        repo()
            .join("tests/node/node_modules/better-sqlite3")
            .exists(),
        "better-sqlite3 is missing: run scripts/setup.sh"
    );
    let blocks = blocks(&readme, "## Quickstart", "### Changing the schema");
    let dir = TempDir::new("readme");
    let t = dir.path().to_path_buf();
    // A checkout: the repository's files, none of what running makes.
    for e in std::fs::read_dir(repo()).unwrap().flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with('.') || n == "dist" || n.ends_with(".db") {
            continue;
        }
        std::os::unix::fs::symlink(e.path(), t.join(&name)).unwrap();
    }
    // The witness command must not run npm: a stand-in records any call.
    let fake = t.join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("npm"),
        format!("#!/bin/sh\ntouch {}/npm-was-run\nexit 1\n", t.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        fake.join("npm"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let env_file = t.join("session.env");
    std::fs::write(&env_file, "").unwrap();
    let session = |body: &str| {
        format!(
            "set -eo pipefail\nsource {env}\n{body}\nexport -p > {env}\n",
            env = env_file.display()
        )
    };

    let mut witness = None;
    let mut url = String::new();
    let mut admin = String::new();
    let mut ran = Vec::new();
    for (lang, body) in &blocks {
        let body = if url.is_empty() {
            body.clone()
        } else {
            body.replace("http://127.0.0.1:7070", &url)
        };
        let (pairs_shown, counts_shown) = shown(&body);
        let out = if body.trim() == "scripts/witness.sh" {
            let mut child = Command::new("bash")
                .arg("-c")
                .arg(format!("{} --no-build --listen 127.0.0.1:0", body.trim()))
                .current_dir(&t)
                .env("PATH", format!("{}:{path}", fake.display()))
                .env_remove("PDB_ADMIN_TOKEN")
                .env_remove("PDB_DATA_DIR")
                .stdout(Stdio::piped())
                .stderr(Stdio::from(
                    std::fs::File::create(t.join("witness.log")).unwrap(),
                ))
                .spawn()
                .expect("scripts/witness.sh");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut printed = String::new();
            // Up to the banner's end (bounded: it is a few lines).
            for _ in 0..40 {
                let Some(Ok(l)) = lines.next() else { break };
                printed.push_str(&l);
                printed.push('\n');
                if let Some(u) = l.strip_prefix("PersonalDB witness listening on ") {
                    url = u.trim().to_string();
                }
                if let Some(a) = l.trim().strip_prefix("admin token:") {
                    admin = a.trim().to_string();
                }
                if l.contains("\"role\":\"writer\"") {
                    break;
                }
            }
            std::thread::spawn(move || for _ in lines {});
            witness = Some(Killed(child));
            assert!(url.starts_with("http://127.0.0.1:"), "{printed}");
            assert!(
                admin.starts_with("pdb_"),
                "a generated admin token is shown: {printed}"
            );
            assert!(
                printed.contains("/v1/tokens") && printed.contains("\"role\":\"writer\""),
                "the banner shows how to make a device token: {printed}"
            );
            assert!(
                !t.join("npm-was-run").exists(),
                "the witness command ran npm"
            );
            printed
        } else if body.contains("scripts/test.sh") {
            continue;
        } else if lang == "python" {
            std::fs::write(t.join("app.py"), &body).unwrap();
            run_bash(&t, &session(".venv/bin/python app.py"), None)
        } else if lang == "js" {
            std::fs::write(t.join("nodeapp/app.js"), &body).unwrap();
            run_bash(&t, &session("cd nodeapp && node app.js"), None)
        } else if lang == "sh" && body.contains("npm install") {
            std::fs::create_dir_all(t.join("nodeapp")).unwrap();
            std::fs::write(
                t.join("nodeapp/package.json"),
                r#"{"name":"app","private":true}"#,
            )
            .unwrap();
            let b = body
                .replace("/path/to/personaldb", &t.display().to_string())
                .replace(
                    "npm install",
                    "npm install --offline --no-audit --no-fund --loglevel=error",
                )
                .replace(" better-sqlite3", "");
            run_bash(&t, &session(&format!("cd nodeapp\n{b}")), None)
        } else if lang == "sh" {
            let b = body
                .replace("scripts/package.sh", "scripts/package.sh --no-build")
                .replace("PDB_ADMIN_TOKEN=...", &format!("PDB_ADMIN_TOKEN={admin}"));
            run_bash(&t, &session(&b), None)
        } else {
            panic!(
                "a README quickstart block this test does not know how to run: ```{lang}\n{body}"
            );
        };
        let got = pairs(&out);
        for p in &pairs_shown {
            assert!(
                got.contains(p),
                "the README shows {p:?}; the block printed:\n{out}\n--- block\n{body}"
            );
        }
        for c in &counts_shown {
            assert!(
                out.lines().any(|l| l.trim() == c),
                "the README shows {c:?}; the block printed:\n{out}\n--- block\n{body}"
            );
        }
        ran.push((body.clone(), out));
    }
    assert!(witness.is_some(), "the README starts the witness");
    let find = |what: &str| {
        ran.iter()
            .find(|(b, _)| b.contains(what))
            .unwrap_or_else(|| panic!("no README block with {what}"))
            .1
            .clone()
    };
    // The device token is a writer's, not the admin token.
    let token_env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        token_env.contains("PDB_TOKEN="),
        "the README sets PDB_TOKEN"
    );
    assert!(
        !token_env.contains(&format!("PDB_TOKEN=\"{admin}\"")),
        "the device got the admin token"
    );
    // Three devices, one group: the snippets' counts above are 1, 2, 3.
    find("personaldb.sync");
    find("sqlite3 cli.db");
    // The walkthrough: both devices end on the same verified root at v2.
    let w = find("scripts/walkthrough.sh");
    let root = |who: &str| {
        w.lines()
            .find_map(|l| l.strip_prefix(&format!("{who} v2 root: ")))
            .unwrap_or_else(|| panic!("no {who} v2 root in:\n{w}"))
            .to_string()
    };
    assert_eq!(root("A"), root("B"));
    assert!(root("B").ends_with("schema=2 verified=1"), "{w}");
}
