//! A newcomer's first hour: device tokens made on a running witness,
//! re-opening and opening at the group's schema, errors that name the fix.

use pdb_e2e::*;
use serde_json::json;
use std::process::Command;

const DDL: &str = "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT, done INTEGER)";

fn witness_cli(data: &std::path::Path, args: &[&str], admin: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("PDB_ADMIN_TOKEN");
    if let Some(t) = admin {
        cmd.env("PDB_ADMIN_TOKEN", t);
    }
    cmd.output().expect("run pdb-witness")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[test]
fn a_running_witness_makes_and_revokes_device_tokens_and_grants_roles_without_a_restart() {
    let dir = TempDir::new("tokens-live");
    let data = dir.path().join("data");
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);

    // Over the API, in one call: a writer token for a device.
    let r = w.post(
        "/v1/tokens",
        &json!({"identity": "phone", "group": "tasks", "role": "writer"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let phone = r.body["token"].as_str().expect("token").to_string();
    assert_eq!(r.body["role"], "writer");
    // Only its hash is kept.
    let file = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    assert!(!file.contains(&phone), "the token itself is stored");
    assert!(file.contains(&pdb_protocol::hex(&pdb_protocol::sha256(phone.as_bytes()))));

    // A device uses it at once: open, write, sync.
    let d = Device::new(&dir.path().join("phone.db"));
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('token', '{phone}'))",
        w.url
    ))
    .expect("open with the new token");
    d.exec("INSERT INTO tasks VALUES ('p1', 'from the phone', 0)");
    assert_eq!(d.sync().expect("sync")["pushed"], 1);

    // The command line against the running witness, with the admin token.
    let out = witness_cli(
        &data,
        &[
            "add-token",
            "--identity",
            "laptop",
            "--group",
            "tasks",
            "--role",
            "reader",
        ],
        Some(TOKEN),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let laptop = text(&out.stdout);
    assert_eq!(
        w.request("GET", "/v1/groups/tasks/head", Some(&laptop), None)
            .status,
        200
    );
    assert_eq!(
        w.request("POST", "/v1/groups/tasks/snapshots", Some(&laptop), None)
            .status,
        403,
        "a reader"
    );
    let out = witness_cli(
        &data,
        &[
            "grant",
            "--group",
            "tasks",
            "--identity",
            "laptop",
            "--role",
            "admin",
        ],
        Some(TOKEN),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        w.request("POST", "/v1/groups/tasks/snapshots", Some(&laptop), None)
            .status,
        201,
        "an admin now, without a restart"
    );

    // Deny by default: only the operator mints tokens, not a group's admin.
    let r = w.request(
        "POST",
        "/v1/tokens",
        Some(&laptop),
        Some(&json!({"identity": "mallory", "group": "tasks", "role": "admin"})),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{r:?}"
    );
    assert_eq!(
        w.request("GET", "/v1/tokens", Some(&phone), None).status,
        403
    );

    // Without the admin token the command says what it needs, and makes nothing.
    let out = witness_cli(&data, &["add-token", "--identity", "tablet"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PDB_ADMIN_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    let list = w.get("/v1/tokens");
    assert_eq!(
        list.body["tokens"],
        json!([{"identity": "laptop", "tokens": 1}, {"identity": "phone", "tokens": 1}]),
        "{list:?}"
    );

    // A token added to the file by another tool works at once too.
    let by_hand = "pdb_made-by-hand-0123456789abcdef";
    let mut entries: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("tokens.json")).unwrap()).unwrap();
    entries.as_array_mut().unwrap().push(json!({
        "identity": "phone",
        "sha256": pdb_protocol::hex(&pdb_protocol::sha256(by_hand.as_bytes())),
    }));
    std::fs::write(data.join("tokens.json"), entries.to_string()).unwrap();
    assert_eq!(
        w.request("GET", "/v1/groups/tasks/head", Some(by_hand), None)
            .status,
        200
    );

    // Revoked from the command line: refused at once, and the device's
    // sync stops saying so.
    let out = witness_cli(&data, &["revoke-token", "--identity", "phone"], Some(TOKEN));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("revoked 2"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        w.request("GET", "/v1/groups/tasks/head", Some(&phone), None)
            .status,
        401
    );
    d.exec("INSERT INTO tasks VALUES ('p2', 'after the revoke', 0)");
    let e = d.sync().expect_err("revoked");
    assert!(e.contains("unauthorized"), "{e}");
    // Revoking again names what is wrong.
    let r = w.request("DELETE", "/v1/tokens/phone", Some(TOKEN), None);
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn re_opening_with_new_options_keeps_the_stored_token_and_settings() {
    let dir = TempDir::new("reopen");
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);
    let r = w.post(
        "/v1/tokens",
        &json!({"identity": "phone", "group": "tasks", "role": "writer"}),
    );
    let token = r.body["token"].as_str().unwrap().to_string();
    let d = Device::new(&dir.path().join("d.db"));
    // No token at all: the error names the option that is missing.
    let e = d
        .call(&format!("pdb_open('{}', 'tasks')", w.url))
        .unwrap_err();
    assert!(e.contains("json_object('token'"), "{e}");
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('token', '{token}', 'policy', 'manual', 'timeout_ms', 5000))",
        w.url
    ))
    .expect("first open");
    // The README's upgraded app re-opens with its schema versions only.
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('schema_versions', json_array(1, 2)))",
        w.url
    ))
    .expect("re-open keeps the stored token");
    let st = d.call("pdb_status()").unwrap();
    assert_eq!(st["state"], "healthy", "{st}");
    assert_eq!(st["app_schema_versions"], json!([1, 2]), "{st}");
    let kept: Vec<String> = ["policy", "timeout_ms", "token"]
        .iter()
        .map(|k| {
            d.conn
                .query_row("SELECT v FROM pdb_state WHERE k = ?1", [k], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            format!("{:?}", rusqlite::types::Value::Text("manual".into())),
            format!("{:?}", rusqlite::types::Value::Integer(5000)),
            format!("{:?}", rusqlite::types::Value::Text(token.clone())),
        ]
    );
    d.exec("INSERT INTO tasks VALUES ('t1', 'x', 0)");
    assert_eq!(d.sync().expect("sync")["pushed"], 1);
    // Re-opening without schema_versions keeps them too; naming an option
    // changes only that one.
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('policy', 'remote_wins'))",
        w.url
    ))
    .unwrap();
    let st = d.call("pdb_status()").unwrap();
    assert_eq!(st["app_schema_versions"], json!([1, 2]), "{st}");
}

