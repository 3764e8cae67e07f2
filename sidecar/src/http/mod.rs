//! HTTP transport: the accept loop with connection bounds and graceful
//! shutdown, routing each request to its resource's file, and turning
//! answers and errors into responses. A call's context (caller, bounded
//! body, query, admission of its work) is `call`; bounds on connections
//! are `connections`; JSON bodies for hyper's own error answers are
//! `own_errors`.

mod access;
mod call;
mod commits;
mod connections;
mod groups;
mod held;
mod migrations;
mod own_errors;
mod projections;
pub mod route;
mod snapshots;
pub mod tls;
mod tokens;

use crate::error::ApiError;
use crate::witness::Witness;
use call::{Answer, Call, Reply};
use held::{Deadline, HeldBody, Hold, WriteTimeout};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use own_errors::{OwnErrors, REQUEST_ID};
use route::Route;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer per connection and the largest request head (which
/// bounds the memory an idle connection can make the witness hold).
const READ_BUFFER: usize = 64 * 1024;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves, then stops accepting,
/// lets open requests finish (bounded), and stops the group writers. With
/// `tls`, every connection is TLS.
pub async fn run(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let background = tokio::spawn(witness.clone().run_background());
    let limits = witness.admission.limits().clone();
    let conns = connections::Connections::new(
        limits.max_connections,
        limits.max_connections_per_ip,
        witness.metrics.connections.clone(),
    );
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
                let open = match conns.admit(peer.ip()) {
                    Ok(open) => open,
                    Err(e) => {
                        tracing::debug!(%peer, code = e.code(), "connection refused");
                        tokio::spawn(connections::refuse(stream, e));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (w, watcher, tls) = (witness.clone(), graceful.watcher(), tls.clone());
                let limits = limits.clone();
                tokio::spawn(async move {
                    let _open = open;
                    match tls {
                        None => serve(w, watcher, stream, peer, &limits).await,
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                                Ok(Ok(stream)) => serve(w, watcher, stream, peer, &limits).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    background.abort();
    drop(listener);
    // Head watches answer now (with the current head), so they do not
    // hold the drain.
    witness.heads.stop();
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

/// Serves HTTP/1.1 on one connection until it closes or the witness
/// shuts down.
async fn serve<S>(
    w: Arc<Witness>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: S,
    peer: std::net::SocketAddr,
    limits: &crate::limits::Limits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ip = peer.ip();
    let deadline = Deadline::default();
    let answers = deadline.clone();
    let service =
        hyper::service::service_fn(move |req| handle(w.clone(), req, ip, answers.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(READ_BUFFER)
        .max_header_size(READ_BUFFER)
        .serve_connection(
            TokioIo::new(OwnErrors::new(WriteTimeout::new(
                stream,
                limits.write_timeout,
                deadline,
            ))),
            service,
        );
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A request id: the client's `x-request-id` when it is a sensible one,
/// else a fresh one. It goes back in the answer and into the log line.
fn request_id(req: &Request<Incoming>) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
    match given {
        Some(v) => v.to_string(),
        None => format!(
            "{:08x}-{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

/// Answers this large and larger count against the memory bounds of
/// request bodies while they are written (smaller ones fit hyper's own
/// bounded buffers).
const COUNTED_ANSWER: usize = 64 * 1024;

async fn handle(
    w: Arc<Witness>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Deadline,
) -> Result<Response<HeldBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let id = request_id(&req);
    // A request refused before its body was read leaves the body on the
    // connection, so hyper closes it after answering; saying so keeps a
    // client from reusing it for its next request (which would then fail
    // as a lost answer).
    let has_body = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
    let endpoint = Route::parse(&method, &path).map_or("none", |r| r.name());
    let metrics = w.metrics.clone();
    let admission = w.clone();
    let (answered, slot) = answer(w, req, peer).await;
    let mut hold = Hold {
        _slot: slot,
        bytes: None,
    };
    let (status, resp) = match answered {
        Ok(Reply::Json(status, body)) => (status, json_response(status, &body)),
        Ok(Reply::Text(content_type, body)) => {
            let mut resp = Response::new(Bytes::from(body));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            (StatusCode::OK, resp)
        }
        Ok(Reply::Range {
            body,
            start,
            end,
            size,
        }) => {
            let mut resp = Response::new(Bytes::from(body));
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
        Err(e) => error_response(&e, has_body, &metrics),
    };
    // A large answer holds its bytes, as a request body does, until it
    // has been written: over the bounds it is not sent.
    let len = resp.body().len();
    let (status, mut resp) = if method != Method::HEAD && len >= COUNTED_ANSWER {
        match admission.admission.body_bytes(&mut hold.bytes, peer, len) {
            Ok(()) => (status, resp),
            Err(e) => {
                hold.bytes = None;
                error_response(&e, has_body, &metrics)
            }
        }
    } else {
        (status, resp)
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    let resp = if method == Method::HEAD {
        // No body goes with a HEAD answer; say so in its length too.
        resp.map(|_| HeldBody::empty())
    } else {
        let limits = admission.admission.limits();
        let (timeout, rate) = (limits.write_timeout, limits.min_write_rate);
        resp.map(|b| HeldBody::new(b, hold, &deadline, timeout, rate))
    };
    metrics.request(endpoint, status.as_u16(), start.elapsed().as_secs_f64());
    tracing::info!(
        request_id = %id,
        %method,
        path = %path,
        status = status.as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "request"
    );
    Ok(resp)
}

fn error_response(
    e: &ApiError,
    has_body: bool,
    metrics: &crate::metrics::Metrics,
) -> (StatusCode, Response<Bytes>) {
    metrics.error(e.code());
    let body = serde_json::to_value(e.body()).unwrap_or_default();
    let mut resp = json_response(e.status(), &body);
    if let Some(secs) = e.retry_after() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if has_body {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    (e.status(), resp)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Routes a request: unknown paths first, then the caller (deny by
/// default), then the resource's handler.
/// The caller's slot comes back with the answer: it is held until the
/// answer has been written.
async fn answer(
    w: Arc<Witness>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> (Answer, Option<crate::admit::CallerSlot>) {
    let Some(route) = Route::parse(req.method(), req.uri().path()) else {
        let e = ApiError::NotFound(format!("no such endpoint: {}", req.uri().path()));
        return (Err(e), None);
    };
    if route.is_public() {
        return (groups::public(&w, &route).await, None);
    }
    let mut call = match Call::new(w, req, peer).await {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    let answered = route_call(&mut call, route).await;
    (answered, call.take_slot())
}

async fn route_call(call: &mut Call, route: Route) -> Answer {
    match route {
        Route::Health | Route::Witness => groups::public(&call.w, &route).await,
        Route::Metrics => groups::metrics(call).await,
        Route::Groups => groups::collection(call).await,
        Route::Group(g) => groups::one(call, &g).await,
        Route::Head(g) => groups::head(call, &g).await,
        Route::Stats(g) => groups::stats(call, &g).await,
        Route::Commits(g) => commits::handle(call, &g).await,
        Route::Snapshots(g) => snapshots::make(call, &g).await,
        Route::LatestSnapshot(g) => snapshots::latest(call, &g).await,
        Route::SnapshotData(g, seq) => snapshots::data(call, &g, seq).await,
        Route::Members(g) => access::members(call, &g).await,
        Route::Member(g, who) => access::member(call, &g, &who).await,
        Route::Rules(g) => access::rules(call, &g).await,
        Route::Rule(g, table) => access::rule(call, &g, &table).await,
        Route::Projections(g) => projections::list(call, &g).await,
        Route::Projection(g, name) => projections::one(call, &g, &name).await,
        Route::Migrations(g) => migrations::handle(call, &g).await,
        Route::Tokens => tokens::collection(call).await,
        Route::Token(who) => tokens::one(call, &who).await,
    }
}
