//! Every rejection the commit endpoint can give, against a real witness,
//! each with proof that nothing changed: same head, same log.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::{Change, Op, Value};
use serde_json::{json, Value as Json};

const DDL: &str = "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER);
                   CREATE TABLE tags(task INTEGER, tag TEXT, PRIMARY KEY(task, tag)) WITHOUT ROWID;";

fn task(id: i64, title: &str) -> Vec<u8> {
    changeset(
        "tasks",
        &[1, 0, 0],
        vec![insert(vec![
            Value::Integer(id),
            Value::text(title),
            Value::Integer(0),
        ])],
    )
}

struct Fixture {
    _dir: TempDir,
    w: Witness,
    g: GroupRef,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new("rejections");
        let w = Witness::start(dir.path());
        let g = w.create_group("tasks", DDL);
        let f = Fixture { _dir: dir, w, g };
        let r = f.commit_at_head("first", &task(1, "one"));
        assert_eq!(r.status, 201, "{r:?}");
        f
    }

    fn path(&self) -> String {
        format!("/v1/groups/{}/commits", self.g.group)
    }

    fn commit_at_head(&self, key: &str, cs: &[u8]) -> Reply {
        self.w.commit_at_head(&self.g, key, cs, Policy::Strict)
    }

    /// Head and log length, to prove a rejection changed nothing.
    fn state(&self) -> (u64, String, usize) {
        let h = self.w.head(&self.g.group);
        (h.seq, h.head_hash, self.w.all_commits(&self.g.group).len())
    }

    fn expect_rejected(
        &self,
        reply: Reply,
        status: u16,
        code: &str,
        before: &(u64, String, usize),
    ) -> Json {
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.code(), code, "{reply:?}");
        assert!(
            !reply.body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "a human message: {reply:?}"
        );
        assert_eq!(&self.state(), before, "rejection {code} changed the group");
        reply.body["error"].clone()
    }
}

#[test]
fn unauthorized_without_or_with_a_wrong_token() {
    let f = Fixture::new();
    let before = f.state();
    let h = f.w.head("tasks");
    let body =
        f.g.commit_body(h.seq, &h.head_hash, "k2", &task(2, "two"), Policy::Strict);
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some("test-admin-token-0123456789x"),
    ] {
        let r = f.w.request("POST", &f.path(), token, Some(&body));
        f.expect_rejected(r, 401, "unauthorized", &before);
    }
    for path in [
        "/v1/groups/tasks/head",
        "/v1/groups/tasks/commits",
        "/v1/groups/tasks",
        "/v1/groups",
    ] {
        let r = f.w.request("GET", path, Some("wrong"), None);
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{path}: {r:?}");
    }
    // The public key needs no token.
    assert_eq!(f.w.request("GET", "/v1/witness", None, None).status, 200);
}

#[test]
fn schema_mismatch_returns_the_expected_schema() {
    let f = Fixture::new();
    let before = f.state();
    let h = f.w.head("tasks");
    let mut body =
        f.g.commit_body(h.seq, &h.head_hash, "k2", &task(2, "two"), Policy::Strict);
    body["schema_version"] = json!(2);
    let e = f.expect_rejected(f.w.post(&f.path(), &body), 409, "schema_mismatch", &before);
    assert_eq!(e["expected_schema"]["version"], 1);
    assert_eq!(e["expected_schema"]["hash"], json!(f.g.schema_hash));
    // The schema as structured data, never as SQL text.
    assert!(e["expected_schema"].get("sql").is_none(), "{e}");
    assert!(e["expected_schema"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "tasks"));
    let mut body =
        f.g.commit_body(h.seq, &h.head_hash, "k2", &task(2, "two"), Policy::Strict);
    body["schema_hash"] = json!("00".repeat(32));
    f.expect_rejected(f.w.post(&f.path(), &body), 409, "schema_mismatch", &before);
}

#[test]
fn idempotency_conflict_when_a_key_is_reused_for_other_content() {
    let f = Fixture::new();
    let before = f.state();
    let r = f.commit_at_head("first", &task(2, "different"));
    let e = f.expect_rejected(r, 409, "idempotency_conflict", &before);
    assert!(e["message"].as_str().unwrap().contains("first"));
}