#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let dir = TempDir::new("log-colour");
    let mut cmd = Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PDB_ADMIN_TOKEN", TOKEN)
        .env("PDB_LOG", "info")
        .env_remove("NO_COLOR");
    let mut w = Witness::launch(dir.path(), cmd);
    w.create_group("tasks", DDL);
    w.terminate();
    let log = std::fs::read_to_string(dir.path().join("witness.log")).unwrap();
    assert!(log.contains("request"), "the log has request lines: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );
}

fn open_device(
    w: &Witness,
    path: &std::path::Path,
    v2_table: Option<&str>,
) -> (Device, Result<serde_json::Value, String>) {
    let d = Device::new(path);
    if let Some(sql) = v2_table {
        d.exec(sql);
    }
    let r = d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('token', '{TOKEN}', 'schema_versions', json_array(1, 2)))",
        w.url
    ));
    (d, r)
}

#[test]
fn a_new_database_whose_tables_have_the_groups_current_schema_opens_at_it() {
    let dir = TempDir::new("open-at-v2");
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);
    let (a, r) = open_device(&w, &dir.path().join("a.db"), None);
    r.expect("a opens at v1");
    a.exec("INSERT INTO tasks VALUES ('t1', 'from v1', 0)");
    a.sync().unwrap();
    let r = w.post(
        "/v1/groups/tasks/migrations",
        &json!({"ddl": "ALTER TABLE tasks ADD COLUMN due TEXT"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    a.sync().unwrap();
    let v2 = "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT, done INTEGER, due TEXT)";
    let rows = |d: &Device| d.dump(&["tasks"]);
    let at = |d: &Device| {
        let st = d.call("pdb_status()").unwrap();
        assert_eq!(d.call("pdb_verify()").unwrap()["ok"], true);
        st["schema_version"].clone()
    };

    // The app's empty v2 table, no snapshot: opens and ends at version 2.
    let (b, r) = open_device(&w, &dir.path().join("b.db"), Some(v2));
    r.expect("an empty v2-shaped table opens");
    assert_eq!(at(&b), 2);
    assert_eq!(rows(&b), rows(&a));

    // With a snapshot at version 2: an empty v2 table starts from it, and
    // one holding rows of its own too (they are re-based and pushed).
    assert_eq!(w.post("/v1/groups/tasks/snapshots", &json!({})).status, 201);
    let (c, r) = open_device(&w, &dir.path().join("c.db"), Some(v2));
    let opened = r.expect("an empty v2 table with a v2 snapshot");
    assert!(opened["bootstrapped_from"].is_number(), "{opened}");
    assert_eq!(at(&c), 2);
    let (d, r) = open_device(
        &w,
        &dir.path().join("d.db"),
        Some(&format!(
            "{v2}; INSERT INTO tasks VALUES ('d1', 'made offline', 0, '2026-12-24')"
        )),
    );
    r.expect("a v2 table with rows and a v2 snapshot");
    assert_eq!(d.sync().unwrap()["pushed"], 1);
    assert_eq!(at(&d), 2);
    a.sync().unwrap();
    assert_eq!(rows(&a), rows(&d));

    // A table matching no version says so, naming the group's version.
    let (_e, r) = open_device(
        &w,
        &dir.path().join("e.db"),
        Some("CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT, done INTEGER, due TEXT, extra TEXT)"),
    );
    let e = r.unwrap_err();
    assert!(
        e.contains("match none of the group's schema versions (it is at version 2"),
        "{e}"
    );
    assert!(e.contains("has 5 columns here and 4 in the group"), "{e}");
}

#[test]
fn each_error_of_a_first_open_names_what_the_user_can_change() {
    let dir = TempDir::new("errors-name-the-fix");
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);
    w.create_group("other", DDL);
    let r = w.post(
        "/v1/tokens",
        &json!({"identity": "phone", "group": "tasks", "role": "writer"}),
    );
    let token = r.body["token"].as_str().unwrap().to_string();
    let d = Device::new(&dir.path().join("d.db"));
    let open = |url: &str, group: &str, token: &str| {
        d.call(&format!(
            "pdb_open('{url}', '{group}', json_object('token', '{token}'))"
        ))
        .unwrap_err()
    };
    let https = w.url.replace("http://", "https://");
    let cases = [
        // https:// to a plain-HTTP witness: the fix is the scheme.
        (
            open(&https, "tasks", &token),
            "the URL starts with http://",
            "ca_file",
        ),
        // A group id no group can have: said before any request.
        (
            open(&w.url, "my tasks", &token),
            "invalid group id \"my tasks\"",
            "unreachable",
        ),
        // A mistyped group with a good writer token: the group id first.
        (open(&w.url, "taks", &token), "check the group id", "Bearer"),
        // A token the witness does not know: the option the user sets.
        (
            open(&w.url, "tasks", "pdb_not-a-token"),
            "pdb_open's token option",
            "Authorization",
        ),
    ];
    for (e, names, not) in &cases {
        assert!(e.contains(names), "{e:?} should name {names:?}");
        assert!(!e.contains(not), "{e:?} should not mention {not:?}");
    }
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('token', '{token}'))",
        w.url
    ))
    .expect("the right URL, group and token");
    let e = d
        .call(&format!(
            "pdb_open('{}', 'other', json_object('token', '{TOKEN}'))",
            w.url
        ))
        .unwrap_err();
    assert!(
        e.contains("use another database file for group \"other\""),
        "{e}"
    );
    // None of them left this database blocked.
    assert_eq!(d.call("pdb_status()").unwrap()["state"], "healthy");
}

