//! Part A of the player protocol (spec/protocol.md), end to end: a real server on
//! port 0, real WebSocket clients over loopback, one server per test.
//!
//! Every error test checks four things: the exact error code, that the room did not
//! change (its snapshot read from the registry after a later, awaited round trip),
//! that the erring socket stays open (a follow-up valid message works) and that the
//! other sockets of the room keep being served and saw nothing of the error.

mod common;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use futures_util::SinkExt;
use futures_util::future::join_all;
use karaoke_realtime::auth::{TokenKeys, now_secs};
use karaoke_realtime::protocol::{Presentation, RoomSnapshot};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const R: &str = "ROOM1";

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

async fn snapshot(s: &TestServer, code: &str) -> RoomSnapshot {
    s.handle
        .registry()
        .get(code)
        .expect("room exists")
        .snapshot()
        .await
        .expect("snapshot")
}

/// Asserts a server-made time: RFC 3339, UTC with `Z`, close to now.
fn assert_server_time(t: &Value) {
    let text = t
        .as_str()
        .unwrap_or_else(|| panic!("phaseStartTime is a string: {t}"));
    assert!(text.ends_with('Z'), "{text} is UTC with Z");
    let parsed = OffsetDateTime::parse(text, &Rfc3339).expect("RFC 3339");
    assert!(parsed.offset().is_utc(), "{text}");
    let age = (OffsetDateTime::now_utc() - parsed).abs();
    assert!(age < time::Duration::minutes(1), "{text} is about now");
}

/// Asserts the `RoomSnapshot` shape, field for field, and returns its version.
fn assert_snapshot_shape(snap: &Value, code: &str) -> u64 {
    assert!(
        uuid::Uuid::parse_str(snap["id"].as_str().expect("id")).is_ok(),
        "{snap}"
    );
    assert_eq!(snap["code"], code, "{snap}");
    assert!(
        [
            "lobby",
            "briefing",
            "creating",
            "presenting",
            "voting",
            "results"
        ]
        .contains(&snap["status"].as_str().expect("status")),
        "{snap}"
    );
    let phase = &snap["currentPhase"];
    if snap["status"] == "creating" {
        assert!(
            ["big_idea", "visual", "headline", "pitch"].contains(&phase.as_str().expect("phase")),
            "{snap}"
        );
    } else {
        assert!(phase.is_null(), "{snap}");
    }
    assert!(
        snap["phaseStartTime"].is_null() || snap["phaseStartTime"].is_string(),
        "{snap}"
    );
    let players = snap["players"].as_array().expect("players");
    let mut last_seat = -1;
    for p in players {
        for field in ["id", "name", "emoji"] {
            assert!(p[field].is_string(), "{field} in {p}");
        }
        for field in ["isReady", "isHost"] {
            assert!(p[field].is_boolean(), "{field} in {p}");
        }
        let seat = p["seatIndex"].as_i64().expect("seatIndex");
        assert!(seat > last_seat, "players sorted by seatIndex: {snap}");
        last_seat = seat;
    }
    snap["version"].as_u64().expect("version")
}

fn player_in<'a>(snap: &'a Value, id: &str) -> &'a Value {
    snap["players"]
        .as_array()
        .expect("players")
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} in roster: {snap}"))
}

fn ids(snap: &Value) -> Vec<String> {
    snap["players"]
        .as_array()
        .expect("players")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_string())
        .collect()
}

/// The next message on every client must be `kind` and the same on all; returns it.
async fn expect_same(clients: &mut [&mut Client], kind: &str) -> Value {
    let mut first: Option<Value> = None;
    for c in clients.iter_mut() {
        let v = c.expect(kind).await;
        match &first {
            Some(f) => assert_eq!(&v, f, "every socket gets the same {kind}"),
            None => first = Some(v),
        }
    }
    first.expect("at least one client")
}

/// Joins `player` and consumes the `room_state` every already-joined client gets.
async fn join_seen(
    s: &TestServer,
    code: &str,
    player: &str,
    others: &mut [&mut Client],
) -> (Client, Value) {
    let (c, hello) = s.join(code, player).await;
    assert_eq!(hello["roomCode"], code, "{hello}");
    for o in others.iter_mut() {
        let st = o.expect("room_state").await;
        assert_eq!(st["snapshot"], hello["snapshot"], "room_state after a join");
    }
    (c, hello)
}

fn set_ready(code: &str, player: &str, ready: bool) -> Value {
    json!({"type":"set_ready","roomCode":code,"playerId":player,"isReady":ready})
}

fn advance(code: &str, player: &str) -> Value {
    json!({"type":"advance_phase","roomCode":code,"playerId":player})
}

fn set_status(code: &str, player: &str, status: &str, phase: Value) -> Value {
    json!({"type":"set_status","roomCode":code,"playerId":player,"status":status,"currentPhase":phase})
}

fn present(code: &str, player: &str, index: i64, show: bool) -> Value {
    json!({"type":"presentation_state","roomCode":code,"playerId":player,"presentIndex":index,"showCampaign":show})
}

/// A valid message that changes nothing: `presentation_state` from `from`. Every
/// socket (sender included) must get it next, at `version`. Proves the sender's
/// socket is open and the others are served, and that nothing was queued before it.
async fn probe(
    from: &mut Client,
    player: &str,
    others: &mut [&mut Client],
    index: i64,
    version: u64,
) {
    from.send(present(R, player, index, false)).await;
    let expected = json!({"type":"presentation_state","roomCode":R,"presentIndex":index,"showCampaign":false,"version":version});
    assert_eq!(from.recv().await, expected, "the sender is still served");
    for c in others.iter_mut() {
        assert_eq!(c.recv().await, expected, "other sockets are still served");
    }
}

/// The room as it must be after a probe: unchanged but for the remembered
/// presentation (which the probe's `presentation_state` sets, without a version bump).
fn after_probe(mut before: RoomSnapshot, index: i64) -> RoomSnapshot {
    before.presentation = Some(Presentation {
        present_index: index,
        show_campaign: false,
    });
    before
}

/// Sends `frame` from `bad` (player `bad_id`, joined to R), expects error `code`,
/// and proves nothing changed and everyone is still served. Returns the error.
async fn rejected(
    s: &TestServer,
    bad: &mut Client,
    bad_id: &str,
    others: &mut [&mut Client],
    frame: &str,
    code: &str,
    index: i64,
) -> Value {
    let before = snapshot(s, R).await;
    bad.send_text(frame).await;
    let err = bad.recv().await;
    assert_eq!(err["type"], "error", "{frame} → {err}");
    assert_eq!(err["code"], code, "{frame} → {err}");
    assert!(err["message"].is_string(), "{err}");
    probe(bad, bad_id, others, index, before.version).await;
    assert_eq!(
        snapshot(s, R).await,
        after_probe(before, index),
        "{frame} changed the room"
    );
    err
}

