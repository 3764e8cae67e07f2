//! JWTs from the app's identity providers, verified with `jsonwebtoken`.
//!
//! Each configured issuer names how its tokens are checked: an HS256
//! secret (at least 32 bytes), static public keys (RS256, ES256, EdDSA),
//! or a JWKS URL (fetched, cached, refreshed on an unknown `kid` and when
//! old); the `iss` and `aud` it requires; and the prefix its identities
//! take (`<prefix>:<sub>`), so identities of different issuers never
//! collide with each other or with static tokens (whose identities have
//! no `:`) unless the operator configures an empty prefix.
//!
//! A token's header names the algorithm; it must be one of HS256, RS256,
//! ES256, EdDSA and the very algorithm of the key that verifies it (no key
//! confusion, no `none`). `crit` headers are refused. `exp` is required and
//! `exp`/`nbf` must be numbers.

use crate::error::ApiError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::{Duration, Instant};

pub const MIN_SECRET_BYTES: usize = 32;
/// Clock leeway for `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// A JWKS is fetched again when older than this...
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// ... or on an unknown `kid`, but not more often than this.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(2);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BYTES: u64 = 1024 * 1024;

/// One identity provider, as the operator configures it (the `--jwt-*`
/// flags make one; `--jwt-config` a list).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// A name for logs and errors.
    #[serde(default)]
    pub name: String,
    /// Identities are `<prefix>:<sub>`; an empty prefix makes them the bare
    /// `sub` (which may then collide with static tokens' identities).
    pub identity_prefix: String,
    /// The `iss` tokens must carry (required when several issuers exist).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` tokens must carry.
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// PEM public keys (RSA, EC P-256 or Ed25519).
    #[serde(default)]
    pub public_keys_pem: Vec<String>,
    /// Ed25519 public keys as 64 hex digits.
    #[serde(default)]
    pub eddsa_keys_hex: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
    kid: Option<String>,
}

struct JwksCache {
    keys: Vec<Key>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
    /// Fetches finished (or failed): a caller that waited for one under
    /// way uses its result instead of starting another.
    attempts: u64,
}

struct Issuer {
    name: String,
    prefix: String,
    issuer: Option<String>,
    audience: Option<String>,
    keys: Vec<Key>,
    jwks_url: Option<String>,
    /// The fetched keys; locked only to read or replace them, never
    /// while a fetch runs.
    jwks: std::sync::Mutex<JwksCache>,
    /// Held by the one request fetching the JWKS: others that need a key
    /// the cache lacks wait for it; those the cache serves never do.
    refresh: tokio::sync::Mutex<()>,
}

/// The configured issuers.
#[derive(Default)]
pub struct Jwt {
    issuers: Vec<Issuer>,
}

fn refused(m: &str) -> ApiError {
    ApiError::Unauthorized(m.to_string())
}

