//! Identity providers: JWTs signed with RS256, ES256 and EdDSA keys from a
//! JWKS served on loopback, and HS256 with a configured secret, verified
//! by the witness; everything outside the rules refused; identities of
//! JWTs never taken for static tokens' identities.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pdb_e2e::*;
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const ISS: &str = "https://idp.test";
const AUD: &str = "personaldb";
const SECRET: &str = jwt::HS256_SECRET;

fn token(alg: Algorithm, claims: Json) -> String {
    jwt::token(alg, &claims)
}

fn kid(alg: Algorithm) -> String {
    jwt::kid(alg)
}

fn jwk(alg: Algorithm) -> Jwk {
    jwt::jwk(alg)
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    jwt::encoding_key(alg)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(jwt::fixture(name)).unwrap()
}

fn now() -> u64 {
    jwt::now_secs()
}

fn claims(sub: &str) -> Json {
    jwt::claims(sub, ISS, AUD)
}

/// A JWKS document served on loopback; `fetches` counts its requests.
struct Jwks {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
}

impl Jwks {
    fn start(keys: Vec<Jwk>) -> Jwks {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicU64::new(0));
        let j = Jwks {
            url,
            body: body.clone(),
            fetches: fetches.clone(),
        };
        j.set(keys);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                let b = body.lock().unwrap().clone();
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        });
        j
    }

    fn set(&self, keys: Vec<Jwk>) {
        *self.body.lock().unwrap() = serde_json::to_string(&JwkSet { keys }).unwrap();
    }
}

struct World {
    _dir: TempDir,
    w: Witness,
    jwks: Jwks,
}

fn world(label: &str) -> World {
    let dir = TempDir::new(label);
    let jwks = Jwks::start(vec![jwk(Algorithm::RS256), jwk(Algorithm::ES256)]);
    let static_alice = add_token(&dir.path().join("data"), "alice");
    let w = Witness::start_with(
        dir.path(),
        0,
        &[
            "--jwt-jwks-url",
            &jwks.url,
            "--jwt-hs256-secret",
            SECRET,
            "--jwt-issuer",
            ISS,
            "--jwt-audience",
            AUD,
        ],
    );
    w.create_group("g", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    for (who, role) in [("jwt:alice", "reader"), ("bob", "reader")] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/g/members/{who}"),
            Some(TOKEN),
            Some(&json!({"role": role})),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let _ = static_alice;
    World { _dir: dir, w, jwks }
}

fn head_as(w: &Witness, token: &str) -> Reply {
    w.request("GET", "/v1/groups/g/head", Some(token), None)
}

#[test]
fn tokens_of_each_algorithm_are_accepted_and_jwks_keys_are_refreshed() {
    let world = world("jwt-algs");
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256] {
        let r = head_as(&world.w, &token(alg, claims("alice")));
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
    }
    // EdDSA's key is not published yet: refused; once the provider
    // publishes it, the unknown kid makes the witness fetch the set again.
    let ed = token(Algorithm::EdDSA, claims("alice"));
    assert_eq!(head_as(&world.w, &ed).status, 401);
    world.jwks.set(vec![
        jwk(Algorithm::RS256),
        jwk(Algorithm::ES256),
        jwk(Algorithm::EdDSA),
    ]);
    let before = world.jwks.fetches.load(Ordering::SeqCst);
    let mut r = head_as(&world.w, &ed);
    for _ in 0..40 {
        // Refetches are rate-limited (a few seconds apart).
        if r.status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        r = head_as(&world.w, &ed);
    }
    assert_eq!(r.status, 200, "{r:?}");
    assert!(world.jwks.fetches.load(Ordering::SeqCst) > before);
}