/// A room R with host and p2, both joined; versions 1 and 2.
async fn two_players() -> (TestServer, Client, Client) {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2"]);
    let (host, _) = s.join(R, "host").await;
    let mut host = host;
    let (p2, hello) = join_seen(&s, R, "p2", &mut [&mut host]).await;
    assert_eq!(hello["snapshot"]["version"], 2);
    (s, host, p2)
}

fn join_frame(code: &str, player: &str, token: &str) -> String {
    json!({"type":"join_room","roomCode":code,"playerId":player,"playerToken":token}).to_string()
}

/// Tries a join that must fail with `code` on `c`; the room must not change and
/// `others` (joined to R) must see nothing: a later probe is their next message.
async fn join_rejected(
    s: &TestServer,
    c: &mut Client,
    frame: &str,
    code: &str,
    host: &mut Client,
    index: i64,
) {
    let before = snapshot(s, R).await;
    c.send_text(frame).await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{frame} → {err}");
    assert_eq!(err["code"], code, "{frame} → {err}");
    probe(host, "host", &mut [], index, before.version).await;
    assert_eq!(
        snapshot(s, R).await,
        after_probe(before, index),
        "{frame} changed the room"
    );
}

// ---------------------------------------------------------------------------------
// A whole game
// ---------------------------------------------------------------------------------

/// The `advance_phase` path from the lobby back to the lobby: (event, status, phase).
const CYCLE: [(&str, &str, Option<&str>); 9] = [
    ("status_changed", "briefing", None),
    ("status_changed", "creating", Some("big_idea")),
    ("phase_changed", "creating", Some("visual")),
    ("phase_changed", "creating", Some("headline")),
    ("phase_changed", "creating", Some("pitch")),
    ("status_changed", "presenting", None),
    ("status_changed", "voting", None),
    ("status_changed", "results", None),
    ("status_changed", "lobby", None),
];

/// Host advances once; checks the event and `room_state` on every client (whose
/// first entry must be the host). Returns the new version.
async fn advance_and_check(
    code: &str,
    clients: &mut [&mut Client],
    version: u64,
    (kind, status, phase): (&str, &str, Option<&str>),
) -> u64 {
    clients[0].send(advance(code, "host")).await;
    let event = expect_same(clients, kind).await;
    assert_server_time(&event["phaseStartTime"]);
    let phase = phase.map_or(Value::Null, |p| json!(p));
    let expected = if kind == "phase_changed" {
        json!({"type":"phase_changed","roomCode":code,"currentPhase":phase,
               "phaseStartTime":event["phaseStartTime"],"version":version + 1})
    } else {
        json!({"type":"status_changed","roomCode":code,"status":status,"currentPhase":phase,
               "phaseStartTime":event["phaseStartTime"],"version":version + 1})
    };
    assert_eq!(event, expected);
    let state = expect_same(clients, "room_state").await;
    let snap = &state["snapshot"];
    // Someone was ready: the reset is its own change, at the next version, so a
    // client that records the phase event's version still takes this snapshot.
    let any_ready = snap["players"]
        .as_array()
        .expect("players")
        .iter()
        .any(|p| p["isReady"] == true);
    assert!(!any_ready, "advance resets isReady: {snap}");
    let after = assert_snapshot_shape(snap, code);
    assert!(after == version + 1 || after == version + 2, "{snap}");
    assert_eq!(snap["status"], status);
    assert_eq!(snap["currentPhase"], phase);
    assert_eq!(snap["phaseStartTime"], event["phaseStartTime"]);
    after
}

/// `player` sets ready; every client gets `ready_update` then `room_state`.
async fn ready_and_check(
    code: &str,
    clients: &mut [&mut Client],
    sender: usize,
    player: &str,
    ready: bool,
    version: u64,
) -> u64 {
    clients[sender].send(set_ready(code, player, ready)).await;
    let update = expect_same(clients, "ready_update").await;
    assert_eq!(
        update,
        json!({"type":"ready_update","roomCode":code,"playerId":player,"isReady":ready,"version":version + 1})
    );
    let state = expect_same(clients, "room_state").await;
    assert_eq!(assert_snapshot_shape(&state["snapshot"], code), version + 1);
    assert_eq!(player_in(&state["snapshot"], player)["isReady"], ready);
    version + 1
}

