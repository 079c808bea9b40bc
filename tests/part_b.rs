//! Part B of the player protocol over real sockets: presence, resume, canvas, big
//! ideas, phase timers, heartbeats, flow control, graceful shutdown, server-owned
//! rooms and the plain-HTTP probes on the players' port.

mod common;
use common::*;
use futures_util::SinkExt;
use futures_util::StreamExt;
use karaoke_realtime::observe::Origin;
use karaoke_realtime::owner::RoomHandle;
use karaoke_realtime::protocol::RoomSnapshot;
use karaoke_realtime::room::{Action, Settings};
use serde_json::{Value, json};
use std::net::SocketAddr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One raw frame as the client sees it, heartbeats and close frames included.
#[derive(Debug)]
enum Raw {
    Text(Value),
    Close(Option<CloseFrame>),
    /// The stream ended (or failed) without a close frame.
    End(String),
}

async fn next_raw(c: &mut Client) -> Raw {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within the wait");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Raw::Text(serde_json::from_str(&t).expect("server sends JSON"));
            }
            Some(Ok(Message::Close(frame))) => return Raw::Close(frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(e)) => return Raw::End(e.to_string()),
            None => return Raw::End("stream ended".into()),
        }
    }
}

/// Next raw frame other than a server heartbeat.
async fn next_raw_no_heartbeat(c: &mut Client) -> Raw {
    loop {
        match next_raw(c).await {
            Raw::Text(v) if v["type"] == "heartbeat" => continue,
            other => return other,
        }
    }
}

fn close_code(frame: &Option<CloseFrame>) -> u16 {
    u16::from(frame.as_ref().expect("close frame carries a code").code)
}

/// Reads frames (skipping text) until the close frame; returns its code.
async fn expect_close_code(c: &mut Client) -> u16 {
    loop {
        match next_raw(c).await {
            Raw::Text(_) => continue,
            Raw::Close(frame) => return close_code(&frame),
            Raw::End(why) => panic!("stream ended without a close frame: {why}"),
        }
    }
}

/// Joins `ids` in order; each earlier socket drains the one `room_state` a join sends.
async fn join_all(s: &TestServer, room: &str, ids: &[&str]) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for id in ids {
        let (c, _) = s.join(room, id).await;
        for earlier in clients.iter_mut() {
            earlier.expect("room_state").await;
        }
        clients.push(c);
    }
    clients
}

async fn snapshot(s: &TestServer, room: &str) -> RoomSnapshot {
    s.handle
        .registry()
        .get(room)
        .expect("room exists")
        .snapshot()
        .await
        .expect("snapshot")
}

/// Moves a room one step as the server itself would (no host needed).
async fn server_advance(room: &RoomHandle, steps: usize) {
    for _ in 0..steps {
        room.apply(Origin::Server, Action::Advance)
            .await
            .expect("server advance");
    }
}

/// A room in `creating`/`big_idea` (version 2) with `ids` joined (version 2 + n).
async fn creating_room(s: &TestServer, room: &str, ids: &[&str]) -> Vec<Client> {
    let handle = s.create_room(room, ids);
    server_advance(&handle, 2).await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(
        snap.status,
        karaoke_realtime::protocol::GameStatus::Creating
    );
    join_all(s, room, ids).await
}

fn canvas_msg(room: &str, adlob: &str, phase: &str, delta: Value) -> Value {
    json!({"type":"submit_canvas_delta","roomCode":room,"adlobId":adlob,"phase":phase,"delta":delta})
}

fn big_idea_msg(room: &str, adlob: &str, text: &str) -> Value {
    json!({"type":"submit_big_idea","roomCode":room,"adlobId":adlob,"text":text})
}

fn stroke(id: &str, width: f64, points: usize) -> Value {
    let points: Vec<Value> = (0..points)
        .map(|i| json!({"x": i as f64, "y": 1.0}))
        .collect();
    json!({"op":"stroke","id":id,"color":"#123456","width":width,"points":points})
}

fn text_op(id: &str, text: &str, font_size: f64) -> Value {
    json!({"op":"text","id":id,"text":text,"x":10.0,"y":20.0,"color":"#000","fontSize":font_size})
}

fn image_op(id: &str, src: &str, width: f64, height: f64) -> Value {
    json!({"op":"image","id":id,"src":src,"x":0.0,"y":0.0,"width":width,"height":height})
}

fn parse_time(v: &Value) -> OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp string, got {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("RFC 3339 {s}: {e}"))
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn join_msg(s: &TestServer, room: &str, player: &str, last_version: u64) -> Value {
    json!({"type":"join_room","roomCode":room,"playerId":player,
           "playerToken":s.token(room, player),"lastVersion":last_version})
}

fn player_entry<'a>(snapshot: &'a Value, id: &str) -> &'a Value {
    snapshot["players"]
        .as_array()
        .expect("players array")
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("player {id} in {snapshot}"))
}

