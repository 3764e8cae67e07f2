//! `/v1/groups/<g>/projections`: listing, defining and dropping them
//! (admins), and reading the rows visible to the caller.

use super::call::{blocking, get_only, page_query, Answer, Call, Reply};
use crate::auth::Role;
use crate::error::ApiError;
use crate::read;
use crate::store::log::{DEFAULT_PAGE, MAX_PAGE};
use hyper::{Method, StatusCode};

pub async fn list(call: &Call, id: &str) -> Answer {
    get_only(call)?;
    let g = call.group(id, Role::Reader).await?;
    let v = blocking(move || {
        g.read("reading projections", |c| {
            crate::projection::list_json(c, &g.info)
        })
    })
    .await?;
    Ok(Reply::Json(StatusCode::OK, v))
}

pub async fn one(call: &mut Call, id: &str, name: &str) -> Answer {
    let name = name.to_string();
    match call.method {
        Method::GET => {
            let g = call.group(id, Role::Reader).await?;
            let role = call.role_in(&g).await?.unwrap_or(Role::Reader);
            let (after, limit) = page_query(call.query(), DEFAULT_PAGE, MAX_PAGE)?;
            let after = i64::try_from(after)
                .map_err(|_| ApiError::BadRequest("after is too large".into()))?;
            let (w, who) = (call.w.clone(), call.caller.identity.clone());
            let v =
                blocking(move || read::projection_page(&w, &g, &name, &who, role, after, limit))
                    .await?;
            Ok(Reply::Json(StatusCode::OK, v))
        }
        Method::PUT => {
            let g = call.group(id, Role::Admin).await?;
            if !crate::projection::valid_name(&name) {
                return Err(ApiError::BadRequest(
                    "projection names are 1-64 of a-z 0-9 _".into(),
                ));
            }
            let def: serde_json::Value = call.json_body().await?;
            let by = call.caller.identity.clone();
            let p = blocking(move || g.define_projection(&name, &def, &by)).await?;
            Ok(Reply::Json(StatusCode::OK, p.summary_json()))
        }
        Method::DELETE => {
            let g = call.group(id, Role::Admin).await?;
            let by = call.caller.identity.clone();
            let v = blocking(move || g.drop_projection(&name, &by)).await?;
            Ok(Reply::Json(
                StatusCode::OK,
                serde_json::json!({ "version": v }),
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}
