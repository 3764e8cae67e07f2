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

/// `GET /v1/groups` (those the caller has a role in) and `POST` (create;
/// the operator only).
pub async fn collection(call: &mut Call) -> Answer {
    match call.method {
        Method::GET => {
            let (w, caller) = (call.w.clone(), call.caller.clone());
            let ids = call.blocking(move || w.visible_groups(&caller)).await?;
            Ok(Reply::Json(
                StatusCode::OK,
                serde_json::json!({ "groups": ids }),
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

pub async fn one(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let (w, g2) = (call.w.clone(), g.clone());
    json(
        StatusCode::OK,
        &call.read(&g, move || read::group(&w, &g2)).await?,
    )
}

pub async fn head(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let (w, g2) = (call.w.clone(), g.clone());
    json(
        StatusCode::OK,
        &call.read(&g, move || read::head(&w, &g2)).await?,
    )
}

pub async fn stats(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Admin).await?;
    Ok(Reply::Json(StatusCode::OK, g.stats().json()))
}
