//! `/v1/tokens`: the operator makes, lists and revokes static device
//! tokens on a running witness (no restart). Only the admin token may: a
//! group's admin grants roles to identities, but never mints the tokens
//! that carry them.

use super::call::{Answer, Call, Reply};
use crate::access;
use crate::auth::Role;
use crate::error::ApiError;
use hyper::{Method, StatusCode};
use serde_json::{json, Value as Json};

fn operator_only(call: &Call) -> Result<(), ApiError> {
    if call.caller.operator {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            table: None,
            key: None,
            message: "only the operator (admin token) makes, lists or revokes tokens; a group's admin grants roles to identities with PUT /v1/groups/<g>/members/<identity>".into(),
        })
    }
}

/// `GET /v1/tokens`: `{tokens: [{identity, tokens}]}`; `POST /v1/tokens
/// {identity, group?, role?}`: 201 `{identity, token, group?, role?}` —
/// the token is shown in this answer only; with `group` and `role` the
/// identity gets that role there first.
pub async fn collection(call: &mut Call) -> Answer {
    operator_only(call)?;
    match call.method {
        Method::GET => {
            let w = call.w.clone();
            let list = call
                .blocking(move || w.settings.auth.tokens.list().map_err(internal))
                .await?;
            Ok(Reply::Json(StatusCode::OK, json!({ "tokens": list })))
        }
        Method::POST => {
            let body: Json = call.json_body().await?;
            let obj = body
                .as_object()
                .ok_or_else(|| bad("the body must be a JSON object {identity, group?, role?}"))?;
            for k in obj.keys() {
                if !["identity", "group", "role"].contains(&k.as_str()) {
                    return Err(bad(&format!(
                        "unknown field {k:?} (expected identity, group, role)"
                    )));
                }
            }
            let identity = obj
                .get("identity")
                .and_then(Json::as_str)
                .filter(|i| crate::auth::valid_token_identity(i))
                .ok_or_else(|| bad("identity must be 1-256 printable characters without spaces or ':' (the name of the device or person the token is for)"))?
                .to_string();
            let mut answer = json!({ "identity": identity });
            match (obj.get("group"), obj.get("role")) {
                (None, None) => {}
                (Some(Json::String(group)), Some(Json::String(role))) => {
                    if Role::parse(role).is_none() {
                        return Err(bad("role must be viewer, reader, writer or admin"));
                    }
                    let g = call.group(group, Role::Admin).await?;
                    let (w, g2, by, who, grant) = (
                        call.w.clone(),
                        g.clone(),
                        call.caller.clone(),
                        identity.clone(),
                        json!({ "role": role }),
                    );
                    call.group_work(&g, move || access::grant(&w.directory, &g2, &by, &who, &grant))
                        .await?;
                    answer["group"] = json!(group);
                    answer["role"] = json!(role);
                }
                _ => return Err(bad("group and role go together: both strings (a group id and viewer, reader, writer or admin), or neither")),
            }
            let (w, who) = (call.w.clone(), identity.clone());
            let token = call
                .blocking(move || w.settings.auth.tokens.add(&who).map_err(internal))
                .await?;
            tracing::info!(identity = %identity, "token made");
            answer["token"] = json!(token);
            Ok(Reply::Json(StatusCode::CREATED, answer))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `DELETE /v1/tokens/<identity>`: every token of the identity stops
/// working at once (its roles stay); `404` when it has none.
pub async fn one(call: &mut Call, identity: &str) -> Answer {
    operator_only(call)?;
    if call.method != Method::DELETE {
        return Err(ApiError::MethodNotAllowed);
    }
    if !crate::auth::valid_token_identity(identity) {
        return Err(bad(
            "identity must be 1-256 printable characters without spaces or ':'",
        ));
    }
    let (w, who) = (call.w.clone(), identity.to_string());
    let n = call
        .blocking(move || w.settings.auth.tokens.revoke(&who).map_err(internal))
        .await?;
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "no tokens for identity {identity:?}"
        )));
    }
    tracing::info!(identity = %identity, revoked = n, "tokens revoked");
    Ok(Reply::Json(
        StatusCode::OK,
        json!({ "identity": identity, "revoked": n }),
    ))
}

fn bad(m: &str) -> ApiError {
    ApiError::BadRequest(m.to_string())
}

fn internal(e: String) -> ApiError {
    ApiError::internal("changing the tokens file", e)
}