#[tokio::test]
async fn three_player_game_runs_a_whole_cycle() {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2", "p3"]);

    // Joins: hello_ack to the joiner, room_state to everyone else, version +1 each.
    let (mut host, hello) = s.join(R, "host").await;
    assert_eq!(hello["roomCode"], R);
    let snap = &hello["snapshot"];
    assert_eq!(assert_snapshot_shape(snap, R), 1);
    assert_eq!(snap["status"], "lobby");
    assert_eq!(snap["phaseStartTime"], Value::Null);
    assert_eq!(ids(snap), ["host", "p2", "p3"]);
    assert_eq!(player_in(snap, "host")["isHost"], true);
    assert_eq!(player_in(snap, "p2")["isHost"], false);
    let (mut p2, hello) = join_seen(&s, R, "p2", &mut [&mut host]).await;
    assert_eq!(assert_snapshot_shape(&hello["snapshot"], R), 2);
    let (mut p3, hello) = join_seen(&s, R, "p3", &mut [&mut host, &mut p2]).await;
    assert_eq!(assert_snapshot_shape(&hello["snapshot"], R), 3);
    assert_eq!(hello["snapshot"], json!(snapshot(&s, R).await));

    // set_ready: ready_update then room_state to the whole room, sender included.
    let mut v = 3;
    v = ready_and_check(R, &mut [&mut host, &mut p2, &mut p3], 1, "p2", true, v).await;
    v = ready_and_check(R, &mut [&mut host, &mut p2, &mut p3], 2, "p3", true, v).await;

    // heartbeat is accepted: no reply; the next message is the next event.
    p3.send(json!({"type":"heartbeat","roomCode":R})).await;
    v = ready_and_check(R, &mut [&mut p3, &mut host, &mut p2], 0, "p3", false, v).await;
    assert_eq!(v, 6);

    // advance_phase through the whole cycle, back to the lobby.
    for step in CYCLE {
        v = ready_and_check(R, &mut [&mut host, &mut p2, &mut p3], 1, "p2", true, v).await;
        v = advance_and_check(R, &mut [&mut host, &mut p2, &mut p3], v, step).await;
        if step.1 == "presenting" {
            // presentation_state: to everyone, current version, no room_state after.
            for (i, (sender, id)) in [(0, "host"), (2, "p3")].into_iter().enumerate() {
                let clients = &mut [&mut host, &mut p2, &mut p3];
                clients[sender]
                    .send(present(R, id, i as i64 + 1, i == 0))
                    .await;
                let got = expect_same(clients, "presentation_state").await;
                assert_eq!(
                    got,
                    json!({"type":"presentation_state","roomCode":R,"presentIndex":i + 1,
                           "showCampaign":i == 0,"version":v})
                );
            }
            assert_eq!(s.version(R).await, v, "presentation_state changes nothing");
        }
    }
    // Each step: a ready_update, the step, and the ready reset as its own change.
    assert_eq!(v, 6 + 3 * 9);

    // set_status, one step at a time by the host; phaseStartTime echoed exactly.
    let given = "2030-01-02T03:04:05.678+02:00";
    let mut msg = set_status(R, "host", "briefing", Value::Null);
    msg["phaseStartTime"] = json!(given);
    host.send(msg).await;
    let event = expect_same(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    v += 1;
    assert_eq!(
        event,
        json!({"type":"status_changed","roomCode":R,"status":"briefing","currentPhase":null,
               "phaseStartTime":given,"version":v})
    );
    let state = expect_same(&mut [&mut host, &mut p2, &mut p3], "room_state").await;
    assert_eq!(state["snapshot"]["phaseStartTime"], given);
    assert_eq!(state["snapshot"]["version"], v);

    // Without phaseStartTime the server stamps now (UTC, Z).
    host.send(set_status(R, "host", "creating", json!("big_idea")))
        .await;
    let event = expect_same(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    v += 1;
    assert_server_time(&event["phaseStartTime"]);
    assert_eq!(event["status"], "creating");
    assert_eq!(event["currentPhase"], "big_idea");
    assert_eq!(event["version"], v);
    expect_same(&mut [&mut host, &mut p2, &mut p3], "room_state").await;

    // Any roster player may set results.
    let given = "2030-05-06T07:08:09Z";
    let mut msg = set_status(R, "p3", "results", Value::Null);
    msg["phaseStartTime"] = json!(given);
    p3.send(msg).await;
    let event = expect_same(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    v += 1;
    assert_eq!(
        event,
        json!({"type":"status_changed","roomCode":R,"status":"results","currentPhase":null,
               "phaseStartTime":given,"version":v})
    );
    let state = expect_same(&mut [&mut host, &mut p2, &mut p3], "room_state").await;
    assert_eq!(state["snapshot"]["status"], "results");

    // leave_room: player_left then room_state, isReady false, still in the roster.
    v = ready_and_check(R, &mut [&mut host, &mut p2, &mut p3], 2, "p3", true, v).await;
    p3.send(json!({"type":"leave_room","roomCode":R})).await;
    let left = expect_same(&mut [&mut host, &mut p2], "player_left").await;
    v += 1;
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":R,"playerId":"p3","version":v})
    );
    let state = expect_same(&mut [&mut host, &mut p2], "room_state").await;
    assert_eq!(state["snapshot"]["version"], v);
    assert_eq!(player_in(&state["snapshot"], "p3")["isReady"], false);
    assert_eq!(ids(&state["snapshot"]), ["host", "p2", "p3"]);
    // The left socket is no longer joined, and got nothing after leaving.
    p3.send(set_ready(R, "p3", true)).await;
    p3.expect_error("forbidden").await;

    // Disconnect: the same, for the socket's close.
    v = ready_and_check(R, &mut [&mut host, &mut p2], 1, "p2", true, v).await;
    p2.ws.close(None).await.expect("close");
    let left = host.expect("player_left").await;
    v += 1;
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":R,"playerId":"p2","version":v})
    );
    let state = host.expect("room_state").await;
    assert_eq!(state["snapshot"]["version"], v);
    assert_eq!(player_in(&state["snapshot"], "p2")["isReady"], false);
    assert_eq!(ids(&state["snapshot"]), ["host", "p2", "p3"]);
    assert_eq!(state["snapshot"], json!(snapshot(&s, R).await));
}

#[tokio::test]
async fn set_status_moves_one_step_along_the_whole_path() {
    let (s, mut host, mut p2) = two_players().await;
    let mut v = 2;
    let path = [
        ("briefing", None),
        ("creating", Some("big_idea")),
        ("creating", Some("visual")),
        ("creating", Some("headline")),
        ("creating", Some("pitch")),
        ("presenting", None),
        ("voting", None),
        ("results", None),
        ("lobby", None),
    ];
    for (i, (status, phase)) in path.into_iter().enumerate() {
        v = ready_and_check(R, &mut [&mut host, &mut p2], 1, "p2", true, v).await;
        let phase = phase.map_or(Value::Null, |p| json!(p));
        let given = format!("2031-01-01T00:00:{i:02}+01:00");
        let mut msg = set_status(R, "host", status, phase.clone());
        msg["phaseStartTime"] = json!(given);
        host.send(msg).await;
        let event = expect_same(&mut [&mut host, &mut p2], "status_changed").await;
        v += 1;
        assert_eq!(
            event,
            json!({"type":"status_changed","roomCode":R,"status":status,"currentPhase":phase,
                   "phaseStartTime":given,"version":v})
        );
        let state = expect_same(&mut [&mut host, &mut p2], "room_state").await;
        assert_eq!(state["snapshot"]["status"], status);
        assert_eq!(state["snapshot"]["currentPhase"], phase);
        assert_eq!(state["snapshot"]["phaseStartTime"], given);
        assert_eq!(state["snapshot"]["version"], v);
    }
    assert_eq!(s.version(R).await, v);
}

#[tokio::test]
async fn server_sends_heartbeats_to_joined_sockets() {
    let s = spawn_with(|c| c.heartbeat_interval = std::time::Duration::from_millis(100)).await;
    s.create_room(R, &["host"]);
    let (mut host, _) = s.join(R, "host").await;
    let beat = host.recv_any().await;
    assert_eq!(beat["type"], "heartbeat", "{beat}");
    assert_eq!(beat["roomCode"], R);
    let ms = beat["timestamp"].as_i64().expect("timestamp in ms");
    let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    assert!(
        (now - ms).abs() < 60_000,
        "timestamp {ms} is ms since epoch"
    );
}

#[tokio::test]
async fn idle_socket_times_out_and_leaves_the_room() {
    let s = spawn_with(|c| {
        c.heartbeat_interval = std::time::Duration::from_millis(100);
        c.heartbeat_timeout = std::time::Duration::from_millis(1500);
    })
    .await;
    s.create_room(R, &["host", "p2"]);
    let (mut host, _) = s.join(R, "host").await;
    let (mut idle, _) = join_seen(&s, R, "p2", &mut [&mut host]).await;
    // The host stays alive with client heartbeats while it waits; p2 says nothing.
    let left = loop {
        match tokio::time::timeout(std::time::Duration::from_millis(200), host.recv()).await {
            Ok(v) => break v,
            Err(_) => host.send(json!({"type":"heartbeat","roomCode":R})).await,
        }
    };
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":R,"playerId":"p2","version":3})
    );
    let close = idle.expect_close().await.expect("close frame");
    assert_eq!(close.code, CloseCode::Away);
    // The host joined first and outlived the timeout on its heartbeats alone.
    host.expect("room_state").await;
    probe(&mut host, "host", &mut [], 1, 3).await;
}

