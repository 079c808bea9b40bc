//! The existing backend's HTTP broadcast hook, `POST /api/broadcast` (a migration
//! bridge; docs/admin-api.md says why and how to move off it).
//!
//! Today's Next.js backend does not speak gRPC: after each of its own API calls it
//! POSTs the event to the realtime server. This is one more way into a room's owner,
//! on the same path as the admin plane: each event becomes one `Origin::Server`
//! command, with the same version bump, broadcasts, persisted row, counters and log
//! lines. It exists only while `REALTIME_BROADCAST_SECRET` is set (otherwise 404),
//! the secret is compared in constant time, the body is bounded in size and time,
//! and failed secrets are counted and limited per source address.

use crate::observe::Origin;
use crate::protocol::hook::{self, HookRequest};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use crate::server::App;
use crate::telemetry::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Largest request body accepted (413 past it). An event is a few hundred bytes.
pub const BODY_MAX: usize = 64 * 1024;
/// How long the body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Wrong secrets one address may send per minute; past it, 429 without looking.
pub const FAILED_SECRETS_PER_MINUTE: u32 = 10;

type Body = Full<Bytes>;

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": message }))
}

/// Answers `POST /api/broadcast` (the route exists only with a secret configured).
pub async fn broadcast(
    req: Request<Incoming>,
    app: Arc<App>,
    ip: IpAddr,
    secret: &[u8],
) -> Response<Body> {
    let c = &app.metrics.counters;
    Metrics::inc(&c.http_broadcast_attempts_total);
    let response = handle(req, &app, ip, secret).await;
    Metrics::inc(if response.status() == StatusCode::OK {
        &c.http_broadcast_success_total
    } else {
        &c.http_broadcast_failures_total
    });
    response
}

async fn handle(
    req: Request<Incoming>,
    app: &Arc<App>,
    ip: IpAddr,
    secret: &[u8],
) -> Response<Body> {
    let body = Limited::new(req.into_body(), BODY_MAX);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "unreadable request body"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let Ok(request) = serde_json::from_slice::<HookRequest>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    // The secret first: an unauthenticated caller learns nothing about rooms. Past
    // the budget of failures an address is refused without a comparison.
    let now = Instant::now();
    if app.hook_failures.is_spent(ip, now) {
        Metrics::inc(&app.metrics.counters.http_broadcast_auth_failures_total);
        return error(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts");
    }
    let given = request.secret.as_deref().unwrap_or_default().as_bytes();
    if !bool::from(given.ct_eq(secret)) {
        Metrics::inc(&app.metrics.counters.http_broadcast_auth_failures_total);
        app.hook_failures.allow(ip, now);
        // One line per failure, at most FAILED_SECRETS_PER_MINUTE per address.
        tracing::warn!(ip = %ip, "broadcast_auth_failed");
        return error(StatusCode::FORBIDDEN, "Invalid secret");
    }
    let (Some(room_code), Some(event)) = (request.room_code, request.event) else {
        return error(StatusCode::BAD_REQUEST, "roomCode and event are required");
    };
    if let Err(why) = crate::protocol::check_room_code("roomCode", &room_code) {
        return error(StatusCode::BAD_REQUEST, &why.message);
    }
    let event = match hook::decode(&room_code, event) {
        Ok(event) => event,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why.message),
    };
    // Before any room is looked up or created: a server shutting down makes none.
    if app.is_shutting_down() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    let room = if app.config.allow_client_seeded_rooms {
        // As the Node server did: an unknown room is created, empty.
        app.registry
            .get_or_create(&room_code, || {
                Room::new(&room_code, Vec::new(), Default::default())
            })
            .await
    } else {
        app.registry
            .find(&room_code)
            .await
            .map_err(|why| match why.code {
                ErrorCode::RoomNotFound => {
                    Rejection::new(ErrorCode::RoomNotFound, "room_not_found")
                }
                _ => why,
            })
    };
    let room = match room {
        Ok(room) => room,
        Err(why) => return refusal(&why),
    };
    match room.apply(Origin::Server, event.action).await {
        Ok(applied) => {
            let client_count = room.info().await.map(|i| i.connections).unwrap_or(0);
            tracing::info!(
                roomCode = %room_code,
                r#type = event.kind,
                version = applied.version,
                clientCount = client_count,
                "broadcast_success"
            );
            json(
                StatusCode::OK,
                serde_json::json!({"success": true, "clientCount": client_count}),
            )
        }
        Err(why) => {
            tracing::info!(roomCode = %room_code, r#type = event.kind, error = %why, "broadcast_failed");
            refusal(&why)
        }
    }
}

/// The HTTP answer for a room's refusal.
fn refusal(why: &Rejection) -> Response<Body> {
    let status = match why.code {
        ErrorCode::RoomNotFound => return error(StatusCode::NOT_FOUND, "room_not_found"),
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::InvalidTransition => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, &why.message)
}

/// Answers `GET /api/metrics` as the Node service did: its counters as JSON.
pub fn metrics(app: &App) -> Response<Body> {
    let stats: serde_json::Map<String, serde_json::Value> = app
        .metrics
        .counters
        .read()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.into()))
        .collect();
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    json(
        StatusCode::OK,
        serde_json::json!({
            "success": true,
            "stats": stats,
            "activeRooms": app.registry.len(),
            "timestamp": i64::try_from(timestamp).unwrap_or(i64::MAX),
        }),
    )
}