/// Sends one HTTP/1.1 request on `tcp` and reads one response (status, body).
async fn http_exchange(tcp: &mut TcpStream, path: &str, close: bool) -> (u16, String) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response within the wait")
            .expect("read response");
        assert!(n > 0, "connection closed before a full response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("body within the wait")
            .expect("read body");
        assert!(n > 0, "connection closed before the full body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    (status, body)
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connects");
    http_exchange(&mut tcp, path, true).await
}

/// A client whose socket has a tiny receive buffer, so that not reading fills the
/// server's side quickly.
async fn connect_small_recv_buffer(s: &TestServer) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(s.handle.addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(s.url.as_str(), MaybeTlsStream::Plain(tcp))
        .await
        .expect("websocket handshake");
    Client::new(ws)
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn presence_connected_follows_live_sockets() {
    let s = spawn_server().await;
    s.create_room("PRES", &["host", "p2"]);

    let (mut host, hello) = s.join("PRES", "host").await;
    assert_eq!(player_entry(&hello["snapshot"], "host")["connected"], true);
    assert_eq!(player_entry(&hello["snapshot"], "p2")["connected"], false);

    let (mut p2a, hello) = s.join("PRES", "p2").await;
    assert_eq!(player_entry(&hello["snapshot"], "p2")["connected"], true);
    let st = host.expect("room_state").await;
    assert_eq!(st["snapshot"]["version"], 2);
    assert_eq!(player_entry(&st["snapshot"], "host")["connected"], true);
    assert_eq!(player_entry(&st["snapshot"], "p2")["connected"], true);

    // A second socket of p2: no change, everyone else still gets room_state.
    let (mut p2b, hello) = s.join("PRES", "p2").await;
    assert_eq!(hello["snapshot"]["version"], 2);
    for c in [&mut host, &mut p2a] {
        let st = c.expect("room_state").await;
        assert_eq!(st["snapshot"]["version"], 2);
    }

    // p2's first socket leaves: p2 still has a live socket, so nothing changes.
    p2a.send(json!({"type":"leave_room","roomCode":"PRES"}))
        .await;
    // The reader handles leave_room (queueing the detach) before this next frame.
    p2a.set_ready("PRES", "p2", true).await;
    p2a.expect_error("forbidden").await;
    host.set_ready("PRES", "host", true).await;
    let r = host.expect("ready_update").await;
    assert_eq!(r["version"], 3, "no player_left came first: {r}");
    let st = host.expect("room_state").await;
    assert_eq!(player_entry(&st["snapshot"], "p2")["connected"], true);
    p2b.expect("ready_update").await;
    p2b.expect("room_state").await;

    // p2's last socket closes: presence off, player_left then room_state.
    p2b.ws.close(None).await.expect("close");
    let left = host.expect("player_left").await;
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":"PRES","playerId":"p2","version":4})
    );
    let st = host.expect("room_state").await;
    assert_eq!(st["snapshot"]["version"], 4);
    let p2 = player_entry(&st["snapshot"], "p2");
    assert_eq!(p2["connected"], false);
    assert_eq!(p2["isReady"], false);
    assert_eq!(player_entry(&st["snapshot"], "host")["connected"], true);
    let snap = snapshot(&s, "PRES").await;
    assert!(snap.players.iter().any(|p| p.id == "p2" && !p.connected));
}

// ---------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------

#[tokio::test]
async fn resume_replays_missed_events_in_order() {
    let s = spawn_server().await;
    s.create_room("RES1", &["host", "p2"]);
    let mut cs = join_all(&s, "RES1", &["host", "p2"]).await;
    let mut p2 = cs.pop().expect("p2");
    let mut host = cs.pop().expect("host");

    p2.ws.close(None).await.expect("close");
    assert_eq!(host.expect("player_left").await["version"], 3);
    host.expect("room_state").await;
    host.set_ready("RES1", "host", true).await;
    assert_eq!(host.expect("ready_update").await["version"], 4);
    host.expect("room_state").await;
    host.send(json!({"type":"advance_phase","roomCode":"RES1","playerId":"host"}))
        .await;
    assert_eq!(host.expect("status_changed").await["version"], 5);
    // The host was ready: the reset is version 6.
    assert_eq!(host.expect("room_state").await["snapshot"]["version"], 6);

    let mut p2 = s.connect().await;
    p2.send(join_msg(&s, "RES1", "p2", 2)).await;
    let hello = p2.expect("hello_ack").await;
    assert_eq!(hello["recovered"], true, "{hello}");
    // The rejoin itself is version 7 (presence on).
    assert_eq!(hello["snapshot"]["version"], 7);

    let e = p2.expect("player_left").await;
    assert_eq!(
        e,
        json!({"type":"player_left","roomCode":"RES1","playerId":"p2","version":3})
    );
    let e = p2.expect("ready_update").await;
    assert_eq!(
        e,
        json!({"type":"ready_update","roomCode":"RES1","playerId":"host","isReady":true,"version":4})
    );
    let e = p2.expect("status_changed").await;
    assert_eq!(e["version"], 5);
    assert_eq!(e["status"], "briefing");
    let e = p2.expect("room_state").await;
    assert_eq!(e["snapshot"]["version"], 6, "the ready reset");
    // Every event after lastVersion, including the presence change of the rejoin.
    let e = p2.expect("room_state").await;
    assert_eq!(e["snapshot"]["version"], 7);

    // Nothing else was replayed: the next frame is a fresh event.
    host.expect("room_state").await;
    host.set_ready("RES1", "host", false).await;
    let e = p2.expect("ready_update").await;
    assert_eq!(e["version"], 8, "{e}");
}

#[tokio::test]
async fn resume_older_than_bounded_history_is_not_recovered() {
    let s = spawn_with(|c| c.room_history_limit = 2).await;
    s.create_room("RES2", &["host", "p2"]);
    let mut cs = join_all(&s, "RES2", &["host", "p2"]).await;
    let mut p2 = cs.pop().expect("p2");
    let mut host = cs.pop().expect("host");

    p2.ws.close(None).await.expect("close");
    assert_eq!(host.expect("player_left").await["version"], 3);
    host.expect("room_state").await;
    for (ready, version) in [(true, 4), (false, 5), (true, 6)] {
        host.set_ready("RES2", "host", ready).await;
        assert_eq!(host.expect("ready_update").await["version"], version);
        host.expect("room_state").await;
    }

    // History now holds versions 5..6 (then 6..7 after the rejoin): 3 is gone.
    let mut p2 = s.connect().await;
    p2.send(join_msg(&s, "RES2", "p2", 2)).await;
    let hello = p2.expect("hello_ack").await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(hello["snapshot"]["version"], 7);
    assert_eq!(player_entry(&hello["snapshot"], "host")["isReady"], true);
    host.expect("room_state").await;
    host.set_ready("RES2", "host", false).await;
    let e = p2.expect("ready_update").await;
    assert_eq!(
        e["version"], 8,
        "nothing replayed before the fresh event: {e}"
    );
    p2.expect("room_state").await;
    host.expect("ready_update").await;
    host.expect("room_state").await;

    // A gap that still fits in the bounded history is recovered.
    p2.ws.close(None).await.expect("close");
    assert_eq!(host.expect("player_left").await["version"], 9);
    host.expect("room_state").await;
    let mut p2 = s.connect().await;
    p2.send(join_msg(&s, "RES2", "p2", 8)).await;
    let hello = p2.expect("hello_ack").await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], 10);
    assert_eq!(p2.expect("player_left").await["version"], 9);
    assert_eq!(p2.expect("room_state").await["snapshot"]["version"], 10);
}