// ---------------------------------------------------------------------------------
// Several rooms at once
// ---------------------------------------------------------------------------------

/// Checks every message a client of `code` gets belongs to `code`.
fn assert_room(v: &Value, code: &str) {
    match v["type"].as_str() {
        Some("room_state") | Some("hello_ack") => assert_eq!(v["snapshot"]["code"], code, "{v}"),
        _ => assert_eq!(v["roomCode"], code, "{v}"),
    }
}

async fn play_room(s: &TestServer, code: String) -> u64 {
    let code = code.as_str();
    let (mut host, hello) = s.join(code, "host").await;
    assert_room(&hello, code);
    let (mut p2, hello) = s.join(code, "p2").await;
    assert_room(&hello, code);
    assert_room(&host.expect("room_state").await, code);
    let (mut p3, hello) = s.join(code, "p3").await;
    assert_room(&hello, code);
    for c in [&mut host, &mut p2] {
        assert_room(&c.expect("room_state").await, code);
    }
    let mut v = 3;
    for _ in 0..2 {
        for step in CYCLE {
            v = ready_and_check(code, &mut [&mut host, &mut p2, &mut p3], 2, "p3", true, v).await;
            v = advance_and_check(code, &mut [&mut host, &mut p2, &mut p3], v, step).await;
        }
    }
    // Nothing from another room is queued behind: one more round trip comes next.
    host.send(present(code, "host", 7, true)).await;
    for c in [&mut host, &mut p2, &mut p3] {
        let got = c.recv().await;
        assert_room(&got, code);
        assert_eq!(
            got,
            json!({"type":"presentation_state","roomCode":code,"presentIndex":7,"showCampaign":true,"version":v})
        );
    }
    // Read while the sockets are still open (their closes would each add one).
    let snap = snapshot(s, code).await;
    assert_eq!(snap.version, v);
    assert_eq!(snap.code, code);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rooms_do_not_hear_each_other() {
    let s = spawn_server().await;
    let codes: Vec<String> = (1..=3).map(|i| format!("ROOM{i}")).collect();
    // The same player ids in every room: only the room separates them.
    for code in &codes {
        s.create_room(code, &["host", "p2", "p3"]);
    }
    let versions = join_all(codes.iter().map(|c| play_room(&s, c.clone()))).await;
    // Per step: a ready_update, the step, and its ready reset; two cycles.
    assert_eq!(versions, [3 + 2 * 3 * 9; 3]);
}

// ---------------------------------------------------------------------------------
// Reconnects and several sockets per player
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn reconnecting_player_sees_the_current_state() {
    let (s, mut host, mut p2) = two_players().await;
    let mut v = ready_and_check(R, &mut [&mut host, &mut p2], 1, "p2", true, 2).await;
    drop(p2); // the tab dies without a close handshake
    let left = host.expect("player_left").await;
    v += 1;
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":R,"playerId":"p2","version":v})
    );
    host.expect("room_state").await;
    // The game moves on while p2 is away.
    v = advance_and_check(R, &mut [&mut host], v, CYCLE[0]).await;
    v = advance_and_check(R, &mut [&mut host], v, CYCLE[1]).await;
    let (mut p2, hello) = join_seen(&s, R, "p2", &mut [&mut host]).await;
    v += 1;
    let snap = &hello["snapshot"];
    assert_eq!(assert_snapshot_shape(snap, R), v);
    assert_eq!(snap["status"], "creating");
    assert_eq!(snap["currentPhase"], "big_idea");
    assert_eq!(player_in(snap, "p2")["isReady"], false);
    assert_eq!(*snap, json!(snapshot(&s, R).await));
    // And takes part again.
    ready_and_check(R, &mut [&mut p2, &mut host], 0, "p2", true, v).await;
}

#[tokio::test]
async fn player_left_only_when_the_last_socket_goes() {
    let (s, mut host, mut tab1) = two_players().await;
    // A second tab of p2: no change, every other socket gets room_state.
    let (mut tab2, hello) = join_seen(&s, R, "p2", &mut [&mut host, &mut tab1]).await;
    assert_eq!(hello["snapshot"]["version"], 2);
    let mut v = ready_and_check(R, &mut [&mut tab1, &mut tab2, &mut host], 0, "p2", true, 2).await;

    // tab1 leaves: nothing is broadcast, p2 stays ready.
    tab1.send(json!({"type":"leave_room","roomCode":R})).await;
    tab1.send(set_ready(R, "p2", false)).await;
    tab1.expect_error("forbidden").await; // no longer joined, and nothing before it
    v = ready_and_check(R, &mut [&mut host, &mut tab2], 0, "host", true, v).await;
    assert!(snapshot(&s, R).await.players[1].is_ready);

    // tab1 comes back on the same socket: no change, the others get room_state.
    let token = s.token(R, "p2");
    let hello = tab1.join(R, "p2", &token).await;
    assert_eq!(hello["type"], "hello_ack");
    assert_eq!(hello["snapshot"]["version"], v);
    for c in [&mut host, &mut tab2] {
        assert_eq!(c.expect("room_state").await["snapshot"]["version"], v);
    }

    // tab2 closes: p2 still has tab1, so no player_left.
    tab2.ws.close(None).await.expect("close");
    v = ready_and_check(R, &mut [&mut host, &mut tab1], 0, "host", false, v).await;

    // tab1 closes too: now p2 is gone.
    tab1.ws.close(None).await.expect("close");
    let left = host.expect("player_left").await;
    v += 1;
    assert_eq!(
        left,
        json!({"type":"player_left","roomCode":R,"playerId":"p2","version":v})
    );
    let state = host.expect("room_state").await;
    assert_eq!(player_in(&state["snapshot"], "p2")["isReady"], false);
    // Exactly one player_left: the next message is the host's own probe.
    probe(&mut host, "host", &mut [], 1, v).await;
}