#[test]
fn stale_head_returns_the_current_signed_head() {
    let f = Fixture::new();
    let genesis = f.w.all_commits("tasks")[0]["certificate"]["prev_head"]
        .as_str()
        .unwrap()
        .to_string();
    let before = f.state();
    let body =
        f.g.commit_body(0, &genesis, "k2", &task(2, "two"), Policy::Strict);
    let e = f.expect_rejected(f.w.post(&f.path(), &body), 409, "stale_head", &before);
    let head: pdb_protocol::wire::HeadJson = serde_json::from_value(e["head"].clone()).unwrap();
    verify_head(&head, &f.w.public_key);
    assert_eq!(
        (head.seq, head.head_hash.clone()),
        (before.0, before.1.clone())
    );
    // A base that is not in the group's history at all (another hash, or
    // past the head) is unknown_head: rebasing cannot help.
    let body =
        f.g.commit_body(1, &"ab".repeat(32), "k3", &task(3, "x"), Policy::Strict);
    f.expect_rejected(f.w.post(&f.path(), &body), 409, "unknown_head", &before);
    let body =
        f.g.commit_body(99, &before.1, "k4", &task(4, "x"), Policy::Strict);
    f.expect_rejected(f.w.post(&f.path(), &body), 409, "unknown_head", &before);
}

#[test]
fn changeset_conflict_names_table_and_key() {
    let f = Fixture::new();
    let before = f.state();
    // Insert of an existing key.
    let e = f.expect_rejected(
        f.commit_at_head("dup", &task(1, "again")),
        409,
        "changeset_conflict",
        &before,
    );
    assert_eq!(e["table"], "tasks");
    assert_eq!(e["key"], json!([1]));
    // Update whose old value is not the current one.
    let upd = changeset(
        "tasks",
        &[1, 0, 0],
        vec![Change {
            op: Op::Update,
            indirect: false,
            old: vec![Some(Value::Integer(1)), Some(Value::text("not one")), None],
            new: vec![None, Some(Value::text("new")), None],
        }],
    );
    let e = f.expect_rejected(
        f.commit_at_head("upd", &upd),
        409,
        "changeset_conflict",
        &before,
    );
    assert_eq!(
        (e["table"].clone(), e["key"].clone()),
        (json!("tasks"), json!([1]))
    );
    // Delete of a missing row.
    let del = changeset(
        "tasks",
        &[1, 0, 0],
        vec![Change {
            op: Op::Delete,
            indirect: false,
            old: vec![
                Some(Value::Integer(7)),
                Some(Value::text("x")),
                Some(Value::Null),
            ],
            new: vec![],
        }],
    );
    let e = f.expect_rejected(
        f.commit_at_head("del", &del),
        409,
        "changeset_conflict",
        &before,
    );
    assert_eq!(e["key"], json!([7]));
    // A constraint (NOT NULL) violation, in a multi-row changeset whose
    // first row is fine: the whole commit is refused.
    let cs = changeset(
        "tasks",
        &[1, 0, 0],
        vec![
            insert(vec![Value::Integer(10), Value::text("ok"), Value::Null]),
            insert(vec![Value::Integer(11), Value::Null, Value::Null]),
        ],
    );
    f.expect_rejected(
        f.commit_at_head("nn", &cs),
        409,
        "changeset_conflict",
        &before,
    );
}