#[tokio::test]
async fn resume_at_current_version_recovers_with_nothing_replayed() {
    let s = spawn_server().await;
    s.create_room("RES3", &["host", "p2"]);
    let mut cs = join_all(&s, "RES3", &["host", "p2"]).await;
    let mut p2a = cs.pop().expect("p2");
    let mut host = cs.pop().expect("host");

    // A second socket of p2 changes nothing, so version 2 stays current.
    let mut p2b = s.connect().await;
    p2b.send(join_msg(&s, "RES3", "p2", 2)).await;
    let hello = p2b.expect("hello_ack").await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], 2);
    host.expect("room_state").await;
    p2a.expect("room_state").await;

    host.set_ready("RES3", "host", true).await;
    let e = p2b.expect("ready_update").await;
    assert_eq!(
        e["version"], 3,
        "nothing replayed before the fresh event: {e}"
    );

    // A lastVersion the server never reached (another incarnation) is not recovered.
    let mut p2c = s.connect().await;
    p2c.send(join_msg(&s, "RES3", "p2", 99)).await;
    let hello = p2c.expect("hello_ack").await;
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(hello["snapshot"]["version"], 3);
}

// ---------------------------------------------------------------------------
// Canvas
// ---------------------------------------------------------------------------

#[tokio::test]
async fn canvas_delta_is_broadcast_normalized_with_next_version() {
    let s = spawn_server().await;
    let mut cs = creating_room(&s, "CNV1", &["host", "p2"]).await;
    let before = s.version("CNV1").await;
    assert_eq!(before, 4);

    let delta = json!({"op":"stroke","id":"s1","color":"#ff0000","width":3,
        "points":[{"x":0,"y":0},{"x":10,"y":5,"pressure":0.5}],"evil":"<script>"});
    cs[1]
        .send(canvas_msg("CNV1", "ad1", "big_idea", delta))
        .await;
    let expected = json!({"type":"canvas_delta","roomCode":"CNV1","adlobId":"ad1","phase":"big_idea",
        "delta":{"op":"stroke","id":"s1","color":"#ff0000","width":3.0,
                 "points":[{"x":0.0,"y":0.0},{"x":10.0,"y":5.0,"pressure":0.5}]},
        "playerId":"p2","version":5});
    for c in cs.iter_mut() {
        assert_eq!(c.expect("canvas_delta").await, expected);
    }
    assert_eq!(s.version("CNV1").await, before + 1);

    // No room_state follows a canvas delta: the next frame is the next event.
    cs[0].set_ready("CNV1", "host", true).await;
    for c in cs.iter_mut() {
        assert_eq!(c.expect("ready_update").await["version"], 6);
    }
}

#[tokio::test]
async fn canvas_delta_bounds_are_inclusive() {
    let s = spawn_server().await;
    let mut cs = creating_room(&s, "CNV2", &["host"]).await;
    let host = &mut cs[0];
    let mut version = s.version("CNV2").await;
    for delta in [
        stroke("w1", 1.0, 2),
        stroke("w40", 40.0, 2),
        text_op("t280", &"é".repeat(280), 8.0),
        text_op("t96", "x", 96.0),
        image_op("i1", "/uploads/i1.png", 0.5, 0.5),
        image_op("i2", "/uploads/a.png", 1.0, 1.0),
        image_op("i3", "data:image/png;base64,AAAA", 1.0, 1.0),
        json!({"op":"remove","id":"w1"}),
        json!({"op":"clear"}),
    ] {
        host.send(canvas_msg("CNV2", "ad1", "big_idea", delta.clone()))
            .await;
        let e = host.recv().await;
        version += 1;
        assert_eq!(e["type"], "canvas_delta", "{delta} → {e}");
        assert_eq!(e["version"], version, "{e}");
    }
}

