//! JWTs for tests and the benchmark, signed with the fixture keys in
//! `tests/fixtures/jwt` (RS256, ES256, EdDSA) or an HS256 secret.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

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