#[test]
fn tokens_outside_the_rules_are_refused() {
    let world = world("jwt-refused");
    let b64 = |v: &Json| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = token(Algorithm::RS256, claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    // Key confusion: HS256 signed with the RSA public key as the secret.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(&fixture("rs256.pub.pem")),
    )
    .unwrap();
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some(kid(Algorithm::RS256));
    crit.crit = Some(vec!["exp".into()]);
    let with_crit =
        jsonwebtoken::encode(&crit, &claims("alice"), &encoding_key(Algorithm::RS256)).unwrap();
    let mut unknown_alg = Header::new(Algorithm::RS384);
    unknown_alg.kid = Some(kid(Algorithm::RS256));
    let rs384 = jsonwebtoken::encode(
        &unknown_alg,
        &claims("alice"),
        &encoding_key(Algorithm::RS256),
    )
    .unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
        ),
        ("key confusion", confused),
        ("crit header", with_crit),
        ("RS384", rs384),
        (
            "expired",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() - 3600}),
            ),
        ),
        (
            "not yet valid",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 7200, "nbf": now() + 3600}),
            ),
        ),
        (
            "exp as a string",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": (now() + 600).to_string()}),
            ),
        ),
        (
            "nbf as a string",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 600, "nbf": "0"}),
            ),
        ),
        (
            "no exp",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD}),
            ),
        ),
        (
            "exp at the edge",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": u64::MAX, "nbf": u64::MAX}),
            ),
        ),
        (
            "other issuer",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": "https://evil.test", "aud": AUD, "exp": now() + 600}),
            ),
        ),
        (
            "other audience",
            token(
                Algorithm::RS256,
                json!({"sub": "alice", "iss": ISS, "aud": "someone-else", "exp": now() + 600}),
            ),
        ),
        (
            "tampered claims",
            format!("{}.{}.{}", parts[0], b64(&claims("bob")), parts[2]),
        ),
    ];
    for (what, t) in cases {
        let r = head_as(&world.w, &t);
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{what}: {r:?}");
    }
    assert_eq!(head_as(&world.w, &good).status, 200);
}

#[test]
fn jwt_identities_never_collide_with_static_tokens() {
    let world = world("jwt-namespaces");
    // "bob" has a role as a static-token identity; a JWT whose sub is
    // "bob" is "jwt:bob", a different caller with no role.
    let r = head_as(&world.w, &token(Algorithm::RS256, claims("bob")));
    assert_eq!((r.status, r.code()), (403, "unauthorized"), "{r:?}");
    // A static token cannot be made for an identity with ':' in it.
    let out = Command::new(target_binary("pdb-witness"))
        .arg("--data-dir")
        .arg(&world.w.data_dir)
        .args(["add-token", "--identity", "jwt:alice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn weak_or_ambiguous_jwt_settings_stop_the_witness_at_start() {
    for (what, args) in [
        ("empty secret", vec!["--jwt-hs256-secret", ""]),
        (
            "short secret",
            vec!["--jwt-hs256-secret", "0123456789abcdef0123456789abcde"],
        ),
        (
            "http JWKS elsewhere",
            vec!["--jwt-jwks-url", "http://idp.example/jwks.json"],
        ),
        (
            "bad prefix",
            vec!["--jwt-hs256-secret", SECRET, "--jwt-identity-prefix", "A:B"],
        ),
    ] {
        let dir = TempDir::new("jwt-start");
        let out = Command::new(target_binary("pdb-witness"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env("PDB_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("JWT")
                || String::from_utf8_lossy(&out.stderr).contains("jwt"),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_device_replaces_a_short_lived_token_without_reopening() {
    let world = world("jwt-device");
    let r = world.w.request(
        "PUT",
        "/v1/groups/g/members/jwt:carol",
        Some(TOKEN),
        Some(&json!({"role": "writer"})),
    );
    assert_eq!(r.status, 200);
    let dir = TempDir::new("jwt-device-db");
    let d = Device::new(&dir.path().join("d.db"));
    let carol = token(Algorithm::ES256, claims("carol"));
    d.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{carol}', 'store_token', json('false')))",
        world.w.url
    ))
    .unwrap();
    // The token is not in the database file.
    let stored: i64 = d
        .conn
        .query_row(
            "SELECT count(*) FROM pdb_state WHERE k = 'token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 0);
    d.exec("INSERT INTO t VALUES (1, 'one')");
    assert_eq!(d.sync().unwrap()["pushed"], 1);
    // A token for someone without the role: refused; a fresh one for
    // carol: sync goes on, with nothing reopened.
    d.call(&format!(
        "pdb_set_token('{}')",
        token(Algorithm::ES256, claims("mallory"))
    ))
    .unwrap();
    d.exec("INSERT INTO t VALUES (2, 'two')");
    assert!(d.sync().unwrap_err().contains("unauthorized"));
    d.call(&format!(
        "pdb_set_token('{}')",
        token(Algorithm::RS256, claims("carol"))
    ))
    .unwrap();
    assert_eq!(d.sync().unwrap()["pushed"], 1);
    // Another connection of this process to the same file uses it too.
    let again = Device::new(&d.path);
    again.exec("INSERT INTO t VALUES (3, 'three')");
    assert_eq!(again.sync().unwrap()["pushed"], 1);
}
