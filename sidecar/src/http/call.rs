//! One authenticated call: who is calling, its group access check, its
//! bounded JSON body and query, the admission of its blocking work, and
//! what an endpoint answers with.

use crate::admit::{BodyBytes, CallerSlot};
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::grant::Grant;
use crate::group::Group;
use crate::witness::Witness;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// What an endpoint answers with.
pub enum Reply {
    Json(StatusCode, serde_json::Value),
    /// `200`, with a content type: text that is not JSON (metrics).
    Text(&'static str, String),
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
    /// The caller's slot among its calls in progress (none for the
    /// operator), and the body bytes this call holds in memory.
    _slot: Option<CallerSlot>,
    held: Option<BodyBytes>,
    peer: IpAddr,
}

impl Call {
    /// `peer` is the client's address.
    pub async fn new(
        w: Arc<Witness>,
        req: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Call, ApiError> {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let caller = w.settings.auth.caller(header).await?;
        let slot = if caller.operator {
            None
        } else {
            Some(w.admission.caller(&caller.identity)?)
        };
        let (parts, body) = req.into_parts();
        Ok(Call {
            w,
            caller,
            method: parts.method.clone(),
            parts,
            body: Some(body),
            _slot: slot,
            held: None,
            peer,
        })
    }

    /// Gives back the caller's slot among its calls in progress: for a
    /// call that now only waits (a head watch, bounded on its own).
    pub fn release_slot(&mut self) {
        self._slot = None;
    }

    /// The caller's slot, to be held until the answer has been written.
    pub fn take_slot(&mut self) -> Option<CallerSlot> {
        self._slot.take()
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
        self.access(id, need).await.map(|(g, _)| g)
    }

    /// The group and the caller's grant in it, if it holds at least `need`.
    /// The grant comes from the directory, so a caller without one makes
    /// the witness open nothing.
    pub async fn access(&self, id: &str, need: Role) -> Result<(Arc<Group>, Grant), ApiError> {
        let grant = if self.caller.operator {
            operator()
        } else {
            let no_access = || {
                ApiError::Forbidden {
                table: None,
                key: None,
                message: format!(
                    "no access to group {id:?} for {:?}: no such group, or no role in it (check the group id; the group's admin grants roles)",
                    self.caller.identity
                ),
            }
            };
            let (w, g, who) = (self.w.clone(), id.to_string(), self.caller.identity.clone());
            match self.blocking(move || w.directory.grant(&g, &who)).await? {
                None => return Err(no_access()),
                Some(grant) if grant.role < need => {
                    return Err(ApiError::Forbidden {
                        table: None,
                        key: None,
                        message: format!(
                            "role {} may not do this here (needs {})",
                            grant.role.name(),
                            need.name()
                        ),
                    })
                }
                Some(grant) => grant,
            }
        };
        Ok((self.open(id).await?, grant))
    }

    /// The group, opened if need be (off the async workers).
    async fn open(&self, id: &str) -> Result<Arc<Group>, ApiError> {
        if let Some(g) = self.w.open_group(id) {
            return Ok(g);
        }
        let (w, id) = (self.w.clone(), id.to_string());
        self.blocking(move || w.group(&id)).await
    }

    /// Runs a read of `g` off the async workers, within the group's and
    /// the witness's bounds on concurrent work.
    pub async fn read<T: Send + 'static>(
        &self,
        g: &Group,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.w.admission.read(g, f).await
    }

    /// Runs an admin's work on `g` (changing access or projections,
    /// deriving a migration, making a snapshot) off the async workers, within the group's bound
    /// on concurrent work as well as the witness's: such work can wait
    /// long (maintenance writes go one at a time; fills and snapshots take
    /// a while), and the admins of one group must not hold the blocking
    /// slots every group shares.
    pub async fn group_work<T: Send + 'static>(
        &self,
        g: &Group,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.w.admission.read(g, f).await
    }

    /// Runs other blocking work (the directory, opening files, group
    /// creation) off the async workers, within the witness's bound.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.w.admission.blocking(f).await
    }

    /// The JSON body, read up to the configured size, within the body
    /// deadline, and within the witness's bound on bodies held in memory
    /// (the bytes stay counted until the call ends).
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
        let mut body = self
            .body
            .take()
            .ok_or_else(|| ApiError::internal("reading the request body", "read twice"))?;
        let deadline = self.w.admission.limits().body_timeout;
        let (w, held, peer) = (self.w.clone(), &mut self.held, self.peer);
        let read = async move {
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        return Err(ApiError::BodyTooLarge(limit));
                    }
                    w.admission.body_bytes(held, peer, data.len())?;
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(deadline, read).await.map_err(|_| {
            ApiError::BadRequest(format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ))
        })??;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

fn operator() -> Grant {
    Grant {
        role: Role::Admin,
        projections: None,
    }
}

/// `after` and `limit` of a paged read: `after` a position from 0 to
/// 2^63-1 (SQLite's integers), `limit` from 1 to `max`.
pub fn page_query(q: &str, default: u32, max: u32) -> Result<(u64, u32), ApiError> {
    let (mut after, mut limit) = (0u64, default);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(|n| n as u64)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "after must be a whole number from 0 to {}",
                            i64::MAX
                        ))
                    })?
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

#[cfg(test)]
mod tests {
    use super::page_query;

    #[test]
    fn positions_are_sqlite_integers_and_never_wrap() {
        assert_eq!(page_query("", 100, 1000).unwrap(), (0, 100));
        assert_eq!(
            page_query("after=9223372036854775807&limit=5", 100, 1000).unwrap(),
            (i64::MAX as u64, 5)
        );
        for bad in [
            "after=9223372036854775808",
            "after=18446744073709551615",
            "after=-1",
            "after=1e3",
            "after=",
            "after=+1x",
            "limit=0",
            "limit=1001",
            "limit=4294967297",
            "limit=-1",
            "nope=1",
        ] {
            assert!(page_query(bad, 100, 1000).is_err(), "accepted {bad}");
        }
    }
}