#[tokio::test]
async fn invalid_canvas_deltas_are_invalid_payload_and_change_nothing() {
    let s = spawn_server().await;
    let mut cs = creating_room(&s, "CNV3", &["host"]).await;
    let host = &mut cs[0];
    let before = snapshot(&s, "CNV3").await;

    for delta in [
        stroke("s", 0.5, 2),
        stroke("s", 40.5, 2),
        stroke("s", 0.0, 2),
        stroke("s", 3.0, 1),
        stroke("s", 3.0, 0),
        text_op("t", &"x".repeat(281), 12.0),
        text_op("t", "x", 7.9),
        text_op("t", "x", 96.5),
        image_op("i", "https://example.com/a.png", 0.0, 10.0),
        image_op("i", "https://example.com/a.png", 10.0, 0.0),
        image_op("i", "https://example.com/a.png", -1.0, 10.0),
        image_op("i", "javascript:alert(1)", 10.0, 10.0),
        image_op("i", "JavaScript:alert(1)", 10.0, 10.0),
        json!({"op":"explode","id":"x"}),
        json!({"id":"x"}),
        json!("clear"),
        json!({"op":"stroke","id":"s","color":"#000","width":3}),
    ] {
        host.send(canvas_msg("CNV3", "ad1", "big_idea", delta.clone()))
            .await;
        let e = host.recv().await;
        assert_eq!(e["type"], "error", "{delta} → {e}");
        assert_eq!(e["code"], "invalid_payload", "{delta} → {e}");
    }
    // Removing an element that does not exist is refused the same way.
    host.send(canvas_msg(
        "CNV3",
        "ad1",
        "big_idea",
        json!({"op":"remove","id":"ghost"}),
    ))
    .await;
    host.expect_error("invalid_payload").await;

    assert_eq!(snapshot(&s, "CNV3").await, before);
    // And no canvas was started by any of them.
    let (_late, hello) = s.join("CNV3", "host").await;
    assert_eq!(hello["canvases"], json!({}), "{hello}");
}

#[tokio::test]
async fn canvas_outside_creating_or_in_wrong_phase_is_invalid_transition() {
    let s = spawn_server().await;
    let handle = s.create_room("CNV4", &["host"]);
    let (mut host, _) = s.join("CNV4", "host").await;
    let delta = stroke("s1", 3.0, 2);

    // Lobby.
    host.send(canvas_msg("CNV4", "ad1", "big_idea", delta.clone()))
        .await;
    host.expect_error("invalid_transition").await;
    assert_eq!(s.version("CNV4").await, 1);

    // Creating, but the message names another phase than the running one.
    server_advance(&handle, 2).await;
    host.expect("status_changed").await;
    host.expect("room_state").await;
    host.expect("status_changed").await;
    host.expect("room_state").await;
    assert_eq!(s.version("CNV4").await, 3);
    for phase in ["visual", "headline", "pitch"] {
        host.send(canvas_msg("CNV4", "ad1", phase, delta.clone()))
            .await;
        host.expect_error("invalid_transition").await;
    }
    assert_eq!(s.version("CNV4").await, 3);

    // The running phase is accepted.
    host.send(canvas_msg("CNV4", "ad1", "big_idea", delta.clone()))
        .await;
    assert_eq!(host.expect("canvas_delta").await["version"], 4);

    // Past creating again.
    server_advance(&handle, 4).await; // visual, headline, pitch, presenting
    for _ in 0..4 {
        host.recv().await; // phase_changed / status_changed
        host.expect("room_state").await;
    }
    let v = s.version("CNV4").await;
    host.send(canvas_msg("CNV4", "ad1", "pitch", delta.clone()))
        .await;
    host.expect_error("invalid_transition").await;
    assert_eq!(s.version("CNV4").await, v);
}

#[tokio::test]
async fn late_joiner_gets_canvases_in_hello_ack_but_room_state_has_none() {
    let s = spawn_server().await;
    let mut cs = creating_room(&s, "CNV5", &["host", "p2", "p3"]).await;
    let _p3_first = cs.pop().expect("p3");
    let mut p2 = cs.pop().expect("p2");
    let mut host = cs.pop().expect("host");
    // p3 goes away (player_left) so it can come back as a late joiner.
    drop(_p3_first);
    host.expect("player_left").await;
    host.expect("room_state").await;
    p2.expect("player_left").await;
    p2.expect("room_state").await;

    async fn submit(
        by: &mut Client,
        other: &mut Client,
        adlob: &str,
        delta: Value,
    ) -> (Value, u64) {
        by.send(canvas_msg("CNV5", adlob, "big_idea", delta)).await;
        let e = by.expect("canvas_delta").await;
        assert_eq!(other.expect("canvas_delta").await, e);
        (e["delta"].clone(), e["version"].as_u64().expect("version"))
    }

    submit(&mut host, &mut p2, "ad1", stroke("s1", 3.0, 3)).await;
    submit(&mut host, &mut p2, "ad1", text_op("t1", "first", 12.0)).await;
    let (image, _) = submit(
        &mut host,
        &mut p2,
        "ad1",
        image_op("i1", "/uploads/a.png", 50.0, 40.0),
    )
    .await;
    // Same id again replaces in place.
    let (text2, _) = submit(&mut p2, &mut host, "ad1", text_op("t1", "second", 24.0)).await;
    let (_, v_ad1) = submit(&mut host, &mut p2, "ad1", json!({"op":"remove","id":"s1"})).await;
    submit(&mut p2, &mut host, "ad2", stroke("s2", 2.0, 2)).await;
    let (_, v_ad2) = submit(&mut p2, &mut host, "ad2", json!({"op":"clear"})).await;
    let (stroke3, v_ad3) = submit(&mut p2, &mut host, "ad3", stroke("s3", 5.0, 4)).await;

    let (_late, hello) = s.join("CNV5", "p3").await;
    assert_eq!(
        hello["canvases"],
        json!({
            "ad1": {"ops": [text2, image], "version": v_ad1},
            "ad2": {"ops": [], "version": v_ad2},
            "ad3": {"ops": [stroke3], "version": v_ad3},
        }),
        "{hello}"
    );
    for c in [&mut host, &mut p2] {
        let st = c.expect("room_state").await;
        assert!(st.get("canvases").is_none(), "{st}");
        assert!(st["snapshot"].get("canvases").is_none(), "{st}");
    }
}

