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
    for (group, who, role) in [
        ("g", "rita", "reader"),
        ("g", "wendy", "writer"),
        ("g", "ada", "admin"),
        ("h", "otto", "writer"),
    ] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/{group}/members/{who}"),
            Some(TOKEN),
            Some(&json!({"role": role})),
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
            Need::Reader,
            200,
        ),
        (
            "GET",
            "/v1/groups/{g}/projections/p1".into(),
            Box::new(|_| None),
            Need::Reader,
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
                    let allowed = *role == Need::Operator
                        || (*need != Need::Operator
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
    // Through the extension: the error says so, sync stops, nothing is lost.
    let dir = TempDir::new("rules-dev");
    let d = Device::new(&dir.path().join("d.db"));
    d.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{}'))",
        w.w.url, w.writer
    ))
    .unwrap();
    d.exec("INSERT INTO tasks VALUES (10, 'for ada', 'ada')");
    let err = d.sync().unwrap_err();
    assert!(
        err.contains("unauthorized") && err.contains("sync stopped"),
        "{err}"
    );
    let st = d.call("pdb_status()").unwrap();
    assert!(
        st["last_error"].as_str().unwrap().contains("write rule"),
        "{st}"
    );
    assert_eq!(st["pending_rows"], 1);
    assert_eq!(w.w.head("g").head_hash, before.head_hash);
    // The same device may write its own rows once the bad one is fixed.
    d.exec("UPDATE tasks SET owner = 'wendy' WHERE id = 10");
    d.exec("DELETE FROM pdb_outbox");
    assert_eq!(d.sync().unwrap()["pushed"], 1);
    // Access changes are versioned and logged: three grants, one rule.
    let m =
        w.w.request("GET", "/v1/groups/g/members", Some(&w.admin), None);
    assert_eq!(m.body["version"], 4, "{m:?}");
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