/// A listener that records the Authorization header of every request it
/// gets and answers each with 503.
fn recording_listener() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(1000) {
            let mut r = std::io::BufReader::new(stream);
            let mut auth = String::new();
            for _ in 0..200 {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_string();
                    }
                }
            }
            s.lock().unwrap().push(auth);
            let _ = r.get_mut().write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[test]
fn re_opening_with_another_servers_url_never_sends_it_the_stored_token() {
    let dir = TempDir::new("reopen-other-url");
    let w = Witness::start(dir.path());
    w.create_group("tasks", DDL);
    let d = Device::new(&dir.path().join("d.db"));
    d.call(&format!(
        "pdb_open('{}', 'tasks', json_object('token', '{TOKEN}'))",
        w.url
    ))
    .expect("first open");
    let (evil, seen) = recording_listener();
    // Another port on the same host is another origin: no request at all,
    // and the error names the option to give.
    let e = d
        .call(&format!("pdb_open('{evil}', 'tasks', '{{}}')"))
        .unwrap_err();
    assert!(e.contains("json_object('token'"), "{e}");
    assert!(e.contains(&w.url), "names the stored server: {e}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // With its own token the new server gets that one, never the stored.
    let _ = d.call(&format!(
        "pdb_open('{evil}', 'tasks', json_object('token', 'for-the-new-server'))"
    ));
    let got = seen.lock().unwrap().clone();
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|a| a == "Bearer for-the-new-server"),
        "{got:?}"
    );
    // Nothing changed: the database still syncs with its witness, and a
    // re-open at the same URL keeps the token.
    d.exec("INSERT INTO tasks VALUES ('t1', 'x', 0)");
    assert_eq!(d.sync().expect("sync")["pushed"], 1);
    d.call(&format!("pdb_open('{}', 'tasks', '{{}}')", w.url))
        .expect("same origin keeps the stored token");
}

