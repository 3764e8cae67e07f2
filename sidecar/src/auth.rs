//! Who is calling: bearer tokens to identities, and identities to roles.
//!
//! Deny by default. A bearer token is one of: the admin token (the
//! operator: may create groups and act on every group), a static token from
//! the tokens file (stored as SHA-256 only), or a JWT from one of the app's
//! identity providers (`jwt.rs`). Within a group, an identity has at most
//! one role.

use crate::error::ApiError;
use crate::jwt::Jwt;
use crate::keys;

/// Roles in a group, each including the ones before it. A viewer reads
/// projections only (all, or those named in its grant), never the log,
/// changesets or snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer = 0,
    Reader = 1,
    Writer = 2,
    Admin = 3,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
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

/// Identities of static tokens: as [`valid_identity`], without `:` — JWT
/// identities are `<prefix>:<sub>`, so the two can never collide.
pub fn valid_token_identity(id: &str) -> bool {
    valid_identity(id) && !id.contains(':')
}

#[derive(Default)]
pub struct Authenticator {
    pub admin_hash: [u8; 32],
    /// The static tokens (SHA-256 of each → identity).
    pub tokens: crate::tokens::Tokens,
    pub jwt: Jwt,
}

fn unauthorized(m: &str) -> ApiError {
    ApiError::Unauthorized(m.to_string())
}

impl Authenticator {
    /// The caller behind an `Authorization` header value.
    pub async fn caller(&self, header: Option<&str>) -> Result<Caller, ApiError> {
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
        if let Some(id) = self.tokens.identity(&hash) {
            return Ok(Caller {
                identity: id,
                operator: false,
            });
        }
        if token.matches('.').count() == 2 && !self.jwt.is_empty() {
            let identity = self.jwt.identity(token).await?;
            if !valid_identity(&identity) {
                return Err(unauthorized("invalid token"));
            }
            return Ok(Caller {
                identity,
                operator: false,
            });
        }
        Err(unauthorized("invalid token"))
    }
}
