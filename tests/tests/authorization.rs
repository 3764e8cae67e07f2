//! Authorisation against a real witness: static tokens, HS256 and EdDSA
//! JWTs, per-group roles, row-level write rules, and a matrix of every
//! endpoint against every kind of caller.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::{hex, Value};
use serde_json::{json, Value as Json};
use std::process::Command;

const DDL: &str = "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, owner TEXT);";
const HS_SECRET: &str = "test-hs256-secret-of-at-least-32-bytes";
const AUD: &str = "pdb-tests";

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt_hs256(claims: Json) -> String {
    let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HS_SECRET.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64url(&mac.finalize().into_bytes()))
}

fn jwt_eddsa(key: &SigningKey, claims: Json) -> String {
    let head = b64url(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let sig = key.sign(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64url(&sig.to_bytes()))
}

fn claims(sub: &str, exp_in: i64) -> Json {
    json!({"sub": sub, "exp": now() + exp_in, "aud": AUD})
}

struct World {
    _dir: TempDir,
    w: Witness,
    g: GroupRef,
    viewer: String,
    viewer_of_other: String,
    reader: String,
    writer: String,
    admin: String,
    outsider: String,
    expired: String,
    wrong_audience: String,
}

fn world(label: &str) -> World {
    let dir = TempDir::new(label);
    let data = dir.path().join("data");
    let reader = add_token(&data, "rita");
    let outsider = add_token(&data, "otto");
    let viewer = add_token(&data, "vera");
    let viewer_of_other = add_token(&data, "nina");
    let eddsa = SigningKey::from_bytes(&[42u8; 32]);
    let key_hex = hex(eddsa.verifying_key().as_bytes());
    let w = Witness::start_with(
        dir.path(),
        0,
        &[
            "--jwt-hs256-secret",
            HS_SECRET,
            "--jwt-eddsa-key",
            &key_hex,
            "--jwt-audience",
            AUD,
            // JWT identities are the bare `sub` here (the default prefixes
            // them with `jwt:`; tests/tests/identity.rs covers that).
            "--jwt-identity-prefix",
            "",
        ],
    );
    let g = w.create_group("g", DDL);
    w.create_group("h", DDL);
    for (group, who, grant) in [
        ("g", "vera", json!({"role": "viewer"})),
        (
            "g",
            "nina",
            json!({"role": "viewer", "projections": ["other"]}),
        ),
        ("g", "rita", json!({"role": "reader"})),
        ("g", "wendy", json!({"role": "writer"})),
        ("g", "ada", json!({"role": "admin"})),
        ("h", "otto", json!({"role": "writer"})),
    ] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/{group}/members/{who}"),
            Some(TOKEN),
            Some(&grant),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    World {
        writer: jwt_hs256(claims("wendy", 600)),
        admin: jwt_eddsa(&eddsa, claims("ada", 600)),
        expired: jwt_hs256(claims("wendy", -3600)),
        wrong_audience: jwt_hs256(
            json!({"sub": "wendy", "exp": now() + 600, "aud": "someone-else"}),
        ),
        viewer,
        viewer_of_other,
        reader,
        outsider,
        g,
        w,
        _dir: dir,
    }
}

fn commit_body(w: &World, key: &str, id: i64, owner: &str) -> Json {
    let h = w.w.head("g");
    let cs = changeset(
        "tasks",
        &[1, 0, 0],
        vec![insert(vec![
            Value::Integer(id),
            Value::text("t"),
            Value::text(owner),
        ])],
    );
    w.g.commit_body(h.seq, &h.head_hash, key, &cs, Policy::RebaseIfClean)
}

#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
enum Need {
    /// Projections only (all of them, unless the grant names others).
    Viewer,
    Reader,
    Writer,
    Admin,
    Operator,
    AnyIdentity,
}

#[test]
fn every_endpoint_answers_every_caller_exactly_as_documented() {
    let w = world("matrix");
    let first =
        w.w.post("/v1/groups/g/commits", &commit_body(&w, "first", 1, "ada"));
    assert_eq!(first.status, 201);
    let snap = w.w.post("/v1/groups/g/snapshots", &Json::Null);
    assert_eq!(snap.status, 201);
    let seq = snap.body["seq"].as_u64().unwrap();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    // (method, path with {g}, body maker, least role, success status)
    type Body<'a> = Box<dyn FnMut(&str) -> Option<Json> + 'a>;
    let mut endpoints: Vec<(&str, String, Body<'_>, Need, u16)> = vec![
        (
            "GET",
            "/v1/groups/{g}".into(),
            Box::new(|_| None),
            Need::Reader,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/head".into(),
            Box::new(|_| None),
            Need::Reader,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/commits".into(),
            Box::new(|_| None),
            Need::Reader,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/snapshots/latest".into(),
            Box::new(|_| None),
            Need::Reader,
            200,
        ),
        (
            "GET",
            format!("/v1/groups/{{g}}/snapshots/{seq}/data"),
            Box::new(|_| None),
            Need::Reader,
            206,
        ),
        (
            "POST",
            "/v1/groups/{g}/commits".into(),
            Box::new(|who| {
                let i = next();
                Some(commit_body(&w, &format!("{who}-{i}"), 1000 + i as i64, who))
            }),
            Need::Writer,
            201,
        ),
        (
            "POST",
            "/v1/groups/{g}/snapshots".into(),
            Box::new(|_| None),
            Need::Admin,
            201,
        ),
        (
            "GET",
            "/v1/groups/{g}/stats".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/members".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "PUT",
            "/v1/groups/{g}/members/zed".into(),
            Box::new(|_| Some(json!({"role": "reader"}))),
            Need::Admin,
            200,
        ),
        (
            "DELETE",
            "/v1/groups/{g}/members/zed".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/rules".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "PUT",
            "/v1/groups/{g}/projections/p1".into(),
            Box::new(|_| {
                Some(
                    json!({"table": "tasks", "columns": ["id", "owner"], "visibility": "owner = :caller"}),
                )
            }),
            Need::Admin,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/projections".into(),
            Box::new(|_| None),
            Need::Viewer,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/projections/p1".into(),
            Box::new(|_| None),
            Need::Viewer,
            200,
        ),
        (
            "DELETE",
            "/v1/groups/{g}/projections/p1".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "PUT",
            "/v1/groups/{g}/rules/tasks".into(),
            Box::new(|_| Some(json!({"expr": "1"}))),
            Need::Admin,
            200,
        ),
        (
            "DELETE",
            "/v1/groups/{g}/rules/tasks".into(),
            Box::new(|_| None),
            Need::Admin,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/migrations".into(),
            Box::new(|_| None),
            Need::Reader,
            200,
        ),
        (
            "POST",
            "/v1/groups/{g}/migrations".into(),
            Box::new(|who| {
                let name = format!("by_{}", who.replace('-', "_"));
                Some(json!({"ddl": format!("CREATE INDEX {name} ON tasks(owner)")}))
            }),
            Need::Admin,
            201,
        ),
        (
            "POST",
            "/v1/groups".into(),
            Box::new(|who| Some(json!({"group": format!("new-{who}"), "schema_sql": DDL}))),
            Need::Operator,
            201,
        ),
        (
            "GET",
            "/v1/groups".into(),
            Box::new(|_| None),
            Need::AnyIdentity,
            200,
        ),
    ];
    // The viewer of "other" holds the viewer role, but its grant does not
    // name p1: it may list projections, not read p1.
    let callers: Vec<(&str, Option<String>, Option<Need>)> = vec![
        ("no token", None, None),
        ("bad token", Some("not-a-token".into()), None),
        ("expired JWT", Some(w.expired.clone()), None),
        (
            "JWT for another audience",
            Some(w.wrong_audience.clone()),
            None,
        ),
        (
            "no role here (writer elsewhere)",
            Some(w.outsider.clone()),
            Some(Need::AnyIdentity),
        ),
        ("viewer", Some(w.viewer.clone()), Some(Need::Viewer)),
        (
            "viewer of other projections",
            Some(w.viewer_of_other.clone()),
            Some(Need::Viewer),
        ),
        ("reader", Some(w.reader.clone()), Some(Need::Reader)),
        ("writer", Some(w.writer.clone()), Some(Need::Writer)),
        ("admin", Some(w.admin.clone()), Some(Need::Admin)),
        ("operator", Some(TOKEN.into()), Some(Need::Operator)),
    ];
    for (method, path, body, need, ok) in endpoints.iter_mut() {
        for (who, token, has) in &callers {
            let p = path.replace("{g}", "g");
            let b = body(&who.replace(' ', "-").replace(['(', ')'], ""));
            let r = w.w.request(method, &p, token.as_deref(), b.as_ref());
            let what = format!("{method} {p} as {who}: {r:?}");
            match has {
                None => assert_eq!((r.status, r.code()), (401, "unauthorized"), "{what}"),
                Some(role) => {
                    let named_elsewhere =
                        *who == "viewer of other projections" && p.ends_with("/p1");
                    let allowed = *role == Need::Operator
                        || (*need != Need::Operator
                            && !named_elsewhere
                            && (*need == Need::AnyIdentity
                                || (*role != Need::AnyIdentity && *role >= *need)));
                    if allowed {
                        assert_eq!(r.status, *ok, "{what}");
                    } else {
                        assert_eq!((r.status, r.code()), (403, "unauthorized"), "{what}");
                    }
                }
            }
            // A caller with no role learns nothing about whether a group
            // exists: the same answer for a group that does not.
            if *has == Some(Need::AnyIdentity) && path.contains("{g}") {
                let q = path.replace("{g}", "zz-missing");
                let b = body("probe");
                let r2 = w.w.request(method, &q, token.as_deref(), b.as_ref());
                assert_eq!(r2.status, r.status, "{method} {q}: {r2:?} vs {r:?}");
                assert_eq!(
                    r2.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .replace("zz-missing", "g"),
                    r.body["error"]["message"].as_str().unwrap(),
                );
            }
        }
    }
    // The group list shows a caller only their groups.
    let r = w.w.request("GET", "/v1/groups", Some(&w.reader), None);
    assert_eq!(r.body["groups"], json!(["g"]));
    let r = w.w.request("GET", "/v1/groups", Some(&w.viewer), None);
    assert_eq!(r.body["groups"], json!(["g"]));
    // A viewer of named projections sees only those in the listing, and
    // the members list says what each grant names.
    let p = json!({"table": "tasks", "columns": ["id"]});
    for name in ["other", "p2"] {
        let r = w.w.request(
            "PUT",
            &format!("/v1/groups/g/projections/{name}"),
            Some(TOKEN),
            Some(&p),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = w.w.request(
        "GET",
        "/v1/groups/g/projections",
        Some(&w.viewer_of_other),
        None,
    );
    let names: Vec<&str> = r.body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other"], "{r:?}");
    let r = w.w.request(
        "GET",
        "/v1/groups/g/projections/other",
        Some(&w.viewer_of_other),
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let m = w.w.get("/v1/groups/g/members");
    let nina = m.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["identity"] == "nina")
        .unwrap();
    assert_eq!(nina["projections"], json!(["other"]), "{m:?}");
    // projections only go with the viewer role.
    let r = w.w.request(
        "PUT",
        "/v1/groups/g/members/zed",
        Some(TOKEN),
        Some(&json!({"role": "reader", "projections": ["p2"]})),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    let (ok, out) = w.w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn row_rules_are_checked_for_every_row_and_refusals_change_nothing() {
    let w = world("rules");
    let r = w.w.request(
        "PUT",
        "/v1/groups/g/rules/tasks",
        Some(&w.admin),
        Some(&json!({"expr": "CASE :op WHEN 'delete' THEN old.owner = :caller ELSE new.owner = :caller AND (old.owner IS NULL OR old.owner = :caller) END"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["version"].as_i64().unwrap() > 0);
    // Rules that are not read-only expressions are refused.
    for bad in [
        "1; DROP TABLE tasks",
        "(SELECT count(*) FROM pdb_log) > 0",
        "nope(",
    ] {
        let r = w.w.request(
            "PUT",
            "/v1/groups/g/rules/tasks",
            Some(&w.admin),
            Some(&json!({"expr": bad})),
        );
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}: {r:?}");
    }
    let ok = w.w.request(
        "POST",
        "/v1/groups/g/commits",
        Some(&w.writer),
        Some(&commit_body(&w, "k1", 1, "wendy")),
    );
    assert_eq!(ok.status, 201, "{ok:?}");
    let before = w.w.head("g");
    // One good row and one row for someone else: the whole commit is refused.
    let h = w.w.head("g");
    let cs = changeset(
        "tasks",
        &[1, 0, 0],
        vec![
            insert(vec![
                Value::Integer(2),
                Value::text("mine"),
                Value::text("wendy"),
            ]),
            insert(vec![
                Value::Integer(3),
                Value::text("theirs"),
                Value::text("ada"),
            ]),
        ],
    );
    let r = w.w.request(
        "POST",
        "/v1/groups/g/commits",
        Some(&w.writer),
        Some(&w.g.commit_body(h.seq, &h.head_hash, "k2", &cs, Policy::Strict)),
    );
    assert_eq!((r.status, r.code()), (403, "unauthorized"), "{r:?}");
    assert_eq!(r.body["error"]["table"], "tasks");
    assert_eq!(r.body["error"]["key"], json!([3]));
    assert_eq!(w.w.head("g").head_hash, before.head_hash, "nothing changed");
    // Through the extension: the row waits, held back and named (the
    // rest would sync), nothing is lost.
    let dir = TempDir::new("rules-dev");
    let d = Device::new(&dir.path().join("d.db"));
    d.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{}'))",
        w.w.url, w.writer
    ))
    .unwrap();
    d.exec("INSERT INTO tasks VALUES (10, 'for ada', 'ada')");
    let r = d.sync().unwrap();
    assert_eq!(r["pushed"], 0, "{r}");
    let st = d.call("pdb_status()").unwrap();
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["reason"]["code"], "unauthorized", "{st}");
    assert_eq!(st["reason"]["key"], json!([10]), "{st}");
    assert!(
        st["reason"]["message"]
            .as_str()
            .unwrap()
            .contains("write rule"),
        "{st}"
    );
    assert_eq!(st["pending_rows"], 1);
    assert_eq!(w.w.head("g").head_hash, before.head_hash);
    // The same device may write its own rows once the bad one is fixed,
    // with no hand-editing of pdb_ tables.
    d.exec("UPDATE tasks SET owner = 'wendy' WHERE id = 10");
    assert_eq!(d.sync().unwrap()["pushed"], 1);
    // Member changes are numbered and logged: five grants.
    let m =
        w.w.request("GET", "/v1/groups/g/members", Some(&w.admin), None);
    assert_eq!(m.body["version"], 5, "{m:?}");
    let r =
        w.w.request("GET", "/v1/groups/g/rules", Some(&w.admin), None);
    assert_eq!(r.body["rules"][0]["table"], "tasks", "{r:?}");
}

#[test]
fn roles_can_be_granted_and_revoked_from_the_command_line() {
    let dir = TempDir::new("grant-cli");
    let data = dir.path().join("data");
    let token = add_token(&data, "carl");
    let mut w = Witness::start(dir.path());
    w.create_group("g", DDL);
    assert_eq!(
        w.request("GET", "/v1/groups/g/head", Some(&token), None)
            .status,
        403
    );
    w.terminate();
    let cli = |args: &[&str]| {
        let out = Command::new(target_binary("pdb-witness"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&[
        "grant",
        "--group",
        "g",
        "--identity",
        "carl",
        "--role",
        "reader",
    ]);
    let mut w = Witness::start(dir.path());
    assert_eq!(
        w.request("GET", "/v1/groups/g/head", Some(&token), None)
            .status,
        200
    );
    w.terminate();
    cli(&["revoke", "--group", "g", "--identity", "carl"]);
    let w = Witness::start(dir.path());
    assert_eq!(
        w.request("GET", "/v1/groups/g/head", Some(&token), None)
            .status,
        403
    );
}

/// An update of row `id`'s (title, owner): the columns given new values,
/// stating their old ones.
fn update(id: i64, old: (&str, &str), new: (Option<&str>, Option<&str>)) -> pdb_protocol::Change {
    pdb_protocol::Change {
        op: pdb_protocol::Op::Update,
        indirect: false,
        old: vec![
            Some(Value::Integer(id)),
            new.0.map(|_| Value::text(old.0)),
            new.1.map(|_| Value::text(old.1)),
        ],
        new: vec![None, new.0.map(Value::text), new.1.map(Value::text)],
    }
}

fn delete(id: i64, title: &str, owner: &str) -> pdb_protocol::Change {
    pdb_protocol::Change {
        op: pdb_protocol::Op::Delete,
        indirect: false,
        old: vec![
            Some(Value::Integer(id)),
            Some(Value::text(title)),
            Some(Value::text(owner)),
        ],
        new: vec![],
    }
}

#[test]
fn per_operation_rules_protect_ownership() {
    let dir = TempDir::new("ownership");
    let data = dir.path().join("data");
    let alice = add_token(&data, "alice");
    let bob = add_token(&data, "bob");
    let w = Witness::start(dir.path());
    let g = w.create_group("g", DDL);
    for who in ["alice", "bob"] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/g/members/{who}"),
            Some(TOKEN),
            Some(&json!({"role": "writer"})),
        );
        assert_eq!(r.status, 200);
    }
    // The documented example: owners write their own rows, nobody takes
    // or changes another's, owners delete their own.
    let rule = json!({
        "insert": "new.owner = :caller",
        "update": "old.owner = :caller AND new.owner = :caller",
        "delete": "old.owner = :caller",
    });
    let r = w.request("PUT", "/v1/groups/g/rules/tasks", Some(TOKEN), Some(&rule));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["update"], rule["update"]);
    let listed = w.get("/v1/groups/g/rules");
    assert_eq!(
        listed.body["rules"][0]["delete"], rule["delete"],
        "{listed:?}"
    );
    let send = |token: &str, key: &str, c: pdb_protocol::Change| {
        let h = w.head("g");
        let cs = changeset("tasks", &[1, 0, 0], vec![c]);
        w.request(
            "POST",
            "/v1/groups/g/commits",
            Some(token),
            Some(&g.commit_body(h.seq, &h.head_hash, key, &cs, Policy::Strict)),
        )
    };
    let row = |id, title: &str, owner: &str| {
        insert(vec![
            Value::Integer(id),
            Value::text(title),
            Value::text(owner),
        ])
    };
    assert_eq!(send(&bob, "b1", row(1, "bob's", "bob")).status, 201);
    assert_eq!(send(&alice, "a1", row(2, "alice's", "alice")).status, 201);
    let before = w.head("g");
    let refused = |r: Reply, rule: &str| {
        assert_eq!((r.status, r.code()), (403, "unauthorized"), "{r:?}");
        assert_eq!(r.body["error"]["table"], "tasks");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(rule),
            "{r:?}"
        );
    };
    refused(send(&alice, "a2", row(3, "for bob", "bob")), "insert rule");
    refused(
        send(
            &alice,
            "a3",
            update(1, ("bob's", "bob"), (None, Some("alice"))),
        ),
        "update rule",
    );
    refused(
        send(
            &alice,
            "a4",
            update(1, ("bob's", "bob"), (Some("mine now"), None)),
        ),
        "update rule",
    );
    refused(send(&alice, "a5", delete(1, "bob's", "bob")), "delete rule");
    // Bob cannot give his row away either.
    refused(
        send(
            &bob,
            "b2",
            update(1, ("bob's", "bob"), (None, Some("alice"))),
        ),
        "update rule",
    );
    assert_eq!(w.head("g").head_hash, before.head_hash, "nothing changed");
    assert_eq!(
        send(
            &bob,
            "b3",
            update(1, ("bob's", "bob"), (Some("renamed"), None))
        )
        .status,
        201
    );
    assert_eq!(
        send(&alice, "a6", delete(2, "alice's", "alice")).status,
        201
    );
    // An operation without an expression is refused, saying so.
    let r = w.request(
        "PUT",
        "/v1/groups/g/rules/tasks",
        Some(TOKEN),
        Some(&json!({"insert": "new.owner = :caller"})),
    );
    assert_eq!(r.status, 200);
    let r = send(&bob, "b4", delete(1, "renamed", "bob"));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no delete rule"),
        "{r:?}"
    );
    // Both forms together are refused.
    let r = w.request(
        "PUT",
        "/v1/groups/g/rules/tasks",
        Some(TOKEN),
        Some(&json!({"expr": "1", "insert": "1"})),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    let (ok, out) = w.verify_cli();
    assert!(ok, "{out}");
}