/// Tables in the shape of a later version are built again where the
/// history starts — exactly that version's tables, never a table of
/// another name: a history that dropped a table or created one opens, and
/// an app's own table is never touched.
#[test]
fn a_new_database_in_a_later_shape_rebuilds_only_that_versions_tables() {
    let dir = TempDir::new("open-rebuild-exact");
    let w = Witness::start(dir.path());
    let open = |d: &Device, group: &str| {
        d.call(&format!(
            "pdb_open('{}', '{group}', json_object('token', '{TOKEN}'))",
            w.url
        ))
    };
    let migrate = |group: &str, ddl: &str| {
        let r = w.post(
            &format!("/v1/groups/{group}/migrations"),
            &json!({ "ddl": ddl }),
        );
        assert_eq!(r.status, 201, "{r:?}");
    };
    let synced_at_v2 = |d: &Device| {
        d.sync()
            .expect("sync (the open or this pull takes it to version 2)");
        let st = d.call("pdb_status()").unwrap();
        assert_eq!(st["schema_version"], 2, "{st}");
        assert_eq!(d.call("pdb_verify()").unwrap()["ok"], true);
    };

    // Version 2 dropped a table: the app made the tables of version 2.
    w.create_group(
        "dropped",
        "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT); CREATE TABLE tags(id TEXT PRIMARY KEY, name TEXT)",
    );
    migrate("dropped", "DROP TABLE tags");
    let x = Device::new(&dir.path().join("x.db"));
    x.exec("CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT)");
    open(&x, "dropped").expect("the empty tables of version 2 open");
    synced_at_v2(&x);

    // The same, with a table of the app's own under the dropped table's
    // name, holding rows: refused, and the app's table is as it was.
    let y = Device::new(&dir.path().join("y.db"));
    y.exec(
        "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT);
         CREATE TABLE tags(label TEXT); INSERT INTO tags VALUES ('mine');",
    );
    let e = open(&y, "dropped").expect_err("a table of the app's own is never dropped");
    assert!(e.contains("schema_mismatch"), "{e}");
    let kept: String = y
        .conn
        .query_row("SELECT group_concat(label) FROM tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "mine", "the app's own rows are kept");

    // Version 2 created a table: the app made both; the first pull creates
    // it as the migration says, not stopping at a table the open kept.
    w.create_group(
        "created",
        "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT)",
    );
    migrate(
        "created",
        "CREATE TABLE labels(id TEXT PRIMARY KEY, name TEXT)",
    );
    let z = Device::new(&dir.path().join("z.db"));
    z.exec(
        "CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT);
         CREATE TABLE labels(id TEXT PRIMARY KEY, name TEXT);",
    );
    open(&z, "created").expect("the empty tables of version 2 open");
    synced_at_v2(&z);
}
