//! The `pdb-witness` command line: `serve` is the default command, with
//! every flag default and environment variable honoured.

use base64::Engine;
use hmac::{Hmac, Mac};
use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::json;
use std::process::Command;

const SECRET: &str = "a-long-enough-hs256-secret-for-the-tests-0123";

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn jwt(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64url(json!({"sub": sub, "exp": exp}).to_string().as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64url(&mac.finalize().into_bytes()))
}

#[test]
fn with_no_command_the_witness_serves_with_every_default_and_environment_variable() {
    let dir = TempDir::new("default-serve");
    let mut cmd = Command::new(target_binary("pdb-witness"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PDB_LISTEN", "127.0.0.1:0")
        .env("PDB_ADMIN_TOKEN", TOKEN)
        .env("PDB_SNAPSHOT_EVERY_COMMITS", "2")
        .env("PDB_JWT_HS256_SECRET", SECRET);
    let w = Witness::launch(dir.path(), cmd);

    // The admin token from the environment; the default body limit (8 MiB,
    // not a kilobyte): a 64 KiB schema body is accepted.
    let padding = format!("-- {}\n", "x".repeat(64 * 1024));
    let r = w.post(
        "/v1/groups",
        &json!({"group": "g", "schema_sql": format!("{padding}CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let g = GroupRef::from_json(&r.body);

    // The JWT secret from the environment.
    let r = w.request(
        "PUT",
        "/v1/groups/g/members/jwt:alice",
        Some(TOKEN),
        Some(&json!({"role": "reader"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.request("GET", "/v1/groups/g/head", Some(&jwt("alice")), None);
    assert_eq!(
        r.status, 200,
        "a JWT signed with the configured secret: {r:?}"
    );

    // The snapshot policy from the environment: one after two commits.
    for i in 1..=2 {
        let cs = changeset(
            "t",
            &[1, 0],
            vec![insert(vec![Value::Integer(i), Value::text("v")])],
        );
        let r = w.commit_at_head(&g, &format!("k{i}"), &cs, Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut latest = w.get("/v1/groups/g/snapshots/latest");
    for _ in 0..100 {
        if latest.status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        latest = w.get("/v1/groups/g/snapshots/latest");
    }
    assert_eq!(
        latest.status, 200,
        "no snapshot after 2 commits: {latest:?}"
    );
    assert_eq!(latest.body["seq"], 2);
}

#[test]
fn verify_and_public_key_never_create_a_signing_key() {
    let dir = TempDir::new("no-key");
    for args in [&["verify"][..], &["public-key"][..]] {
        let out = Command::new(target_binary("pdb-witness"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{args:?} succeeded on an empty directory"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("witness.key"), "{args:?}: {err}");
    }
    assert!(!dir.path().join("witness.key").exists());
}