#[tokio::test]
async fn canvas_and_big_idea_need_a_roster_player_in_the_joined_room() {
    let s = spawn_server().await;
    let mut cs = creating_room(&s, "CNV6", &["host"]).await;
    // A valid token for a player the backend has not added yet still joins.
    let (mut ghost, _) = s.join("CNV6", "ghost").await;
    cs[0].expect("room_state").await;
    let before = snapshot(&s, "CNV6").await;

    ghost
        .send(canvas_msg("CNV6", "ad1", "big_idea", stroke("s1", 3.0, 2)))
        .await;
    ghost.expect_error("player_not_found").await;
    ghost.send(big_idea_msg("CNV6", "ad1", "an idea")).await;
    ghost.expect_error("player_not_found").await;

    // Another room's code is forbidden.
    cs[0]
        .send(canvas_msg("OTHER", "ad1", "big_idea", stroke("s1", 3.0, 2)))
        .await;
    cs[0].expect_error("forbidden").await;
    cs[0].send(big_idea_msg("OTHER", "ad1", "an idea")).await;
    cs[0].expect_error("forbidden").await;

    assert_eq!(snapshot(&s, "CNV6").await, before);
}

// ---------------------------------------------------------------------------
// Big idea
// ---------------------------------------------------------------------------

#[tokio::test]
async fn big_idea_is_broadcast_in_big_idea_phase_only() {
    let s = spawn_server().await;
    let handle = s.create_room("BIG1", &["host", "p2"]);
    let mut cs = join_all(&s, "BIG1", &["host", "p2"]).await;

    // Lobby: wrong phase.
    cs[1].send(big_idea_msg("BIG1", "ad1", "too early")).await;
    cs[1].expect_error("invalid_transition").await;
    assert_eq!(s.version("BIG1").await, 2);

    server_advance(&handle, 2).await;
    for c in cs.iter_mut() {
        for _ in 0..2 {
            c.expect("status_changed").await;
            c.expect("room_state").await;
        }
    }
    cs[1]
        .send(big_idea_msg("BIG1", "ad1", "A talking toaster"))
        .await;
    let expected = json!({"type":"big_idea_submitted","roomCode":"BIG1","adlobId":"ad1",
        "text":"A talking toaster","authorId":"p2","version":5});
    for c in cs.iter_mut() {
        assert_eq!(c.expect("big_idea_submitted").await, expected);
    }

    // 500 characters (not bytes) is the most.
    let longest = "é".repeat(500);
    cs[0].send(big_idea_msg("BIG1", "ad2", &longest)).await;
    let e = cs[0].expect("big_idea_submitted").await;
    assert_eq!(e["text"], longest.as_str());
    assert_eq!(e["authorId"], "host");
    assert_eq!(e["version"], 6);
    cs[1].expect("big_idea_submitted").await;

    let before = snapshot(&s, "BIG1").await;
    cs[0].send(big_idea_msg("BIG1", "ad2", "")).await;
    cs[0].expect_error("invalid_payload").await;
    cs[0]
        .send(big_idea_msg("BIG1", "ad2", &"x".repeat(501)))
        .await;
    cs[0].expect_error("invalid_payload").await;
    assert_eq!(snapshot(&s, "BIG1").await, before);

    // A late joiner finds the submitted ideas in hello_ack.bigIdeas.
    let (_late, hello) = s.join("BIG1", "p2").await;
    assert_eq!(
        hello["bigIdeas"]["ad1"],
        json!({"text":"A talking toaster","authorId":"p2","version":5})
    );
    for c in cs.iter_mut() {
        c.expect("room_state").await;
    }

    // Visual phase: big ideas are closed.
    cs[0]
        .send(json!({"type":"advance_phase","roomCode":"BIG1","playerId":"host"}))
        .await;
    for c in cs.iter_mut() {
        assert_eq!(c.expect("phase_changed").await["currentPhase"], "visual");
        c.expect("room_state").await;
    }
    let v = s.version("BIG1").await;
    cs[1].send(big_idea_msg("BIG1", "ad1", "too late")).await;
    cs[1].expect_error("invalid_transition").await;
    assert_eq!(s.version("BIG1").await, v);
}

// ---------------------------------------------------------------------------
// Phase timers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn phase_timer_advances_creation_phase_when_time_is_up() {
    let s = spawn_server().await;
    s.create_room_with(
        "TIM1",
        &["host", "p2"],
        Settings {
            phase_duration_seconds: Some(1),
            auto_advance: true,
            ..Default::default()
        },
    );
    let mut cs = join_all(&s, "TIM1", &["host", "p2"]).await;
    let advance = json!({"type":"advance_phase","roomCode":"TIM1","playerId":"host"});

    cs[0].send(advance.clone()).await;
    for c in cs.iter_mut() {
        assert_eq!(c.expect("status_changed").await["status"], "briefing");
        let st = c.expect("room_state").await;
        assert_eq!(st["snapshot"]["phaseEndsAt"], Value::Null, "{st}");
    }

    cs[0].send(advance).await;
    let mut ends_at = None;
    for c in cs.iter_mut() {
        let e = c.expect("status_changed").await;
        assert_eq!(e["status"], "creating");
        assert_eq!(e["currentPhase"], "big_idea");
        assert_eq!(e["version"], 4);
        let st = c.expect("room_state").await;
        let start = parse_time(&st["snapshot"]["phaseStartTime"]);
        let end = parse_time(&st["snapshot"]["phaseEndsAt"]);
        assert_eq!(end - start, time::Duration::seconds(1), "{st}");
        ends_at = Some(end);
    }
    let ends_at = ends_at.expect("deadline");

    // Nobody sends anything: the server advances by itself.
    for c in cs.iter_mut() {
        let e = c.expect("phase_changed").await;
        assert_eq!(e["roomCode"], "TIM1");
        assert_eq!(e["currentPhase"], "visual");
        assert_eq!(e["version"], 5);
        let started = parse_time(&e["phaseStartTime"]);
        // (A few ms of slack for wall-clock slew against the monotonic timer.)
        let slack = time::Duration::milliseconds(5);
        assert!(
            started >= ends_at - slack,
            "advanced early: {started} < {ends_at}"
        );
        let st = c.expect("room_state").await;
        assert_eq!(st["snapshot"]["currentPhase"], "visual");
        let next_end = parse_time(&st["snapshot"]["phaseEndsAt"]);
        assert_eq!(next_end - started, time::Duration::seconds(1));
        // As advance_phase would: everyone's ready flag is reset.
        assert!(
            st["snapshot"]["players"]
                .as_array()
                .expect("players")
                .iter()
                .all(|p| p["isReady"] == false)
        );
    }
}

