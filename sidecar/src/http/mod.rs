//! HTTP transport: the accept loop with graceful shutdown, routing each
//! request to its resource's file, and turning answers and errors into
//! responses. A call's context (caller, bounded body, query) is `call`.

mod access;
mod call;
mod commits;
mod groups;
mod projections;
pub mod route;
mod snapshots;

use crate::error::ApiError;
use crate::witness::Witness;
use call::{Answer, Call, Reply};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use route::Route;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves, then stops accepting,
/// lets open requests finish (bounded), and stops the group writers after
/// their queued commits are durable.
pub async fn run(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let policy = tokio::spawn(witness.clone().run_snapshot_policy());
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

async fn handle(
    w: Arc<Witness>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (status, resp) = match answer(w, req).await {
        Ok(Reply::Json(status, body)) => (status, json_response(status, &body)),
        Ok(Reply::Range {
            body,
            start,
            end,
            size,
        }) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                h.insert(CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, resp)
        }
        Err(e) => {
            let body = serde_json::to_value(e.body()).unwrap_or_default();
            (e.status(), json_response(e.status(), &body))
        }
    };
    tracing::info!(
        %method,
        path = %path,
        status = status.as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    Ok(resp)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Routes a request: unknown paths first, then the caller (deny by
/// default), then the resource's handler.
async fn answer(w: Arc<Witness>, req: Request<Incoming>) -> Answer {
    let Some(route) = Route::parse(req.method(), req.uri().path()) else {
        return Err(ApiError::NotFound(format!(
            "no such endpoint: {}",
            req.uri().path()
        )));
    };
    if route.is_public() {
        return groups::public(&w, &route);
    }
    let mut call = Call::new(w, req).await?;
    match route {
        Route::Health | Route::Witness => groups::public(&call.w, &route),
        Route::Groups => groups::collection(&mut call).await,
        Route::Group(g) => groups::one(&call, &g).await,
        Route::Head(g) => groups::head(&call, &g).await,
        Route::Stats(g) => groups::stats(&call, &g).await,
        Route::Commits(g) => commits::handle(&mut call, &g).await,
        Route::Snapshots(g) => snapshots::make(&call, &g).await,
        Route::LatestSnapshot(g) => snapshots::latest(&call, &g).await,
        Route::SnapshotData(g, seq) => snapshots::data(&call, &g, seq).await,
        Route::Members(g) => access::members(&call, &g).await,
        Route::Member(g, who) => access::member(&mut call, &g, &who).await,
        Route::Rules(g) => access::rules(&call, &g).await,
        Route::Rule(g, table) => access::rule(&mut call, &g, &table).await,
        Route::Projections(g) => projections::list(&call, &g).await,
        Route::Projection(g, name) => projections::one(&mut call, &g, &name).await,
    }
}
