//! `/v1/groups/<g>/migrations`: an admin takes the group's schema to its
//! next version (`POST`, answered once the migration's log entry is
//! durable); members read the migrations after a version (`GET`), which
//! stay available however far the log is pruned.

use super::call::{json, Answer, Call};
use crate::auth::Role;
use crate::error::ApiError;
use crate::read;
use crate::write::migration::MigrationInput;
use hyper::{Method, StatusCode};
use pdb_protocol::wire::MigrationRequest;

pub async fn handle(call: &mut Call, id: &str) -> Answer {
    match call.method {
        Method::GET => {
            let g = call.group(id, Role::Reader).await?;
            let after = after_version(call.query())?;
            let (w, g2) = (call.w.clone(), g.clone());
            let page = call
                .read(&g, move || read::migrations(&w, &g2, after))
                .await?;
            json(StatusCode::OK, &page)
        }
        Method::POST => {
            let g = call.group(id, Role::Admin).await?;
            let body: MigrationRequest = call.json_body().await?;
            let info = g.info();
            let to = match body.schema_version {
                Some(v) => v,
                None => info.schema.version.checked_add(1).ok_or_else(|| {
                    ApiError::BadRequest("the schema version cannot grow further".into())
                })?,
            };
            // Made on the schema in force now; or, for a version the group
            // already has, on the one before it (a retry of that migration
            // replays; anything else is a conflict).
            let from_version = if to <= info.schema.version {
                info.history
                    .iter()
                    .take_while(|v| v.version < to)
                    .last()
                    .map(|v| v.version)
                    .ok_or_else(|| {
                        ApiError::MigrationConflict(format!(
                            "the group's schema is already at version {}: a migration must make a later version",
                            info.schema.version
                        ))
                    })?
            } else {
                info.schema.version
            };
            let kept = info.version(from_version).and_then(|v| v.schema.clone());
            let accepts_from = body.accepts_from.unwrap_or(from_version);
            let limits = g.sql_limits();
            // Every attempt takes a turn, refused ones too: deriving one
            // can spend the whole budget of migration SQL.
            g.take_migration_turn()?;
            // Derived off the async workers, in one of the group's slots;
            // the writer refuses it if another migration went first.
            let g2 = g.clone();
            let migration = call
                .group_work(&g, move || {
                    let from = match kept {
                        Some(s) => s,
                        None => g2
                            .read("reading a schema version", |c| {
                                crate::store::schema_of(c, from_version)
                                    .map_err(|e| ApiError::internal("reading a schema version", e))
                            })?
                            .ok_or_else(|| {
                                ApiError::internal("reading a schema version", "it is missing")
                            })?,
                    };
                    crate::store::migrate::derive(&from, &body.ddl, to, accepts_from, limits)
                        .map_err(ApiError::BadRequest)
                })
                .await?;
            let input = MigrationInput {
                migration,
                author: call.caller.identity.clone(),
            };
            let answer = g.migrate(input).await?;
            let status = if answer.replay {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            json(status, &answer)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `after_version=V` (default 0: every migration, with the first schema).
fn after_version(q: &str) -> Result<u32, ApiError> {
    let mut after = 0;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after_version", v)) => {
                after = v.parse().map_err(|_| {
                    ApiError::BadRequest(
                        "after_version must be a schema version (0 to 4294967295)".into(),
                    )
                })?
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {pair:?} (expected after_version)"
                )))
            }
        }
    }
    Ok(after)
}
