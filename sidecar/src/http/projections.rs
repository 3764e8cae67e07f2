//! `/v1/groups/<g>/projections`: listing, defining and dropping them
//! (admins), and reading the rows visible to the caller. Viewers see and
//! read only the projections their grant names (all when it names none).

use super::call::{get_only, json, page_query, Answer, Call, Reply};
use crate::auth::Role;
use crate::error::ApiError;
use crate::read;
use crate::store::log::{DEFAULT_PAGE, MAX_PAGE};
use hyper::{Method, StatusCode};

pub async fn list(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let (g, grant) = call.access(id, Role::Viewer).await?;
    let only = grant.projections.filter(|_| grant.role == Role::Viewer);
    let g2 = g.clone();
    let v = call
        .read(&g, move || {
            g2.read("reading projections", |c| {
                crate::projection::list(c, &g2.info(), only.as_deref())
            })
        })
        .await?;
    json(StatusCode::OK, &v)
}

pub async fn one(call: &mut Call, id: &str, name: &str) -> Answer {
    let name = name.to_string();
    match call.method {
        Method::GET => {
            let (g, grant) = call.access(id, Role::Viewer).await?;
            if !grant.may_read_projection(&name) {
                return Err(ApiError::Forbidden {
                    table: None,
                    key: None,
                    message: format!("your grant does not include projection {name:?}"),
                });
            }
            let (after, limit) = page_query(call.query(), DEFAULT_PAGE, MAX_PAGE)?;
            let after = i64::try_from(after)
                .map_err(|_| ApiError::BadRequest("after is too large".into()))?;
            let (w, g2, who) = (call.w.clone(), g.clone(), call.caller.identity.clone());
            let v = call
                .read(&g, move || {
                    read::projection_page(&w, &g2, &name, &who, grant.role, after, limit)
                })
                .await?;
            json(StatusCode::OK, &v)
        }
        Method::PUT => {
            let g = call.group(id, Role::Admin).await?;
            if !crate::projection::valid_name(&name) {
                return Err(ApiError::BadRequest(
                    "projection names are 1-64 of a-z 0-9 _".into(),
                ));
            }
            let def: serde_json::Value = call.json_body().await?;
            let (by, g2) = (call.caller.identity.clone(), g.clone());
            let p = call
                .group_work(&g, move || g2.define_projection(&name, &def, &by))
                .await?;
            json(StatusCode::OK, &p.info())
        }
        Method::DELETE => {
            let g = call.group(id, Role::Admin).await?;
            let (by, g2) = (call.caller.identity.clone(), g.clone());
            let v = call
                .group_work(&g, move || g2.drop_projection(&name, &by))
                .await?;
            Ok(Reply::Json(
                StatusCode::OK,
                serde_json::json!({ "version": v }),
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}