// ---------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_and_legacy_tokens_both_join() {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2"]);
    let mut host = s.connect().await;
    let jwt = s.keys.mint_jwt(R, "host", now_secs(), 600);
    assert_eq!(jwt.split('.').count(), 3);
    let hello = host.join(R, "host", &jwt).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    let mut p2 = s.connect().await;
    let legacy = s.keys.mint_legacy(R, "p2", now_secs() + 600);
    assert_eq!(legacy.split('.').count(), 2);
    let hello = p2.join(R, "p2", &legacy).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(hello["snapshot"]["version"], 2);
    host.expect("room_state").await;
    ready_and_check(R, &mut [&mut p2, &mut host], 0, "p2", true, 2).await;
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn bad_tokens_are_refused_and_change_nothing() {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2"]);
    s.create_room("OTHER", &["host", "p2"]);
    let (mut host, _) = s.join(R, "host").await;
    let now = now_secs();
    let other_keys = TokenKeys::new(
        b"some-other-secret-entirely",
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    );
    let claims = json!({"roomCode":R,"playerId":"p2","exp":now + 600,"iat":now});
    let good_jwt = s.keys.mint_jwt(R, "p2", now, 600);
    let jwt_parts: Vec<&str> = good_jwt.split('.').collect();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS512 token");
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&claims)
    );
    let tampered_jwt = format!(
        "{}.{}.{}",
        jwt_parts[0],
        b64(&json!({"roomCode":R,"playerId":"host","exp":now + 600,"iat":now})),
        jwt_parts[2]
    );
    let good_legacy = s.keys.mint_legacy(R, "p2", now + 600);
    let (_, legacy_sig) = good_legacy.split_once('.').expect("two parts");
    let tampered_legacy = format!(
        "{}.{legacy_sig}",
        b64(&json!({"roomCode":R,"playerId":"host","exp":now + 600}))
    );

    let unauthorized = [
        ("other secret, JWT", other_keys.mint_jwt(R, "p2", now, 600)),
        (
            "other secret, legacy",
            other_keys.mint_legacy(R, "p2", now + 600),
        ),
        ("expired JWT", s.keys.mint_jwt(R, "p2", now - 3600, 60)),
        ("expired legacy", s.keys.mint_legacy(R, "p2", now - 60)),
        ("alg none", alg_none),
        ("alg HS512", hs512),
        ("tampered JWT", tampered_jwt),
        ("tampered legacy", tampered_legacy),
        ("garbage", "not-a-token".to_string()),
        ("three bad parts", "a.b.c".to_string()),
        ("two bad parts", "a.b".to_string()),
        ("four parts", format!("{good_jwt}.x")),
    ];
    let mut c = s.connect().await;
    let mut index = 0;
    for (_what, token) in &unauthorized {
        index += 1;
        join_rejected(
            &s,
            &mut c,
            &join_frame(R, "p2", token),
            "unauthorized",
            &mut host,
            index,
        )
        .await;
    }
    let forbidden = [
        (
            "JWT for another room",
            s.keys.mint_jwt("OTHER", "p2", now, 600),
        ),
        (
            "legacy for another room",
            s.keys.mint_legacy("OTHER", "p2", now + 600),
        ),
        (
            "JWT for another player",
            s.keys.mint_jwt(R, "host", now, 600),
        ),
        (
            "legacy for another player",
            s.keys.mint_legacy(R, "host", now + 600),
        ),
    ];
    for (_what, token) in &forbidden {
        index += 1;
        join_rejected(
            &s,
            &mut c,
            &join_frame(R, "p2", token),
            "forbidden",
            &mut host,
            index,
        )
        .await;
    }
    // Missing, null or empty token: invalid_payload.
    for frame in [
        json!({"type":"join_room","roomCode":R,"playerId":"p2"}),
        json!({"type":"join_room","roomCode":R,"playerId":"p2","playerToken":null}),
        json!({"type":"join_room","roomCode":R,"playerId":"p2","playerToken":""}),
    ] {
        index += 1;
        join_rejected(
            &s,
            &mut c,
            &frame.to_string(),
            "invalid_payload",
            &mut host,
            index,
        )
        .await;
    }
    assert_eq!(s.version(R).await, 1);
    assert_eq!(
        s.version("OTHER").await,
        0,
        "the other room is untouched too"
    );
    // The same socket still joins with a good token.
    let hello = c.join(R, "p2", &good_legacy).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(hello["snapshot"]["version"], 2);
    host.expect("room_state").await;
}

#[tokio::test]
async fn unknown_room_is_room_not_found() {
    let s = spawn_server().await;
    s.create_room(R, &["host"]);
    let (mut host, _) = s.join(R, "host").await;
    let mut c = s.connect().await;
    for token in [
        s.keys.mint_jwt("NOPE", "p2", now_secs(), 600),
        s.keys.mint_legacy("NOPE", "p2", now_secs() + 600),
    ] {
        join_rejected(
            &s,
            &mut c,
            &join_frame("NOPE", "p2", &token),
            "room_not_found",
            &mut host,
            1,
        )
        .await;
    }
    assert!(s.handle.registry().get("NOPE").is_none());
    // The socket stays open and can join an existing room.
    let hello = c.join(R, "host", &s.token(R, "host")).await;
    assert_eq!(hello["type"], "hello_ack");
    host.expect("room_state").await;
}

