//! The witness and its groups: `/healthz`, `/v1/witness`, `/v1/groups`,
//! `/v1/groups/<g>`, its head and its writer's counters.

use super::call::{get_only, json, Answer, Call, Reply};
use super::route::Route;
use crate::auth::Role;
use crate::error::ApiError;
use crate::read;
use crate::witness::Witness;
use hyper::{Method, StatusCode};
use pdb_protocol::hex;
use pdb_protocol::wire::{CreateGroupRequest, WitnessJson};
use std::sync::Arc;

/// The endpoints that need no token.
pub async fn public(w: &Arc<Witness>, route: &Route) -> Answer {
    match route {
        Route::Health => {
            let w = w.clone();
            let health = w.admission.blocking({
                let w = w.clone();
                move || w.health()
            });
            Ok(Reply::Json(StatusCode::OK, health.await?))
        }
        _ => json(
            StatusCode::OK,
            &WitnessJson {
                public_key: hex(w.key.verifying_key().as_bytes()),
                version: env!("CARGO_PKG_VERSION").to_string(),
                limits: Some(w.limits()),
                rotations: w.settings.rotations.iter().map(Into::into).collect(),
            },
        ),
    }
}

/// `GET /v1/groups?prefix=&after=&limit=` (a page of those the caller has
/// a role in, in id order; all for the operator) and `POST` (create; the
/// operator only).
pub async fn collection(call: &mut Call) -> Answer {
    match call.method {
        Method::GET => {
            let (prefix, after, limit) = list_query(call.query())?;
            let (w, caller) = (call.w.clone(), call.caller.clone());
            let page = call
                .blocking(move || w.visible_groups(&caller, &prefix, &after, limit))
                .await?;
            Ok(Reply::Json(
                StatusCode::OK,
                serde_json::json!({ "groups": page.groups, "next_after": page.next_after }),
            ))
        }
        Method::POST => {
            if !call.caller.operator {
                return Err(ApiError::Forbidden {
                    table: None,
                    key: None,
                    message: "only the operator (admin token) creates groups".into(),
                });
            }
            let body: CreateGroupRequest = call.json_body().await?;
            let w = call.w.clone();
            let info = call
                .blocking(move || {
                    let g = w.create_group(
                        &body.group,
                        &body.schema_sql,
                        body.schema_version.unwrap_or(1),
                    )?;
                    read::group(&w, &g)
                })
                .await?;
            json(StatusCode::CREATED, &info)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `GET /metrics`: Prometheus text (the operator only).
pub async fn metrics(call: &Call) -> Answer {
    get_only(call)?;
    if !call.caller.operator {
        return Err(ApiError::Forbidden {
            table: None,
            key: None,
            message: "only the operator (admin token) reads metrics".into(),
        });
    }
    let w = call.w.clone();
    let text = call.blocking(move || w.metrics_text()).await?;
    Ok(Reply::Text(crate::metrics::CONTENT_TYPE, text))
}

pub async fn one(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let (w, g2) = (call.w.clone(), g.clone());
    json(
        StatusCode::OK,
        &call.read(&g, move || read::group(&w, &g2)).await?,
    )
}

/// `?after=SEQ&wait=SECONDS` of a head watch, if asked for.
fn watch_query(q: &str, max_wait: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let (mut after, mut wait) = (None, None);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = v.parse::<u64>();
        match (k, n) {
            ("after", Ok(n)) => after = Some(n),
            ("wait", Ok(n)) if n <= max_wait => wait = Some(n),
            ("wait", _) => {
                return Err(ApiError::BadRequest(format!(
                    "wait must be 0 to {max_wait} seconds"
                )))
            }
            ("after", _) => {
                return Err(ApiError::BadRequest(
                    "after must be a sequence number".into(),
                ))
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )))
            }
        }
    }
    match (after, wait) {
        (None, None) => Ok(None),
        (Some(a), w) => Ok(Some((a, w.unwrap_or(0)))),
        (None, Some(_)) => Err(ApiError::BadRequest("wait needs after".into())),
    }
}

/// `GET /v1/groups/<g>/head`: the signed head now; with `after` and
/// `wait`, as soon as it passes `after` or when the wait ends
/// (`crate::watch`).
pub async fn head(call: &mut Call, id: &str) -> Answer {
    get_only(call)?;
    let heads = call.w.heads.clone();
    let watch = watch_query(call.query(), heads.limits().max_wait.as_secs())?;
    let g = call.group(id, Role::Reader).await?;
    let Some((after, wait)) = watch else {
        return json(StatusCode::OK, &signed_head(call, g).await?);
    };
    // The place to wait first, then the head: no move in between is missed.
    let mut waiter = heads.waiter(id, &call.caller.identity)?;
    let head = signed_head(call, g).await?;
    if head.seq > after || wait == 0 {
        return json(StatusCode::OK, &head);
    }
    // Waiting holds no group open and no slot among the caller's calls
    // in progress; the watch has bounds of its own.
    call.release_slot();
    waiter
        .wait(after, std::time::Duration::from_secs(wait))
        .await;
    drop(waiter);
    let g = call.group(id, Role::Reader).await?;
    json(StatusCode::OK, &signed_head(call, g).await?)
}

async fn signed_head(
    call: &Call,
    g: Arc<crate::group::Group>,
) -> Result<pdb_protocol::wire::HeadJson, ApiError> {
    let (w, g2) = (call.w.clone(), g.clone());
    call.read(&g, move || read::head(&w, &g2)).await
}

pub async fn stats(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Admin).await?;
    Ok(Reply::Json(StatusCode::OK, g.stats().json()))
}

/// `prefix` (a start of group ids), `after` (a group id) and `limit`
/// (1..=1000, default 100) of a group listing.
fn list_query(q: &str) -> Result<(String, String, u32), ApiError> {
    let (mut prefix, mut after, mut limit) = (String::new(), String::new(), 100);
    let id_like = |v: &str| {
        v.len() <= crate::store::MAX_GROUP_ID
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "prefix" if id_like(v) => prefix = v.to_string(),
            "after" if id_like(v) => after = v.to_string(),
            "limit" => {
                limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=crate::directory::MAX_LIST).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be between 1 and {}",
                            crate::directory::MAX_LIST
                        ))
                    })?
            }
            "prefix" | "after" => {
                return Err(ApiError::BadRequest(format!(
                    "{k} must be (the start of) a group id: a-z 0-9 _ -"
                )))
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )))
            }
        }
    }
    Ok((prefix, after, limit))
}
