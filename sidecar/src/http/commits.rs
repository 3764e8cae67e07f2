//! `/v1/groups/<g>/commits`: submitting a commit (queued to the group's
//! writer, answered once durable) and reading the log in pages.

use super::call::{json, page_query, Answer, Call};
use crate::auth::Role;
use crate::error::ApiError;
use crate::read;
use crate::store::log::{DEFAULT_PAGE, MAX_PAGE};
use crate::write::commit::CommitInput;
use crate::write::writer::Job;
use hyper::{Method, StatusCode};
use pdb_protocol::unhex32;
use pdb_protocol::wire::{unb64, CommitRequest};

pub const MAX_IDEMPOTENCY_KEY: usize = 128;

pub async fn handle(call: &mut Call, id: &str) -> Answer {
    match call.method {
        Method::GET => {
            let g = call.group(id, Role::Reader).await?;
            // `after_hash` (optional): the head hash the caller has at
            // `after`, so a history this witness lacks is said, not served.
            let (mut after_hash, mut rest) = (None, Vec::new());
            for pair in call.query().split('&') {
                match pair.strip_prefix("after_hash=") {
                    Some(h) => {
                        after_hash = Some(unhex32(h).ok_or_else(|| {
                            ApiError::BadRequest(
                                "after_hash must be 64 lowercase hex digits".into(),
                            )
                        })?)
                    }
                    None => rest.push(pair),
                }
            }
            let (after, limit) = page_query(&rest.join("&"), DEFAULT_PAGE, MAX_PAGE)?;
            let (w, g2) = (call.w.clone(), g.clone());
            let page = call
                .read(&g, move || {
                    read::commits_page(&w, &g2, after, after_hash, limit)
                })
                .await?;
            json(StatusCode::OK, &page)
        }
        Method::POST => {
            let g = call.group(id, Role::Writer).await?;
            let body: CommitRequest = call.json_body().await?;
            let input = commit_input(body, call.caller.identity.clone())?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            g.submit(Job { input, reply: tx })?;
            let resp = rx
                .await
                .map_err(|_| ApiError::Unavailable("the group writer stopped; retry".into()))??;
            let status = if resp.replay {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            if prefers_minimal(call) {
                return json(status, &resp.minimal());
            }
            json(status, &resp)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Whether the caller asked for the minimal answer (RFC 7240's
/// `Prefer: return=minimal`): the signed records only, nothing decoded.
fn prefers_minimal(call: &Call) -> bool {
    call.header(hyper::header::HeaderName::from_static("prefer"))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split([',', ';'])
                .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"))
        })
}

/// Checks the request's own fields (not the changeset: the writer does
/// that against the group) and decodes them.
fn commit_input(body: CommitRequest, author: String) -> Result<CommitInput, ApiError> {
    let key = body.idempotency_key;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(ApiError::BadRequest(format!(
            "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} characters of A-Z a-z 0-9 - _ . :"
        )));
    }
    let base_hash = unhex32(&body.base.hash)
        .ok_or_else(|| ApiError::BadRequest("base.hash must be 64 lowercase hex digits".into()))?;
    let schema_hash = unhex32(&body.schema_hash).ok_or_else(|| {
        ApiError::BadRequest("schema_hash must be 64 lowercase hex digits".into())
    })?;
    let changeset = unb64(&body.changeset)
        .ok_or_else(|| ApiError::BadRequest("changeset must be standard base64".into()))?;
    Ok(CommitInput {
        author,
        base_seq: body.base.seq,
        base_hash,
        schema_version: body.schema_version,
        schema_hash,
        idempotency_key: key,
        changeset,
        policy: body.policy,
        client_time: body.client_time,
    })
}