// ---------------------------------------------------------------------------------
// Error paths of player messages
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_frames_are_invalid_payload() {
    let (s, mut host, mut p2) = two_players().await;
    let frames = [
        // Not JSON.
        "not json",
        "{",
        "",
        r#"{"type":"set_ready","roomCode":"ROOM1","playerId":"p2","isReady":true"#,
        // JSON, but not an object with a string `type`.
        "[]",
        "42",
        "null",
        "true",
        r#""set_ready""#,
        r#"["set_ready","ROOM1","p2",true]"#,
        r#"["heartbeat"]"#,
        r#"{}"#,
        r#"{"roomCode":"ROOM1"}"#,
        r#"{"type":7,"roomCode":"ROOM1"}"#,
        r#"{"type":null}"#,
        // Ill-typed fields.
        r#"{"type":"set_ready","roomCode":"ROOM1","playerId":"p2","isReady":"yes"}"#,
        r#"{"type":"set_ready","roomCode":1,"playerId":"p2","isReady":true}"#,
        r#"{"type":"set_ready","roomCode":"ROOM1","playerId":["p2"],"isReady":true}"#,
        r#"{"type":"presentation_state","roomCode":"ROOM1","playerId":"p2","presentIndex":"1","showCampaign":true}"#,
        r#"{"type":"presentation_state","roomCode":"ROOM1","playerId":"p2","presentIndex":1,"showCampaign":1}"#,
        r#"{"type":"presentation_state","roomCode":"ROOM1","playerId":"p2","presentIndex":1.5,"showCampaign":true}"#,
        r#"{"type":"set_status","roomCode":"ROOM1","playerId":"p2","status":"results","currentPhase":null,"phaseStartTime":12}"#,
        r#"{"type":"set_status","roomCode":"ROOM1","playerId":"p2","status":"results","currentPhase":7}"#,
        r#"{"type":"join_room","roomCode":"ROOM1","playerId":"p2","playerToken":5}"#,
        r#"{"type":"leave_room","roomCode":false}"#,
        r#"{"type":"heartbeat","roomCode":5}"#,
        // Missing fields.
        r#"{"type":"set_ready","roomCode":"ROOM1","playerId":"p2"}"#,
        r#"{"type":"set_ready","roomCode":"ROOM1","isReady":true}"#,
        r#"{"type":"set_ready","playerId":"p2","isReady":true}"#,
        r#"{"type":"advance_phase","roomCode":"ROOM1"}"#,
        r#"{"type":"set_status","roomCode":"ROOM1","playerId":"p2","currentPhase":null}"#,
        r#"{"type":"presentation_state","roomCode":"ROOM1","playerId":"p2","presentIndex":1}"#,
        r#"{"type":"presentation_state","roomCode":"ROOM1","playerId":"p2","showCampaign":true}"#,
        r#"{"type":"join_room","roomCode":"ROOM1","playerToken":"x"}"#,
        r#"{"type":"leave_room"}"#,
    ];
    for (i, frame) in frames.iter().enumerate() {
        rejected(
            &s,
            &mut p2,
            "p2",
            &mut [&mut host],
            frame,
            "invalid_payload",
            i as i64,
        )
        .await;
    }
    // A binary frame too.
    let before = snapshot(&s, R).await;
    p2.ws
        .send(Message::Binary(b"{\"type\":\"heartbeat\"}".to_vec().into()))
        .await
        .expect("send");
    p2.expect_error("invalid_payload").await;
    probe(&mut p2, "p2", &mut [&mut host], 999, before.version).await;
    assert_eq!(snapshot(&s, R).await, after_probe(before, 999));
    // And the socket still changes state normally.
    ready_and_check(R, &mut [&mut p2, &mut host], 0, "p2", true, 2).await;
}

#[tokio::test]
async fn unknown_type_is_named_in_the_error() {
    let (s, mut host, mut p2) = two_players().await;
    for (i, kind) in ["dance", "player_joined", "room_state", "SET_READY", ""]
        .into_iter()
        .enumerate()
    {
        let frame = json!({"type":kind,"roomCode":R,"playerId":"p2"}).to_string();
        let err = rejected(
            &s,
            &mut p2,
            "p2",
            &mut [&mut host],
            &frame,
            "invalid_payload",
            i as i64,
        )
        .await;
        assert_eq!(
            err,
            json!({"type":"error","code":"invalid_payload","message":format!("Unsupported event type: {kind}")})
        );
    }
    // Before a join too; the socket then joins normally.
    let mut c = s.connect().await;
    c.send(json!({"type":"dance"})).await;
    let err = c.expect_error("invalid_payload").await;
    assert_eq!(err["message"], "Unsupported event type: dance");
    let hello = c.join(R, "p2", &s.token(R, "p2")).await;
    assert_eq!(hello["type"], "hello_ack");
}

#[tokio::test]
async fn bad_status_phase_and_time_are_invalid_payload() {
    let (s, mut host, mut p2) = two_players().await;
    let mut frames = vec![
        set_status(R, "host", "dancing", Value::Null),
        set_status(R, "host", "Briefing", Value::Null),
        set_status(R, "host", "briefing", json!("dancing")),
        set_status(R, "host", "results", json!("pitch ")),
    ];
    for bad_time in [
        "yesterday",
        "2030-01-02",
        "2030-01-02T03:04:05",
        "2030-13-02T03:04:05Z",
        "1700000000",
        "",
    ] {
        let mut m = set_status(R, "host", "briefing", Value::Null);
        m["phaseStartTime"] = json!(bad_time);
        frames.push(m);
    }
    for (i, frame) in frames.iter().enumerate() {
        rejected(
            &s,
            &mut host,
            "host",
            &mut [&mut p2],
            &frame.to_string(),
            "invalid_payload",
            i as i64,
        )
        .await;
    }
    assert_eq!(
        snapshot(&s, R).await.status,
        karaoke_realtime::protocol::GameStatus::Lobby
    );
}

#[tokio::test]
async fn messages_before_join_are_forbidden() {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2"]);
    let (mut host, _) = s.join(R, "host").await;
    let mut c = s.connect().await;
    let frames = [
        set_ready(R, "p2", true),
        advance(R, "host"),
        set_status(R, "host", "briefing", Value::Null),
        set_status(R, "p2", "results", Value::Null),
        present(R, "p2", 1, true),
        json!({"type":"leave_room","roomCode":R}),
    ];
    for (i, frame) in frames.iter().enumerate() {
        join_rejected(
            &s,
            &mut c,
            &frame.to_string(),
            "forbidden",
            &mut host,
            i as i64,
        )
        .await;
    }
    // A failed join does not count as joined either.
    let bad = join_frame(R, "p2", &s.keys.mint_jwt(R, "p2", now_secs() - 3600, 60));
    join_rejected(&s, &mut c, &bad, "unauthorized", &mut host, 10).await;
    join_rejected(
        &s,
        &mut c,
        &set_ready(R, "p2", true).to_string(),
        "forbidden",
        &mut host,
        11,
    )
    .await;
    assert_eq!(s.version(R).await, 1);
    // Then the socket joins and acts normally.
    let mut p2 = c;
    let hello = p2.join(R, "p2", &s.token(R, "p2")).await;
    assert_eq!(hello["type"], "hello_ack");
    host.expect("room_state").await;
    ready_and_check(R, &mut [&mut p2, &mut host], 0, "p2", true, 2).await;
}

