//! `/v1/groups/<g>/members` and `/rules`: who may do what (admins only).
//! Both are a list (GET) and items set with PUT and removed with DELETE.

use super::call::{get_only, Answer, Call, Reply};
use crate::access;
use crate::auth::{Caller, Role};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::group::Group;
use hyper::{Method, StatusCode};
use serde_json::Value as Json;
use std::sync::Arc;

type List = fn(&Directory, &Group) -> Result<Json, ApiError>;
type Set = fn(&Directory, &Arc<Group>, &Caller, &str, &Json) -> Result<Json, ApiError>;
type Remove = fn(&Directory, &Arc<Group>, &Caller, &str) -> Result<Json, ApiError>;

pub async fn members(call: &Call, id: &str) -> Answer {
    list(call, id, access::members_json).await
}

pub async fn member(call: &mut Call, id: &str, who: &str) -> Answer {
    item(call, id, who, access::grant, access::revoke).await
}

pub async fn rules(call: &Call, id: &str) -> Answer {
    list(call, id, access::rules_json).await
}

pub async fn rule(call: &mut Call, id: &str, table: &str) -> Answer {
    item(call, id, table, access::set_rule, access::remove_rule).await
}

async fn list(call: &Call, id: &str, read: List) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Admin).await?;
    let (w, g2) = (call.w.clone(), g.clone());
    ok(call.read(&g, move || read(&w.directory, &g2)).await)
}

async fn item(call: &mut Call, id: &str, subject: &str, set: Set, remove: Remove) -> Answer {
    let (subject, by) = (subject.to_string(), call.caller.clone());
    match call.method {
        Method::PUT => {
            let g = call.group(id, Role::Admin).await?;
            let body: Json = call.json_body().await?;
            let (w, g2) = (call.w.clone(), g.clone());
            ok(call
                .group_work(&g, move || set(&w.directory, &g2, &by, &subject, &body))
                .await)
        }
        Method::DELETE => {
            let g = call.group(id, Role::Admin).await?;
            let (w, g2) = (call.w.clone(), g.clone());
            ok(call
                .group_work(&g, move || remove(&w.directory, &g2, &by, &subject))
                .await)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn ok(v: Result<Json, ApiError>) -> Answer {
    v.map(|v| Reply::Json(StatusCode::OK, v))
}
