//! `/v1/groups/<g>/members` and `/rules`: who may do what (admins only).

use super::call::{blocking, get_only, Answer, Call, Reply};
use crate::access;
use crate::auth::Role;
use crate::error::ApiError;
use hyper::{Method, StatusCode};

pub async fn members(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Admin).await?;
    ok(blocking(move || access::members_json(&g)).await)
}

pub async fn member(call: &mut Call, id: &str, who: &str) -> Answer {
    let (who, by) = (who.to_string(), call.caller.clone());
    match call.method {
        Method::PUT => {
            let g = call.group(id, Role::Admin).await?;
            let body: serde_json::Value = call.json_body().await?;
            ok(blocking(move || access::grant(&g, &by, &who, &body)).await)
        }
        Method::DELETE => {
            let g = call.group(id, Role::Admin).await?;
            ok(blocking(move || access::revoke(&g, &by, &who)).await)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

pub async fn rules(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Admin).await?;
    ok(blocking(move || access::rules_json(&g)).await)
}

pub async fn rule(call: &mut Call, id: &str, table: &str) -> Answer {
    let (table, by) = (table.to_string(), call.caller.clone());
    match call.method {
        Method::PUT => {
            let g = call.group(id, Role::Admin).await?;
            let body: serde_json::Value = call.json_body().await?;
            ok(blocking(move || access::set_rule(&g, &by, &table, &body)).await)
        }
        Method::DELETE => {
            let g = call.group(id, Role::Admin).await?;
            ok(blocking(move || access::remove_rule(&g, &by, &table)).await)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn ok(v: Result<serde_json::Value, ApiError>) -> Answer {
    v.map(|v| Reply::Json(StatusCode::OK, v))
}