#[tokio::test]
async fn another_rooms_code_or_another_players_id_is_forbidden() {
    let (s, mut host, mut p2) = two_players().await;
    // p2 is in the roster of OTHER too, and host has a socket there.
    s.create_room("OTHER", &["host", "p2"]);
    let (mut other_host, _) = s.join("OTHER", "host").await;
    let other_before = snapshot(&s, "OTHER").await;
    let frames = [
        // roomCode of another room.
        set_ready("OTHER", "p2", true),
        present("OTHER", "p2", 1, true),
        set_status("OTHER", "p2", "results", Value::Null),
        json!({"type":"leave_room","roomCode":"OTHER"}),
        json!({"type":"heartbeat","roomCode":"OTHER"}),
        set_ready("NOPE", "p2", true),
        // playerId of another player (the host, even).
        set_ready(R, "host", true),
        advance(R, "host"),
        set_status(R, "host", "briefing", Value::Null),
        set_status(R, "host", "results", Value::Null),
        present(R, "host", 1, true),
        set_ready(R, "ghost", true),
    ];
    for (i, frame) in frames.iter().enumerate() {
        rejected(
            &s,
            &mut p2,
            "p2",
            &mut [&mut host],
            &frame.to_string(),
            "forbidden",
            i as i64,
        )
        .await;
    }
    // The other room heard nothing and did not change.
    probe_room(&mut other_host, "OTHER", 1).await;
    let mut expected = other_before;
    expected.presentation = Some(Presentation {
        present_index: 42,
        show_campaign: true,
    });
    assert_eq!(snapshot(&s, "OTHER").await, expected);
    // p2 is still joined to R (the foreign leave_room did not detach it).
    ready_and_check(R, &mut [&mut p2, &mut host], 0, "p2", true, 2).await;
}

/// A presentation_state round trip on a client joined to `code` as host.
async fn probe_room(c: &mut Client, code: &str, version: u64) {
    c.send(present(code, "host", 42, true)).await;
    assert_eq!(
        c.recv().await,
        json!({"type":"presentation_state","roomCode":code,"presentIndex":42,"showCampaign":true,"version":version})
    );
}

#[tokio::test]
async fn only_the_host_advances_or_sets_status() {
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2", "p3"]);
    let (mut host, _) = s.join(R, "host").await;
    let (mut p2, _) = join_seen(&s, R, "p2", &mut [&mut host]).await;
    let (mut p3, _) = join_seen(&s, R, "p3", &mut [&mut host, &mut p2]).await;
    let frames = [
        advance(R, "p2"),
        set_status(R, "p2", "briefing", Value::Null),
        set_status(R, "p2", "lobby", Value::Null),
        set_status(R, "p2", "creating", json!("big_idea")),
    ];
    for (i, frame) in frames.iter().enumerate() {
        rejected(
            &s,
            &mut p2,
            "p2",
            &mut [&mut host, &mut p3],
            &frame.to_string(),
            "forbidden",
            i as i64,
        )
        .await;
    }
    // In the middle of a game too.
    let v = advance_and_check(R, &mut [&mut host, &mut p2, &mut p3], 3, CYCLE[0]).await;
    rejected(
        &s,
        &mut p3,
        "p3",
        &mut [&mut host, &mut p2],
        &advance(R, "p3").to_string(),
        "forbidden",
        9,
    )
    .await;
    assert_eq!(s.version(R).await, v);
    // The host still can.
    advance_and_check(R, &mut [&mut host, &mut p2, &mut p3], v, CYCLE[1]).await;
}

#[tokio::test]
async fn set_status_that_is_not_one_step_is_invalid_transition() {
    let (s, mut host, mut p2) = two_players().await;
    let from_lobby = [
        set_status(R, "host", "lobby", Value::Null),
        set_status(R, "host", "creating", json!("big_idea")),
        set_status(R, "host", "creating", Value::Null),
        set_status(R, "host", "presenting", Value::Null),
        set_status(R, "host", "voting", Value::Null),
    ];
    for (i, frame) in from_lobby.iter().enumerate() {
        rejected(
            &s,
            &mut host,
            "host",
            &mut [&mut p2],
            &frame.to_string(),
            "invalid_transition",
            i as i64,
        )
        .await;
    }
    let v = advance_and_check(R, &mut [&mut host, &mut p2], 2, CYCLE[0]).await;
    let v = advance_and_check(R, &mut [&mut host, &mut p2], v, CYCLE[1]).await;
    // In creating/big_idea: skipping a phase, going back, or leaving early.
    let from_big_idea = [
        set_status(R, "host", "creating", json!("headline")),
        set_status(R, "host", "creating", json!("big_idea")),
        set_status(R, "host", "briefing", Value::Null),
        set_status(R, "host", "presenting", Value::Null),
        set_status(R, "host", "lobby", Value::Null),
    ];
    for (i, frame) in from_big_idea.iter().enumerate() {
        rejected(
            &s,
            &mut host,
            "host",
            &mut [&mut p2],
            &frame.to_string(),
            "invalid_transition",
            10 + i as i64,
        )
        .await;
    }
    assert_eq!(s.version(R).await, v);
}

#[tokio::test]
async fn player_outside_the_roster_joins_but_cannot_act() {
    let (s, mut host, mut p2) = two_players().await;
    // A valid token for a player the backend has not added (yet).
    let before = snapshot(&s, R).await;
    let (mut ghost, hello) = s.join(R, "ghost").await;
    assert_eq!(hello["snapshot"], json!(before), "joining changes nothing");
    for c in [&mut host, &mut p2] {
        assert_eq!(c.expect("room_state").await["snapshot"], json!(before));
    }
    let frames = [
        set_ready(R, "ghost", true),
        present(R, "ghost", 1, true),
        set_status(R, "ghost", "results", Value::Null),
    ];
    for (i, frame) in frames.iter().enumerate() {
        ghost.send_text(&frame.to_string()).await;
        ghost.expect_error("player_not_found").await;
        // Everyone, the ghost included, is still served; nothing changed.
        probe(&mut host, "host", &mut [&mut p2, &mut ghost], i as i64, 2).await;
        assert_eq!(
            snapshot(&s, R).await,
            after_probe(before.clone(), i as i64),
            "{frame}"
        );
    }
    // advance_phase needs a roster player before it needs the host: a socket outside
    // the roster gets player_not_found (docs/protocol.md, Decisions).
    ghost.send(advance(R, "ghost")).await;
    ghost.expect_error("player_not_found").await;
    probe(&mut host, "host", &mut [&mut p2, &mut ghost], 9, 2).await;
    assert_eq!(snapshot(&s, R).await, after_probe(before, 9));
    // The ghost's socket still works: it receives events and can join again.
    ready_and_check(R, &mut [&mut p2, &mut host, &mut ghost], 0, "p2", true, 2).await;
    let hello = ghost.join(R, "ghost", &s.token(R, "ghost")).await;
    assert_eq!(hello["type"], "hello_ack");
    assert_eq!(hello["snapshot"]["version"], 3);
    for c in [&mut host, &mut p2] {
        assert_eq!(c.expect("room_state").await["snapshot"]["version"], 3);
    }
    // Leaving with a non-roster socket is no change and no player_left.
    ghost.send(json!({"type":"leave_room","roomCode":R})).await;
    ghost.send(set_ready(R, "ghost", true)).await;
    ghost.expect_error("forbidden").await; // detached, and got nothing before
    probe(&mut host, "host", &mut [&mut p2], 10, 3).await;
    assert_eq!(s.version(R).await, 3);
}