#[tokio::test]
async fn without_auto_advance_there_is_no_deadline_and_no_timer() {
    let s = spawn_with(|c| c.heartbeat_interval = std::time::Duration::from_millis(250)).await;
    s.create_room_with(
        "TIM2",
        &["host"],
        Settings {
            phase_duration_seconds: Some(1),
            auto_advance: false,
            ..Default::default()
        },
    );
    let (mut host, hello) = s.join("TIM2", "host").await;
    assert_eq!(hello["snapshot"]["phaseEndsAt"], Value::Null);
    let advance = json!({"type":"advance_phase","roomCode":"TIM2","playerId":"host"});
    host.send(advance.clone()).await;
    host.expect("status_changed").await;
    host.expect("room_state").await;
    host.send(advance).await;
    host.expect("status_changed").await;
    let st = host.expect("room_state").await;
    assert_eq!(st["snapshot"]["currentPhase"], "big_idea");
    assert!(st["snapshot"].get("phaseEndsAt").is_some());
    assert_eq!(st["snapshot"]["phaseEndsAt"], Value::Null, "{st}");
    let version = st["snapshot"]["version"].clone();

    // Let the server's own clock (its heartbeats) run well past the would-be
    // deadline: only heartbeats arrive, and the version never moves.
    let start = parse_time(&st["snapshot"]["phaseStartTime"]);
    let past = (start.unix_timestamp_nanos() / 1_000_000) as i64 + 1_500;
    for _ in 0..100 {
        let m = host.recv_any().await;
        assert_eq!(m["type"], "heartbeat", "{m}");
        assert_eq!(m["version"], version);
        if m["timestamp"].as_i64().expect("timestamp") > past {
            break;
        }
    }
    let snap = snapshot(&s, "TIM2").await;
    assert_eq!(
        snap.current_phase,
        Some(karaoke_realtime::protocol::CreationPhase::BigIdea)
    );
}

// ---------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------

#[tokio::test]
async fn joined_sockets_receive_heartbeats_with_version() {
    let s = spawn_with(|c| {
        c.heartbeat_interval = std::time::Duration::from_millis(200);
        c.heartbeat_timeout = std::time::Duration::from_secs(5);
    })
    .await;
    s.create_room("HB1", &["host"]);
    let mut idle = s.connect().await; // never joins
    let (mut host, _) = s.join("HB1", "host").await;
    for _ in 0..2 {
        let hb = host.recv_any().await;
        assert_eq!(hb["type"], "heartbeat", "{hb}");
        let keys: Vec<&str> = hb
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 4, "{hb}");
        assert_eq!(hb["roomCode"], "HB1");
        assert_eq!(hb["version"], 1);
        let ts = hb["timestamp"].as_i64().expect("ms since epoch");
        assert!((ts - now_ms()).abs() < 60_000, "{ts} vs now {}", now_ms());
    }
    // The socket that never joined got no heartbeat: its first frame is this reply.
    idle.send(json!({"type":"nonsense"})).await;
    let e = idle.recv_any().await;
    assert_eq!(e["type"], "error", "{e}");
}