fn valid_prefix(p: &str) -> bool {
    p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `url` may be fetched: https, or http to a loopback address.
pub fn allowed_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Jwt {
    /// Checks and loads the configuration; refuses weak or ambiguous
    /// settings at start.
    pub fn new(configs: Vec<IssuerConfig>) -> Result<Jwt, String> {
        let mut issuers = Vec::new();
        let mut prefixes = std::collections::HashSet::new();
        let several = configs.len() > 1;
        for (i, c) in configs.into_iter().enumerate() {
            let name = if c.name.is_empty() {
                format!("issuer {}", i + 1)
            } else {
                c.name.clone()
            };
            let bad = |m: String| format!("JWT {name}: {m}");
            if !valid_prefix(&c.identity_prefix) {
                return Err(bad("identity_prefix is 0-32 of a-z 0-9 _ -".into()));
            }
            if !prefixes.insert(c.identity_prefix.clone()) {
                return Err(bad(format!(
                    "identity prefix {:?} is used by another issuer; their identities would collide",
                    c.identity_prefix
                )));
            }
            if several && c.issuer.is_none() {
                return Err(bad("with several issuers, each needs its `issuer`".into()));
            }
            let mut keys = Vec::new();
            if let Some(secret) = &c.hs256_secret {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(bad(format!(
                        "an HS256 secret must be at least {MIN_SECRET_BYTES} bytes"
                    )));
                }
                keys.push(Key {
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    kid: None,
                });
            }
            for pem in &c.public_keys_pem {
                keys.push(pem_key(pem.as_bytes()).map_err(bad)?);
            }
            for hex in &c.eddsa_keys_hex {
                let raw = pdb_protocol::unhex32(hex)
                    .filter(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_ok())
                    .ok_or_else(|| {
                        bad("an EdDSA key is 64 hex digits of an Ed25519 public key".into())
                    })?;
                keys.push(Key {
                    alg: Algorithm::EdDSA,
                    key: DecodingKey::from_ed_der(&raw),
                    kid: None,
                });
            }
            if let Some(url) = &c.jwks_url {
                if !allowed_url(url) {
                    return Err(bad(format!(
                        "jwks_url {url:?} must be https:// (or http:// to a loopback address)"
                    )));
                }
            }
            if keys.is_empty() && c.jwks_url.is_none() {
                return Err(bad(
                    "needs an HS256 secret, public keys or a jwks_url".into()
                ));
            }
            issuers.push(Issuer {
                name,
                prefix: c.identity_prefix,
                issuer: c.issuer,
                audience: c.audience,
                keys,
                jwks_url: c.jwks_url,
                jwks: std::sync::Mutex::new(JwksCache {
                    keys: Vec::new(),
                    fetched: None,
                    tried: None,
                    attempts: 0,
                }),
                refresh: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Jwt { issuers })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The identity a JWT stands for (`<prefix>:<sub>`, not yet checked as
    /// an identity), or why it is refused.
    pub async fn identity(&self, token: &str) -> Result<String, ApiError> {
        let invalid = || refused("invalid token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.crit.is_some() {
            return Err(refused(
                "tokens with critical header parameters are refused",
            ));
        }
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(refused("token algorithm is not accepted"));
        }
        let issuer = self.issuer_of(token).ok_or_else(invalid)?;
        let claims = issuer
            .verify(token, header.alg, header.kid.as_deref())
            .await?;
        let sub = claims.sub.filter(|s| !s.is_empty()).ok_or_else(invalid)?;
        Ok(if issuer.prefix.is_empty() {
            sub
        } else {
            format!("{}:{sub}", issuer.prefix)
        })
    }

    /// The issuer a token claims (by its unverified `iss`; the signature
    /// and the claim are checked against that issuer's settings after).
    fn issuer_of(&self, token: &str) -> Option<&Issuer> {
        if self.issuers.len() == 1 {
            return self.issuers.first();
        }
        use base64::Engine;
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let iss = serde_json::from_slice::<Iss>(&bytes).ok()?.iss?;
        self.issuers
            .iter()
            .find(|i| i.issuer.as_deref() == Some(iss.as_str()))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

impl Issuer {
    async fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let check = |key: &DecodingKey| {
            jsonwebtoken::decode::<Claims>(token, key, &validation).map(|d| d.claims)
        };
        // Static keys of the token's algorithm (and kid, when both name one).
        let mut last = None;
        for k in self
            .keys
            .iter()
            .filter(|k| k.alg == alg && kid_fits(k, kid))
        {
            match check(&k.key) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        if self.jwks_url.is_some() && alg != Algorithm::HS256 {
            for k in self.jwks_keys(alg, kid).await? {
                match check(&k) {
                    Ok(c) => return Ok(c),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(match last {
            None => refused("no key of this issuer verifies the token"),
            Some(e) => reason(&self.name, e),
        })
    }

    /// JWKS keys that fit the token; fetches the set when it is old or
    /// the `kid` is unknown (rate-limited, one fetch at a time). A token
    /// the cached keys serve never waits for a fetch, so tokens with
    /// made-up `kid`s cannot hold other callers up while the identity
    /// provider is slow.
    async fn jwks_keys(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<DecodingKey>, ApiError> {
        let (found, stale, _) = self.cached(alg, kid);
        if !found.is_empty() && !stale {
            return Ok(found);
        }
        // A fetch is due. With usable (if old) keys, do not wait for one
        // already under way; without, wait for it, then look again — and
        // take its result: callers that waited together share one fetch,
        // so each waits at most one fetch's time (not one after another).
        let attempts = self.cache().attempts;
        let _fetching = if found.is_empty() {
            self.refresh.lock().await
        } else {
            match self.refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(found),
            }
        };
        let (found, stale, may_try) = self.cached(alg, kid);
        if !(stale || found.is_empty()) || !may_try || self.cache().attempts != attempts {
            return Ok(found);
        }
        self.cache().tried = Some(Instant::now());
        let url = self.jwks_url.clone().unwrap_or_default();
        let fetched = tokio::task::spawn_blocking(move || fetch_jwks(&url))
            .await
            .map_err(|e| ApiError::internal("fetching a JWKS", e))?;
        {
            let mut cache = self.cache();
            cache.attempts += 1;
            // The interval between fetches counts from the end of one.
            cache.tried = Some(Instant::now());
            match fetched {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                Err(e) => tracing::warn!(issuer = %self.name, error = %e, "JWKS fetch failed"),
            }
        }
        Ok(self.cached(alg, kid).0)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, JwksCache> {
        self.jwks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached keys that fit, whether the set is old, and whether a
    /// fetch may be tried now.
    fn cached(&self, alg: Algorithm, kid: Option<&str>) -> (Vec<DecodingKey>, bool, bool) {
        let c = self.cache();
        let found = c
            .keys
            .iter()
            .filter(|k| k.alg == alg && kid_fits(k, kid))
            .map(|k| k.key.clone())
            .collect();
        let stale = c.fetched.is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
        let may_try = c.tried.is_none_or(|t| t.elapsed() > JWKS_MIN_INTERVAL);
        (found, stale, may_try)
    }
}

fn kid_fits(k: &Key, kid: Option<&str>) -> bool {
    match (&k.kid, kid) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The refusal a verification error is reported as.
fn reason(issuer: &str, e: jsonwebtoken::errors::Error) -> ApiError {
    use jsonwebtoken::errors::ErrorKind as K;
    tracing::debug!(issuer, error = %e, "JWT refused");
    refused(match e.kind() {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not yet valid",
        K::InvalidAudience => "token is for another audience",
        K::InvalidIssuer => "token is from another issuer",
        K::MissingRequiredClaim(c) if c == "exp" => "token has no expiry",
        K::InvalidClaimFormat(_) => "token has a malformed claim",
        _ => "invalid token",
    })
}

/// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    for (alg, parse) in [
        (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem as fn(&[u8]) -> _,
        ),
        (Algorithm::ES256, DecodingKey::from_ec_pem),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem),
    ] {
        if let Ok(key) = parse(pem) {
            return Ok(Key {
                alg,
                key,
                kid: None,
            });
        }
    }
    Err("a public key is not an RSA, EC P-256 or Ed25519 PEM public key".into())
}

/// Fetches a JWKS and keeps the keys it can use (signature keys of RS256,
/// ES256 on P-256, or EdDSA on Ed25519).
fn fetch_jwks(url: &str) -> Result<Vec<Key>, String> {
    // No redirect is followed: the https-or-loopback check is on the
    // configured URL, and a redirect could lead anywhere.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(JWKS_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .with_config()
        .limit(JWKS_MAX_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Some(Algorithm::EdDSA)
            }
            _ => None,
        };
        let stated = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => None,
        };
        let (Some(alg), true) = (stated, stated == inferred) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.push(Key {
                alg,
                key,
                kid: jwk.common.key_id.clone(),
            });
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Answers one request on a loopback port with `answer`; its URL.
    fn serve_once(answer: String) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        url
    }

    #[test]
    fn a_jwks_redirect_is_not_followed() {
        let body = r#"{"keys":[]}"#;
        let target = serve_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        // The target itself serves a (empty) key set...
        let direct = serve_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        assert!(fetch_jwks(&direct).is_ok());
        // ... but reached through a redirect, nothing is fetched.
        let redirect = serve_once(format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        assert!(fetch_jwks(&redirect).is_err());
    }
}
