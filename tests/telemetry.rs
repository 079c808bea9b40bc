//! OpenTelemetry export of the real binary to an OTLP receiver inside this test
//! process (the collector's trace and metrics gRPC services, from
//! `opentelemetry-proto`): spans with their attributes and parent/child links, an
//! admin call's trace reaching the broadcast and the persistence batch, the metrics
//! under the spec's names with the numbers `metrics_flush` reports, trace ids in log
//! lines; and a receiver that is down or never answers, which the game never feels.
//!
//! Every wait polls the receiver's state or the child's log with a deadline.

mod binproc;
mod common;

use binproc::{Proc, WAIT};
use common::Client;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "telemetry-test-secret-0123456789";
const ADMIN_TOKEN: &str = "telemetry-admin-token-0123456789";

/// What the receiver got: every span, and the latest value of every metric.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    /// Metric name → latest data point value (sums and gauges as f64; histograms
    /// as their count).
    metrics: Arc<Mutex<HashMap<String, f64>>>,
    resources: Arc<Mutex<Vec<Vec<KeyValue>>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let body = request.into_inner();
        let mut spans = self.spans.lock().expect("spans lock");
        for rs in body.resource_spans {
            if let Some(r) = rs.resource {
                self.resources
                    .lock()
                    .expect("resources lock")
                    .push(r.attributes);
            }
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let body = request.into_inner();
        let mut metrics = self.metrics.lock().expect("metrics lock");
        for rm in body.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let value = match &m.data {
                        Some(Data::Sum(s)) => s.data_points.last().map(number),
                        Some(Data::Gauge(g)) => g.data_points.last().map(number),
                        Some(Data::Histogram(h)) => h.data_points.last().map(|p| p.count as f64),
                        _ => None,
                    };
                    if let Some(v) = value {
                        metrics.insert(m.name.clone(), v);
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => i as f64,
        Some(Value::AsDouble(d)) => d,
        None => f64::NAN,
    }
}