// ---------------------------------------------------------------------------------
// ALLOW_CLIENT_SEEDED_ROOMS
// ---------------------------------------------------------------------------------

fn seed(code: &str, id: &str, status: &str, version: u64, names: &[&str]) -> Value {
    let players: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"id":n,"name":format!("Seeded {n}"),"emoji":"🦊","isReady":false,
                   "isHost":i == 0,"seatIndex":i})
        })
        .collect();
    json!({"id":id,"code":code,"status":status,"currentPhase":null,
           "phaseStartTime":"2030-01-01T00:00:00Z","players":players,"version":version})
}

fn seeded_join(code: &str, player: &str, token: &str, seed: &Value) -> String {
    json!({"type":"join_room","roomCode":code,"playerId":player,"playerToken":token,
           "initialSnapshot":seed})
    .to_string()
}

#[tokio::test]
async fn seeded_rooms_first_valid_join_creates_later_seeds_are_ignored() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    let code = "SEEDED";
    let id = uuid::Uuid::new_v4().to_string();
    let first = seed(code, &id, "voting", 5, &["host", "p2", "p3"]);
    let now = now_secs();

    // Joins that fail do not create the room; neither does an invalid seed (its
    // code must be the joined room's: the code's reading, the spec is silent).
    let mut c = s.connect().await;
    let mut wrong_code = first.clone();
    wrong_code["code"] = json!("ELSEWHERE");
    c.send_text(&seeded_join(
        code,
        "host",
        &s.token(code, "host"),
        &wrong_code,
    ))
    .await;
    c.expect_error("invalid_payload").await;
    assert!(s.handle.registry().get(code).is_none());
    for (token, expected) in [
        (
            s.keys.mint_jwt(code, "host", now - 3600, 60),
            "unauthorized",
        ),
        (
            TokenKeys::new(
                b"wrong-secret-wrong",
                karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
            )
            .mint_jwt(code, "host", now, 600),
            "unauthorized",
        ),
        (s.keys.mint_jwt(code, "p2", now, 600), "forbidden"),
    ] {
        c.send_text(&seeded_join(code, "host", &token, &first))
            .await;
        c.expect_error(expected).await;
        assert!(s.handle.registry().get(code).is_none(), "{expected}");
    }

    // The first valid join creates it from its initialSnapshot.
    c.send_text(&seeded_join(code, "host", &s.token(code, "host"), &first))
        .await;
    let mut host = c;
    let hello = host.expect("hello_ack").await;
    let snap = &hello["snapshot"];
    assert_eq!(
        assert_snapshot_shape(snap, code),
        6,
        "seed version + the host's connect"
    );
    assert_eq!(snap["id"], id);
    assert_eq!(snap["status"], "voting");
    assert_eq!(snap["phaseStartTime"], "2030-01-01T00:00:00Z");
    assert_eq!(ids(snap), ["host", "p2", "p3"]);
    assert_eq!(player_in(snap, "p2")["name"], "Seeded p2");
    assert_eq!(*snap, json!(snapshot(&s, code).await));

    // An older copy is ignored: the server's state wins.
    let older = seed(
        code,
        &uuid::Uuid::new_v4().to_string(),
        "lobby",
        1,
        &["p2", "x"],
    );
    let mut p2 = s.connect().await;
    p2.send_text(&seeded_join(code, "p2", &s.token(code, "p2"), &older))
        .await;
    let hello = p2.expect("hello_ack").await;
    assert_eq!(hello["snapshot"]["version"], 7);
    assert_eq!(hello["snapshot"]["id"], id);
    assert_eq!(hello["snapshot"]["status"], "voting");
    assert_eq!(ids(&hello["snapshot"]), ["host", "p2", "p3"]);
    host.expect("room_state").await;

    // A newer copy is ignored too.
    let newer = seed(code, &id, "results", 50, &["p3", "host"]);
    let mut p3 = s.connect().await;
    p3.send_text(&seeded_join(code, "p3", &s.token(code, "p3"), &newer))
        .await;
    let hello = p3.expect("hello_ack").await;
    assert_eq!(hello["snapshot"]["version"], 8);
    assert_eq!(hello["snapshot"]["status"], "voting");
    assert_eq!(player_in(&hello["snapshot"], "host")["isHost"], true);
    for c in [&mut host, &mut p2] {
        c.expect("room_state").await;
    }

    // The seeded room plays like any other.
    let v = advance_and_check(
        code,
        &mut [&mut host, &mut p2, &mut p3],
        8,
        ("status_changed", "results", None),
    )
    .await;
    assert_eq!(s.version(code).await, v);
}

#[tokio::test]
async fn seeded_join_does_not_override_a_server_created_room() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    s.create_room(R, &["host", "p2"]);
    let (mut host, _) = s.join(R, "host").await;
    let before = snapshot(&s, R).await;
    let copy = seed(R, &uuid::Uuid::new_v4().to_string(), "results", 99, &["p2"]);
    let mut p2 = s.connect().await;
    p2.send_text(&seeded_join(R, "p2", &s.token(R, "p2"), &copy))
        .await;
    let hello = p2.expect("hello_ack").await;
    assert_eq!(hello["snapshot"]["id"], before.id);
    assert_eq!(hello["snapshot"]["status"], "lobby");
    assert_eq!(hello["snapshot"]["version"], 2);
    assert_eq!(ids(&hello["snapshot"]), ["host", "p2"]);
    host.expect("room_state").await;
}

#[tokio::test]
async fn without_the_setting_a_seed_does_not_create_a_room() {
    let s = spawn_server().await;
    s.create_room(R, &["host"]);
    let (mut host, _) = s.join(R, "host").await;
    let mut c = s.connect().await;
    let copy = seed(
        "SEEDED",
        &uuid::Uuid::new_v4().to_string(),
        "lobby",
        3,
        &["host"],
    );
    let frame = seeded_join("SEEDED", "host", &s.token("SEEDED", "host"), &copy);
    join_rejected(&s, &mut c, &frame, "room_not_found", &mut host, 1).await;
    assert!(s.handle.registry().get("SEEDED").is_none());
    let hello = c.join(R, "host", &s.token(R, "host")).await;
    assert_eq!(hello["type"], "hello_ack", "the socket stays open");
}
