//! The players' port: HTTP for `/health` and `/readyz`, and the WebSocket upgrade
//! (accepted on any path; `?room=` is only a routing hint).

pub mod rate;
pub mod session;

use crate::server::App;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

type Body = Full<Bytes>;

/// Accepts connections until `stop`. During the shutdown drain (before `stop`) the
/// port stays open so probes read `/readyz` 503 and upgrades get a clear 503.
pub async fn accept_loop(listener: TcpListener, app: Arc<App>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, _peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: log, back off briefly, go on.
                tracing::warn!(error = %e, "accept_failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        // Plain HTTP exchanges are short and not waited for at shutdown; the
        // WebSocket sessions they upgrade to are (see `upgrade`).
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, app)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn route(req: Request<Incoming>, app: Arc<App>) -> Response<Body> {
    if is_upgrade(&req) {
        return upgrade(req, app);
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok"),
        "/readyz" if app.is_ready() => text(StatusCode::OK, "ready"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
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

fn upgrade(mut req: Request<Incoming>, app: Arc<App>) -> Response<Body> {
    if !app.is_ready() {
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
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        // Small buffers keep an idle socket cheap (tungstenite's default read buffer
        // is 128 KiB); frames above the maximum fail with Capacity → close 1009.
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(app.config.max_message_bytes))
        .max_frame_size(Some(app.config.max_message_bytes));
    let task_app = app.clone();
    app.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(ws, task_app).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade_failed"),
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
