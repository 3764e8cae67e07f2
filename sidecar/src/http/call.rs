//! One authenticated call: who is calling, its group access check, its
//! bounded JSON body and query, and what an endpoint answers with.

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::group::Group;
use crate::witness::Witness;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use std::sync::Arc;

/// What an endpoint answers with.
pub enum Reply {
    Json(StatusCode, serde_json::Value),
    /// `206 Partial Content`: bytes `start..=end` of `size`.
    Range {
        body: Vec<u8>,
        start: u64,
        end: u64,
        size: u64,
    },
}

pub type Answer = Result<Reply, ApiError>;

pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Answer {
    serde_json::to_value(v)
        .map(|v| Reply::Json(status, v))
        .map_err(|e| ApiError::internal("encoding a response", e))
}

/// One authenticated call: who is calling, and the request.
pub struct Call {
    pub w: Arc<Witness>,
    pub caller: Caller,
    pub method: Method,
    parts: hyper::http::request::Parts,
    body: Option<Incoming>,
}

impl Call {
    pub async fn new(w: Arc<Witness>, req: Request<Incoming>) -> Result<Call, ApiError> {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let caller = w.settings.auth.caller(header).await?;
        let (parts, body) = req.into_parts();
        Ok(Call {
            w,
            caller,
            method: parts.method.clone(),
            parts,
            body: Some(body),
        })
    }

    pub fn query(&self) -> &str {
        self.parts.uri.query().unwrap_or("")
    }

    pub fn header(&self, name: hyper::header::HeaderName) -> Option<&HeaderValue> {
        self.parts.headers.get(name)
    }

    /// The group, if the caller holds at least `need` in it. A caller with
    /// no role gets the same answer whether or not the group exists.
    pub async fn group(&self, id: &str, need: Role) -> Result<Arc<Group>, ApiError> {
        if self.caller.operator {
            return self.w.group(id);
        }
        let no_access = || ApiError::Forbidden {
            table: None,
            key: None,
            message: format!("no access to group {id:?}"),
        };
        let Ok(g) = self.w.group(id) else {
            return Err(no_access());
        };
        match self.role_in(&g).await? {
            None => Err(no_access()),
            Some(role) if role < need => Err(ApiError::Forbidden {
                table: None,
                key: None,
                message: format!(
                    "role {} may not do this here (needs {})",
                    role.name(),
                    need.name()
                ),
            }),
            Some(_) => Ok(g),
        }
    }

    /// The caller's role in `g` (admin for the operator).
    pub async fn role_in(&self, g: &Arc<Group>) -> Result<Option<Role>, ApiError> {
        if self.caller.operator {
            return Ok(Some(Role::Admin));
        }
        let (g, who) = (g.clone(), self.caller.identity.clone());
        blocking(move || g.role_of(&who)).await
    }

    /// The JSON body, read up to the configured limit.
    pub async fn json_body<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ApiError> {
        let limit = self.w.settings.max_body_bytes;
        let declared = self
            .parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge(limit));
        }
        let body = self
            .body
            .take()
            .ok_or_else(|| ApiError::internal("reading the request body", "read twice"))?;
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::BodyTooLarge(limit)
                } else {
                    ApiError::BadRequest(format!("reading the request body: {e}"))
                }
            })?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Runs blocking work (SQLite, files, signing loops) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("running a blocking task", e))?
}

/// `after` and `limit` of a paged read (`limit` 1..=`max`).
pub fn page_query(q: &str, default: u32, max: u32) -> Result<(u64, u32), ApiError> {
    let (mut after, mut limit) = (0u64, default);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest("after must be a sequence number".into()))?
            }
            "limit" => {
                limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit must be between 1 and {max}"))
                    })?
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )))
            }
        }
    }
    Ok((after, limit))
}

/// Refuses any method but GET (for endpoints that only read).
pub fn get_only(call: &Call) -> Result<(), ApiError> {
    if call.method == Method::GET {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}
