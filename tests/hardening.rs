//! Regression tests for what an attacker's probe and a chaos test found in the
//! release build, each driving the real server the way the probe did: extreme
//! versions and dates, a crashing room, rooms full of canvas, resumes far behind,
//! connections that never finish or never stop, and counts a client controls.

mod binproc;
mod common;

use common::raw::{self, RawWs, closed_by_peer, connect_from, http, upgrade_request};
use common::*;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::observe::{Change, ConnId, Observer, Origin};
use karaoke_realtime::protocol::limits::MAX_VERSION;
use karaoke_realtime::room::{Action, Settings};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn seed(code: &str, players: &[&str], version: u64) -> Value {
    let players: Vec<Value> = players
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "name": format!("Player {id}"), "emoji": "🎤",
                             "isReady": false, "isHost": i == 0, "seatIndex": i})
        })
        .collect();
    json!({"id": "", "code": code, "status": "lobby", "currentPhase": null,
           "phaseStartTime": null, "players": players, "version": version})
}

async fn admin(s: &TestServer) -> RoomAdminClient<tonic::transport::Channel> {
    RoomAdminClient::connect(format!("http://{}", s.handle.admin_addr))
        .await
        .expect("admin plane connects")
}

fn force(status: &str, phase: Option<&str>) -> Action {
    serde_json::from_value(
        json!({"kind": "force", "status": status, "phase": phase, "startTime": null}),
    )
    .expect("a force action")
}

// ------------------------------------------------------------------ versions

#[tokio::test]
async fn seeds_with_versions_past_the_largest_are_refused_and_create_no_room() {
    use karaoke_realtime::protocol::limits::MAX_SEED_VERSION;
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    for (i, version) in [
        u64::MAX,
        i64::MAX as u64,
        MAX_VERSION + 1,
        MAX_SEED_VERSION + 1,
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("BIG{i}");
        let mut c = s.connect().await;
        let reply = c
            .join_with(
                &code,
                "h",
                &s.token(&code, "h"),
                Some(seed(&code, &["h"], version)),
                None,
            )
            .await;
        assert_eq!(reply["code"], "invalid_payload", "{reply}");
        assert_eq!(
            reply["message"],
            format!("initialSnapshot.version must be at most {MAX_SEED_VERSION}")
        );
        assert!(s.handle.registry().get(&code).is_none(), "no room {code}");
    }
    // The largest seed is accepted, and the room works.
    let mut c = s.connect().await;
    let hello = c
        .join_with(
            "TOP",
            "h",
            &s.token("TOP", "h"),
            Some(seed("TOP", &["h"], MAX_SEED_VERSION)),
            None,
        )
        .await;
    assert_eq!(
        hello["snapshot"]["version"],
        MAX_SEED_VERSION + 1,
        "{hello}"
    );
}

/// A SQLite store holding room `code` at `version` (only a stored row, written by
/// hand or by a bug, can put a room there: seeds stop far below).
async fn store_with_room_at(code: &str, version: u64) -> String {
    let (url, _file) = db::fresh_sqlite();
    let database = karaoke_realtime::config::Database::Sqlite(url.clone());
    let store = karaoke_realtime::store::Store::connect(&database, Duration::from_secs(10))
        .await
        .expect("connect")
        .expect("a store");
    store.migrate().await.expect("migrate");
    let room =
        karaoke_realtime::room::Room::new(code, vec![player("h", 0, true)], Settings::default())
            .expect("room");
    let mut stored = serde_json::to_value(room.to_stored(false)).expect("json");
    stored["snapshot"]["version"] = json!(version);
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    sqlx::query(
        "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) \
         VALUES (?1, ?2, ?3, '2030-01-01T00:00:00.000Z')",
    )
    .bind(code)
    .bind(version as i64)
    .bind(stored.to_string())
    .execute(&pool)
    .await
    .expect("insert the row");
    url
}

