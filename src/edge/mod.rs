//! The players' port: HTTP for `/health` and `/readyz`, and the WebSocket upgrade
//! (accepted on any path; `?room=` is only a routing hint).
//!
//! Every connection takes a place under the connection caps (`admission`) before
//! hyper sees it, every request's headers must arrive within `HTTP_HEADER_TIMEOUT_MS`
//! (which also ends idle keep-alive connections), and an upgraded socket is handed
//! over as the raw `TcpStream`: from there `session` and `connection` speak
//! WebSocket themselves (pre-built frames, vectored writes, the close handshake).

pub mod admission;
pub mod connection;
pub mod frame;
pub mod hook;
pub mod rate;
pub mod session;
pub mod stall;

use crate::server::App;
use crate::telemetry::Metrics;
use admission::{ConnectionSlot, Refusal};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

type Body = Full<Bytes>;

/// Connections refused by the caps that are still answered (503, or `/health`), at
/// most; past it a refused connection is closed at once.
const OVERFLOW_ANSWERED: usize = 64;
/// How long a refused connection gets to send its request.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff bounds when `accept` fails for lack of file descriptors.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections until `stop`. During the shutdown drain (before `stop`) the
/// port stays open so probes read `/readyz` 503 and upgrades get a clear 503.
pub async fn accept_loop(listener: TcpListener, app: Arc<App>, stop: CancellationToken) {
    let overflow = Arc::new(AtomicUsize::new(0));
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) and similar: the pending
                // connection stays in the backlog, so retrying at once would spin.
                // Back off, and log once per episode rather than per attempt.
                if !failing {
                    tracing::warn!(error = %e, "accept_failed");
                    failing = true;
                }
                Metrics::inc(&app.metrics.counters.accept_failures_total);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if failing {
            tracing::info!("accept_recovered");
            failing = false;
            backoff = ACCEPT_BACKOFF_FIRST;
        }
        let _ = tcp.set_nodelay(true);
        let ip = peer.ip().to_canonical();
        match app.limits.admit(ip) {
            Ok(slot) => {
                tokio::spawn(serve_http(tcp, ip, app.clone(), slot));
            }
            Err(refusal) => {
                Metrics::inc(&app.metrics.counters.connections_refused_total);
                if overflow.fetch_add(1, Ordering::AcqRel) < OVERFLOW_ANSWERED {
                    let overflow = overflow.clone();
                    tokio::spawn(async move {
                        serve_refused(tcp, refusal).await;
                        overflow.fetch_sub(1, Ordering::AcqRel);
                    });
                } else {
                    overflow.fetch_sub(1, Ordering::AcqRel);
                    drop(tcp);
                }
            }
        }
    }
}

/// Serves one admitted connection: plain HTTP exchanges, or one upgrade. The
/// connection's place is handed to the WebSocket session if it upgrades; otherwise
/// it is given back when the connection ends.
async fn serve_http(tcp: TcpStream, ip: IpAddr, app: Arc<App>, slot: ConnectionSlot) {
    let slot = Arc::new(Mutex::new(Some(slot)));
    let header_timeout = app.config.http_header_timeout;
    let service = hyper::service::service_fn(move |req| {
        let (app, slot) = (app.clone(), slot.clone());
        async move { Ok::<_, std::convert::Infallible>(route(req, app, ip, &slot).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Covers a request's headers and the wait for the next request on a
        // keep-alive connection, so neither a slowloris nor an idle connection stays.
        .header_read_timeout(header_timeout)
        .max_buf_size(16 * 1024)
        // A response that waits as long for a client that does not read it ends the
        // connection too (stall.rs).
        .serve_connection(
            TokioIo::new(stall::WriteStall::new(tcp, header_timeout)),
            service,
        )
        .with_upgrades()
        .await;
}

/// Answers a connection the caps refused: `/health` still says the process is up,
/// everything else is 503 with `Retry-After`, and the connection closes.
async fn serve_refused(tcp: TcpStream, refusal: Refusal) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
        let mut response = match req.uri().path() {
            "/health" if !is_upgrade(&req) => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, refusal.as_str()),
        };
        if response.status() != StatusCode::OK {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        Ok::<_, std::convert::Infallible>(response)
    });
    let serve = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(OVERFLOW_TIMEOUT)
        .keep_alive(false)
        .serve_connection(
            TokioIo::new(stall::WriteStall::new(tcp, OVERFLOW_TIMEOUT)),
            service,
        );
    let _ = tokio::time::timeout(OVERFLOW_TIMEOUT * 2, serve).await;
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn route(
    req: Request<Incoming>,
    app: Arc<App>,
    ip: IpAddr,
    slot: &Mutex<Option<ConnectionSlot>>,
) -> Response<Body> {
    if is_upgrade(&req) {
        return upgrade(req, app, ip, slot);
    }
    // The migration bridge exists only while its secret is configured.
    let hook_secret = app.config.broadcast_secret.clone();
    match (req.method(), req.uri().path(), hook_secret) {
        (_, "/health", _) => text(StatusCode::OK, "ok"),
        (_, "/readyz", _) => match app.not_ready_because() {
            None => text(StatusCode::OK, "ready"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (&hyper::Method::POST, "/api/broadcast", Some(secret)) => {
            hook::broadcast(req, app, ip, &secret.0).await
        }
        (&hyper::Method::GET, "/api/metrics", Some(_)) => hook::metrics(&app),
        (_, "/api/broadcast" | "/api/metrics", Some(_)) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    header_has(req, UPGRADE, "websocket") && header_has(req, CONNECTION, "upgrade")
}

fn upgrade(
    mut req: Request<Incoming>,
    app: Arc<App>,
    ip: IpAddr,
    slot: &Mutex<Option<ConnectionSlot>>,
) -> Response<Body> {
    if app.is_shutting_down() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let version_ok = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if !version_ok {
        return text(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
    }
    // One upgrade per connection: it takes the connection's place with it.
    let Some(slot) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return text(StatusCode::BAD_REQUEST, "connection already upgraded");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    app.tasks.spawn(async move {
        // The 101 goes out behind whatever the connection still had to send; a
        // client that never reads it must not hold the socket (and its place).
        let limit = task_app.config.http_header_timeout;
        let upgraded = match tokio::time::timeout(limit, on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upgrade_failed");
                return;
            }
            Err(_) => {
                tracing::debug!("upgrade_timed_out");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<stall::WriteStall<TcpStream>>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner().into_inner();
                session::run(stream, parts.read_buf, ip, task_app, slot).await;
            }
            // The players' port serves plain TCP, so this does not happen.
            Err(_) => tracing::error!("upgrade_not_tcp"),
        }
    });
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}
