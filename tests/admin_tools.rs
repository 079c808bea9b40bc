//! The admin plane through the tools its callers really use, against the real
//! `karaoke-realtime` binary: `grpcurl` (operators, reflection only, no .proto), the
//! Node backend client (`@grpc/grpc-js` + `ws`, tests/node/backend.test.mjs), and
//! the `karaoke-admin` CLI driving a whole game that real WebSocket players see.
//!
//! grpcurl and the Node modules are installed by `scripts/test`. A missing tool
//! fails these tests (in CI and locally alike); they never skip.

mod binproc;

use binproc::tools::{missing_tool, run, show, text};
use binproc::{Proc, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "admin-tools-shared-secret-5d1c8e";
const ADMIN_TOKEN: &str = "admin-tools-admin-token-2b9f47a0";
const ADMIN_CLI: &str = env!("CARGO_BIN_EXE_karaoke-admin");
/// Upper bound for the Node test run as a whole (module loading included).
const NODE_WAIT: Duration = Duration::from_secs(120);

/// A running server with an admin token, on free ports.
struct Server {
    proc: Proc,
    port: u16,
    admin_port: u16,
}

impl Server {
    async fn start() -> Server {
        let mut proc = Proc::spawn(&[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("ADMIN_BIND_ADDR", "127.0.0.1"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("REALTIME_SHARED_SECRET", SECRET),
            ("DATABASE_URL", "memory:"),
            // No timer-driven frames in the middle of the exchanges below.
            ("HEARTBEAT_INTERVAL_MS", "600000"),
            ("HEARTBEAT_TIMEOUT_MS", "1200000"),
            ("METRICS_FLUSH_INTERVAL_MS", "0"),
            ("LOG_LEVEL", "info"),
        ]);
        let port = proc.listening_port().await;
        let line = proc.find_message("admin_plane_listening").await;
        let admin_port = line["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("admin_plane_listening carries a port: {line}"));
        Server {
            proc,
            port,
            admin_port,
        }
    }

    fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }
}

// ---------------------------------------------------------------------------------
// grpcurl

/// `grpcurl -plaintext [flags] ADDR [rest]`.
async fn grpcurl(server: &Server, flags: &[&str], rest: &[&str]) -> Output {
    let mut cmd = Command::new("grpcurl");
    cmd.arg("-plaintext")
        .args(["-max-time", "20"])
        .args(flags)
        .arg(server.admin_addr())
        .args(rest);
    run("grpcurl", cmd, WAIT).await
}

fn bearer_header() -> String {
    format!("authorization: Bearer {ADMIN_TOKEN}")
}

/// The JSON a successful grpcurl call printed.
fn grpcurl_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "grpcurl call succeeds:\n{}",
        show(out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("grpcurl prints JSON ({e}):\n{}", show(out)))
}

/// grpcurl exits with 64 + the gRPC status code when a call fails.
fn assert_grpcurl_status(out: &Output, code: i32, name: &str) {
    assert_eq!(out.status.code(), Some(64 + code), "{}", show(out));
    assert!(
        text(&out.stderr).contains(&format!("Code: {name}")),
        "stderr names {name}:\n{}",
        show(out)
    );
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_admin_plane_through_reflection() {
    let mut server = Server::start().await;

    // `list` needs no .proto file: server reflection answers. grpcurl 1.8 (what
    // scripts/test installs) speaks only grpc.reflection.v1alpha, so this is that
    // version's check; reflection_v1_lists_the_services_too covers v1.
    let out = grpcurl(&server, &[], &["list"]).await;
    assert!(out.status.success(), "grpcurl list:\n{}", show(&out));
    let services: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    for expected in ["karaoke.admin.v1.RoomAdmin", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} in {services:?}"
        );
    }
    assert!(
        services
            .iter()
            .any(|s| s.starts_with("grpc.reflection.") && s.ends_with(".ServerReflection")),
        "a reflection service in {services:?}"
    );

    let out = grpcurl(&server, &[], &["list", "karaoke.admin.v1.RoomAdmin"]).await;
    assert!(out.status.success(), "{}", show(&out));
    let methods: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    for m in [
        "CreateRoom",
        "GetRoom",
        "ListRooms",
        "UpsertPlayer",
        "RemovePlayer",
        "MintPlayerToken",
        "ForcePhase",
        "UpdateSettings",
        "PublishEvent",
        "CloseRoom",
        "WatchRoom",
    ] {
        let full = format!("karaoke.admin.v1.RoomAdmin.{m}");
        assert!(methods.contains(&full), "{full} in {methods:?}");
    }

    let out = grpcurl(
        &server,
        &[],
        &["describe", "karaoke.admin.v1.RoomAdmin.CreateRoom"],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    let described = text(&out.stdout);
    assert!(
        described.contains("karaoke.admin.v1.RoomAdmin.CreateRoom is a method:"),
        "{described}"
    );
    assert!(
        described.contains(
            "rpc CreateRoom ( .karaoke.admin.v1.CreateRoomRequest ) \
             returns ( .karaoke.admin.v1.CreateRoomResponse );"
        ),
        "{described}"
    );
    // The .proto comments travel with the descriptor.
    assert!(described.contains("ALREADY_EXISTS"), "{described}");
    let out = grpcurl(
        &server,
        &[],
        &["describe", "karaoke.admin.v1.CreateRoomRequest"],
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));
    let described = text(&out.stdout);
    for field in [
        "string code = 1;",
        ".karaoke.admin.v1.Player host = 2;",
        ".karaoke.admin.v1.Settings settings = 3;",
    ] {
        assert!(described.contains(field), "{field} in {described}");
    }

    // A call with the token creates the room; the JSON is the Room message.
    let header = bearer_header();
    let request = json!({
        "code": "GRPCURL1",
        "host": {"id": "op-1", "name": "Operator", "isHost": true},
        "settings": {"productCategory": "Socks"}
    })
    .to_string();
    let out = grpcurl(
        &server,
        &["-H", &header, "-d", &request],
        &["karaoke.admin.v1.RoomAdmin/CreateRoom"],
    )
    .await;
    let room = &grpcurl_json(&out)["room"];
    assert_eq!(room["code"], "GRPCURL1", "{room}");
    assert_eq!(room["status"], "GAME_STATUS_LOBBY", "{room}");
    assert_eq!(
        room["id"].as_str().map(str::len),
        Some(36),
        "a uuid: {room}"
    );
    assert_eq!(room["players"][0]["id"], "op-1", "{room}");
    assert_eq!(room["players"][0]["isHost"], true, "{room}");
    assert_eq!(room["settings"]["productCategory"], "Socks", "{room}");
    server
        .proc
        .find("admin_call CreateRoom GRPCURL1", |v| {
            v["message"] == "admin_call"
                && v["method"] == "CreateRoom"
                && v["roomCode"] == "GRPCURL1"
        })
        .await;

    // The same code again: ALREADY_EXISTS.
    let out = grpcurl(
        &server,
        &["-H", &header, "-d", r#"{"code":"GRPCURL1"}"#],
        &["karaoke.admin.v1.RoomAdmin/CreateRoom"],
    )
    .await;
    assert_grpcurl_status(&out, 6, "AlreadyExists");

    // Without the token: UNAUTHENTICATED, and no room.
    let out = grpcurl(
        &server,
        &["-d", r#"{"code":"GRPCURL2"}"#],
        &["karaoke.admin.v1.RoomAdmin/CreateRoom"],
    )
    .await;
    assert_grpcurl_status(&out, 16, "Unauthenticated");
    server.proc.find_message("admin_auth_failed").await;
    let out = grpcurl(
        &server,
        &["-H", &header, "-d", r#"{"roomCode":"GRPCURL2"}"#],
        &["karaoke.admin.v1.RoomAdmin/GetRoom"],
    )
    .await;
    assert_grpcurl_status(&out, 5, "NotFound");
    let out = grpcurl(
        &server,
        &["-H", &header],
        &["karaoke.admin.v1.RoomAdmin/ListRooms"],
    )
    .await;
    let listed = grpcurl_json(&out);
    let codes: Vec<&Value> = listed["rooms"]
        .as_array()
        .map(|rooms| rooms.iter().map(|r| &r["code"]).collect())
        .unwrap_or_default();
    assert_eq!(codes, [&json!("GRPCURL1")], "{listed}");

    // The standard health service, overall and for RoomAdmin.
    let out = grpcurl(&server, &[], &["grpc.health.v1.Health/Check"]).await;
    assert_eq!(grpcurl_json(&out)["status"], "SERVING");
    let out = grpcurl(
        &server,
        &["-d", r#"{"service":"karaoke.admin.v1.RoomAdmin"}"#],
        &["grpc.health.v1.Health/Check"],
    )
    .await;
    assert_eq!(grpcurl_json(&out)["status"], "SERVING");
}

/// grpcurl 1.8 only asks v1alpha; newer clients ask grpc.reflection.v1.
#[tokio::test]
async fn reflection_v1_lists_the_services_too() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = Server::start().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.admin_addr()))
            .expect("a valid address")
            .connect()
            .await
            .expect("connect to the admin plane");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = tokio::time::timeout(
        WAIT,
        client.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("reflection answers within the wait")
    .expect("reflection v1 is served")
    .into_inner();
    let reply = tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("a reflection reply within the wait")
        .expect("no stream error")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a list_services_response: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["karaoke.admin.v1.RoomAdmin", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Node: the backend's gRPC client and the browser's WebSocket

#[tokio::test]
async fn node_backend_client_drives_a_room_that_ws_players_join() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    for module in ["@grpc/grpc-js", "@grpc/proto-loader", "ws"] {
        assert!(
            node_dir.join("node_modules").join(module).is_dir(),
            "{}",
            missing_tool(&format!(
                "the Node module {module} (tests/node/node_modules)"
            ))
        );
    }
    let server = Server::start().await;
    let mut cmd = Command::new("node");
    cmd.args([
        "--test",
        "--test-reporter=tap",
        "tests/node/backend.test.mjs",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env("ADMIN_ADDR", server.admin_addr())
    .env("ADMIN_TOKEN", ADMIN_TOKEN)
    .env("WS_URL", format!("ws://127.0.0.1:{}/", server.port));
    let out = run("node", cmd, NODE_WAIT).await;
    assert!(out.status.success(), "node --test passes:\n{}", show(&out));
    let stdout = text(&out.stdout);
    // The run really ran the file's tests (a file that loads no test also exits 0).
    assert!(stdout.lines().any(|l| l == "# pass 2"), "{}", show(&out));
    assert!(stdout.lines().any(|l| l == "# fail 0"), "{}", show(&out));
}

// ---------------------------------------------------------------------------------
// The karaoke-admin CLI

fn cli_command(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(ADMIN_CLI);
    cmd.env_clear()
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("REALTIME_SHARED_SECRET", SECRET)
        .arg("--addr")
        .arg(format!("http://{}", server.admin_addr()))
        .args(args);
    cmd
}

async fn cli(server: &Server, args: &[&str]) -> Output {
    run("karaoke-admin", cli_command(server, args), WAIT).await
}

/// The one JSON line a successful command prints.
async fn cli_json(server: &Server, args: &[&str]) -> Value {
    let out = cli(server, args).await;
    assert!(
        out.status.success(),
        "karaoke-admin {args:?}:\n{}",
        show(&out)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON line from {args:?}:\n{}",
        show(&out)
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("JSON from {args:?} ({e}): {stdout}"))
}

/// A player's WebSocket.
struct Ws {
    name: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects and joins `room` as `player`; returns the socket and its hello_ack.
    async fn join(port: u16, room: &str, player: &str, token: &str) -> (Ws, Value) {
        let url = format!("ws://127.0.0.1:{port}/?room={room}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connects within the wait")
            .expect("websocket connects");
        let mut ws = Ws {
            name: player.to_string(),
            ws,
        };
        let join =
            json!({"type":"join_room","roomCode":room,"playerId":player,"playerToken":token});
        ws.ws
            .send(Message::Text(join.to_string().into()))
            .await
            .expect("send join_room");
        let hello = ws.expect("hello_ack").await;
        (ws, hello)
    }

    /// The next frame: `Ok(json)` for a message (heartbeats skipped), `Err((code,
    /// reason))` for the server's close frame.
    async fn next(&mut self) -> Result<Value, (u16, String)> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: a frame within {WAIT:?}", self.name))
                .unwrap_or_else(|| panic!("{}: socket ended without a close frame", self.name))
                .unwrap_or_else(|e| panic!("{}: socket error: {e}", self.name));
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                    if v["type"] != "heartbeat" {
                        return Ok(v);
                    }
                }
                Message::Close(Some(frame)) => {
                    return Err((u16::from(frame.code), frame.reason.to_string()));
                }
                Message::Close(None) => panic!("{}: close frame without a code", self.name),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("{}: unexpected frame {other:?}", self.name),
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        match self.next().await {
            Ok(v) if v["type"] == kind => v,
            other => panic!("{}: expected {kind}, got {other:?}", self.name),
        }
    }

    /// The next frame must be the server's close frame.
    async fn expect_close(&mut self) -> (u16, String) {
        match self.next().await {
            Err(close) => close,
            Ok(v) => panic!("{}: expected the close frame, got {v}", self.name),
        }
    }
}

/// `watch CODE` running in the background; its stdout read line by line.
struct Watch {
    child: tokio::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watch {
    fn spawn(server: &Server, code: &str) -> Watch {
        let mut cmd = cli_command(server, &["watch", code]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn karaoke-admin watch");
        let stdout = child.stdout.take().expect("watch stdout is piped");
        Watch {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next event the watcher printed, which must be of type `kind`.
    async fn expect(&mut self, kind: &str) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("watch prints {kind} within {WAIT:?}"))
            .expect("read watch stdout")
            .unwrap_or_else(|| panic!("watch ended before {kind}"));
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch prints JSON ({e}): {line}"));
        assert_eq!(v["type"], kind, "watch: expected {kind}, got {v}");
        v
    }
}

fn player_ids(snapshot: &Value) -> Vec<&str> {
    snapshot["players"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn cli_drives_a_whole_game_that_players_and_a_watcher_see() {
    let server = Server::start().await;
    let code = "CLIGAME";

    // The room, with its host, and two more players.
    let room = cli_json(
        &server,
        &["create-room", "--code", code, "--host", "host:Hana"],
    )
    .await;
    assert_eq!(room["code"], code, "{room}");
    assert_eq!(room["status"], "lobby", "{room}");
    assert_eq!(room["currentPhase"], Value::Null, "{room}");
    assert_eq!(room["version"], 0, "{room}");
    assert_eq!(player_ids(&room), ["host"], "{room}");
    assert_eq!(room["players"][0]["name"], "Hana", "{room}");
    assert_eq!(room["players"][0]["isHost"], true, "{room}");
    let added = cli_json(
        &server,
        &[
            "add-player",
            code,
            "p2",
            "Pia",
            "--seat",
            "1",
            "--emoji",
            "🎸",
        ],
    )
    .await;
    assert_eq!(added, json!({"version": 1}));
    let added = cli_json(&server, &["add-player", code, "p3", "Quinn", "--seat", "2"]).await;
    assert_eq!(added, json!({"version": 2}));

    // One token each.
    let mut tokens = Vec::new();
    for player in ["host", "p2", "p3"] {
        let minted = cli_json(&server, &["mint-token", code, player, "--ttl", "600"]).await;
        let token = minted["token"].as_str().expect("a token").to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT: {minted}");
        let expires = minted["expiresAt"].as_u64().expect("expiresAt");
        let now = karaoke_realtime::auth::now_secs();
        assert!(expires > now && expires <= now + 600, "{minted}");
        tokens.push(token);
    }

    // check-token verifies locally with the shared secret.
    let checked = cli_json(&server, &["check-token", &tokens[1]]).await;
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["roomCode"], code, "{checked}");
    assert_eq!(checked["playerId"], "p2", "{checked}");
    // Another first character of the signature: other signature bytes, still
    // canonical base64url (the last character also holds padding bits).
    let (signed, signature) = tokens[1].rsplit_once('.').expect("a JWT");
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{first}{}", &signature[1..]);
    let out = cli(&server, &["check-token", &forged]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("check-token prints JSON");
    assert_eq!(verdict["valid"], false, "{verdict}");
    assert_eq!(verdict["error"], "token signature is invalid", "{verdict}");

    // The watcher starts with the current room_state.
    let mut watch = Watch::spawn(&server, code);
    let first = watch.expect("room_state").await;
    assert_eq!(first["snapshot"]["version"], 2, "{first}");
    assert_eq!(player_ids(&first["snapshot"]), ["host", "p2", "p3"]);

    // Three players join: each arrival is a presence change (version + 1).
    let (mut host, hello) = Ws::join(server.port, code, "host", &tokens[0]).await;
    assert_eq!(hello["snapshot"]["version"], 3, "{hello}");
    let (mut p2, hello) = Ws::join(server.port, code, "p2", &tokens[1]).await;
    assert_eq!(hello["snapshot"]["version"], 4, "{hello}");
    assert_eq!(hello["snapshot"]["players"][1]["emoji"], "🎸", "{hello}");
    let (mut p3, hello) = Ws::join(server.port, code, "p3", &tokens[2]).await;
    assert_eq!(hello["snapshot"]["version"], 5, "{hello}");
    assert_eq!(host.expect("room_state").await["snapshot"]["version"], 4);
    assert_eq!(host.expect("room_state").await["snapshot"]["version"], 5);
    assert_eq!(p2.expect("room_state").await["snapshot"]["version"], 5);
    for version in 3..=5 {
        assert_eq!(
            watch.expect("room_state").await["snapshot"]["version"],
            version
        );
    }

    // force-phase: straight into creating / big_idea (lobby → creating skips the
    // game's own path).
    let forced = cli_json(&server, &["force-phase", code, "creating", "big_idea"]).await;
    assert_eq!(forced, json!({"version": 6}));
    for ws in [&mut host, &mut p2, &mut p3] {
        let changed = ws.expect("status_changed").await;
        assert_eq!(changed["status"], "creating", "{changed}");
        assert_eq!(changed["currentPhase"], "big_idea", "{changed}");
        assert_eq!(changed["version"], 6, "{changed}");
        let state = ws.expect("room_state").await;
        assert_eq!(state["snapshot"]["status"], "creating", "{state}");
        assert_eq!(state["snapshot"]["currentPhase"], "big_idea", "{state}");
    }
    assert_eq!(watch.expect("status_changed").await["version"], 6);
    watch.expect("room_state").await;

    // update-settings: the fields given change, the others keep their value.
    let updated = cli_json(
        &server,
        &[
            "update-settings",
            code,
            "--product-category",
            "Singing socks",
            "--phase-duration",
            "90",
            "--brief-style",
            "noir",
        ],
    )
    .await;
    assert_eq!(updated, json!({"version": 7}));
    let expected = json!({
        "type": "settings_changed", "roomCode": code, "productCategory": "Singing socks",
        "phaseDurationSeconds": 90, "briefStyle": "noir", "wackyBriefStyle": null,
        "autoAdvance": false, "version": 7
    });
    for ws in [&mut host, &mut p2, &mut p3] {
        assert_eq!(ws.expect("settings_changed").await, expected);
    }
    assert_eq!(watch.expect("settings_changed").await, expected);

    // publish-brief and publish-content.
    let published = cli_json(&server, &["publish-brief", code, "brief-42"]).await;
    assert_eq!(published, json!({"version": 8}));
    let expected =
        json!({"type": "brief_updated", "roomCode": code, "briefId": "brief-42", "version": 8});
    for ws in [&mut host, &mut p2, &mut p3] {
        assert_eq!(ws.expect("brief_updated").await, expected);
    }
    assert_eq!(watch.expect("brief_updated").await, expected);
    let published = cli_json(
        &server,
        &["publish-content", code, "adlob-1", "big_idea", "p2"],
    )
    .await;
    assert_eq!(published, json!({"version": 9}));
    let expected = json!({
        "type": "content_submitted", "roomCode": code, "adlobId": "adlob-1",
        "phase": "big_idea", "playerId": "p2", "version": 9
    });
    for ws in [&mut host, &mut p2, &mut p3] {
        assert_eq!(ws.expect("content_submitted").await, expected);
    }
    assert_eq!(watch.expect("content_submitted").await, expected);

    // remove-player: p3's socket is closed with 4001 after the broadcast; the others
    // see player_left and a roster without p3.
    let removed = cli_json(&server, &["remove-player", code, "p3"]).await;
    assert_eq!(removed, json!({"version": 10}));
    for ws in [&mut host, &mut p2, &mut p3] {
        let left = ws.expect("player_left").await;
        assert_eq!(
            left,
            json!({"type": "player_left", "roomCode": code, "playerId": "p3", "version": 10})
        );
        let state = ws.expect("room_state").await;
        assert_eq!(player_ids(&state["snapshot"]), ["host", "p2"], "{state}");
    }
    assert_eq!(
        p3.expect_close().await,
        (4001, "removed from room".to_string())
    );
    assert_eq!(watch.expect("player_left").await["playerId"], "p3");
    watch.expect("room_state").await;

    // A second room, so list-rooms has pages.
    cli_json(&server, &["create-room", "--code", "ZZLAST"]).await;
    let page = cli_json(&server, &["list-rooms", "--page-size", "1"]).await;
    assert_eq!(
        page,
        json!({"rooms": [{"code": code, "status": "creating", "playerCount": 2,
                          "connectionCount": 2, "version": 10}],
               "nextPageToken": code})
    );
    let page = cli_json(
        &server,
        &["list-rooms", "--page-size", "1", "--page-token", code],
    )
    .await;
    assert_eq!(
        page,
        json!({"rooms": [{"code": "ZZLAST", "status": "lobby", "playerCount": 0,
                          "connectionCount": 0, "version": 0}],
               "nextPageToken": ""})
    );

    // get-room: everything above, as the admin plane reports it. p3's closed socket
    // left no trace (no extra version bump).
    let room = cli_json(&server, &["get-room", code]).await;
    assert_eq!(room["status"], "creating", "{room}");
    assert_eq!(room["currentPhase"], "big_idea", "{room}");
    assert_eq!(room["version"], 10, "{room}");
    assert_eq!(room["connectionCount"], 2, "{room}");
    assert_eq!(
        room["players"],
        json!([
            {"id": "host", "name": "Hana", "emoji": "", "isReady": false, "isHost": true,
             "seatIndex": 0, "connected": true},
            {"id": "p2", "name": "Pia", "emoji": "🎸", "isReady": false, "isHost": false,
             "seatIndex": 1, "connected": true}
        ])
    );
    assert_eq!(
        room["settings"],
        json!({"productCategory": "Singing socks", "phaseDurationSeconds": 90,
               "briefStyle": "noir", "wackyBriefStyle": null, "autoAdvance": false})
    );

    // close-room: the players get 4000 with the reason, the watcher ends cleanly,
    // and the room is gone.
    let closed = cli_json(&server, &["close-room", code, "--reason", "game over"]).await;
    assert_eq!(closed, json!({"finalVersion": 10}));
    assert_eq!(host.expect_close().await, (4000, "game over".to_string()));
    assert_eq!(p2.expect_close().await, (4000, "game over".to_string()));
    let rest = tokio::time::timeout(WAIT, watch.lines.next_line())
        .await
        .expect("watch output ends within the wait")
        .expect("read watch stdout");
    assert_eq!(rest, None, "nothing after the last event");
    let status = tokio::time::timeout(WAIT, watch.child.wait())
        .await
        .expect("watch exits when the room closes")
        .expect("wait for watch");
    assert!(status.success(), "watch exits 0: {status}");
    let out = cli(&server, &["get-room", code]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("NotFound"), "{}", show(&out));
    let rooms = cli_json(&server, &["list-rooms"]).await;
    assert_eq!(rooms["rooms"][0]["code"], "ZZLAST", "{rooms}");
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(1), "{rooms}");
}

#[tokio::test]
async fn cli_reports_usage_and_auth_errors() {
    let server = Server::start().await;

    // Bad command lines: exit 2 with clap's usage line, before any call.
    for args in [&[][..], &["dance"][..], &["get-room"][..]] {
        let out = cli(&server, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{}", show(&out));
        assert!(
            text(&out.stderr).contains("Usage: karaoke-admin"),
            "{args:?}:\n{}",
            show(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}:\n{}", show(&out));
    }
    let out = cli(&server, &["dance"]).await;
    assert!(
        text(&out.stderr).contains("unrecognized subcommand 'dance'"),
        "{}",
        show(&out)
    );

    // A wrong token, from the environment or from --token: exit 1, Unauthenticated.
    let mut cmd = cli_command(&server, &["create-room", "--code", "NOPE"]);
    cmd.env("ADMIN_TOKEN", "not-the-admin-token-at-all");
    let out = run("karaoke-admin", cmd, WAIT).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("Unauthenticated"),
        "{}",
        show(&out)
    );
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let out = cli(
        &server,
        &["--token", "not-the-admin-token-at-all", "list-rooms"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("Unauthenticated"),
        "{}",
        show(&out)
    );

    // Nothing was created; a generated code follows the documented alphabet.
    let rooms = cli_json(&server, &["list-rooms"]).await;
    assert_eq!(rooms, json!({"rooms": [], "nextPageToken": ""}));
    let room = cli_json(&server, &["create-room"]).await;
    let generated = room["code"].as_str().expect("a code");
    assert_eq!(generated.len(), 6, "{room}");
    assert!(
        generated
            .chars()
            .all(|c| "ABCDEFGHJKMNPQRSTUVWXYZ23456789".contains(c)),
        "{room}"
    );
}