#[test]
fn malformed_changesets_are_invalid_and_change_nothing() {
    let f = Fixture::new();
    let before = f.state();
    let good = task(2, "two");
    let mut wrong_cols = vec![b'T', 2, 1, 0];
    wrong_cols.extend_from_slice(b"tasks\0");
    wrong_cols.extend_from_slice(&[18, 0]);
    Value::Integer(5).encode(&mut wrong_cols);
    Value::Null.encode(&mut wrong_cols);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() - 3].to_vec()),
        ("wrong column count", wrong_cols),
        (
            "unknown table",
            changeset(
                "nope",
                &[1, 0, 0],
                vec![insert(vec![Value::Integer(1), Value::Null, Value::Null])],
            ),
        ),
        (
            "wrong primary key shape",
            changeset(
                "tasks",
                &[0, 1, 0],
                vec![insert(vec![
                    Value::Integer(3),
                    Value::text("t"),
                    Value::Null,
                ])],
            ),
        ),
        ("garbage", b"this is not a changeset at all".to_vec()),
        ("empty", vec![]),
        ("patchset", vec![b'P', 3, 1, 0, 0, b't', 0]),
        (
            "null key",
            changeset(
                "tasks",
                &[1, 0, 0],
                vec![insert(vec![Value::Null, Value::text("t"), Value::Null])],
            ),
        ),
    ];
    for (i, (what, cs)) in cases.into_iter().enumerate() {
        let r = f.commit_at_head(&format!("bad-{i}"), &cs);
        let e = f.expect_rejected(r, 422, "invalid_changeset", &before);
        assert!(!e["retryable"].as_bool().unwrap(), "{what}");
    }
    // The right table name in any case is the same table.
    let r = f.commit_at_head(
        "case",
        &changeset(
            "TASKS",
            &[1, 0, 0],
            vec![insert(vec![
                Value::Integer(3),
                Value::text("t"),
                Value::Null,
            ])],
        ),
    );
    assert_eq!(r.status, 201, "{r:?}");
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let f = Fixture::new();
    let before = f.state();
    let h = f.w.head("tasks");
    let good =
        f.g.commit_body(h.seq, &h.head_hash, "k", &task(2, "two"), Policy::Strict);
    let mut cases: Vec<(Json, &str)> = Vec::new();
    let mut b = good.clone();
    b["extra"] = json!(1);
    cases.push((b, "unknown field"));
    let mut b = good.clone();
    b["changeset"] = json!("%%% not base64");
    cases.push((b, "base64"));
    let mut b = good.clone();
    b["idempotency_key"] = json!("../../etc/passwd");
    cases.push((b, "idempotency_key"));
    let mut b = good.clone();
    b["idempotency_key"] = json!("k".repeat(129));
    cases.push((b, "idempotency_key"));
    let mut b = good.clone();
    b["base"]["hash"] = json!("zz");
    cases.push((b, "base.hash"));
    cases.push((json!("just a string"), "JSON"));
    cases.push((json!({}), "JSON"));
    for (body, says) in cases {
        let r = f.w.post(&f.path(), &body);
        let e = f.expect_rejected(r, 400, "bad_request", &before);
        assert!(
            e["message"].as_str().unwrap().contains(says),
            "{e} should mention {says}"
        );
    }
    // Raw garbage bytes and an oversized body.
    let agent = agent();
    let mut r = agent
        .post(format!("{}{}", f.w.url, f.path()))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send(&b"\xff\xfe{{{"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Json = r.body_mut().read_json().unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let huge = vec![b'a'; 9 * 1024 * 1024];
    let r = agent
        .post(format!("{}{}", f.w.url, f.path()))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send(&huge[..]);
    match r {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        // The witness may close the connection before reading it all.
        Err(e) => assert!(matches!(e, ureq::Error::Io(_)), "{e}"),
    }
    // Hostile group ids and paths.
    for path in [
        "/v1/groups/..%2f..%2fetc/commits",
        "/v1/groups/nope/head",
        "/v1/groups/TASKS/head",
        "/v2/x",
    ] {
        let r = f.w.get(path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    let r = f.w.post(
        "/v1/groups",
        &json!({"group": "../evil", "schema_sql": DDL}),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    let r =
        f.w.post("/v1/groups", &json!({"group": "tasks", "schema_sql": DDL}));
    assert_eq!((r.status, r.code()), (409, "group_exists"));
    let r = f.w.post(
        "/v1/groups",
        &json!({"group": "evil", "schema_sql": "ATTACH '/tmp/x' AS x"}),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    assert_eq!(f.state(), before);
    let (ok, out) = f.w.verify_cli();
    assert!(ok, "{out}");
}
