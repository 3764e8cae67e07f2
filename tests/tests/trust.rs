//! The client trusts nothing the witness did not sign: a schema travels as
//! data and nothing in it is executed, tampered or replayed answers are
//! refused with an error naming what failed, TLS is real, and the
//! witness's key can rotate without stranding a device.

use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::process::Command;

const DDL: &str =
    "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT NOT NULL, n INTEGER DEFAULT 0);";

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `pdb_open(url, 'g', options)` with options as JSON (the token added).
fn open(d: &Device, url: &str, options: Json) -> Result<Json, String> {
    let mut o = options;
    o["token"] = json!(TOKEN);
    d.call(&format!(
        "pdb_open({}, 'g', {})",
        sql_text(url),
        sql_text(&o.to_string())
    ))
}

fn tables(d: &Device) -> Vec<String> {
    let mut st = d
        .conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn setup(label: &str) -> (TempDir, Witness) {
    let dir = TempDir::new(label);
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    (dir, w)
}

/// The group info answer (the one that carries the schema).
fn group_info(path: &str) -> bool {
    path.ends_with("/v1/groups/g")
}

fn set_type(path: &str, j: &mut Json) {
    if !group_info(path) {
        return;
    }
    if let Some(t) = j["schema"]["tables"][0]["columns"][1].get_mut("type") {
        *t = json!("TEXT); DROP TABLE app_secrets; SELECT load_extension('/tmp/evil'); --");
    }
}

fn add_check(path: &str, j: &mut Json) {
    if group_info(path) {
        j["schema"]["tables"][0]["checks"] = json!(["load_extension ( '/tmp/evil' )"]);
    }
}

fn add_sql(path: &str, j: &mut Json) {
    if group_info(path) {
        j["schema"]["sql"] = json!("DROP TABLE app_secrets");
    }
}

/// A well-formed schema with one more column, its `hash` field made to
/// match: only the signed head can tell it is not the group's.
fn add_column(path: &str, j: &mut Json) {
    if !group_info(path) {
        return;
    }
    if let Some(cols) = j["schema"]["tables"][0]["columns"].as_array_mut() {
        cols.push(json!({"name": "leak", "type": "TEXT"}));
        let s: pdb_protocol::wire::SchemaJson =
            serde_json::from_value(j["schema"].clone()).unwrap();
        let schema = pdb_protocol::Schema {
            version: s.version,
            tables: s.tables,
        };
        j["schema"]["hash"] = json!(pdb_protocol::hex(&schema.hash()));
    }
}

#[test]
fn a_schema_rewritten_on_the_way_is_never_executed_and_nothing_is_created() {
    let (dir, w) = setup("schema-proxy");
    let proxy = Proxy::start(&w.url);
    for (what, f, says) in [
        ("declared type", set_type as fn(&str, &mut Json), "refused"),
        ("CHECK", add_check, "refused"),
        ("SQL text", add_sql, "malformed"),
        ("extra column", add_column, "signed head"),
    ] {
        let d = Device::new(&dir.path().join(format!("{what}.db")));
        d.exec("CREATE TABLE app_secrets(x); INSERT INTO app_secrets VALUES ('keep me');");
        proxy.set(ProxyMode::TamperGet(f));
        let err = open(&d, &proxy.url, json!({})).unwrap_err();
        assert!(err.starts_with("pdb_open: "), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        // Nothing of the group was created, and nothing ran.
        assert!(!tables(&d).contains(&"notes".to_string()), "{what}");
        let kept: String = d
            .conn
            .query_row("SELECT x FROM app_secrets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "keep me", "{what}");
        // The same device opens fine once the path is honest.
        proxy.set(ProxyMode::Pass);
        open(&d, &proxy.url, json!({})).unwrap();
        assert!(tables(&d).contains(&"notes".to_string()));
    }
}

#[test]
fn a_hostile_schema_is_refused_when_the_group_is_created() {
    let (_dir, w) = setup("hostile-schema");
    for ddl in [
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v \"TEXT); DROP TABLE app_secrets; --\")",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT CHECK (load_extension('/tmp/evil')))",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT DEFAULT (randomblob(1000000000)))",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT COLLATE evil)",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER REFERENCES t(id))",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX i ON t(lower(v))",
        "CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END",
    ] {
        let r = w.post("/v1/groups", &json!({"group": "h", "schema_sql": ddl}));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{ddl}: {r:?}");
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(w.get("/v1/groups/h").status, 404);
}

#[test]
fn replayed_and_rolled_back_heads_are_refused() {
    let (dir, w) = setup("replay");
    let proxy = Proxy::start(&w.url);
    let d = Device::new(&dir.path().join("d.db"));
    open(&d, &proxy.url, json!({"max_head_age_ms": 3000})).unwrap();
    d.exec("INSERT INTO notes VALUES ('a', 'one', 1)");
    d.sync().unwrap();
    // An attacker keeps the answers of one sync ...
    proxy.set(ProxyMode::Record);
    d.sync().unwrap();
    // ... the device sees newer heads meanwhile ...
    std::thread::sleep(std::time::Duration::from_millis(1500));
    proxy.set(ProxyMode::Pass);
    d.sync().unwrap();
    // ... then the attacker replays the old, genuinely signed answers: a
    // head at the verified sequence, only dated earlier, takes the device
    // back to nothing it moved past (a witness whose clock was corrected
    // backwards signs such heads too, and must not lock devices out): it
    // is taken within the age bound, and the head stays where it was.
    let before = d.call("pdb_head()").unwrap();
    proxy.set(ProxyMode::Replay);
    d.sync().unwrap();
    assert_eq!(d.call("pdb_head()").unwrap(), before);
    // A frozen witness: the same old head, with nothing newer seen, is
    // refused once it is older than the bound by the device's clock.
    let fresh = Device::new(&dir.path().join("fresh.db"));
    proxy.set(ProxyMode::Pass);
    open(&fresh, &proxy.url, json!({"max_head_age_ms": 1000})).unwrap();
    proxy.set(ProxyMode::Record);
    fresh.sync().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    proxy.set(ProxyMode::Replay);
    let err = fresh.sync().unwrap_err();
    assert!(err.contains("s old"), "{err}");
    let st = fresh.call("pdb_status()").unwrap();
    assert!(st["head_age_ms"].as_i64().unwrap() >= 1000, "{st}");
    // Honest answers again: sync goes on by itself.
    proxy.set(ProxyMode::Pass);
    fresh.sync().unwrap();
    d.sync().unwrap();
    assert_eq!(
        fresh.dump(&["notes"]),
        d.dump(&["notes"]),
        "both converge once the path is honest"
    );
}

#[test]
fn plain_http_is_refused_except_to_loopback() {
    let (dir, w) = setup("http-only-loopback");
    let d = Device::new(&dir.path().join("d.db"));
    let err = open(&d, "http://witness.example:7070", json!({})).unwrap_err();
    assert!(err.contains("https://"), "{err}");
    assert!(err.contains("allow_http"), "{err}");
    // Loopback is fine without opting in.
    open(&d, &w.url, json!({})).unwrap();
}

#[test]
fn tls_end_to_end_with_the_right_ca_and_refused_with_a_wrong_one_or_name() {
    let dir = TempDir::new("tls");
    let ours = pki::make(dir.path(), "ours", &["127.0.0.1"]);
    let theirs = pki::make(dir.path(), "theirs", &["127.0.0.1"]);
    let mut cmd = Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&ours.cert)
        .arg("--tls-key")
        .arg(&ours.key)
        .env("PDB_ADMIN_TOKEN", TOKEN);
    let w = Witness::launch_with(dir.path(), cmd, pki::agent(&ours.ca_pem));
    assert!(w.url.starts_with("https://127.0.0.1:"), "{}", w.url);
    let r = w.post("/v1/groups", &json!({"group": "g", "schema_sql": DDL}));
    assert_eq!(r.status, 201, "{r:?}");
    let url = format!("https://127.0.0.1:{}", w.port());
    let ca = |p: &pki::Pki| p.ca_file.display().to_string();

    // The right CA: open, write, sync, a second device sees the row.
    let a = Device::new(&dir.path().join("a.db"));
    open(&a, &url, json!({"ca_file": ca(&ours)})).unwrap();
    a.exec("INSERT INTO notes VALUES ('x', 'over TLS', 1)");
    a.sync().unwrap();
    let b = Device::new(&dir.path().join("b.db"));
    open(&b, &url, json!({"ca_file": ca(&ours)})).unwrap();
    assert_eq!(b.dump(&["notes"]), a.dump(&["notes"]));

    // The system's roots do not know the test CA; a wrong CA; a name the
    // certificate does not have: each refused, saying it is TLS.
    for (what, url, options) in [
        ("system roots", url.clone(), json!({})),
        ("wrong CA", url.clone(), json!({"ca_file": ca(&theirs)})),
        (
            "wrong host name",
            format!("https://localhost:{}", w.port()),
            json!({"ca_file": ca(&ours)}),
        ),
    ] {
        let d = Device::new(&dir.path().join(format!("{what}.db")));
        let err = open(&d, &url, options).unwrap_err();
        assert!(err.contains("TLS"), "{what}: {err}");
        assert!(!tables(&d).contains(&"notes".to_string()), "{what}");
    }
    // Plain HTTP to the TLS port gets nothing usable either.
    let d = Device::new(&dir.path().join("plain.db"));
    assert!(open(&d, &format!("http://127.0.0.1:{}", w.port()), json!({})).is_err());
}

fn rotate_in_proxy(_: &str, j: &mut Json) {
    // A rotation to a key of the attacker's, signed with that key only.
    if j["public_key"].is_string() {
        let evil = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
        let current = pdb_protocol::unhex32(j["public_key"].as_str().unwrap()).unwrap();
        let index = j["rotations"].as_array().map_or(0, Vec::len) as u32 + 1;
        let mut r = pdb_protocol::Rotation::sign(index, &evil, &evil, pdb_protocol::now_ms());
        let mut rec = pdb_protocol::RotationRecord::decode(&r.bytes).unwrap();
        rec.prev_key = current;
        r.bytes = rec.encode();
        let mut list = j["rotations"].as_array().cloned().unwrap_or_default();
        list.push(serde_json::to_value(pdb_protocol::wire::RotationJson::from(&r)).unwrap());
        j["rotations"] = Json::Array(list);
        j["public_key"] = json!(pdb_protocol::hex(evil.verifying_key().as_bytes()));
    }
}

#[test]
fn a_rotated_key_is_followed_and_a_forged_one_refused() {
    let (dir, mut w) = setup("rotate");
    let port = w.port();
    let old_key = pdb_protocol::hex(w.public_key.as_bytes());
    let a = Device::new(&dir.path().join("a.db"));
    open(&a, &w.url, json!({})).unwrap();
    a.exec("INSERT INTO notes VALUES ('1', 'before the rotation', 1)");
    a.sync().unwrap();

    w.terminate();
    let out = witness_command(&w.data_dir, &["rotate-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new_key, old_key);
    let w = Witness::start_on(dir.path(), port);
    assert_eq!(pdb_protocol::hex(w.public_key.as_bytes()), new_key);

    // The device that pinned the old key follows the rotation by itself.
    a.exec("INSERT INTO notes VALUES ('2', 'after the rotation', 2)");
    a.sync().unwrap();
    assert_eq!(a.call("pdb_verify()").unwrap()["ok"], true);
    // A new device pinning the old key explicitly gets everything, the
    // old certificates checked with the old key and the new with the new.
    let b = Device::new(&dir.path().join("b.db"));
    open(&b, &w.url, json!({"public_key": old_key})).unwrap();
    assert_eq!(b.dump(&["notes"]), a.dump(&["notes"]));
    assert_eq!(b.call("pdb_verify()").unwrap()["ok"], true);
    // A key no rotation vouches for is refused.
    let c = Device::new(&dir.path().join("c.db"));
    let stranger = pdb_protocol::hex(&[9u8; 32]);
    assert!(open(&c, &w.url, json!({"public_key": stranger})).is_err());
    // A forged rotation on the way is refused, and refused again on sync.
    let proxy = Proxy::start(&w.url);
    proxy.set(ProxyMode::TamperGet(rotate_in_proxy));
    let e = Device::new(&dir.path().join("e.db"));
    let err = open(&e, &proxy.url, json!({"public_key": old_key})).unwrap_err();
    assert!(err.contains("rotation"), "{err}");
    assert!(!tables(&e).contains(&"notes".to_string()));
    // The verifier follows the rotation over the whole log.
    let (ok, text) = w.verify_cli();
    assert!(ok, "{text}");
}
