//! HTTP transport: routing, authentication, bounded bodies, JSON in and
//! out, and the accept loop with graceful shutdown.

use crate::auth::{Caller, Role};
use crate::commit::CommitInput;
use crate::error::ApiError;
use crate::read::{self, DEFAULT_PAGE, MAX_PAGE};
use crate::witness::Witness;
use crate::writer::Job;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pdb_protocol::wire::{
    unb64, CommitRequest, CommitsPage, CreateGroupRequest, GroupJson, WitnessJson,
};
use pdb_protocol::{hex, unhex32};
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MAX_IDEMPOTENCY_KEY: usize = 128;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Result<(StatusCode, serde_json::Value), ApiError>;

/// A byte range of a snapshot file.
struct Range {
    body: Vec<u8>,
    start: u64,
    end: u64,
    size: u64,
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Reply {
    serde_json::to_value(v)
        .map(|v| (status, v))
        .map_err(|e| ApiError::internal("encoding a response", e))
}

/// Accepts connections until `shutdown` resolves, then stops accepting,
/// lets open requests finish (bounded), and stops the group writers after
/// their queued commits are durable.
pub async fn run(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let policy = tokio::spawn(snapshot_policy(witness.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let w = witness.clone();
                let service = hyper::service::service_fn(move |req| handle(w.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    policy.abort();
    drop(listener);
    tracing::info!("shutting down: draining open requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    let w = witness.clone();
    let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Makes snapshots when the policy asks for them (checked every second).
async fn snapshot_policy(w: Arc<Witness>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for g in w.groups() {
            let w2 = w.clone();
            let done = tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
                if w2.snapshot_due(&g)? {
                    w2.snapshot_now(&g)?;
                }
                Ok(())
            })
            .await;
            if let Ok(Err(e)) = done {
                tracing::warn!(code = e.code(), "automatic snapshot failed");
            }
        }
    }
}

async fn handle(
    w: Arc<Witness>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = match snapshot_data_seq(&path) {
        Some(seq) => match snapshot_data(&w, &req, seq).await {
            Ok(r) => {
                tracing::info!(%method, path = %path, status = 206, bytes = r.body.len(), "request");
                let mut resp = Response::new(Full::new(Bytes::from(r.body)));
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = resp.headers_mut();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(v) =
                    HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end, r.size))
                {
                    h.insert(hyper::header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
            Err(e) => Err(e),
        },
        None => route(&w, req).await,
    };
    let (status, body) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let status = e.status();
            let body = serde_json::to_value(e.body()).unwrap_or_default();
            (status, body)
        }
    };
    tracing::info!(
        %method,
        path = %path,
        status = status.as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn route(w: &Arc<Witness>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method().clone();
    match (&m, segs.as_slice()) {
        (&Method::GET, ["v1", "witness"]) => {
            return json(
                StatusCode::OK,
                &WitnessJson {
                    public_key: hex(w.key.verifying_key().as_bytes()),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
            )
        }
        (&Method::GET, ["healthz"]) => {
            return Ok((StatusCode::OK, serde_json::json!({"ok": true})))
        }
        _ => {}
    }
    let known = matches!(
        segs.as_slice(),
        ["v1", "groups"]
            | ["v1", "groups", _]
            | [
                "v1",
                "groups",
                _,
                "head" | "commits" | "stats" | "snapshots" | "members" | "rules" | "projections"
            ]
            | ["v1", "groups", _, "snapshots", "latest"]
            | ["v1", "groups", _, "members" | "rules" | "projections", _]
    );
    if !known {
        return Err(ApiError::NotFound(format!("no such endpoint: {path}")));
    }
    let caller = authenticate(w, &req)?;
    match (m, segs.as_slice()) {
        (Method::POST, ["v1", "groups"]) => {
            if !caller.operator {
                return Err(ApiError::Forbidden {
                    table: None,
                    key: None,
                    message: "only the operator (admin token) creates groups".into(),
                });
            }
            let body: CreateGroupRequest = read_json(w, req).await?;
            let w2 = w.clone();
            let g = blocking(move || {
                w2.create_group(
                    &body.group,
                    &body.schema_sql,
                    body.schema_version.unwrap_or(1),
                )
            })
            .await?;
            let head = blocking_read(&g, read::head).await?;
            json(StatusCode::CREATED, &group_json(w, &g, &head))
        }
        (Method::GET, ["v1", "groups"]) => {
            let w2 = w.clone();
            let ids = blocking(move || -> Result<Vec<String>, ApiError> {
                let mut ids = Vec::new();
                for id in w2.group_ids() {
                    let g = w2.group(&id)?;
                    if caller.operator || g.role_of(&caller.identity)?.is_some() {
                        ids.push(id);
                    }
                }
                Ok(ids)
            })
            .await?;
            Ok((StatusCode::OK, serde_json::json!({ "groups": ids })))
        }
        (Method::GET, ["v1", "groups", g]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let head = blocking_read(&g, read::head).await?;
            json(StatusCode::OK, &group_json(w, &g, &head))
        }
        (Method::GET, ["v1", "groups", g, "head"]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let head = blocking_read(&g, read::head).await?;
            let i = &g.info;
            json(
                StatusCode::OK,
                &read::sign_head(&w.key, &i.id, i.schema.version, &i.schema_hash, &head),
            )
        }
        (Method::POST, ["v1", "groups", g, "snapshots"]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let w2 = w.clone();
            let m = blocking(move || w2.snapshot_now(&g)).await?;
            json(StatusCode::CREATED, &m)
        }
        (Method::GET, ["v1", "groups", g, "snapshots", "latest"]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let dir = crate::snapshot::dir(&w.settings.data_dir, &g.info.id);
            let m = blocking(move || crate::snapshot::latest(&dir)).await?;
            match m {
                Some(m) => json(StatusCode::OK, &m),
                None => Err(ApiError::NotFound("the group has no snapshot yet".into())),
            }
        }
        (Method::GET, ["v1", "groups", g, "stats"]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            Ok((StatusCode::OK, g.stats.json()))
        }
        (Method::GET, ["v1", "groups", g, "members"]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let v = blocking_read(&g, crate::access::members_json).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::PUT, ["v1", "groups", g, "members", who]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let who = who.to_string();
            let body: serde_json::Value = read_json(w, req).await?;
            let v = blocking(move || crate::access::grant(&g, &caller, &who, &body)).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::DELETE, ["v1", "groups", g, "members", who]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let who = who.to_string();
            let v = blocking(move || crate::access::revoke(&g, &caller, &who)).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::GET, ["v1", "groups", g, "projections"]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let g2 = g.clone();
            let v = blocking(move || {
                g2.read(|c| crate::projection::list_json(c, &g2.info))
                    .map_err(|e| ApiError::internal("reading projections", e))?
            })
            .await?;
            Ok((StatusCode::OK, v))
        }
        (Method::PUT, ["v1", "groups", g, "projections", name]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            if !crate::projection::valid_name(name) {
                return Err(ApiError::BadRequest(
                    "projection names are 1-64 of a-z 0-9 _".into(),
                ));
            }
            let name = name.to_string();
            let def: serde_json::Value = read_json(w, req).await?;
            let p = blocking(move || g.define_projection(&name, &def, &caller.identity)).await?;
            Ok((
                StatusCode::OK,
                serde_json::json!({"name": p.name, "columns": p.columns, "incremental": matches!(p.kind, crate::projection::Kind::Incremental { .. })}),
            ))
        }
        (Method::DELETE, ["v1", "groups", g, "projections", name]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let name = name.to_string();
            let v = blocking(move || g.drop_projection(&name, &caller.identity)).await?;
            Ok((StatusCode::OK, serde_json::json!({"version": v})))
        }
        (Method::GET, ["v1", "groups", g, "projections", name]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let role = if caller.operator {
                Role::Admin
            } else {
                let (g2, who) = (g.clone(), caller.identity.clone());
                blocking(move || g2.role_of(&who))
                    .await?
                    .unwrap_or(Role::Reader)
            };
            let (after, limit) = page_query(req.uri().query().unwrap_or(""))?;
            let after = i64::try_from(after)
                .map_err(|_| ApiError::BadRequest("after is too large".into()))?;
            let (name, g2) = (name.to_string(), g.clone());
            let (head, p, rows, next) = blocking(move || {
                g2.read(|c| -> Result<_, ApiError> {
                    let p = crate::projection::load(c, &g2.info, &name)?
                        .ok_or_else(|| ApiError::NotFound(format!("no projection {name:?}")))?;
                    let head =
                        read::head(c).map_err(|e| ApiError::internal("reading the head", e))?;
                    let (rows, next) = crate::projection::read_page(
                        c,
                        &p,
                        &caller.identity,
                        role.name(),
                        after,
                        limit,
                    )?;
                    Ok((head, p.columns, rows, next))
                })
                .map_err(|e| ApiError::internal("reading a projection", e))?
            })
            .await?;
            let i = &g.info;
            Ok((
                StatusCode::OK,
                serde_json::json!({
                    "columns": p,
                    "rows": rows,
                    "next_after": next,
                    "head": read::sign_head(&w.key, &i.id, i.schema.version, &i.schema_hash, &head),
                }),
            ))
        }
        (Method::GET, ["v1", "groups", g, "rules"]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let v = blocking_read(&g, crate::access::rules_json).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::PUT, ["v1", "groups", g, "rules", table]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let table = table.to_string();
            let body: serde_json::Value = read_json(w, req).await?;
            let v = blocking(move || crate::access::set_rule(&g, &caller, &table, &body)).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::DELETE, ["v1", "groups", g, "rules", table]) => {
            let g = access(w, &caller, g, Role::Admin).await?;
            let table = table.to_string();
            let v = blocking(move || crate::access::remove_rule(&g, &caller, &table)).await?;
            Ok((StatusCode::OK, v))
        }
        (Method::GET, ["v1", "groups", g, "commits"]) => {
            let g = access(w, &caller, g, Role::Reader).await?;
            let (after, limit) = page_query(req.uri().query().unwrap_or(""))?;
            let g2 = g.clone();
            let dir = crate::snapshot::dir(&w.settings.data_dir, &g.info.id);
            let (head, commits) = blocking(move || {
                g2.read(|c| -> Result<_, ApiError> {
                    let pruned = read::pruned_through(c)?;
                    if after < pruned {
                        return Err(ApiError::SnapshotRequired {
                            pruned_through: pruned,
                            snapshot: crate::snapshot::latest(&dir)?.map(Box::new),
                        });
                    }
                    let head =
                        read::head(c).map_err(|e| ApiError::internal("reading the head", e))?;
                    let commits = read::log_page(c, after, limit, head.seq)?;
                    Ok((head, commits))
                })
                .map_err(|e| ApiError::internal("reading the log", e))?
            })
            .await?;
            let next_after = commits.last().map(|c| c.seq).filter(|s| *s < head.seq);
            let i = &g.info;
            json(
                StatusCode::OK,
                &CommitsPage {
                    commits,
                    head: read::sign_head(&w.key, &i.id, i.schema.version, &i.schema_hash, &head),
                    next_after,
                },
            )
        }
        (Method::POST, ["v1", "groups", g, "commits"]) => {
            let g = access(w, &caller, g, Role::Writer).await?;
            let body: CommitRequest = read_json(w, req).await?;
            let input = commit_input(body, caller.identity)?;
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
            json(status, &resp)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// `/v1/groups/<g>/snapshots/<seq>/data` → seq.
fn snapshot_data_seq(path: &str) -> Option<u64> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "groups", _, "snapshots", seq, "data"] => seq.parse().ok(),
        _ => None,
    }
}

/// Serves one byte range (`Range: bytes=a-` or `bytes=a-b`; at most
/// 8 MiB per answer, so a download resumes where it stopped).
async fn snapshot_data(
    w: &Arc<Witness>,
    req: &Request<Incoming>,
    seq: u64,
) -> Result<Range, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let caller = authenticate(w, req)?;
    let path = req.uri().path().to_string();
    let group = path.split('/').nth(3).unwrap_or("");
    let g = access(w, &caller, group, Role::Reader).await?;
    let (start, end) = match req.headers().get(hyper::header::RANGE) {
        None => (0, None),
        Some(v) => {
            let bad =
                || ApiError::BadRequest("Range must be 'bytes=START-' or 'bytes=START-END'".into());
            let spec = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("bytes="))
                .ok_or_else(bad)?;
            let (a, b) = spec.split_once('-').ok_or_else(bad)?;
            let start: u64 = a.parse().map_err(|_| bad())?;
            let end: Option<u64> = if b.is_empty() {
                None
            } else {
                Some(b.parse().map_err(|_| bad())?)
            };
            (start, end)
        }
    };
    let dir = crate::snapshot::dir(&w.settings.data_dir, &g.info.id);
    let (body, start, end, size) =
        blocking(move || crate::snapshot::read_range(&dir, seq, start, end)).await?;
    Ok(Range {
        body,
        start,
        end,
        size,
    })
}

fn group_json(w: &Witness, g: &crate::group::Group, head: &read::HeadState) -> GroupJson {
    let i = &g.info;
    GroupJson {
        group: i.id.clone(),
        schema: i.schema_json(),
        head: read::sign_head(&w.key, &i.id, i.schema.version, &i.schema_hash, head),
    }
}

/// The caller behind the bearer token (deny by default).
fn authenticate(w: &Witness, req: &Request<Incoming>) -> Result<Caller, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    w.settings.auth.caller(header)
}

/// The group, if the caller holds at least `need` in it. A caller with no
/// role gets the same answer whether or not the group exists.
async fn access(
    w: &Arc<Witness>,
    caller: &Caller,
    id: &str,
    need: Role,
) -> Result<Arc<crate::group::Group>, ApiError> {
    if caller.operator {
        return w.group(id);
    }
    let no_access = || ApiError::Forbidden {
        table: None,
        key: None,
        message: format!("no access to group {id:?}"),
    };
    let Ok(g) = w.group(id) else {
        return Err(no_access());
    };
    let (g2, who) = (g.clone(), caller.identity.clone());
    match blocking(move || g2.role_of(&who)).await? {
        None => Err(no_access()),
        Some(role) if role < need => Err(ApiError::Forbidden {
            table: None,
            key: None,
            message: format!(
                "role {} may not do this here (needs {})",
                role.name(),
                need.name()
            ),
        }),
        Some(_) => Ok(g),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    w: &Witness,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let limit = w.settings.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::BadRequest(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

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

fn page_query(q: &str) -> Result<(u64, u32), ApiError> {
    let (mut after, mut limit) = (0u64, DEFAULT_PAGE);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest("after must be a sequence number".into()))?
            }
            "limit" => {
                limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}"))
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("running a blocking task", e))?
}

async fn blocking_read<T: Send + 'static>(
    g: &Arc<crate::group::Group>,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let g = g.clone();
    blocking(move || {
        g.read(f)
            .and_then(|r| r)
            .map_err(|e| ApiError::internal("reading the group", e))
    })
    .await
}