#[tokio::test]
async fn silent_sockets_close_while_heartbeating_sockets_stay_open() {
    let timeout = std::time::Duration::from_millis(600);
    let s = spawn_with(|c| {
        c.heartbeat_interval = std::time::Duration::from_millis(200);
        c.heartbeat_timeout = timeout;
    })
    .await;
    s.create_room("HB2", &["host", "p2"]);
    let (mut host, _) = s.join("HB2", "host").await;
    let (mut silent, _) = s.join("HB2", "p2").await;
    let mut never_joined = s.connect().await;

    // The host answers every server heartbeat with its own, for well over the
    // timeout as measured by the server's heartbeat timestamps.
    let mut first_ts = None;
    let mut last_ts = 0;
    let mut saw_silent_leave = false;
    let mut messages = 0;
    let span = 3 * timeout.as_millis() as i64;
    while !(saw_silent_leave && first_ts.is_some_and(|f| last_ts - f > span)) {
        messages += 1;
        assert!(messages < 500, "bounded wait");
        let m = host.recv_any().await;
        match m["type"].as_str() {
            Some("heartbeat") => {
                let ts = m["timestamp"].as_i64().expect("timestamp");
                first_ts.get_or_insert(ts);
                last_ts = ts;
                host.send(json!({"type":"heartbeat","roomCode":"HB2"}))
                    .await;
            }
            Some("room_state") => {}
            Some("player_left") => {
                assert_eq!(m["playerId"], "p2", "{m}");
                saw_silent_leave = true;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    // Still open and served.
    host.set_ready("HB2", "host", true).await;
    assert_eq!(host.expect("ready_update").await["isReady"], true);

    // 1001 (going away) for a heartbeat timeout, joined or not.
    assert_eq!(expect_close_code(&mut silent).await, 1001);
    assert_eq!(expect_close_code(&mut never_joined).await, 1001);
    let snap = snapshot(&s, "HB2").await;
    assert!(snap.players.iter().any(|p| p.id == "p2" && !p.connected));
    assert!(snap.players.iter().any(|p| p.id == "host" && p.connected));
}

// ---------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_errors_then_closes_with_1008_sparing_others() {
    let s = spawn_with(|c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    s.create_room("RATE", &["host", "p2"]);
    let mut cs = join_all(&s, "RATE", &["host", "p2"]).await;
    let mut flooder = cs.pop().expect("p2");
    let mut host = cs.pop().expect("host");
    let present = json!({"type":"presentation_state","roomCode":"RATE","playerId":"p2","presentIndex":1,"showCampaign":false});

    let (mut allowed, mut refused) = (0, 0);
    let code = loop {
        assert!(allowed + refused < 100, "bounded flood");
        flooder.send(present.clone()).await;
        match next_raw_no_heartbeat(&mut flooder).await {
            Raw::Text(m) if m["type"] == "presentation_state" => {
                assert_eq!(refused, 0, "allowed after a refusal: {m}");
                allowed += 1;
            }
            Raw::Text(m) if m["type"] == "error" => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                refused += 1;
            }
            Raw::Text(m) => panic!("unexpected {m}"),
            Raw::Close(frame) => break close_code(&frame),
            Raw::End(why) => panic!("ended without a close frame: {why}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(allowed >= 1, "some messages were within the budget");
    assert!(refused >= 1, "rate_limited came before the close");

    // The other socket saw exactly the allowed broadcasts, then the flooder leave.
    for _ in 0..allowed {
        host.expect("presentation_state").await;
    }
    assert_eq!(host.expect("player_left").await["playerId"], "p2");
    host.expect("room_state").await;
    host.set_ready("RATE", "host", true).await;
    assert_eq!(host.expect("ready_update").await["isReady"], true);
    host.expect("room_state").await;
}

#[tokio::test]
async fn binary_frames_spend_the_same_rate_budget() {
    let s = spawn_with(|c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let mut c = s.connect().await;
    let (mut allowed, mut refused) = (0, 0);
    let code = loop {
        assert!(allowed + refused < 100, "bounded flood");
        c.ws.send(Message::Binary(vec![7u8; 8].into()))
            .await
            .expect("send binary");
        match next_raw_no_heartbeat(&mut c).await {
            Raw::Text(m) if m["code"] == "invalid_payload" => {
                assert_eq!(refused, 0, "allowed after a refusal: {m}");
                allowed += 1;
            }
            Raw::Text(m) if m["code"] == "rate_limited" => refused += 1,
            Raw::Text(m) => panic!("unexpected {m}"),
            Raw::Close(frame) => break close_code(&frame),
            Raw::End(why) => panic!("ended without a close frame: {why}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(
        allowed >= 1 && refused >= 1,
        "{allowed} allowed, {refused} refused"
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_with_1013_and_room_keeps_serving() {
    const QUEUE: usize = 64;
    const WINDOW: usize = QUEUE / 2;
    let s = spawn_with(|c| {
        c.outbound_queue_limit = QUEUE;
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
    })
    .await;
    s.create_room("SLOW", &["host", "slow"]);
    let (mut host, _) = s.join("SLOW", "host").await;
    let mut slow = connect_small_recv_buffer(&s).await;
    let hello = slow.join("SLOW", "slow", &s.token("SLOW", "slow")).await;
    assert_eq!(hello["type"], "hello_ack");
    host.expect("room_state").await;

    // The host floods presentation_state in windows it reads back itself (so its
    // own queue stays under the bound); `slow` never reads.
    let present = json!({"type":"presentation_state","roomCode":"SLOW","playerId":"host","presentIndex":7,"showCampaign":true});
    let mut sent = 0usize;
    let mut slow_left = false;
    while !slow_left {
        assert!(sent < 500_000, "slow consumer never closed");
        for _ in 0..WINDOW {
            host.send(present.clone()).await;
        }
        sent += WINDOW;
        let mut echoes = 0;
        while echoes < WINDOW {
            let m = host.recv().await;
            match m["type"].as_str() {
                Some("presentation_state") => echoes += 1,
                Some("player_left") => {
                    assert_eq!(m["playerId"], "slow", "{m}");
                    slow_left = true;
                }
                Some("room_state") if slow_left => {}
                _ => panic!("unexpected {m}"),
            }
        }
    }

    // After the fact: everything the slow socket did receive, then 1013.
    let mut frames = 0usize;
    let code = loop {
        match next_raw(&mut slow).await {
            Raw::Text(_) => frames += 1,
            Raw::Close(frame) => break close_code(&frame),
            Raw::End(why) => panic!("ended without a close frame after {frames} frames: {why}"),
        }
    };
    assert_eq!(code, 1013);
    assert!(
        frames < sent,
        "the slow socket was cut off ({frames} of {sent})"
    );

    // The room goes on serving the others.
    host.set_ready("SLOW", "host", true).await;
    let r = host.recv().await;
    let r = if r["type"] == "room_state" {
        host.recv().await
    } else {
        r
    };
    assert_eq!(r["type"], "ready_update", "{r}");
    let st = host.expect("room_state").await;
    assert_eq!(player_entry(&st["snapshot"], "slow")["connected"], false);
    let (_again, hello) = s.join("SLOW", "slow").await;
    assert_eq!(player_entry(&hello["snapshot"], "slow")["connected"], true);
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let s = spawn_with(|c| c.max_message_bytes = 1024).await;
    s.create_room("BIGF", &["host"]);
    let (mut host, _) = s.join("BIGF", "host").await;

    // Exactly the maximum is fine.
    let base =
        json!({"type":"set_ready","roomCode":"BIGF","playerId":"host","isReady":true}).to_string();
    let padded = format!("{base}{}", " ".repeat(1024 - base.len()));
    assert_eq!(padded.len(), 1024);
    host.send_text(&padded).await;
    host.expect("ready_update").await;
    host.expect("room_state").await;

    let over = format!("{base}{}", " ".repeat(1025 - base.len()));
    host.send_text(&over).await;
    assert_eq!(expect_close_code(&mut host).await, 1009);
}

#[tokio::test]
async fn binary_frame_is_invalid_payload_and_socket_stays_open() {
    let s = spawn_server().await;
    s.create_room("BIN", &["host"]);
    let (mut host, _) = s.join("BIN", "host").await;
    host.ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send binary");
    host.expect_error("invalid_payload").await;
    host.set_ready("BIN", "host", true).await;
    assert_eq!(host.expect("ready_update").await["version"], 2);

    // Before a join, too.
    let mut fresh = s.connect().await;
    fresh
        .ws
        .send(Message::Binary(vec![0u8; 16].into()))
        .await
        .expect("send binary");
    fresh.expect_error("invalid_payload").await;
    let hello = fresh.join("BIN", "host", &s.token("BIN", "host")).await;
    assert_eq!(hello["type"], "hello_ack");
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_sockets_with_1012_and_stops_accepting() {
    let s = spawn_server().await;
    s.create_room("STOP", &["host", "p2"]);
    let mut cs = join_all(&s, "STOP", &["host", "p2"]).await;
    let addr = s.handle.addr;
    let app = s.handle.app.clone();

    // A keep-alive HTTP connection opened while the server is ready.
    let mut probe = TcpStream::connect(addr).await.expect("tcp connects");
    assert_eq!(http_exchange(&mut probe, "/readyz", false).await.0, 200);

    let stopping = tokio::spawn(s.handle.shutdown());

    // Every joined socket: 1012 directly (no player_left or other noise first).
    for c in cs.iter_mut() {
        match next_raw(c).await {
            Raw::Close(frame) => assert_eq!(close_code(&frame), 1012),
            other => panic!("expected close 1012, got {other:?}"),
        }
    }
    // Readiness turns 503 while shutting down.
    let (status, _) = http_exchange(&mut probe, "/readyz", true).await;
    assert_eq!(status, 503);
    drop(probe);

    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");

    // New connections are refused.
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    assert!(
        tokio_tungstenite::connect_async(s.url.as_str())
            .await
            .is_err()
    );

    // Leaving at shutdown changes no room state (a restarted server resumes it).
    let snap = app
        .registry
        .get("STOP")
        .expect("room")
        .snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snap.version, 2);
}

// ---------------------------------------------------------------------------
// Server-owned rooms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn join_of_unknown_room_is_room_not_found_by_default() {
    let s = spawn_server().await;
    s.create_room("HERE", &["host"]);
    let mut c = s.connect().await;
    let e = c.join("NOPE", "host", &s.token("NOPE", "host")).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "room_not_found");

    // A seed does not create it either while client-seeded rooms are off.
    let seed = json!({"id":"","code":"NOPE","status":"lobby","currentPhase":null,
        "phaseStartTime":null,"players":[{"id":"host","name":"H","emoji":"x",
        "isReady":false,"isHost":true,"seatIndex":0}],"version":0});
    c.send(
        json!({"type":"join_room","roomCode":"NOPE","playerId":"host",
        "playerToken":s.token("NOPE","host"),"initialSnapshot":seed}),
    )
    .await;
    c.expect_error("room_not_found").await;
    assert!(s.handle.registry().get("NOPE").is_none());

    // The socket stays usable.
    let hello = c.join("HERE", "host", &s.token("HERE", "host")).await;
    assert_eq!(hello["type"], "hello_ack");
}

// ---------------------------------------------------------------------------
// HTTP probes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_and_readyz_answer_plain_http_on_the_players_port() {
    let s = spawn_server().await;
    let addr = s.handle.addr;
    assert_eq!(http_get(addr, "/health").await, (200, "ok".to_string()));
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    assert_eq!(http_get(addr, "/no-such-path").await.0, 404);
    // The same port still upgrades WebSockets.
    s.create_room("HTTP", &["host"]);
    s.join("HTTP", "host").await;
}

#[tokio::test]
async fn websocket_pings_are_answered_with_pongs_and_keep_the_socket_alive() {
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    let s = spawn_with(|c| {
        c.heartbeat_interval = Duration::from_millis(10_000);
        c.heartbeat_timeout = Duration::from_millis(600);
    })
    .await;
    s.create_room("PING", &["host"]);
    let (mut c, _) = s.join("PING", "host").await;
    // Five pings spaced by their own pongs outlast the 600 ms timeout only if each
    // one counts as liveness; every pong carries the ping's payload.
    let started = std::time::Instant::now();
    let mut i = 0u8;
    while started.elapsed() < Duration::from_millis(1_500) {
        c.ws.send(Message::Ping(vec![i].into()))
            .await
            .expect("ping");
        let pong = loop {
            match tokio::time::timeout(WAIT, c.ws.next()).await {
                Ok(Some(Ok(Message::Pong(p)))) => break p,
                Ok(Some(Ok(Message::Text(_)))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        };
        assert_eq!(pong.as_ref(), [i]);
        i = i.wrapping_add(1);
        // Pace the pings below the timeout by waiting on the server's own clock:
        // a short read that must time out (nothing else is sent to this socket).
        let quiet = tokio::time::timeout(Duration::from_millis(250), c.ws.next()).await;
        assert!(quiet.is_err(), "nothing but pongs is sent: {quiet:?}");
    }
    // Still joined and served.
    c.set_ready("PING", "host", true).await;
    c.expect("ready_update").await;
}
