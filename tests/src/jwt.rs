//! JWTs for tests and the benchmark, signed with the fixture keys in
//! `tests/fixtures/jwt` (RS256, ES256, EdDSA) or an HS256 secret.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const HS256_SECRET: &str = "an-hs256-secret-that-is-long-enough-0123456789";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("JWT fixture")
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rs256.key.pem")).expect("RSA key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("es256.key.pem")).expect("EC key"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("eddsa.key.pem")).expect("Ed25519 key"),
        _ => EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    }
}

/// The public PEM file of an algorithm's fixture key.
pub fn public_pem(alg: Algorithm) -> PathBuf {
    fixture(match alg {
        Algorithm::RS256 => "rs256.pub.pem",
        Algorithm::ES256 => "es256.pub.pem",
        _ => "eddsa.pub.pem",
    })
}

pub fn kid(alg: Algorithm) -> String {
    format!("key-{alg:?}").to_lowercase()
}

/// The public JWK of an algorithm's fixture key, with its `kid`.
pub fn jwk(alg: Algorithm) -> Jwk {
    let mut j = Jwk::from_encoding_key(&encoding_key(alg), alg).expect("JWK");
    j.common.key_id = Some(kid(alg));
    j
}

pub fn now_secs() -> u64 {
    pdb_protocol::now_ms() / 1000
}

/// A token with these claims, signed with the algorithm's fixture key (its
/// `kid` in the header).
pub fn token(alg: Algorithm, claims: &Json) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid(alg));
    jsonwebtoken::encode(&h, claims, &encoding_key(alg)).expect("sign JWT")
}

/// Claims for `sub`, valid for ten minutes.
pub fn claims(sub: &str, iss: &str, aud: &str) -> Json {
    json!({"sub": sub, "iss": iss, "aud": aud, "exp": now_secs() + 600})
}

/// A JWKS endpoint on loopback that can be made to hold requests: a held
/// one is parked unanswered until the test lets it go.
pub struct Jwks {
    pub url: String,
    /// What it serves (a JWKS).
    pub body: Arc<Mutex<String>>,
    pub hold: Arc<AtomicBool>,
    pub held: Arc<Mutex<Vec<TcpStream>>>,
    /// Requests received.
    pub fetches: Arc<AtomicU64>,
}

impl Jwks {
    /// Serves the RS256 fixture key.
    pub fn start() -> Jwks {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = serde_json::to_string(&JwkSet {
            keys: vec![jwk(Algorithm::RS256)],
        })
        .unwrap();
        let body = Arc::new(Mutex::new(body));
        let (hold, held, fetches) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicU64::new(0)),
        );
        let j = Jwks {
            url,
            body: body.clone(),
            hold: hold.clone(),
            held: held.clone(),
            fetches: fetches.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                if hold.load(Ordering::SeqCst) {
                    held.lock().unwrap().push(stream);
                    continue;
                }
                let mut s = stream;
                let body = body.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        j
    }

    /// Whether a held request's client (the witness) still waits on it.
    pub fn held_fetch_still_waiting(&self) -> bool {
        let held = self.held.lock().unwrap();
        let Some(s) = held.first() else { return false };
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let open = matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        open
    }

    /// Answers the held requests and holds no more.
    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        let body = self.body.lock().unwrap().clone();
        for mut s in self.held.lock().unwrap().drain(..) {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        }
    }
}
