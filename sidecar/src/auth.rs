//! Who is calling: bearer tokens to identities, and identities to roles.
//!
//! Deny by default. A bearer token is one of: the admin token (the
//! operator: may create groups and act on every group), a static token from
//! the tokens file (stored as SHA-256 only), or a JWT from the app's own
//! auth server (HS256 or EdDSA, with expiry and audience checked; `sub` is
//! the identity). Within a group, an identity has at most one role.

use crate::error::ApiError;
use crate::keys;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader = 1,
    Writer = 2,
    Admin = 3,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// The operator's identity. It has a space, which no token or JWT identity
/// may have (`valid_identity`), so nobody can take it on with a JWT whose
/// `sub` is, say, "admin".
pub const OPERATOR: &str = "operator (admin token)";

#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: String,
    /// The admin token's holder: every group, every role.
    pub operator: bool,
}

/// Identities: 1–256 printable ASCII characters, no spaces.
pub fn valid_identity(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Default)]
pub struct JwtConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub eddsa_key: Option<VerifyingKey>,
    pub audience: Option<String>,
}

#[derive(Default)]
pub struct Authenticator {
    pub admin_hash: [u8; 32],
    /// SHA-256 of each static token → identity.
    pub tokens: HashMap<[u8; 32], String>,
    pub jwt: JwtConfig,
}

fn unauthorized(m: &str) -> ApiError {
    ApiError::Unauthorized(m.to_string())
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

impl Authenticator {
    /// The caller behind an `Authorization` header value.
    pub fn caller(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let header = header.ok_or_else(|| unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("Authorization must be 'Bearer <token>'"))?;
        let hash = keys::token_hash(token);
        if keys::digest_eq(&hash, &self.admin_hash) {
            return Ok(Caller {
                identity: OPERATOR.into(),
                operator: true,
            });
        }
        if let Some(id) = self.tokens.get(&hash) {
            return Ok(Caller {
                identity: id.clone(),
                operator: false,
            });
        }
        if token.matches('.').count() == 2 {
            return self.jwt(token);
        }
        Err(unauthorized("invalid token"))
    }

    fn jwt(&self, token: &str) -> Result<Caller, ApiError> {
        let bad = || unauthorized("invalid token");
        let mut parts = token.split('.');
        let (h, p, s) = match (parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s)) => (h, p, s),
            _ => return Err(bad()),
        };
        let header: serde_json::Value = b64url(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(bad)?;
        let sig = b64url(s).ok_or_else(bad)?;
        let signed = format!("{h}.{p}");
        match header["alg"].as_str() {
            Some("HS256") => {
                let secret = self.jwt.hs256_secret.as_ref().ok_or_else(bad)?;
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| bad())?;
                mac.update(signed.as_bytes());
                mac.verify_slice(&sig).map_err(|_| bad())?;
            }
            Some("EdDSA") => {
                let key = self.jwt.eddsa_key.as_ref().ok_or_else(bad)?;
                let sig: [u8; 64] = sig.try_into().map_err(|_| bad())?;
                key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&sig))
                    .map_err(|_| bad())?;
            }
            _ => return Err(bad()),
        }
        let claims: serde_json::Value = b64url(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(bad)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        const LEEWAY: i64 = 30;
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| unauthorized("token has no expiry"))?;
        if exp + LEEWAY < now {
            return Err(unauthorized("token expired"));
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf - LEEWAY > now) {
            return Err(unauthorized("token not yet valid"));
        }
        if let Some(want) = &self.jwt.audience {
            let ok = match &claims["aud"] {
                serde_json::Value::String(a) => a == want,
                serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(unauthorized("token is for another audience"));
            }
        }
        let sub = claims["sub"]
            .as_str()
            .filter(|s| valid_identity(s))
            .ok_or_else(bad)?;
        Ok(Caller {
            identity: sub.to_string(),
            operator: false,
        })
    }
}