/// Starts the receiver on a free loopback port.
async fn receiver() -> (Received, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let received = Received::default();
    let service = received.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service.clone()))
            .add_service(MetricsServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (received, port)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until `pred` holds for the receiver's spans; returns the first span that
/// satisfies `find`.
async fn span_where(received: &Received, what: &str, find: impl Fn(&Span) -> bool) -> Span {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = received
            .spans
            .lock()
            .expect("spans lock")
            .iter()
            .find(|s| find(s))
        {
            return s.clone();
        }
        if Instant::now() > deadline {
            let names: Vec<String> = received
                .spans
                .lock()
                .expect("spans lock")
                .iter()
                .map(|s| s.name.clone())
                .collect();
            panic!("no span {what} within {WAIT:?}; got {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric_at_least(received: &Received, name: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = received.metrics.lock().expect("metrics lock").get(name)
            && *v >= at_least
        {
            return *v;
        }
        if Instant::now() > deadline {
            let got: Vec<String> = received
                .metrics
                .lock()
                .expect("metrics lock")
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            panic!("metric {name} did not reach {at_least} within {WAIT:?}; got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn server_env(endpoint: &str, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("ADMIN_BIND_ADDR", "127.0.0.1"),
        ("BIND_ADDR", "127.0.0.1"),
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("DATABASE_URL", "sqlite://game.db"),
        ("METRICS_FLUSH_INTERVAL_MS", "200"),
        ("OTEL_SERVICE_NAME", "karaoke-test"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("SHUTDOWN_GRACE_MS", "2000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.to_string()));
    for (k, v) in extra {
        vars.push((k.to_string(), v.to_string()));
    }
    vars
}

fn spawn(vars: &[(String, String)]) -> Proc {
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(&refs)
}

/// Adds the admin bearer token to every call.
type AuthFn =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

type Admin = RoomAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AuthFn>,
>;

async fn admin(proc: &mut Proc) -> Admin {
    let port = proc.find_message("admin_plane_listening").await["port"]
        .as_u64()
        .expect("admin port");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("admin connects");
    let auth: AuthFn = Box::new(|mut req: tonic::Request<()>| {
        let value = format!("Bearer {ADMIN_TOKEN}")
            .parse()
            .map_err(|_| tonic::Status::internal("header"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    });
    RoomAdminClient::with_interceptor(channel, auth)
}

/// A request carrying a W3C `traceparent` of the given trace and parent span.
fn traced<T>(body: T, trace_id: &str, parent: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    let value = format!("00-{trace_id}-{parent}-01")
        .parse()
        .expect("traceparent is ASCII");
    req.metadata_mut().insert("traceparent", value);
    req
}

fn host() -> pb::Player {
    pb::Player {
        id: "host".into(),
        name: "Ada".into(),
        is_host: true,
        ..Default::default()
    }
}

async fn mint(admin: &mut Admin, room: &str, player: &str) -> String {
    admin
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: room.into(),
            player_id: player.into(),
            ttl_seconds: 0,
        })
        .await
        .expect("mint")
        .into_inner()
        .token
}

#[tokio::test]
async fn a_game_is_traced_and_measured_through_otlp() {
    let (received, port) = receiver().await;
    let vars = server_env(&format!("http://127.0.0.1:{port}"), &[]);
    let mut server = spawn(&vars);
    let ws_port = server.listening_port().await;
    let mut admin = admin(&mut server).await;

    // The backend creates the room inside its own trace.
    let create_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let backend_span = "00f067aa0ba902b7";
    let room = admin
        .create_room(traced(
            pb::CreateRoomRequest {
                code: "OTEL1".into(),
                host: Some(host()),
                settings: None,
            },
            create_trace,
            backend_span,
        ))
        .await
        .expect("create")
        .into_inner()
        .room
        .expect("room");
    let token = mint(&mut admin, &room.code, "host").await;
    let mut player = Client::connect(ws_port, &room.code, WAIT).await;
    let hello = player.join(&room.code, "host", &token).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    player.set_ready(&room.code, "host", true).await;
    // A message the rules refuse (a big idea in the lobby): its span is an error.
    player
        .send(serde_json::json!({"type":"submit_big_idea","roomCode":room.code,"adlobId":"ad1","text":"too early"}))
        .await;
    // (after the ready toggle's own broadcasts, which come first)
    let error = loop {
        let v = player.recv().await;
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(error["code"], "invalid_transition", "{error}");

    // An admin change in another trace: the call, the room's command, its broadcast
    // and the persistence batch that stored its event row are one trace.
    let upsert_trace = "0af7651916cd43dd8448eb211c80319c";
    let upsert_parent = "b7ad6b7169203331";
    let version = admin
        .upsert_player(traced(
            pb::UpsertPlayerRequest {
                room_code: room.code.clone(),
                player: Some(pb::Player {
                    id: "p2".into(),
                    name: "Bo".into(),
                    seat_index: 1,
                    ..Default::default()
                }),
            },
            upsert_trace,
            upsert_parent,
        ))
        .await
        .expect("upsert")
        .into_inner()
        .version;
    let joined = player.see("player_joined", version).await;
    assert_eq!(joined["player"]["id"], "p2");

    let in_trace = |trace: &'static str| move |s: &Span| hex(&s.trace_id) == trace;
    let call = span_where(&received, "for UpsertPlayer", |s| {
        in_trace(upsert_trace)(s) && s.name == "karaoke.admin.v1.RoomAdmin/UpsertPlayer"
    })
    .await;
    assert_eq!(
        hex(&call.parent_span_id),
        upsert_parent,
        "admin span continues the caller"
    );
    assert_eq!(attr_str(&call, "rpc.system"), "grpc");
    assert_eq!(attr_str(&call, "rpc.service"), "karaoke.admin.v1.RoomAdmin");
    assert_eq!(attr_str(&call, "rpc.method"), "UpsertPlayer");
    assert_eq!(attr_str(&call, "rpc.grpc.status_code"), "0");
    let command = span_where(&received, "room.command upsert_player", |s| {
        in_trace(upsert_trace)(s) && s.name == "room.command upsert_player"
    })
    .await;
    assert_eq!(
        command.parent_span_id, call.span_id,
        "command is the call's child"
    );
    assert_eq!(attr_str(&command, "karaoke.outcome"), "applied");
    assert_eq!(
        attr_str(&command, "karaoke.room.version"),
        version.to_string()
    );
    assert_eq!(attr_str(&command, "karaoke.room.code"), room.code);
    let broadcast = span_where(&received, "room.broadcast player_joined", |s| {
        in_trace(upsert_trace)(s) && s.name == "room.broadcast player_joined"
    })
    .await;
    assert_eq!(broadcast.parent_span_id, command.span_id);
    assert_eq!(
        attr_str(&broadcast, "karaoke.room.version"),
        version.to_string()
    );
    let stored = |s: &Span| {
        s.name == "persist.batch"
            && (hex(&s.trace_id) == upsert_trace
                || s.links.iter().any(|l| hex(&l.trace_id) == upsert_trace))
    };
    let batch = span_where(&received, "persist.batch storing the upsert", stored).await;
    assert_eq!(attr_str(&batch, "db.system.name"), "sqlite");
    assert_eq!(attr_str(&batch, "karaoke.outcome"), "written");
    assert!(
        attr_str(&batch, "db.operation.batch.size")
            .parse::<u64>()
            .unwrap_or(0)
            >= 1,
        "{batch:?}"
    );

    // The create call is in the backend's trace too.
    let create = span_where(&received, "for CreateRoom", |s| {
        in_trace(create_trace)(s) && s.name == "karaoke.admin.v1.RoomAdmin/CreateRoom"
    })
    .await;
    assert_eq!(hex(&create.parent_span_id), backend_span);
    // A refused call says why.
    let refused = admin
        .force_phase(traced(
            pb::ForcePhaseRequest {
                room_code: "NO-SUCH-ROOM".into(),
                status: pb::GameStatus::Lobby as i32,
                ..Default::default()
            },
            create_trace,
            backend_span,
        ))
        .await
        .expect_err("no such room");
    let forced = span_where(&received, "for the refused ForcePhase", |s| {
        s.name == "karaoke.admin.v1.RoomAdmin/ForcePhase"
    })
    .await;
    assert_eq!(
        attr_str(&forced, "rpc.grpc.status_code"),
        (refused.code() as i32).to_string()
    );

    // The player's join and message: attributes, outcome, version.
    let join = span_where(&received, "ws.join", |s| s.name == "ws.join").await;
    assert_eq!(attr_str(&join, "karaoke.room.code"), room.code);
    assert_eq!(attr_str(&join, "karaoke.player.id"), "host");
    assert_eq!(attr_str(&join, "karaoke.outcome"), "joined");
    assert_eq!(attr_str(&join, "karaoke.token.form"), "jwt");
    let ready = span_where(&received, "ws.message set_ready", |s| {
        s.name == "ws.message set_ready"
    })
    .await;
    assert_eq!(attr_str(&ready, "karaoke.outcome"), "applied");
    let refused = span_where(&received, "ws.message big_idea", |s| {
        s.name == "ws.message big_idea"
    })
    .await;
    assert_eq!(attr_str(&refused, "karaoke.outcome"), "rejected");
    assert_eq!(attr_str(&refused, "error.type"), "invalid_transition");
    let status = refused.status.as_ref().map(|s| s.code);
    assert_eq!(status, Some(2), "STATUS_CODE_ERROR: {:?}", refused.status);
    assert_eq!(attr_str(&ready, "karaoke.player.id"), "host");
    assert!(
        attr_str(&ready, "karaoke.room.version")
            .parse::<u64>()
            .is_ok()
    );
    span_where(&received, "rooms.restore", |s| s.name == "rooms.restore").await;

    // A log line written inside the join carries its ids.
    let success = server.find_message("join_room_success").await;
    assert_eq!(success["traceId"], hex(&join.trace_id), "{success}");
    assert_eq!(success["spanId"], hex(&join.span_id), "{success}");

    // Metrics under the spec's names, equal to what metrics_flush reports.
    assert_eq!(
        metric_at_least(&received, "join_room_success_total", 1.0).await,
        1.0
    );
    assert_eq!(
        metric_at_least(&received, "join_room_attempts_total", 1.0).await,
        1.0
    );
    assert_eq!(
        metric_at_least(&received, "ready_update_success_total", 1.0).await,
        1.0
    );
    metric_at_least(&received, "ws_connections_total", 1.0).await;
    metric_at_least(&received, "ws_messages_total", 1.0).await;
    metric_at_least(&received, "event_persist_success_total", 1.0).await;
    assert_eq!(metric_at_least(&received, "rooms_live", 1.0).await, 1.0);
    assert_eq!(
        metric_at_least(&received, "ws_connections_live", 1.0).await,
        1.0
    );
    metric_at_least(&received, "persist_queue_depth", 0.0).await;
    metric_at_least(&received, "message_handling_seconds", 1.0).await;
    metric_at_least(&received, "broadcast_fanout_seconds", 1.0).await;
    metric_at_least(&received, "persist_batch_seconds", 1.0).await;
    let mut flushed: HashMap<String, u64> = HashMap::new();
    while flushed.get("join_room_success_total").copied().unwrap_or(0) < 1 {
        for (k, v) in server.next_flush().await {
            *flushed.entry(k).or_default() += v.as_u64().unwrap_or(0);
        }
    }
    assert_eq!(flushed["join_room_attempts_total"], 1);
    assert_eq!(
        flushed
            .get("otel_export_failures_total")
            .copied()
            .unwrap_or(0),
        0
    );
    let resource = received.resources.lock().expect("resources lock")[0].clone();
    let get = |k: &str| {
        resource
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        get("service.name"),
        Some(AnyValue::StringValue("karaoke-test".into()))
    );
    assert_eq!(
        get("deployment.environment"),
        Some(AnyValue::StringValue("test".into()))
    );

    // Shutdown is traced and flushed before the process exits.
    server.sigterm().await;
    let status = server.wait_exit().await;
    assert!(status.success(), "{status:?}");
    span_where(&received, "server.shutdown", |s| {
        s.name == "server.shutdown"
    })
    .await;
}

/// Plays a short game against a server whose collector is unreachable or silent:
/// everything works, the failures are counted, and logged once.
async fn game_despite(endpoint: String) {
    let vars = server_env(&endpoint, &[]);
    let mut server = spawn(&vars);
    let ws_port = server.listening_port().await;
    let mut admin = admin(&mut server).await;
    let room = admin
        .create_room(traced(
            pb::CreateRoomRequest {
                code: "DOWN1".into(),
                host: Some(host()),
                settings: None,
            },
            "5bf92f3577b34da6a3ce929d0e0e4736",
            "10f067aa0ba902b7",
        ))
        .await
        .expect("create despite the collector")
        .into_inner()
        .room
        .expect("room");
    let token = mint(&mut admin, &room.code, "host").await;
    let mut player = Client::connect(ws_port, &room.code, WAIT).await;
    let hello = player.join(&room.code, "host", &token).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    // Several rounds, each exporting spans that cannot land.
    let mut failures = 0;
    let mut dropped = 0;
    let mut ready = false;
    let deadline = Instant::now() + WAIT;
    while failures < 3 || dropped == 0 {
        assert!(
            Instant::now() < deadline,
            "failures {failures}, dropped {dropped}"
        );
        ready = !ready;
        player.set_ready(&room.code, "host", ready).await;
        let flush = server.next_flush().await;
        failures += flush["otel_export_failures_total"].as_u64().unwrap_or(0);
        dropped += flush["otel_spans_dropped_total"].as_u64().unwrap_or(0);
    }
    let outage_lines = server
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("\"otel_export_failed\""))
        .count();
    assert_eq!(
        outage_lines,
        1,
        "one line per outage:\n{:?}",
        server.stdout_lines()
    );
    // Shutdown stays bounded though the last export cannot land.
    let started = Instant::now();
    server.sigterm().await;
    let status = server.wait_exit().await;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_collector_that_is_down_never_stops_the_game() {
    // A port that was free a moment ago: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    game_despite(format!("http://127.0.0.1:{port}")).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_never_stops_the_game() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    game_despite(format!("http://127.0.0.1:{port}")).await;
    hold.abort();
}

#[tokio::test]
async fn an_unsupported_protocol_stops_start_up_with_one_line() {
    let vars = server_env(
        "http://127.0.0.1:4317",
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
    );
    let mut server = spawn(&vars);
    let status = server.wait_exit().await;
    assert_eq!(status.code(), Some(2), "{status:?}");
    let (_, stderr) = server.finish().await;
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{stderr}");
    assert!(lines[0].contains("http/json"), "{stderr}");
}

#[tokio::test]
async fn a_ratio_of_zero_records_no_new_trace_but_follows_the_callers() {
    let (received, port) = receiver().await;
    let vars = server_env(
        &format!("http://127.0.0.1:{port}"),
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    );
    let mut server = spawn(&vars);
    let ws_port = server.listening_port().await;
    let mut admin = admin(&mut server).await;
    // Not traced by the caller: a new trace, never sampled at ratio 0.
    admin
        .create_room(pb::CreateRoomRequest {
            code: "RATIO".into(),
            host: Some(host()),
            settings: None,
        })
        .await
        .expect("create");
    let token = mint(&mut admin, "RATIO", "host").await;
    let mut player = Client::connect(ws_port, "RATIO", WAIT).await;
    player.join("RATIO", "host", &token).await;
    player.set_ready("RATIO", "host", true).await;
    player.expect("ready_update").await;
    // The backend's sampled trace is followed all the same.
    let trace = "6af7651916cd43dd8448eb211c80319c";
    admin
        .upsert_player(traced(
            pb::UpsertPlayerRequest {
                room_code: "RATIO".into(),
                player: Some(pb::Player {
                    id: "p2".into(),
                    name: "Bo".into(),
                    seat_index: 1,
                    ..Default::default()
                }),
            },
            trace,
            "c7ad6b7169203331",
        ))
        .await
        .expect("upsert");
    span_where(&received, "the followed broadcast", |s| {
        hex(&s.trace_id) == trace && s.name == "room.broadcast player_joined"
    })
    .await;
    // Shutdown flushes every span: none of the unsampled ones is among them.
    server.sigterm().await;
    assert!(server.wait_exit().await.success());
    span_where(&received, "server.shutdown", |s| {
        s.name == "server.shutdown"
    })
    .await;
    let spans = received.spans.lock().expect("spans lock");
    for s in spans.iter() {
        assert!(
            s.name == "server.shutdown" || s.name == "rooms.restore" || hex(&s.trace_id) == trace,
            "an unsampled trace was recorded: {} {:?}",
            s.name,
            s.attributes
        );
    }
}

#[test]
fn without_an_endpoint_no_span_is_ever_built() {
    use karaoke_realtime::telemetry::{log, otel};
    log::init(karaoke_realtime::config::LogLevel::Debug);
    // Even at debug level, the export target is off: a declared span is disabled at
    // its callsite, and the helpers on the message path build nothing.
    assert!(!tracing::enabled!(target: otel::TARGET, tracing::Level::ERROR));
    assert!(tracing::info_span!(target: otel::TARGET, "declared").is_disabled());
    assert!(!otel::enabled());
    assert!(otel::join_span("ROOM", "p", Some("a.b.c")).is_disabled());
    assert!(otel::broadcast_span("ROOM", "ready_update", 1, 8).is_disabled());
    assert!(otel::persist_span("sqlite", 1, true).is_disabled());
    assert!(otel::cause().is_none());
    assert!(otel::current_link().is_none());
}