#[tokio::test]
async fn a_room_at_its_last_version_refuses_changes_keeps_serving_and_stops_no_one() {
    let url = store_with_room_at("LAST", MAX_VERSION - 1).await;
    let s = spawn_with(|c| {
        c.database = karaoke_realtime::config::Database::Sqlite(url.clone());
        c.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let (mut stuck, hello) = s.join("LAST", "h").await;
    // The host's presence took the last version.
    assert_eq!(hello["snapshot"]["version"], MAX_VERSION, "{hello}");
    s.create_room("OTHER", &["o"]);
    let (mut other, hello) = s.join("OTHER", "o").await;
    let start = version_of(&hello).expect("version");
    for i in 0..30u64 {
        stuck.set_ready("LAST", "h", i % 2 == 0).await;
        let refused = stuck.expect_error("invalid_transition").await;
        assert_eq!(refused["message"], "the room has used its last version");
        other.set_ready("OTHER", "o", i % 2 == 0).await;
        other.see("room_state", start + i + 1).await;
    }
    // Still alive: heartbeats at the same version, and the admin plane reads it.
    let beat = loop {
        let m = stuck.recv_any().await;
        if m["type"] == "heartbeat" {
            break m;
        }
    };
    assert_eq!(beat["version"], MAX_VERSION);
    let room = admin(&s)
        .await
        .get_room(pb::GetRoomRequest {
            room_code: "LAST".into(),
        })
        .await
        .expect("GetRoom")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(room.version, MAX_VERSION);
    // Every change of the other room has its row; none of the stuck room's refusals.
    s.handle.shutdown().await;
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the store");
    let (rows,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM room_events WHERE room_code = 'OTHER' AND version > ?",
    )
    .bind(start as i64)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(rows, 30, "every change of the other room has its row");
    let (stuck_rows,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM room_events WHERE room_code = 'LAST'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(stuck_rows, 1, "only the host's presence");
}

// ------------------------------------------------------------------ dates and crashes

#[tokio::test]
async fn far_future_phase_start_times_are_refused_and_the_room_lives_on() {
    let s = spawn_with(|c| c.heartbeat_interval = Duration::from_millis(200)).await;
    s.create_room_with(
        "TIME",
        &["h"],
        Settings {
            phase_duration_seconds: Some(60),
            auto_advance: true,
            ..Settings::default()
        },
    );
    let (mut h, _) = s.join("TIME", "h").await;
    for status in ["briefing"] {
        h.send(json!({"type":"set_status","roomCode":"TIME","playerId":"h","status":status,"currentPhase":null}))
            .await;
        h.expect("status_changed").await;
        h.expect("room_state").await;
    }
    for bad in [
        "9999-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
    ] {
        h.send(
            json!({"type":"set_status","roomCode":"TIME","playerId":"h","status":"creating",
                      "currentPhase":"big_idea","phaseStartTime":bad}),
        )
        .await;
        let e = h.expect_error("invalid_payload").await;
        assert_eq!(
            e["message"], "phaseStartTime must be between 1970 and 2199",
            "{bad}"
        );
    }
    // The latest accepted start: its deadline is far away, and the owner just waits.
    h.send(
        json!({"type":"set_status","roomCode":"TIME","playerId":"h","status":"creating",
                  "currentPhase":"big_idea","phaseStartTime":"2199-12-31T23:59:59Z"}),
    )
    .await;
    let changed = h.expect("status_changed").await;
    let state = h.expect("room_state").await;
    assert_eq!(state["snapshot"]["phaseEndsAt"], "2200-01-01T00:00:59.000Z");
    h.set_ready("TIME", "h", true).await;
    h.see("room_state", version_of(&changed).expect("v") + 1)
        .await;
    let beat = loop {
        let m = h.recv_any().await;
        if m["type"] == "heartbeat" {
            break m;
        }
    };
    assert_eq!(beat["roomCode"], "TIME");
    // The admin plane refuses the same dates, and the room answers it.
    let mut a = admin(&s).await;
    let err = a
        .force_phase(pb::ForcePhaseRequest {
            room_code: "TIME".into(),
            status: pb::GameStatus::Creating as i32,
            current_phase: pb::CreationPhase::Visual as i32,
            phase_start_time: "9999-12-31T23:59:59Z".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    a.update_settings(pb::UpdateSettingsRequest {
        room_code: "TIME".into(),
        settings: Some(pb::Settings {
            phase_duration_seconds: Some(3600),
            ..Default::default()
        }),
    })
    .await
    .expect("settings");
}

/// An observer with a bug: it panics on one brief id.
struct Faulty;

impl Observer for Faulty {
    fn applied(&self, _room: &karaoke_realtime::room::Room, change: &Change<'_>) {
        if let Action::BriefUpdated { brief_id } = change.action
            && brief_id == "boom"
        {
            panic!("observer bug");
        }
    }
}

#[tokio::test]
async fn a_room_whose_owner_panics_is_closed_with_1011_and_forgotten() {
    let mut config = karaoke_realtime::config::Config::for_tests(SECRET);
    config.snapshot_interval = Duration::from_millis(100);
    let handle = karaoke_realtime::server::start_with(config, vec![Arc::new(Faulty)])
        .await
        .expect("starts");
    let s = TestServer {
        url: format!("ws://{}/?room=test", handle.addr),
        keys: karaoke_realtime::auth::TokenKeys::new(SECRET.as_bytes(), 86_400),
        handle,
    };
    let room = s.create_room("CRASH", &["h", "g"]);
    s.create_room("CALM", &["o"]);
    let (mut h, _) = s.join("CRASH", "h").await;
    let (mut g, _) = s.join("CRASH", "g").await;
    let (mut o, _) = s.join("CALM", "o").await;
    let live_before = s.handle.app.metrics.rooms_live.load(Ordering::Relaxed);
    let result = room
        .apply(
            Origin::Server,
            Action::BriefUpdated {
                brief_id: "boom".into(),
            },
        )
        .await;
    assert!(result.is_err(), "the caller hears the room is gone");
    assert_eq!(h.close_code().await, CloseCode::Error);
    assert_eq!(g.close_code().await, CloseCode::Error);
    // No dangling handle: the room is gone everywhere, consistently.
    let mut a = admin(&s).await;
    let err = a
        .get_room(pb::GetRoomRequest {
            room_code: "CRASH".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = a
        .create_room(pb::CreateRoomRequest {
            code: "CRASH".into(),
            host: None,
            settings: None,
        })
        .await
        .expect_err("code retired");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let mut again = s.connect().await;
    let reply = again.join("CRASH", "h", &s.token("CRASH", "h")).await;
    assert_eq!(reply["code"], "room_not_found", "{reply}");
    assert_eq!(
        s.handle.app.metrics.rooms_live.load(Ordering::Relaxed),
        live_before - 1
    );
    assert_eq!(
        s.handle
            .app
            .metrics
            .counters
            .room_owner_panics_total
            .load(Ordering::Relaxed),
        1
    );
    // Everyone else is still served.
    o.set_ready("CALM", "o", true).await;
    o.expect("ready_update").await;
}

// ------------------------------------------------------------------ big rooms

/// An image delta with a data URL of about `len` bytes.
fn image(adlob: &str, id: &str, len: usize) -> Value {
    let src = format!("data:image/png;base64,{}", "A".repeat(len));
    json!({"type":"submit_canvas_delta","roomCode":"BIG","adlobId":adlob,"phase":"visual",
           "delta":{"op":"image","id":id,"src":src,"x":0,"y":0,"width":10,"height":10}})
}

#[tokio::test]
async fn a_room_with_full_canvases_stays_joinable_and_its_cap_is_refused_clearly() {
    // The host writes a closed loop of 100 images; the rate limit is not what this
    // test is about.
    let s = spawn_with(|c| {
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
    })
    .await;
    let room = s.create_room("BIG", &["h", "g"]);
    room.apply(Origin::Server, force("creating", Some("visual")))
        .await
        .expect("creating");
    let (mut h, _) = s.join("BIG", "h").await;
    let (mut accepted, mut refused) = (0usize, 0usize);
    for i in 0..100 {
        h.send(image(&format!("a{}", i / 20), &format!("i{i}"), 47 * 1024))
            .await;
        let reply = h.recv().await;
        match reply["type"].as_str() {
            Some("canvas_delta") => accepted += 1,
            Some("error") => {
                assert_eq!(reply["code"], "invalid_payload");
                assert_eq!(
                    reply["message"],
                    "the room's canvases are full (4194304 bytes in all)"
                );
                refused += 1;
            }
            _ => panic!("unexpected {reply}"),
        }
    }
    assert!(
        accepted >= 80 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
    // Past 1 MiB (tungstenite's old write bound) and up to the cap: joins work, for
    // another player and for the host's second tab.
    for player in ["g", "h"] {
        let (_c, hello) = s.join("BIG", player).await;
        let canvases = hello["canvases"].as_object().expect("canvases");
        let ops: usize = canvases
            .values()
            .map(|c| c["ops"].as_array().map(Vec::len).unwrap_or(0))
            .sum();
        assert_eq!(
            ops, accepted,
            "{player}: every accepted image is in hello_ack"
        );
        assert!(hello.to_string().len() > 3_500_000);
    }
}

// ------------------------------------------------------------------ resume

async fn settings_changes(room: &karaoke_realtime::owner::RoomHandle, n: u32) {
    for i in 0..n {
        room.apply(
            Origin::Server,
            Action::UpdateSettings {
                patch: karaoke_realtime::room::SettingsPatch {
                    brief_style: Some(format!("style {i}")),
                    ..Default::default()
                },
            },
        )
        .await
        .expect("settings change");
    }
}

#[tokio::test]
async fn a_client_three_hundred_events_behind_resumes_with_every_event() {
    let s = spawn_server().await;
    let room = s.create_room("BACK", &["h", "g"]);
    let (g, hello) = s.join("BACK", "g").await;
    let left_at = version_of(&hello).expect("version");
    drop(g);
    settings_changes(&room, 300).await;
    let mut g = s.connect().await;
    let hello = g
        .join_with("BACK", "g", &s.token("BACK", "g"), None, Some(left_at))
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(hello["recovered"], true);
    let now = version_of(&hello).expect("version");
    // Every version after the one it left at, in order, with nothing missing.
    for expected in left_at + 1..=now {
        let m = g.recv().await;
        assert_eq!(version_of(&m), Some(expected), "{m}");
    }
    assert!(now - left_at > 300);
}

#[tokio::test]
async fn a_client_behind_the_history_gets_the_snapshot() {
    let s = spawn_server().await;
    let room = s.create_room("GONE", &["h", "g"]);
    let (g, hello) = s.join("GONE", "g").await;
    let left_at = version_of(&hello).expect("version");
    drop(g);
    settings_changes(&room, 600).await;
    let mut g = s.connect().await;
    let hello = g
        .join_with("GONE", "g", &s.token("GONE", "g"), None, Some(left_at))
        .await;
    assert_eq!(hello["recovered"], false, "{}", hello["type"]);
    assert_eq!(hello["snapshot"]["version"], s.version("GONE").await);
}

#[tokio::test]
async fn a_replay_larger_than_the_socket_budget_is_the_snapshot_instead() {
    let s = spawn_server().await;
    let room = s.create_room("HEAVY", &["h", "g"]);
    room.apply(Origin::Server, force("creating", Some("visual")))
        .await
        .expect("creating");
    let (g, hello) = s.join("HEAVY", "g").await;
    let left_at = version_of(&hello).expect("version");
    drop(g);
    // 200 replacements of one 47 KiB image: a small canvas, but 9 MiB of events.
    let host = Origin::Socket {
        conn: ConnId::detached(u64::MAX),
        player_id: "h".into(),
    };
    for _ in 0..200 {
        let delta = image("a", "same", 47 * 1024);
        let action: Action = serde_json::from_value(json!({
            "kind": "canvas", "adlobId": "a", "phase": "visual", "op": delta["delta"]
        }))
        .expect("canvas action");
        room.apply(host.clone(), action).await.expect("applied");
    }
    let mut g = s.connect().await;
    let hello = g
        .join_with("HEAVY", "g", &s.token("HEAVY", "g"), None, Some(left_at))
        .await;
    assert_eq!(hello["recovered"], false);
    assert_eq!(
        hello["canvases"]["a"]["ops"].as_array().map(Vec::len),
        Some(1)
    );
    // The connection is fine: the next change arrives as usual.
    room.apply(
        Origin::Server,
        Action::BriefUpdated {
            brief_id: "b".into(),
        },
    )
    .await
    .expect("brief");
    g.expect("brief_updated").await;
}

// ------------------------------------------------------------------ connections

#[tokio::test]
async fn silent_slow_and_idle_http_connections_are_closed() {
    let s = spawn_with(|c| c.http_header_timeout = Duration::from_millis(300)).await;
    let addr = s.handle.addr;
    // Sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    closed_by_peer(&mut silent, WAIT).await;
    // Slowloris: headers one byte at a time, never finished.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let dribble = async {
        use tokio::io::AsyncWriteExt;
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, dribble)
        .await
        .expect("the server hangs up on the dribbling client");
    // Keep-alive after a request: idle, then closed.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let (status, body) = http(&mut idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    closed_by_peer(&mut idle, WAIT).await;
}

#[tokio::test]
async fn connection_caps_answer_503_while_health_and_the_admin_plane_keep_answering() {
    let s = spawn_with(|c| {
        c.max_connections = 5;
        c.max_connections_per_ip = 3;
    })
    .await;
    s.create_room("CAP", &["h"]);
    let addr = s.handle.addr;
    let local = Ipv4Addr::new(127, 0, 0, 1);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(RawWs::connect_from(addr, local).await);
    }
    let mut fourth = connect_from(addr, local).await;
    let (status, body) = http(&mut fourth, &upgrade_request(addr)).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "too many connections from this address")
    );
    let other = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..2 {
        open.push(RawWs::connect_from(addr, other).await);
    }
    let third = Ipv4Addr::new(127, 0, 0, 3);
    let mut full = connect_from(addr, third).await;
    let (status, body) = http(&mut full, &upgrade_request(addr)).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "server at connection capacity")
    );
    // The process still says it is alive, and the admin plane serves.
    let mut probe = connect_from(addr, third).await;
    let (status, body) = http(&mut probe, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    admin(&s)
        .await
        .get_room(pb::GetRoomRequest {
            room_code: "CAP".into(),
        })
        .await
        .expect("the admin plane answers at capacity");
    // A socket that leaves gives its place back.
    let mut leaving = open.pop().expect("one");
    leaving
        .send_raw(&raw::frame_bytes(0x88, &[0x03, 0xE8], true))
        .await;
    assert_eq!(leaving.read_to_end(WAIT).await.close_code, Some(1000));
    let admitted = tokio::time::timeout(WAIT, async {
        loop {
            let mut tcp = connect_from(addr, third).await;
            let (status, _) = http(&mut tcp, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if status == 200 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "a place came free");
}

// ------------------------------------------------------------------ counts a client controls

#[tokio::test]
async fn seeded_rooms_are_bounded_in_all_and_per_address_and_expire_when_idle() {
    let s = spawn_with(|c| {
        c.allow_client_seeded_rooms = true;
        c.max_seeded_rooms = 3;
        c.seeded_rooms_per_ip_per_minute = 2;
        c.seeded_room_idle_ttl = Duration::from_millis(1000);
        c.snapshot_interval = Duration::from_millis(100);
    })
    .await;
    let addr = s.handle.addr;
    let join = |code: &str| {
        json!({"type":"join_room","roomCode":code,"playerId":"h","playerToken":s.token(code,"h"),
               "initialSnapshot":seed(code,&["h"],1)})
        .to_string()
    };
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let b = Ipv4Addr::new(127, 0, 0, 2);
    let mut sockets = Vec::new();
    for (source, code, expect) in [
        (a, "SA", "hello_ack"),
        (a, "SB", "hello_ack"),
        (a, "SC", "rate_limited"),
        (b, "SC", "hello_ack"),
        (b, "SD", "unavailable"),
    ] {
        let mut ws = RawWs::connect_from(addr, source).await;
        ws.send_text(&join(code)).await;
        let reply = ws
            .next_frame(WAIT)
            .await
            .expect("reply")
            .text()
            .expect("json");
        let got = match reply["type"].as_str() {
            Some("error") => reply["code"].as_str().unwrap_or_default().to_string(),
            other => other.unwrap_or_default().to_string(),
        };
        assert_eq!(got, expect, "{code} from {source}: {reply}");
        sockets.push(ws);
    }
    // SA's only socket leaves; the room expires once idle for the TTL.
    let mut sa = sockets.remove(0);
    sa.send_raw(&raw::frame_bytes(0x88, &[0x03, 0xE8], true))
        .await;
    sa.read_to_end(WAIT).await;
    tokio::time::timeout(WAIT, async {
        while s.handle.registry().get("SA").is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle seeded room expires");
    let mut again = RawWs::connect_from(addr, Ipv4Addr::new(127, 0, 0, 3)).await;
    again.send_text(&join("SA")).await;
    let reply = again
        .next_frame(WAIT)
        .await
        .expect("reply")
        .text()
        .expect("json");
    assert_eq!(reply["code"], "room_not_found", "{reply}");
    // Its place is free for a new seed.
    let mut fresh = RawWs::connect_from(addr, Ipv4Addr::new(127, 0, 0, 4)).await;
    fresh.send_text(&join("SE")).await;
    let reply = fresh
        .next_frame(WAIT)
        .await
        .expect("reply")
        .text()
        .expect("json");
    assert_eq!(reply["type"], "hello_ack", "{reply}");
}

#[tokio::test]
async fn watchers_are_bounded_per_room_and_in_all_and_a_dropped_one_frees_its_place() {
    let s = spawn_with(|c| {
        c.max_watchers = 3;
        c.max_watchers_per_room = 2;
        c.snapshot_interval = Duration::from_millis(50);
    })
    .await;
    s.create_room("W1", &["h"]);
    s.create_room("W2", &["h"]);
    let mut a = admin(&s).await;
    let watch = |code: &str| pb::WatchRoomRequest {
        room_code: code.into(),
    };
    let w1 = a.watch_room(watch("W1")).await.expect("first");
    let _w2 = a.watch_room(watch("W1")).await.expect("second");
    let err = a.watch_room(watch("W1")).await.expect_err("per room");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let _w3 = a.watch_room(watch("W2")).await.expect("third");
    let err = a.watch_room(watch("W2")).await.expect_err("in all");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    drop(w1);
    let freed = tokio::time::timeout(WAIT, async {
        loop {
            if a.watch_room(watch("W2")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the dropped watcher's place came free");
}

// ------------------------------------------------------------------ the review's findings

#[tokio::test]
async fn a_client_that_pipelines_requests_and_never_reads_loses_its_place() {
    let s = spawn_with(|c| {
        c.http_header_timeout = Duration::from_millis(300);
        c.max_connections_per_ip = 1;
    })
    .await;
    let addr = s.handle.addr;
    let mut hog = TcpStream::connect(addr).await.expect("connect");
    // Far more responses than the socket buffers hold, and never a read.
    let requests = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(400_000);
    let write = async {
        use tokio::io::AsyncWriteExt;
        let _ = hog.write_all(requests.as_bytes()).await;
    };
    // The server stops reading once its responses cannot go out; the write ends
    // when the server gives the connection up.
    let _ = tokio::time::timeout(WAIT, write).await;
    // The place comes free: a new connection from the same address is served.
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let (status, _) = http(&mut tcp, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the non-reading connection kept its place");
}

#[tokio::test]
async fn the_resume_history_holds_at_most_half_a_sockets_queue() {
    let s = spawn_server().await;
    let room = s.create_room("HIST", &["h", "g"]);
    room.apply(Origin::Server, force("creating", Some("visual")))
        .await
        .expect("creating");
    let (g, hello) = s.join("HIST", "g").await;
    let left_at = version_of(&hello).expect("version");
    drop(g);
    // 120 big deltas: 5.6 MB, which would fit one socket's 8 MiB queue, but the
    // history keeps only the newest 4 MiB of them.
    let host = Origin::Socket {
        conn: ConnId::detached(u64::MAX),
        player_id: "h".into(),
    };
    for _ in 0..120 {
        let delta = image("a", "same", 47 * 1024);
        let action: Action = serde_json::from_value(json!({
            "kind": "canvas", "adlobId": "a", "phase": "visual", "op": delta["delta"]
        }))
        .expect("canvas action");
        room.apply(host.clone(), action).await.expect("applied");
    }
    let now = s.version("HIST").await;
    let mut far = s.connect().await;
    let hello = far
        .join_with("HIST", "g", &s.token("HIST", "g"), None, Some(left_at))
        .await;
    assert_eq!(
        hello["recovered"], false,
        "120 events back is past the history"
    );
    drop(far);
    // A client 40 events behind is still replayed everything.
    let near = now - 40;
    let mut close = s.connect().await;
    let hello = close
        .join_with("HIST", "g", &s.token("HIST", "g"), None, Some(near))
        .await;
    assert_eq!(hello["recovered"], true);
    for expected in near + 1..=version_of(&hello).expect("v") {
        let m = close.recv().await;
        assert_eq!(version_of(&m), Some(expected));
    }
}

#[tokio::test]
async fn a_phase_timer_whose_step_is_refused_backs_off() {
    // A room at its last version with a phase timer long expired: every step is
    // refused. The owner must not retry on every tick.
    let (url, _file) = db::fresh_sqlite();
    let database = karaoke_realtime::config::Database::Sqlite(url.clone());
    let store = karaoke_realtime::store::Store::connect(&database, Duration::from_secs(10))
        .await
        .expect("connect")
        .expect("a store");
    store.migrate().await.expect("migrate");
    let room = karaoke_realtime::room::Room::new(
        "TIMER",
        vec![player("h", 0, true)],
        Settings {
            phase_duration_seconds: Some(1),
            auto_advance: true,
            ..Settings::default()
        },
    )
    .expect("room");
    let mut stored = serde_json::to_value(room.to_stored(false)).expect("json");
    stored["snapshot"]["version"] = json!(MAX_VERSION);
    stored["snapshot"]["status"] = json!("creating");
    stored["snapshot"]["currentPhase"] = json!("big_idea");
    stored["snapshot"]["phaseStartTime"] = json!("2026-01-01T00:00:00Z");
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    sqlx::query(
        "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) \
         VALUES ('TIMER', ?1, ?2, '2030-01-01T00:00:00.000Z')",
    )
    .bind(MAX_VERSION as i64)
    .bind(stored.to_string())
    .execute(&pool)
    .await
    .expect("insert");
    let s = spawn_with(|c| c.database = database.clone()).await;
    let failures = || {
        s.handle
            .app
            .metrics
            .counters
            .phase_change_failures_total
            .load(Ordering::Relaxed)
    };
    // Wait for the first refusal, then let three seconds pass: backing off from one
    // second, at most two more tries fit (a spinning timer tried thousands of times).
    tokio::time::timeout(WAIT, async {
        while failures() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the timer fires");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = failures();
    assert!((1..=3).contains(&tries), "{tries} tries in three seconds");
}

#[tokio::test]
async fn a_player_gets_a_bounded_number_of_sockets_and_a_refused_rejoin_leaves_none() {
    let s = spawn_with(|c| c.max_sockets_per_player = 2).await;
    s.create_room("TABS", &["h", "g"]);
    let (_one, _) = s.join("TABS", "h").await;
    let (_two, _) = s.join("TABS", "h").await;
    let mut third = s.connect().await;
    let reply = third.join("TABS", "h", &s.token("TABS", "h")).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    // A socket joined as g that tries to become h is refused, and is then in no
    // room: its messages are no longer g's.
    let (mut g, _) = s.join("TABS", "g").await;
    let reply = g.join("TABS", "h", &s.token("TABS", "h")).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    g.set_ready("TABS", "g", true).await;
    let e = g.expect_error("forbidden").await;
    assert_eq!(e["message"], "join_room first");
}

#[tokio::test]
async fn an_endless_timestamp_is_refused() {
    let s = spawn_server().await;
    s.create_room("LONG", &["h"]);
    let (mut h, _) = s.join("LONG", "h").await;
    let long = format!("2026-01-01T00:00:00.{}Z", "1".repeat(60_000));
    h.send(
        json!({"type":"set_status","roomCode":"LONG","playerId":"h","status":"briefing",
                  "currentPhase":null,"phaseStartTime":long}),
    )
    .await;
    let e = h.expect_error("invalid_payload").await;
    assert_eq!(
        e["message"],
        "phaseStartTime must be an RFC 3339 timestamp of at most 64 characters"
    );
}

#[tokio::test]
async fn a_connection_cap_above_the_file_limit_is_lowered_so_health_and_admin_keep_answering() {
    // 300 file descriptors: the cap of 25,000 cannot be held; the server lowers it
    // to 300 - 128 = 172 and says so, and refuses past it before `accept` runs dry.
    let mut server = binproc::Proc::spawn_with_nofile(
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("REALTIME_SHARED_SECRET", SECRET),
            ("DATABASE_URL", "memory:"),
            ("METRICS_FLUSH_INTERVAL_MS", "0"),
        ],
        300,
    );
    let lowered = server
        .find_message("max_connections_lowered_to_fit_the_fd_limit")
        .await;
    assert_eq!(lowered["used"], 172, "{lowered}");
    let port = server.listening_port().await;
    let admin_port = server.find_message("admin_plane_listening").await["port"]
        .as_u64()
        .expect("admin port");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut open = Vec::new();
    for _ in 0..172 {
        open.push(RawWs::connect(addr).await);
    }
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (status, body) = http(&mut tcp, &upgrade_request(addr)).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "server at connection capacity")
        );
    }
    let mut probe = TcpStream::connect(addr).await.expect("connect");
    let (status, _) = http(&mut probe, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let mut admin = RoomAdminClient::connect(format!("http://127.0.0.1:{admin_port}"))
        .await
        .expect("the admin plane connects");
    admin
        .create_room(pb::CreateRoomRequest {
            code: "FDS".into(),
            host: None,
            settings: None,
        })
        .await
        .expect("the admin plane answers at capacity");
    server.kill().await;
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off_logs_once_and_recovers() {
    // 300 descriptors. The players' cap fits them, but the admin plane's connections
    // are not capped: holding enough of them runs the process out of descriptors, and
    // the players' `accept` fails with EMFILE.
    let mut server = binproc::Proc::spawn_with_nofile(
        &[
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("REALTIME_SHARED_SECRET", SECRET),
            ("DATABASE_URL", "memory:"),
            ("METRICS_FLUSH_INTERVAL_MS", "0"),
        ],
        300,
    );
    let port = server.listening_port().await;
    let admin_port = server.find_message("admin_plane_listening").await["port"]
        .as_u64()
        .expect("admin port") as u16;
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(
            TcpStream::connect(("127.0.0.1", admin_port))
                .await
                .expect("connect (the backlog takes what accept cannot)"),
        );
    }
    // A player arrives while no descriptor is free: it waits in the backlog.
    let mut player = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let failed = server.find_message("accept_failed").await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("Too many open files")),
        "{failed}"
    );
    // Descriptors come back: the player is served, the admin plane answers.
    drop(held);
    server.find_message("accept_recovered").await;
    let (status, _) = http(&mut player, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let mut admin = RoomAdminClient::connect(format!("http://127.0.0.1:{admin_port}"))
        .await
        .expect("the admin plane connects again");
    admin
        .create_room(pb::CreateRoomRequest {
            code: "FDS2".into(),
            host: None,
            settings: None,
        })
        .await
        .expect("the admin plane answers again");
    server.kill().await;
    let lines = server.stdout_lines();
    let episodes = lines
        .iter()
        .filter(|l| l.contains("\"accept_failed\""))
        .count();
    assert_eq!(episodes, 1, "one line per episode, not per attempt");
}
