//! The admin plane over real sockets: a tonic client drives a real server (both planes
//! on port 0) while real WebSocket players, joined with tokens minted through
//! `MintPlayerToken`, watch the effects.
//!
//! Conventions:
//! - "Nothing changed" after a rejected call is proved twice: `GetRoom` returns the
//!   same room, and the next frame each socket receives is the broadcast of a later,
//!   accepted call (so no frame was sent for the rejected one).
//! - Nothing sleeps to synchronize: every wait is for a message, bounded by `WAIT`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use futures_util::StreamExt;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

type Admin = RoomAdminClient<Channel>;

const ADMIN_SERVICE: &str = "karaoke.admin.v1.RoomAdmin";
const CODE_ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The admin plane's URL over loopback (it may be bound to 0.0.0.0).
fn admin_url(addr: SocketAddr) -> String {
    format!("http://127.0.0.1:{}", addr.port())
}

async fn admin(s: &TestServer) -> Admin {
    RoomAdminClient::connect(admin_url(s.handle.admin_addr))
        .await
        .expect("admin plane connects")
}

async fn health(s: &TestServer) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(admin_url(s.handle.admin_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("health service connects");
    HealthClient::new(channel)
}

fn pb_player(id: &str, seat: i32, host: bool) -> pb::Player {
    pb::Player {
        id: id.into(),
        name: format!("Player {id}"),
        emoji: "🎤".into(),
        is_ready: false,
        is_host: host,
        seat_index: seat,
        connected: false,
    }
}

fn create_req(code: &str, host: Option<pb::Player>) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        code: code.into(),
        host,
        settings: None,
    }
}

/// Creates `code` with `host` (seat 0) through the admin plane.
async fn create(admin: &mut Admin, code: &str, host: &str) -> pb::Room {
    admin
        .create_room(create_req(code, Some(pb_player(host, 0, true))))
        .await
        .expect("CreateRoom")
        .into_inner()
        .room
        .expect("room in response")
}

async fn get(admin: &mut Admin, code: &str) -> pb::Room {
    admin
        .get_room(pb::GetRoomRequest {
            room_code: code.into(),
        })
        .await
        .expect("GetRoom")
        .into_inner()
        .room
        .expect("room in response")
}

async fn upsert(admin: &mut Admin, code: &str, player: pb::Player) -> u64 {
    admin
        .upsert_player(pb::UpsertPlayerRequest {
            room_code: code.into(),
            player: Some(player),
        })
        .await
        .expect("UpsertPlayer")
        .into_inner()
        .version
}

async fn mint(admin: &mut Admin, code: &str, player: &str) -> String {
    admin
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: code.into(),
            player_id: player.into(),
            ttl_seconds: 0,
        })
        .await
        .expect("MintPlayerToken")
        .into_inner()
        .token
}

/// Joins `player` with a token minted through the admin plane.
async fn join(s: &TestServer, admin: &mut Admin, code: &str, player: &str) -> (Client, Value) {
    let token = mint(admin, code, player).await;
    let mut c = s.connect().await;
    let hello = c.join(code, player, &token).await;
    assert_eq!(
        hello["type"], "hello_ack",
        "join of {player} failed: {hello}"
    );
    (c, hello)
}

fn brief(code: &str, brief_id: &str) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        room_code: code.into(),
        event: Some(pb::publish_event_request::Event::BriefUpdated(
            pb::BriefUpdated {
                brief_id: brief_id.into(),
            },
        )),
    }
}

fn content(
    code: &str,
    adlob: &str,
    phase: pb::CreationPhase,
    player: &str,
) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        room_code: code.into(),
        event: Some(pb::publish_event_request::Event::ContentSubmitted(
            pb::ContentSubmitted {
                adlob_id: adlob.into(),
                phase: phase as i32,
                player_id: player.into(),
            },
        )),
    }
}

fn force(
    code: &str,
    status: pb::GameStatus,
    phase: pb::CreationPhase,
    start: &str,
) -> pb::ForcePhaseRequest {
    pb::ForcePhaseRequest {
        room_code: code.into(),
        status: status as i32,
        current_phase: phase as i32,
        phase_start_time: start.into(),
    }
}

/// The call failed with `code` and a message starting with `prefix`.
#[track_caller]
fn assert_status<T: Debug>(result: Result<T, Status>, code: Code, prefix: &str) -> Status {
    let status = result.expect_err("the call must be rejected");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(prefix),
        "message should start with {prefix:?}: {:?}",
        status.message()
    );
    status
}

#[track_caller]
fn assert_invalid<T: Debug>(result: Result<T, Status>, field: &str) -> Status {
    assert_status(result, Code::InvalidArgument, field)
}

/// Proves a rejected call changed nothing: the room reads as `before`, and the next
/// frame on every socket is the broadcast of a later accepted call. Returns the
/// room afterwards (one version later).
async fn assert_unchanged(
    admin: &mut Admin,
    before: &pb::Room,
    clients: &mut [&mut Client],
) -> pb::Room {
    let after = get(admin, &before.code).await;
    assert_eq!(&after, before, "a rejected call changed the room");
    let version = admin
        .publish_event(brief(&before.code, "probe"))
        .await
        .expect("probe broadcast")
        .into_inner()
        .version;
    assert_eq!(version, before.version + 1);
    for c in clients.iter_mut() {
        let next = c.recv().await;
        assert_eq!(
            (next["type"].as_str(), next["briefId"].as_str()),
            (Some("brief_updated"), Some("probe")),
            "a frame arrived for a rejected call: {next}"
        );
        assert_eq!(next["version"], version);
    }
    get(admin, &before.code).await
}

/// Next text frame other than a heartbeat, exactly as sent.
async fn next_text(c: &mut Client) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame within the wait")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                if v["type"] != "heartbeat" {
                    return t.to_string();
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_event(stream: &mut Streaming<pb::RoomEvent>) -> pb::RoomEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event within the wait")
        .expect("stream healthy")
        .expect("stream still open")
}

/// The stream ends with OK (no error) within the wait.
async fn assert_stream_ends<T: Debug>(stream: &mut Streaming<T>) {
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends within the wait");
    match end {
        Ok(None) => {}
        other => panic!("expected a clean end of stream, got {other:?}"),
    }
}

/// The server closes the socket with `code` (and `reason` when given).
async fn assert_closed(c: &mut Client, code: u16, reason: &str) {
    let frame = c.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), code, "{frame:?}");
    assert_eq!(frame.reason.as_str(), reason, "{frame:?}");
}

/// A watch event's `type` and `version` agree with its JSON.
#[track_caller]
fn assert_event_fields(event: &pb::RoomEvent) -> Value {
    let v: Value = serde_json::from_str(&event.json).expect("event JSON");
    assert_eq!(v["type"], event.r#type.as_str(), "{}", event.json);
    let version = v["version"]
        .as_u64()
        .or(v["snapshot"]["version"].as_u64())
        .expect("the event carries a version");
    assert_eq!(event.version, version, "{}", event.json);
    v
}

async fn health_check(h: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let status = h
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("known status")
}

async fn next_health(stream: &mut Streaming<HealthCheckResponse>) -> ServingStatus {
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a health update within the wait")
        .expect("health stream healthy")
        .expect("health stream open");
    ServingStatus::try_from(r.status).expect("known status")
}

fn authed<T>(message: T, header: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", header.parse().expect("ascii header"));
    r
}

// ---------------------------------------------------------------------------
// CreateRoom
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_room_generates_six_character_codes_without_look_alikes() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    let mut codes = HashSet::new();
    for _ in 0..40 {
        let room = admin
            .create_room(create_req("", None))
            .await
            .expect("CreateRoom")
            .into_inner()
            .room
            .expect("room");
        assert_eq!(room.code.chars().count(), 6, "{}", room.code);
        assert!(
            room.code.chars().all(|c| CODE_ALPHABET.contains(c)),
            "code {} uses a character outside the alphabet",
            room.code
        );
        assert!(
            !room.code.contains(['0', 'O', '1', 'I', 'L']),
            "{}",
            room.code
        );
        // A fresh room: lobby, no phase, version 0, nobody, a uuid id.
        assert_eq!(room.status, pb::GameStatus::Lobby as i32);
        assert_eq!(room.current_phase, pb::CreationPhase::Unspecified as i32);
        assert_eq!(room.version, 0);
        assert!(room.players.is_empty());
        assert_eq!(room.connection_count, 0);
        assert!(uuid::Uuid::parse_str(&room.id).is_ok(), "{}", room.id);
        // It is live: GetRoom finds the same room.
        assert_eq!(get(&mut admin, &room.code).await, room);
        codes.insert(room.code);
    }
    assert_eq!(codes.len(), 40, "generated codes are distinct live rooms");
    let listed = admin
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .expect("ListRooms")
        .into_inner();
    assert_eq!(listed.rooms.len(), 40);
}

#[tokio::test]
async fn create_room_with_a_given_code_host_and_settings() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    let settings = pb::Settings {
        product_category: Some("Snacks".into()),
        phase_duration_seconds: Some(90),
        brief_style: Some("Serious".into()),
        wacky_brief_style: Some("Absurd".into()),
        auto_advance: Some(true),
    };
    // `connected` is output only: a caller cannot claim presence.
    let mut host = pb_player("host-1", 3, true);
    host.connected = true;
    let room = admin
        .create_room(pb::CreateRoomRequest {
            code: "Game-1_x".into(),
            host: Some(host.clone()),
            settings: Some(settings.clone()),
        })
        .await
        .expect("CreateRoom")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(room.code, "Game-1_x");
    assert_eq!(room.status, pb::GameStatus::Lobby as i32);
    assert_eq!(room.version, 0);
    host.connected = false;
    assert_eq!(room.players, vec![host]);
    assert_eq!(room.settings, Some(settings));
    assert_eq!(get(&mut admin, "Game-1_x").await, room);

    // The host can join with a minted token.
    let (mut c, hello) = join(&s, &mut admin, "Game-1_x", "host-1").await;
    assert_eq!(hello["snapshot"]["players"][0]["id"], "host-1");
    assert_eq!(hello["snapshot"]["players"][0]["isHost"], true);
    let room = get(&mut admin, "Game-1_x").await;

    // A taken code is ALREADY_EXISTS, and the live room is untouched.
    assert_status(
        admin
            .create_room(create_req("Game-1_x", Some(pb_player("intruder", 0, true))))
            .await,
        Code::AlreadyExists,
        "",
    );
    assert_unchanged(&mut admin, &room, &mut [&mut c]).await;
    let listed = admin
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .expect("ListRooms")
        .into_inner();
    assert_eq!(listed.rooms.len(), 1);

    // Settings default to unset, auto_advance off, when none are given.
    let plain = create(&mut admin, "Plain", "h").await;
    assert_eq!(
        plain.settings,
        Some(pb::Settings {
            auto_advance: Some(false),
            ..Default::default()
        })
    );
}

// ---------------------------------------------------------------------------
// GetRoom / ListRooms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn get_room_reports_presence_status_phase_version_and_connections() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "GET", "host").await;
    upsert(&mut admin, "GET", pb_player("p2", 1, false)).await;
    upsert(&mut admin, "GET", pb_player("p3", 2, false)).await;

    let room = get(&mut admin, "GET").await;
    assert_eq!(room.version, 2);
    assert!(room.players.iter().all(|p| !p.connected));
    assert_eq!(room.connection_count, 0);

    let (mut host, hello) = join(&s, &mut admin, "GET", "host").await;
    let (_p2a, _) = join(&s, &mut admin, "GET", "p2").await;
    let seen = host.expect("room_state").await;
    let (_p2b, _) = join(&s, &mut admin, "GET", "p2").await;
    // A second socket of an online player changes nothing but tells the others.
    let again = host.expect("room_state").await;
    assert_eq!(again["snapshot"]["version"], seen["snapshot"]["version"]);

    let room = get(&mut admin, "GET").await;
    assert_eq!(hello["snapshot"]["version"], 3, "host came online: v3");
    assert_eq!(room.version, seen["snapshot"]["version"].as_u64().unwrap());
    assert_eq!(room.version, 4);
    let presence: Vec<(&str, bool)> = room
        .players
        .iter()
        .map(|p| (p.id.as_str(), p.connected))
        .collect();
    assert_eq!(presence, [("host", true), ("p2", true), ("p3", false)]);
    assert_eq!(room.connection_count, 3);
    assert_eq!(room.status, pb::GameStatus::Lobby as i32);
    assert_eq!(room.current_phase, pb::CreationPhase::Unspecified as i32);
    assert_eq!(room.id, hello["snapshot"]["id"].as_str().unwrap());

    // Status and phase as forced.
    admin
        .force_phase(force(
            "GET",
            pb::GameStatus::Creating,
            pb::CreationPhase::Pitch,
            "2030-05-06T07:08:09Z",
        ))
        .await
        .expect("ForcePhase");
    let room = get(&mut admin, "GET").await;
    assert_eq!(room.status, pb::GameStatus::Creating as i32);
    assert_eq!(room.current_phase, pb::CreationPhase::Pitch as i32);
    assert_eq!(room.phase_start_time, "2030-05-06T07:08:09Z");
    assert_eq!(room.phase_ends_at, "", "no timer without a duration");
    assert_eq!(room.version, 5);

    assert_status(
        admin
            .get_room(pb::GetRoomRequest {
                room_code: "NOPE".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
}

#[tokio::test]
async fn list_rooms_pages_in_code_order_with_counts() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    let codes = ["R01", "R02", "R03", "R04", "R05", "R06", "R07"];
    // Created out of order: the listing is ordered by code anyway.
    for code in codes.iter().rev() {
        create(&mut admin, code, "host").await;
    }
    upsert(&mut admin, "R02", pb_player("p2", 1, false)).await;
    upsert(&mut admin, "R02", pb_player("p3", 2, false)).await;
    let (_a, _) = join(&s, &mut admin, "R02", "host").await;
    let (_b, _) = join(&s, &mut admin, "R02", "p2").await;
    let (_c, _) = join(&s, &mut admin, "R02", "p2").await;
    admin
        .force_phase(force(
            "R05",
            pb::GameStatus::Voting,
            pb::CreationPhase::Unspecified,
            "",
        ))
        .await
        .expect("ForcePhase");

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .expect("ListRooms")
            .into_inner();
        assert!(page.rooms.len() <= 3);
        pages.push(page.rooms.clone());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "paging does not terminate");
    }
    let listed: Vec<Vec<&str>> = pages
        .iter()
        .map(|p| p.iter().map(|r| r.code.as_str()).collect())
        .collect();
    assert_eq!(
        listed,
        vec![
            vec!["R01", "R02", "R03"],
            vec!["R04", "R05", "R06"],
            vec!["R07"]
        ]
    );
    let all: Vec<&pb::RoomSummary> = pages.iter().flatten().collect();
    let r02 = all.iter().find(|r| r.code == "R02").unwrap();
    assert_eq!((r02.player_count, r02.connection_count), (3, 3));
    assert_eq!(r02.version, get(&mut admin, "R02").await.version);
    assert_eq!(r02.version, 4, "two upserts, two players online");
    let r05 = all.iter().find(|r| r.code == "R05").unwrap();
    assert_eq!(r05.status, pb::GameStatus::Voting as i32);
    assert_eq!(
        (r05.player_count, r05.connection_count, r05.version),
        (1, 0, 1)
    );
    let r07 = all.iter().find(|r| r.code == "R07").unwrap();
    assert_eq!(
        (
            r07.status,
            r07.player_count,
            r07.connection_count,
            r07.version
        ),
        (pb::GameStatus::Lobby as i32, 1, 0, 0)
    );

    // A page that ends exactly at the last room has no next token.
    let exact = admin
        .list_rooms(pb::ListRoomsRequest {
            page_size: 7,
            page_token: String::new(),
        })
        .await
        .expect("ListRooms")
        .into_inner();
    assert_eq!(exact.rooms.len(), 7);
    assert_eq!(exact.next_page_token, "");
    // 0 means the default (50): everything here.
    let default = admin
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .expect("ListRooms")
        .into_inner();
    assert_eq!(default.rooms, exact.rooms);
    // Paging one at a time visits every room once.
    let mut one_by_one = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 1,
                page_token: token,
            })
            .await
            .expect("ListRooms")
            .into_inner();
        one_by_one.extend(page.rooms.into_iter().map(|r| r.code));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(one_by_one, codes);
    // 500 is allowed; 501 is not.
    admin
        .list_rooms(pb::ListRoomsRequest {
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .expect("page_size 500");
    assert_invalid(
        admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 501,
                page_token: String::new(),
            })
            .await,
        "page_size",
    );
    assert_invalid(
        admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 2,
                page_token: "not a token!".into(),
            })
            .await,
        "page_token",
    );
}

// ---------------------------------------------------------------------------
// UpsertPlayer / RemovePlayer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upsert_player_broadcasts_player_joined_then_room_state() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "UPS", "host").await;
    upsert(&mut admin, "UPS", pb_player("p2", 1, false)).await;
    let (mut host, _) = join(&s, &mut admin, "UPS", "host").await;
    let (mut p2, _) = join(&s, &mut admin, "UPS", "p2").await;
    host.expect("room_state").await;

    // A new player: every socket gets player_joined, then room_state.
    let mut p3 = pb_player("p3", 2, false);
    p3.emoji = "🦊".into();
    // `connected` is the server's to know.
    p3.connected = true;
    let before = get(&mut admin, "UPS").await.version;
    let v = upsert(&mut admin, "UPS", p3).await;
    assert_eq!(v, before + 1);
    for c in [&mut host, &mut p2] {
        let joined = c.expect("player_joined").await;
        assert_eq!(
            joined,
            json!({
                "type": "player_joined",
                "roomCode": "UPS",
                "player": {"id":"p3","name":"Player p3","emoji":"🦊","isReady":false,
                           "isHost":false,"seatIndex":2,"connected":false},
                "version": v,
            })
        );
        let state = c.expect("room_state").await;
        assert_eq!(state["snapshot"]["version"], v);
        let ids: Vec<&str> = state["snapshot"]["players"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["host", "p2", "p3"]);
    }

    // An update of an existing (connected) player: new fields, still connected,
    // the roster re-sorted by seat.
    let updated = pb::Player {
        id: "p2".into(),
        name: "Bo".into(),
        emoji: "🎸".into(),
        is_ready: true,
        is_host: false,
        seat_index: 7,
        connected: false,
    };
    let v2 = upsert(&mut admin, "UPS", updated).await;
    assert_eq!(v2, v + 1);
    for c in [&mut host, &mut p2] {
        let joined = c.expect("player_joined").await;
        assert_eq!(joined["version"], v2);
        assert_eq!(
            joined["player"],
            json!({"id":"p2","name":"Bo","emoji":"🎸","isReady":true,"isHost":false,
                   "seatIndex":7,"connected":true})
        );
        let state = c.expect("room_state").await;
        assert_eq!(state["snapshot"]["version"], v2);
        let players = state["snapshot"]["players"].as_array().unwrap();
        assert_eq!(players.len(), 3, "an update adds nobody");
        assert_eq!(players[2]["id"], "p2", "sorted by seat");
    }
    let room = get(&mut admin, "UPS").await;
    assert_eq!(room.version, v2);
    let p2_now = room.players.iter().find(|p| p.id == "p2").unwrap();
    assert_eq!((p2_now.name.as_str(), p2_now.seat_index), ("Bo", 7));
    assert!(p2_now.connected && p2_now.is_ready);

    assert_status(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: "NOPE".into(),
                player: Some(pb_player("x", 0, false)),
            })
            .await,
        Code::NotFound,
        "",
    );
}

#[tokio::test]
async fn a_player_whose_token_joined_before_being_added_shows_connected() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "EARLY", "host").await;
    let (mut host, _) = join(&s, &mut admin, "EARLY", "host").await;
    // The backend minted this token (same secret) before it told us about the player.
    let mut late = s.connect().await;
    let hello = late.join("EARLY", "late", &s.token("EARLY", "late")).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    host.expect("room_state").await;
    let before = get(&mut admin, "EARLY").await;
    assert_eq!(before.connection_count, 2);
    assert_eq!(before.players.len(), 1);

    let v = upsert(&mut admin, "EARLY", pb_player("late", 1, false)).await;
    assert_eq!(v, before.version + 1);
    for c in [&mut host, &mut late] {
        let joined = c.expect("player_joined").await;
        assert_eq!(joined["player"]["id"], "late");
        assert_eq!(joined["player"]["connected"], true, "{joined}");
        assert_eq!(joined["version"], v);
        let state = c.expect("room_state").await;
        assert_eq!(state["snapshot"]["players"][1]["connected"], true);
    }
    let room = get(&mut admin, "EARLY").await;
    assert!(room.players.iter().all(|p| p.connected), "{room:?}");
    assert_eq!(room.connection_count, 2);

    // And presence follows the socket from now on.
    drop(late);
    let left = host.expect("player_left").await;
    assert_eq!(left["playerId"], "late");
    host.expect("room_state").await;
    let room = get(&mut admin, "EARLY").await;
    assert!(!room.players[1].connected);
}

#[tokio::test]
async fn a_ninth_player_is_failed_precondition_and_changes_nothing() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "FULL", "host").await;
    for seat in 1..8 {
        upsert(
            &mut admin,
            "FULL",
            pb_player(&format!("p{seat}"), seat, false),
        )
        .await;
    }
    let (mut host, _) = join(&s, &mut admin, "FULL", "host").await;
    let before = get(&mut admin, "FULL").await;
    assert_eq!(before.players.len(), 8);

    assert_status(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: "FULL".into(),
                player: Some(pb_player("p9", 8, false)),
            })
            .await,
        Code::FailedPrecondition,
        "",
    );
    let after = assert_unchanged(&mut admin, &before, &mut [&mut host]).await;

    // Updating one of the eight still works in a full room.
    let v = upsert(&mut admin, "FULL", pb_player("p7", 9, false)).await;
    assert_eq!(v, after.version + 1);
    assert_eq!(host.expect("player_joined").await["version"], v);
}

#[tokio::test]
async fn remove_player_closes_their_sockets_with_4001_and_tells_the_others() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "REM", "host").await;
    upsert(&mut admin, "REM", pb_player("p2", 1, false)).await;
    upsert(&mut admin, "REM", pb_player("p3", 2, false)).await;
    let (mut host, _) = join(&s, &mut admin, "REM", "host").await;
    let (mut p2a, _) = join(&s, &mut admin, "REM", "p2").await;
    host.expect("room_state").await;
    let (mut p2b, _) = join(&s, &mut admin, "REM", "p2").await;
    host.expect("room_state").await;
    p2a.expect("room_state").await;
    let (mut p3, _) = join(&s, &mut admin, "REM", "p3").await;
    host.expect("room_state").await;
    let before = get(&mut admin, "REM").await;
    assert_eq!(before.connection_count, 4);

    let v = admin
        .remove_player(pb::RemovePlayerRequest {
            room_code: "REM".into(),
            player_id: "p2".into(),
        })
        .await
        .expect("RemovePlayer")
        .into_inner()
        .version;
    assert_eq!(v, before.version + 1);
    for c in [&mut p2a, &mut p2b] {
        assert_closed(c, 4001, "removed from room").await;
    }
    for c in [&mut host, &mut p3] {
        let left = c.expect("player_left").await;
        assert_eq!(
            left,
            json!({"type":"player_left","roomCode":"REM","playerId":"p2","version":v})
        );
        let state = c.expect("room_state").await;
        assert_eq!(state["snapshot"]["version"], v);
        let ids: Vec<&str> = state["snapshot"]["players"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["host", "p3"]);
    }
    let room = get(&mut admin, "REM").await;
    assert_eq!(room.version, v);
    assert_eq!(room.connection_count, 2);
    assert_eq!(room.players.len(), 2);
    // The removed player can no longer get a token.
    assert_status(
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: "REM".into(),
                player_id: "p2".into(),
                ttl_seconds: 0,
            })
            .await,
        Code::NotFound,
        "",
    );

    // Unknown player or room: NOT_FOUND, nothing changes.
    assert_status(
        admin
            .remove_player(pb::RemovePlayerRequest {
                room_code: "REM".into(),
                player_id: "ghost".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_status(
        admin
            .remove_player(pb::RemovePlayerRequest {
                room_code: "NOPE".into(),
                player_id: "host".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_invalid(
        admin
            .remove_player(pb::RemovePlayerRequest {
                room_code: "REM".into(),
                player_id: String::new(),
            })
            .await,
        "player_id",
    );
    assert_unchanged(&mut admin, &room, &mut [&mut host, &mut p3]).await;
}

// ---------------------------------------------------------------------------
// MintPlayerToken
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mint_player_token_signs_the_claims_with_the_shared_secret() {
    let s = spawn_with(|c| {
        c.token_ttl_default_secs = 600;
        c.token_ttl_max_secs = 3600;
    })
    .await;
    let mut admin = admin(&s).await;
    create(&mut admin, "MINT", "host").await;
    let keys = TokenKeys::new(
        SECRET.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    );

    let before = now_secs();
    let minted = admin
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: "MINT".into(),
            player_id: "host".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("MintPlayerToken")
        .into_inner();
    let after = now_secs();
    assert!(
        (before + 600..=after + 600).contains(&minted.expires_at),
        "expires_at {} is not now + the default ttl",
        minted.expires_at
    );
    let claims = keys
        .verify(&minted.token, now_secs())
        .expect("token verifies");
    assert_eq!(claims.room_code, "MINT");
    assert_eq!(claims.player_id, "host");
    assert_eq!(claims.exp, minted.expires_at);
    let iat = claims.iat.expect("iat");
    assert!((before..=after).contains(&iat));
    // A JWT signed HS256.
    let parts: Vec<&str> = minted.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("base64url header"))
            .expect("JSON header");
    assert_eq!(header["alg"], "HS256");
    // Another secret does not verify it.
    assert!(
        TokenKeys::new(
            b"some-other-secret-entirely",
            karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS
        )
        .verify(&minted.token, now_secs())
        .is_err()
    );
    // And the token joins.
    let mut c = s.connect().await;
    assert_eq!(
        c.join("MINT", "host", &minted.token).await["type"],
        "hello_ack"
    );

    // A ttl up to the maximum is honoured.
    let before = now_secs();
    let long = admin
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: "MINT".into(),
            player_id: "host".into(),
            ttl_seconds: 3600,
        })
        .await
        .expect("ttl at the maximum")
        .into_inner();
    assert!((before + 3600..=now_secs() + 3600).contains(&long.expires_at));
    assert_eq!(
        keys.verify(&long.token, now_secs()).expect("verifies").exp,
        long.expires_at
    );

    // Above the maximum: INVALID_ARGUMENT naming ttl_seconds.
    assert_invalid(
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: "MINT".into(),
                player_id: "host".into(),
                ttl_seconds: 3601,
            })
            .await,
        "ttl_seconds",
    );
    // Unknown room, unknown player: NOT_FOUND.
    assert_status(
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: "NOPE".into(),
                player_id: "host".into(),
                ttl_seconds: 0,
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_status(
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: "MINT".into(),
                player_id: "stranger".into(),
                ttl_seconds: 0,
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_invalid(
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: "MINT".into(),
                player_id: String::new(),
                ttl_seconds: 0,
            })
            .await,
        "player_id",
    );
}

// ---------------------------------------------------------------------------
// ForcePhase
// ---------------------------------------------------------------------------

#[tokio::test]
async fn force_phase_sets_any_status_and_phase_outright() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "FORCE", "host").await;
    upsert(&mut admin, "FORCE", pb_player("p2", 1, false)).await;
    let (mut host, _) = join(&s, &mut admin, "FORCE", "host").await;
    let (mut p2, _) = join(&s, &mut admin, "FORCE", "p2").await;
    host.expect("room_state").await;
    let mut version = get(&mut admin, "FORCE").await.version;

    // Lobby straight to results: no game rule allows it; the admin plane may.
    let steps = [
        (
            pb::GameStatus::Results,
            pb::CreationPhase::Unspecified,
            "results",
            Value::Null,
            "",
        ),
        (
            pb::GameStatus::Creating,
            pb::CreationPhase::Headline,
            "creating",
            json!("headline"),
            // Echoed verbatim: offset and precision as given.
            "2030-01-02T03:04:05.678+02:00",
        ),
        (
            pb::GameStatus::Lobby,
            pb::CreationPhase::Unspecified,
            "lobby",
            Value::Null,
            "",
        ),
        (
            pb::GameStatus::Creating,
            pb::CreationPhase::BigIdea,
            "creating",
            json!("big_idea"),
            "",
        ),
        (
            pb::GameStatus::Briefing,
            pb::CreationPhase::Unspecified,
            "briefing",
            Value::Null,
            "",
        ),
    ];
    for (status, phase, status_json, phase_json, start) in steps {
        let v = admin
            .force_phase(force("FORCE", status, phase, start))
            .await
            .expect("ForcePhase")
            .into_inner()
            .version;
        assert_eq!(v, version + 1);
        version = v;
        let mut frames = Vec::new();
        for c in [&mut host, &mut p2] {
            let changed = c.expect("status_changed").await;
            assert_eq!(changed["roomCode"], "FORCE");
            assert_eq!(changed["status"], status_json);
            assert_eq!(changed["currentPhase"], phase_json);
            assert_eq!(changed["version"], v);
            let state = c.expect("room_state").await;
            assert_eq!(state["snapshot"]["version"], v);
            assert_eq!(state["snapshot"]["status"], status_json);
            assert_eq!(state["snapshot"]["currentPhase"], phase_json);
            assert_eq!(
                state["snapshot"]["phaseStartTime"],
                changed["phaseStartTime"]
            );
            frames.push(changed);
        }
        assert_eq!(frames[0], frames[1]);
        let start_time = frames[0]["phaseStartTime"].as_str().expect("a start time");
        if start.is_empty() {
            // Empty means now, stamped by the server.
            assert!(
                time::OffsetDateTime::parse(
                    start_time,
                    &time::format_description::well_known::Rfc3339
                )
                .is_ok(),
                "{start_time}"
            );
        } else {
            assert_eq!(start_time, start);
        }
        let room = get(&mut admin, "FORCE").await;
        assert_eq!(
            (room.status, room.current_phase, room.version),
            (status as i32, phase as i32, v)
        );
        assert_eq!(room.phase_start_time, start_time);
    }

    // Bad requests: INVALID_ARGUMENT naming the field; nothing changes.
    let before = get(&mut admin, "FORCE").await;
    assert_invalid(
        admin
            .force_phase(force(
                "FORCE",
                pb::GameStatus::Unspecified,
                pb::CreationPhase::Unspecified,
                "",
            ))
            .await,
        "status",
    );
    let mut unknown = force(
        "FORCE",
        pb::GameStatus::Lobby,
        pb::CreationPhase::Unspecified,
        "",
    );
    unknown.status = 99;
    assert_invalid(admin.force_phase(unknown).await, "status");
    assert_invalid(
        admin
            .force_phase(force(
                "FORCE",
                pb::GameStatus::Voting,
                pb::CreationPhase::Visual,
                "",
            ))
            .await,
        "current_phase",
    );
    assert_invalid(
        admin
            .force_phase(force(
                "FORCE",
                pb::GameStatus::Creating,
                pb::CreationPhase::Unspecified,
                "",
            ))
            .await,
        "current_phase",
    );
    let mut unknown = force(
        "FORCE",
        pb::GameStatus::Creating,
        pb::CreationPhase::Visual,
        "",
    );
    unknown.current_phase = 42;
    assert_invalid(admin.force_phase(unknown).await, "current_phase");
    for bad in ["yesterday", "2030-01-02 03:04:05", "2030-13-02T03:04:05Z"] {
        assert_invalid(
            admin
                .force_phase(force(
                    "FORCE",
                    pb::GameStatus::Creating,
                    pb::CreationPhase::Visual,
                    bad,
                ))
                .await,
            "phase_start_time",
        );
    }
    assert_status(
        admin
            .force_phase(force(
                "NOPE",
                pb::GameStatus::Lobby,
                pb::CreationPhase::Unspecified,
                "",
            ))
            .await,
        Code::NotFound,
        "",
    );
    assert_unchanged(&mut admin, &before, &mut [&mut host, &mut p2]).await;
}

// ---------------------------------------------------------------------------
// UpdateSettings
// ---------------------------------------------------------------------------

#[tokio::test]
async fn update_settings_replaces_the_given_fields_and_broadcasts_them() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "SET", "host").await;
    let (mut host, _) = join(&s, &mut admin, "SET", "host").await;
    let v0 = get(&mut admin, "SET").await.version;

    let v1 = admin
        .update_settings(pb::UpdateSettingsRequest {
            room_code: "SET".into(),
            settings: Some(pb::Settings {
                product_category: Some("Shoes".into()),
                phase_duration_seconds: Some(120),
                brief_style: Some("Formal".into()),
                wacky_brief_style: None,
                auto_advance: None,
            }),
        })
        .await
        .expect("UpdateSettings")
        .into_inner()
        .version;
    assert_eq!(v1, v0 + 1);
    assert_eq!(
        host.expect("settings_changed").await,
        json!({"type":"settings_changed","roomCode":"SET","productCategory":"Shoes",
               "phaseDurationSeconds":120,"briefStyle":"Formal","wackyBriefStyle":null,
               "autoAdvance":false,"version":v1})
    );

    // Unset fields keep their value.
    let v2 = admin
        .update_settings(pb::UpdateSettingsRequest {
            room_code: "SET".into(),
            settings: Some(pb::Settings {
                wacky_brief_style: Some("Bananas".into()),
                auto_advance: Some(true),
                ..Default::default()
            }),
        })
        .await
        .expect("UpdateSettings")
        .into_inner()
        .version;
    assert_eq!(v2, v1 + 1);
    assert_eq!(
        host.expect("settings_changed").await,
        json!({"type":"settings_changed","roomCode":"SET","productCategory":"Shoes",
               "phaseDurationSeconds":120,"briefStyle":"Formal","wackyBriefStyle":"Bananas",
               "autoAdvance":true,"version":v2})
    );
    let room = get(&mut admin, "SET").await;
    assert_eq!(room.version, v2);
    assert_eq!(
        room.settings,
        Some(pb::Settings {
            product_category: Some("Shoes".into()),
            phase_duration_seconds: Some(120),
            brief_style: Some("Formal".into()),
            wacky_brief_style: Some("Bananas".into()),
            auto_advance: Some(true),
        })
    );
    // In the lobby a duration runs no timer.
    assert_eq!(room.phase_ends_at, "");

    // settings is required; bounds are checked; nothing changes.
    assert_invalid(
        admin
            .update_settings(pb::UpdateSettingsRequest {
                room_code: "SET".into(),
                settings: None,
            })
            .await,
        "settings",
    );
    assert_status(
        admin
            .update_settings(pb::UpdateSettingsRequest {
                room_code: "NOPE".into(),
                settings: Some(pb::Settings::default()),
            })
            .await,
        Code::NotFound,
        "",
    );
    // settings_changed is not followed by a room_state: the probe comes next.
    assert_unchanged(&mut admin, &room, &mut [&mut host]).await;
}

#[tokio::test]
async fn a_phase_timer_set_through_update_settings_advances_the_phase() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "TIMER", "host").await;
    let (mut host, _) = join(&s, &mut admin, "TIMER", "host").await;
    let forced = admin
        .force_phase(force(
            "TIMER",
            pb::GameStatus::Creating,
            pb::CreationPhase::BigIdea,
            "",
        ))
        .await
        .expect("ForcePhase")
        .into_inner()
        .version;
    let changed = host.expect("status_changed").await;
    assert_eq!(changed["currentPhase"], "big_idea");
    host.expect("room_state").await;
    assert_eq!(get(&mut admin, "TIMER").await.phase_ends_at, "");

    let v = admin
        .update_settings(pb::UpdateSettingsRequest {
            room_code: "TIMER".into(),
            settings: Some(pb::Settings {
                phase_duration_seconds: Some(1),
                auto_advance: Some(true),
                ..Default::default()
            }),
        })
        .await
        .expect("UpdateSettings")
        .into_inner()
        .version;
    assert_eq!(v, forced + 1);
    let settings = host.expect("settings_changed").await;
    assert_eq!(settings["phaseDurationSeconds"], 1);
    assert_eq!(settings["autoAdvance"], true);
    assert_eq!(settings["version"], v);
    let ends = get(&mut admin, "TIMER").await.phase_ends_at;
    assert!(
        time::OffsetDateTime::parse(&ends, &time::format_description::well_known::Rfc3339).is_ok(),
        "a timer runs: phase_ends_at {ends:?}"
    );

    // Nobody acts: the server advances the phase itself when the second is up.
    let advanced = host.expect("phase_changed").await;
    assert_eq!(advanced["currentPhase"], "visual");
    assert_eq!(advanced["version"], v + 1);
    let state = host.expect("room_state").await;
    assert_eq!(state["snapshot"]["currentPhase"], "visual");
    assert_eq!(state["snapshot"]["version"], v + 1);
    assert!(state["snapshot"]["phaseEndsAt"].is_string(), "{state}");

    // Turn the timer off; whatever it advanced to by then is what GetRoom reports.
    admin
        .update_settings(pb::UpdateSettingsRequest {
            room_code: "TIMER".into(),
            settings: Some(pb::Settings {
                auto_advance: Some(false),
                ..Default::default()
            }),
        })
        .await
        .expect("UpdateSettings");
    let mut last_phase = json!("visual");
    loop {
        let m = host.recv().await;
        match m["type"].as_str() {
            Some("settings_changed") => break,
            Some("phase_changed") => last_phase = m["currentPhase"].clone(),
            Some("room_state") => {}
            _ => panic!("unexpected {m}"),
        }
    }
    let room = get(&mut admin, "TIMER").await;
    assert_eq!(room.status, pb::GameStatus::Creating as i32);
    let phase = match last_phase.as_str() {
        Some("visual") => pb::CreationPhase::Visual,
        Some("headline") => pb::CreationPhase::Headline,
        Some("pitch") => pb::CreationPhase::Pitch,
        other => panic!("unexpected phase {other:?}"),
    };
    assert_eq!(room.current_phase, phase as i32);
    assert_eq!(room.phase_ends_at, "", "no timer once auto_advance is off");
}

// ---------------------------------------------------------------------------
// PublishEvent
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_event_broadcasts_brief_updated_and_content_submitted() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "PUB", "host").await;
    upsert(&mut admin, "PUB", pb_player("p2", 1, false)).await;
    let (mut host, _) = join(&s, &mut admin, "PUB", "host").await;
    let (mut p2, _) = join(&s, &mut admin, "PUB", "p2").await;
    host.expect("room_state").await;
    let v0 = get(&mut admin, "PUB").await.version;

    let v1 = admin
        .publish_event(brief("PUB", "brief-42"))
        .await
        .expect("PublishEvent")
        .into_inner()
        .version;
    assert_eq!(v1, v0 + 1);
    let v2 = admin
        .publish_event(content("PUB", "adlob-7", pb::CreationPhase::Visual, "p2"))
        .await
        .expect("PublishEvent")
        .into_inner()
        .version;
    assert_eq!(v2, v1 + 1);
    for c in [&mut host, &mut p2] {
        assert_eq!(
            c.recv().await,
            json!({"type":"brief_updated","roomCode":"PUB","briefId":"brief-42","version":v1})
        );
        assert_eq!(
            c.recv().await,
            json!({"type":"content_submitted","roomCode":"PUB","adlobId":"adlob-7",
                   "phase":"visual","playerId":"p2","version":v2})
        );
    }
    assert_eq!(get(&mut admin, "PUB").await.version, v2);

    // Bad events: INVALID_ARGUMENT naming the field; a non-roster player NOT_FOUND.
    let before = get(&mut admin, "PUB").await;
    assert_invalid(
        admin
            .publish_event(pb::PublishEventRequest {
                room_code: "PUB".into(),
                event: None,
            })
            .await,
        "event",
    );
    assert_invalid(
        admin.publish_event(brief("PUB", "")).await,
        "brief_updated.brief_id",
    );
    assert_invalid(
        admin.publish_event(brief("PUB", &"b".repeat(129))).await,
        "brief_updated.brief_id",
    );
    assert_invalid(
        admin
            .publish_event(content("PUB", "", pb::CreationPhase::Visual, "p2"))
            .await,
        "content_submitted.adlob_id",
    );
    assert_invalid(
        admin
            .publish_event(content(
                "PUB",
                "bad\u{1}id",
                pb::CreationPhase::Visual,
                "p2",
            ))
            .await,
        "content_submitted.adlob_id",
    );
    assert_invalid(
        admin
            .publish_event(content("PUB", "a1", pb::CreationPhase::Visual, ""))
            .await,
        "content_submitted.player_id",
    );
    assert_invalid(
        admin
            .publish_event(content("PUB", "a1", pb::CreationPhase::Unspecified, "p2"))
            .await,
        "content_submitted.phase",
    );
    let mut unknown = content("PUB", "a1", pb::CreationPhase::Visual, "p2");
    if let Some(pb::publish_event_request::Event::ContentSubmitted(e)) = &mut unknown.event {
        e.phase = 77;
    }
    assert_invalid(
        admin.publish_event(unknown).await,
        "content_submitted.phase",
    );
    assert_status(
        admin
            .publish_event(content("PUB", "a1", pb::CreationPhase::Pitch, "stranger"))
            .await,
        Code::NotFound,
        "",
    );
    assert_status(
        admin.publish_event(brief("NOPE", "b1")).await,
        Code::NotFound,
        "",
    );
    assert_unchanged(&mut admin, &before, &mut [&mut host, &mut p2]).await;
}

// ---------------------------------------------------------------------------
// CloseRoom
// ---------------------------------------------------------------------------

#[tokio::test]
async fn close_room_disconnects_everyone_with_4000_and_forgets_the_room() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "BYE", "host").await;
    create(&mut admin, "STAY", "host").await;
    upsert(&mut admin, "BYE", pb_player("p2", 1, false)).await;
    let host_token = mint(&mut admin, "BYE", "host").await;
    let (mut host, _) = join(&s, &mut admin, "BYE", "host").await;
    let (mut p2, _) = join(&s, &mut admin, "BYE", "p2").await;
    host.expect("room_state").await;
    let mut watch = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "BYE".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    assert_eq!(next_event(&mut watch).await.r#type, "room_state");
    let last = admin
        .publish_event(brief("BYE", "last"))
        .await
        .expect("PublishEvent")
        .into_inner()
        .version;
    assert_eq!(next_event(&mut watch).await.version, last);
    for c in [&mut host, &mut p2] {
        assert_eq!(c.expect("brief_updated").await["version"], last);
    }

    // Too long a reason (bytes, not characters) is refused and nothing changes.
    let before = get(&mut admin, "BYE").await;
    assert_invalid(
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: "BYE".into(),
                reason: "é".repeat(51),
            })
            .await,
        "reason",
    );
    assert_invalid(
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: "BYE".into(),
                reason: "x".repeat(101),
            })
            .await,
        "reason",
    );
    let room = assert_unchanged(&mut admin, &before, &mut [&mut host, &mut p2]).await;
    let probe = next_event(&mut watch).await;
    assert_eq!(
        (probe.r#type.as_str(), probe.version),
        ("brief_updated", room.version)
    );

    let reason = format!("game over {}", "!".repeat(90));
    assert_eq!(reason.len(), 100);
    let closed = admin
        .close_room(pb::CloseRoomRequest {
            room_code: "BYE".into(),
            reason: reason.clone(),
        })
        .await
        .expect("CloseRoom")
        .into_inner();
    assert_eq!(closed.final_version, room.version);
    for c in [&mut host, &mut p2] {
        assert_closed(c, 4000, &reason).await;
    }
    assert_stream_ends(&mut watch).await;

    // The room is gone.
    assert_status(
        admin
            .get_room(pb::GetRoomRequest {
                room_code: "BYE".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    let listed = admin
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .expect("ListRooms")
        .into_inner();
    let codes: Vec<&str> = listed.rooms.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["STAY"]);
    let mut c = s.connect().await;
    let refused = c.join("BYE", "host", &host_token).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "room_not_found");
    assert_status(
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: "BYE".into(),
                reason: String::new(),
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_status(
        admin
            .watch_room(pb::WatchRoomRequest {
                room_code: "BYE".into(),
            })
            .await,
        Code::NotFound,
        "",
    );

    // A closed room's code is retired (one code, one history in the store).
    assert_status(
        admin
            .create_room(create_req("BYE", Some(pb_player("host", 0, true))))
            .await,
        Code::AlreadyExists,
        "room code BYE belonged to a closed room",
    );
    // An empty reason is "room closed".
    create(&mut admin, "BYE2", "host").await;
    let (mut again, _) = join(&s, &mut admin, "BYE2", "host").await;
    let closed = admin
        .close_room(pb::CloseRoomRequest {
            room_code: "BYE2".into(),
            reason: String::new(),
        })
        .await
        .expect("CloseRoom")
        .into_inner();
    assert_eq!(closed.final_version, 1, "host came online: v1");
    assert_closed(&mut again, 4000, "room closed").await;
    // The other room was never touched.
    assert_eq!(get(&mut admin, "STAY").await.version, 0);
}

// ---------------------------------------------------------------------------
// WatchRoom
// ---------------------------------------------------------------------------

#[tokio::test]
async fn watch_room_streams_every_event_exactly_as_players_get_it() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "WATCH", "host").await;
    let (mut host, _) = join(&s, &mut admin, "WATCH", "host").await;
    let room = get(&mut admin, "WATCH").await;

    let mut watch = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "WATCH".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    // First the current snapshot.
    let first = next_event(&mut watch).await;
    assert_eq!(first.r#type, "room_state");
    assert_eq!(first.version, room.version);
    let v = assert_event_fields(&first);
    assert_eq!(v["snapshot"]["code"], "WATCH");
    assert_eq!(v["snapshot"]["id"], room.id.as_str());
    assert_eq!(v["snapshot"]["players"][0]["connected"], true);

    // Every change, whoever makes it, reaches the watcher as the players saw it.
    let mut seen: Vec<String> = Vec::new();
    // Admin: a new player.
    let v_upsert = upsert(&mut admin, "WATCH", pb_player("p2", 1, false)).await;
    let frames = [next_text(&mut host).await, next_text(&mut host).await];
    seen.extend(frames.iter().cloned());
    // A player: p2 comes online (others get room_state).
    let (mut p2, _) = join(&s, &mut admin, "WATCH", "p2").await;
    seen.push(next_text(&mut host).await);
    // A player: ready (ready_update then room_state, to everyone).
    host.set_ready("WATCH", "host", true).await;
    for _ in 0..2 {
        let t = next_text(&mut host).await;
        assert_eq!(next_text(&mut p2).await, t);
        seen.push(t);
    }
    // A player: presentation_state (no version bump).
    host.send(
        json!({"type":"presentation_state","roomCode":"WATCH","playerId":"host",
                     "presentIndex":2,"showCampaign":true}),
    )
    .await;
    let t = next_text(&mut host).await;
    assert_eq!(next_text(&mut p2).await, t);
    seen.push(t);
    // Admin: every mutating call.
    admin
        .force_phase(force(
            "WATCH",
            pb::GameStatus::Creating,
            pb::CreationPhase::Visual,
            "2031-01-01T00:00:00Z",
        ))
        .await
        .expect("ForcePhase");
    admin
        .update_settings(pb::UpdateSettingsRequest {
            room_code: "WATCH".into(),
            settings: Some(pb::Settings {
                product_category: Some("Cars".into()),
                ..Default::default()
            }),
        })
        .await
        .expect("UpdateSettings");
    admin
        .publish_event(brief("WATCH", "b1"))
        .await
        .expect("PublishEvent");
    admin
        .publish_event(content("WATCH", "ad1", pb::CreationPhase::Visual, "p2"))
        .await
        .expect("PublishEvent");
    // status_changed, room_state, settings_changed, brief_updated, content_submitted
    for _ in 0..5 {
        let t = next_text(&mut host).await;
        assert_eq!(next_text(&mut p2).await, t);
        seen.push(t);
    }
    let v_remove = admin
        .remove_player(pb::RemovePlayerRequest {
            room_code: "WATCH".into(),
            player_id: "p2".into(),
        })
        .await
        .expect("RemovePlayer")
        .into_inner()
        .version;
    seen.push(next_text(&mut host).await);
    seen.push(next_text(&mut host).await);

    let mut types = Vec::new();
    for expected in &seen {
        let event = next_event(&mut watch).await;
        assert_eq!(&event.json, expected, "the watcher got a different frame");
        let v = assert_event_fields(&event);
        types.push(v["type"].as_str().unwrap().to_string());
    }
    assert_eq!(
        types,
        [
            "player_joined",
            "room_state",
            "room_state",
            "ready_update",
            "room_state",
            "presentation_state",
            "status_changed",
            "room_state",
            "settings_changed",
            "brief_updated",
            "content_submitted",
            "player_left",
            "room_state",
        ]
    );
    let first_json: Value = serde_json::from_str(&seen[0]).unwrap();
    assert_eq!(first_json["version"], v_upsert);
    let last_json: Value = serde_json::from_str(&seen[seen.len() - 1]).unwrap();
    assert_eq!(last_json["snapshot"]["version"], v_remove);
    // The presentation_state carries the current version (it bumps nothing).
    let presentation: Value = serde_json::from_str(&seen[5]).unwrap();
    let ready_state: Value = serde_json::from_str(&seen[4]).unwrap();
    assert_eq!(presentation["version"], ready_state["snapshot"]["version"]);

    // A second watcher starts from the current snapshot.
    let mut late = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "WATCH".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    let first = next_event(&mut late).await;
    assert_eq!(
        (first.r#type.as_str(), first.version),
        ("room_state", v_remove)
    );

    // Unknown room: NOT_FOUND; bad code: INVALID_ARGUMENT.
    assert_status(
        admin
            .watch_room(pb::WatchRoomRequest {
                room_code: "NOPE".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    assert_invalid(
        admin
            .watch_room(pb::WatchRoomRequest {
                room_code: "no such room".into(),
            })
            .await,
        "room_code",
    );
}

#[tokio::test]
async fn watch_room_ends_cleanly_when_the_server_shuts_down() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "DOWN", "host").await;
    let mut watch = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "DOWN".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    assert_eq!(next_event(&mut watch).await.r#type, "room_state");
    let stopping = tokio::spawn(s.handle.shutdown());
    assert_stream_ends(&mut watch).await;
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");
}

// ---------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_change_bumps_the_version_once_as_players_and_watchers_see_it() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "VER", "host").await;
    let (mut host, _) = join(&s, &mut admin, "VER", "host").await;
    let mut watch = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "VER".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    let mut version = next_event(&mut watch).await.version;
    assert_eq!(version, get(&mut admin, "VER").await.version);

    // (call, frames it broadcasts)
    for step in 0..8 {
        let (v, frames) = match step {
            0 => (
                upsert(&mut admin, "VER", pb_player("p2", 1, false)).await,
                2,
            ),
            1 => (upsert(&mut admin, "VER", pb_player("p2", 2, true)).await, 2),
            2 => (
                admin
                    .force_phase(force(
                        "VER",
                        pb::GameStatus::Presenting,
                        pb::CreationPhase::Unspecified,
                        "",
                    ))
                    .await
                    .expect("ForcePhase")
                    .into_inner()
                    .version,
                2,
            ),
            3 => (
                admin
                    .update_settings(pb::UpdateSettingsRequest {
                        room_code: "VER".into(),
                        settings: Some(pb::Settings {
                            brief_style: Some("x".into()),
                            ..Default::default()
                        }),
                    })
                    .await
                    .expect("UpdateSettings")
                    .into_inner()
                    .version,
                1,
            ),
            4 => (
                admin
                    .publish_event(brief("VER", "b"))
                    .await
                    .expect("PublishEvent")
                    .into_inner()
                    .version,
                1,
            ),
            5 => (
                admin
                    .publish_event(content("VER", "a", pb::CreationPhase::Pitch, "p2"))
                    .await
                    .expect("PublishEvent")
                    .into_inner()
                    .version,
                1,
            ),
            6 => (
                admin
                    .remove_player(pb::RemovePlayerRequest {
                        room_code: "VER".into(),
                        player_id: "p2".into(),
                    })
                    .await
                    .expect("RemovePlayer")
                    .into_inner()
                    .version,
                2,
            ),
            _ => (
                admin
                    .force_phase(force(
                        "VER",
                        pb::GameStatus::Lobby,
                        pb::CreationPhase::Unspecified,
                        "",
                    ))
                    .await
                    .expect("ForcePhase")
                    .into_inner()
                    .version,
                2,
            ),
        };
        assert_eq!(v, version + 1, "step {step}: one bump per call");
        version = v;
        for _ in 0..frames {
            let frame = host.recv().await;
            let seen = frame["version"]
                .as_u64()
                .or(frame["snapshot"]["version"].as_u64())
                .unwrap();
            assert_eq!(seen, v, "step {step}: {frame}");
            let event = next_event(&mut watch).await;
            assert_eq!(event.version, v, "step {step}");
            assert_eq!(serde_json::from_str::<Value>(&event.json).unwrap(), frame);
        }
        assert_eq!(get(&mut admin, "VER").await.version, v);
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_arguments_name_the_field_and_change_nothing() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    create(&mut admin, "VAL", "host").await;
    let (mut host, _) = join(&s, &mut admin, "VAL", "host").await;
    let before = get(&mut admin, "VAL").await;

    // Room codes: empty, too long, characters outside A-Z a-z 0-9 - _.
    let long = "A".repeat(33);
    for bad in [
        "",
        long.as_str(),
        "has space",
        "ümlaut",
        "a/b",
        "semi;colon",
    ] {
        let code = || bad.to_string();
        assert_invalid(
            admin
                .get_room(pb::GetRoomRequest { room_code: code() })
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .upsert_player(pb::UpsertPlayerRequest {
                    room_code: code(),
                    player: Some(pb_player("x", 1, false)),
                })
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .remove_player(pb::RemovePlayerRequest {
                    room_code: code(),
                    player_id: "host".into(),
                })
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .mint_player_token(pb::MintPlayerTokenRequest {
                    room_code: code(),
                    player_id: "host".into(),
                    ttl_seconds: 0,
                })
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .force_phase(force(
                    bad,
                    pb::GameStatus::Lobby,
                    pb::CreationPhase::Unspecified,
                    "",
                ))
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .update_settings(pb::UpdateSettingsRequest {
                    room_code: code(),
                    settings: Some(pb::Settings::default()),
                })
                .await,
            "room_code",
        );
        assert_invalid(admin.publish_event(brief(bad, "b")).await, "room_code");
        assert_invalid(
            admin
                .close_room(pb::CloseRoomRequest {
                    room_code: code(),
                    reason: String::new(),
                })
                .await,
            "room_code",
        );
        assert_invalid(
            admin
                .watch_room(pb::WatchRoomRequest { room_code: code() })
                .await,
            "room_code",
        );
        // CreateRoom's code may be empty (generated), nothing else bad.
        if !bad.is_empty() {
            assert_invalid(admin.create_room(create_req(bad, None)).await, "code");
        }
    }
    // A code of 32 is fine.
    create(&mut admin, &"B".repeat(32), "h").await;

    // Player fields, through UpsertPlayer (`player`) and CreateRoom (`host`).
    let bad_players: Vec<(pb::Player, &str)> = vec![
        (
            pb::Player {
                id: String::new(),
                ..pb_player("x", 1, false)
            },
            "player.id",
        ),
        (
            pb::Player {
                id: "i".repeat(129),
                ..pb_player("x", 1, false)
            },
            "player.id",
        ),
        (
            pb::Player {
                id: "tab\tid".into(),
                ..pb_player("x", 1, false)
            },
            "player.id",
        ),
        (
            pb::Player {
                name: String::new(),
                ..pb_player("x", 1, false)
            },
            "player.name",
        ),
        (
            pb::Player {
                name: "n".repeat(65),
                ..pb_player("x", 1, false)
            },
            "player.name",
        ),
        (
            pb::Player {
                seat_index: 300,
                ..pb_player("x", 1, false)
            },
            "player.seat",
        ),
        (
            pb::Player {
                seat_index: -1,
                ..pb_player("x", 1, false)
            },
            "player.seat",
        ),
        (
            pb::Player {
                emoji: "🎤".repeat(17),
                ..pb_player("x", 1, false)
            },
            "player.emoji",
        ),
    ];
    for (p, field) in bad_players {
        assert_invalid(
            admin
                .upsert_player(pb::UpsertPlayerRequest {
                    room_code: "VAL".into(),
                    player: Some(p.clone()),
                })
                .await,
            field,
        );
        let host_field = field.replacen("player", "host", 1);
        assert_invalid(
            admin.create_room(create_req("NEW", Some(p))).await,
            &host_field,
        );
    }
    assert_invalid(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: "VAL".into(),
                player: None,
            })
            .await,
        "player",
    );
    // Limits are inclusive: 16 emoji characters, seat 255, a 64-character name.
    admin
        .create_room(create_req(
            "EDGE",
            Some(pb::Player {
                emoji: "🎤".repeat(16),
                seat_index: 255,
                name: "n".repeat(64),
                ..pb_player("x", 0, true)
            }),
        ))
        .await
        .expect("limits are inclusive");

    // Settings bounds, through UpdateSettings and CreateRoom.
    let bad_settings: Vec<(pb::Settings, &str)> = vec![
        (
            pb::Settings {
                phase_duration_seconds: Some(0),
                ..Default::default()
            },
            "phaseDurationSeconds",
        ),
        (
            pb::Settings {
                phase_duration_seconds: Some(4000),
                ..Default::default()
            },
            "phaseDurationSeconds",
        ),
        (
            pb::Settings {
                product_category: Some("p".repeat(201)),
                ..Default::default()
            },
            "productCategory",
        ),
        (
            pb::Settings {
                brief_style: Some("b".repeat(201)),
                ..Default::default()
            },
            "briefStyle",
        ),
        (
            pb::Settings {
                wacky_brief_style: Some("w".repeat(201)),
                ..Default::default()
            },
            "wackyBriefStyle",
        ),
    ];
    for (settings, sub) in bad_settings {
        let status = assert_invalid(
            admin
                .update_settings(pb::UpdateSettingsRequest {
                    room_code: "VAL".into(),
                    settings: Some(settings.clone()),
                })
                .await,
            "settings",
        );
        assert!(status.message().contains(sub), "{}", status.message());
        let status = assert_invalid(
            admin
                .create_room(pb::CreateRoomRequest {
                    code: "NEW".into(),
                    host: None,
                    settings: Some(settings),
                })
                .await,
            "settings",
        );
        assert!(status.message().contains(sub), "{}", status.message());
    }

    assert_invalid(
        admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 501,
                page_token: String::new(),
            })
            .await,
        "page_size",
    );
    assert_invalid(
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: "VAL".into(),
                reason: "r".repeat(101),
            })
            .await,
        "reason",
    );

    // No rejected CreateRoom made a room, and VAL is exactly as it was.
    let listed = admin
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .expect("ListRooms")
        .into_inner();
    let codes: Vec<String> = listed.rooms.into_iter().map(|r| r.code).collect();
    assert_eq!(codes, ["B".repeat(32), "EDGE".into(), "VAL".into()]);
    assert_unchanged(&mut admin, &before, &mut [&mut host]).await;
}

// ---------------------------------------------------------------------------
// Authentication and binding
// ---------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "a-very-long-admin-token";

#[tokio::test]
async fn a_configured_admin_token_is_required_on_every_call() {
    let s = spawn_with(|c| {
        c.admin_token = Some(karaoke_realtime::config::Secret(
            ADMIN_TOKEN.as_bytes().to_vec(),
        ));
    })
    .await;
    let mut admin = admin(&s).await;
    let right = format!("Bearer {ADMIN_TOKEN}");

    // No metadata.
    assert_status(
        admin.create_room(create_req("AUTH", None)).await,
        Code::Unauthenticated,
        "",
    );
    assert_status(
        admin.list_rooms(pb::ListRoomsRequest::default()).await,
        Code::Unauthenticated,
        "",
    );
    // Wrong tokens, and the right token without the scheme.
    for header in [
        "Bearer wrong-token-wrong-token".to_string(),
        format!("Bearer {ADMIN_TOKEN}x"),
        format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ADMIN_TOKEN.to_string(),
        "Bearer ".to_string(),
    ] {
        assert_status(
            admin
                .create_room(authed(create_req("AUTH", None), &header))
                .await,
            Code::Unauthenticated,
            "",
        );
        assert_status(
            admin
                .watch_room(authed(
                    pb::WatchRoomRequest {
                        room_code: "AUTH".into(),
                    },
                    &header,
                ))
                .await,
            Code::Unauthenticated,
            "",
        );
    }
    // Refused calls did nothing.
    let listed = admin
        .list_rooms(authed(pb::ListRoomsRequest::default(), &right))
        .await
        .expect("ListRooms with the token")
        .into_inner();
    assert!(listed.rooms.is_empty(), "{listed:?}");

    // The right token works.
    let room = admin
        .create_room(authed(
            create_req("AUTH", Some(pb_player("host", 0, true))),
            &right,
        ))
        .await
        .expect("CreateRoom with the token")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(room.code, "AUTH");
    let got = admin
        .get_room(authed(
            pb::GetRoomRequest {
                room_code: "AUTH".into(),
            },
            &right,
        ))
        .await
        .expect("GetRoom with the token");
    assert_eq!(got.into_inner().room, Some(room));
    assert_status(
        admin
            .get_room(pb::GetRoomRequest {
                room_code: "AUTH".into(),
            })
            .await,
        Code::Unauthenticated,
        "",
    );

    // The health service needs no token (probes have none).
    let mut h = health(&s).await;
    assert_eq!(health_check(&mut h, "").await, ServingStatus::Serving);
    assert_eq!(
        health_check(&mut h, ADMIN_SERVICE).await,
        ServingStatus::Serving
    );

    // With a token the configured address is used (0.0.0.0 by default).
    assert!(
        s.handle.admin_addr.ip().is_unspecified(),
        "{}",
        s.handle.admin_addr
    );
}

#[tokio::test]
async fn without_a_token_the_admin_plane_binds_to_loopback_only() {
    let s = spawn_with(|c| {
        c.admin_token = None;
        c.admin_bind_addr = "0.0.0.0".parse().unwrap();
    })
    .await;
    assert!(
        s.handle.admin_addr.ip().is_loopback(),
        "admin plane bound to {}",
        s.handle.admin_addr
    );
    // And it answers there without a token.
    let mut admin = admin(&s).await;
    create(&mut admin, "LOOP", "host").await;
    assert_eq!(get(&mut admin, "LOOP").await.code, "LOOP");
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
fn make_pki(name: &str) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        ),
        client: leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "backend"),
        ca_pem: ca_cert.pem(),
    }
}

fn tls_config(pki: &Pki, require_client_cert: bool) -> karaoke_realtime::config::AdminTls {
    karaoke_realtime::config::AdminTls {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: karaoke_realtime::config::Secret(pki.server.1.clone().into_bytes()),
        client_ca_pem: require_client_cert.then(|| pki.ca_pem.clone().into_bytes()),
    }
}

async fn tls_admin(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Admin, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RoomAdminClient::new(channel))
}

/// The call (on a possibly refused connection) does not succeed.
async fn assert_refused(admin: Result<Admin, tonic::transport::Error>) {
    let Ok(mut admin) = admin else {
        return;
    };
    let result = admin.list_rooms(pb::ListRoomsRequest::default()).await;
    assert!(result.is_err(), "the call went through: {result:?}");
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca() {
    let pki = make_pki("server-only");
    let tls = tls_config(&pki, false);
    let s = spawn_with(|c| c.admin_tls = Some(tls)).await;
    let addr = s.handle.admin_addr;

    let mut admin = tls_admin(addr, &pki.ca_pem, None)
        .await
        .expect("TLS connects");
    create(&mut admin, "TLS", "host").await;
    assert_eq!(get(&mut admin, "TLS").await.code, "TLS");

    // A plaintext client gets nothing.
    let plain = RoomAdminClient::connect(admin_url(addr)).await;
    match plain {
        Err(_) => {}
        Ok(mut plain) => {
            let r = plain.list_rooms(pb::ListRoomsRequest::default()).await;
            assert!(r.is_err(), "plaintext call went through: {r:?}");
        }
    }
    // A client that trusts another CA refuses the server.
    let other = make_pki("other");
    assert_refused(tls_admin(addr, &other.ca_pem, None).await).await;
}

#[tokio::test]
async fn tls_with_a_client_ca_requires_a_certificate_it_signed() {
    let pki = make_pki("mutual");
    let tls = tls_config(&pki, true);
    let s = spawn_with(|c| c.admin_tls = Some(tls)).await;
    let addr = s.handle.admin_addr;

    // No client certificate: refused.
    assert_refused(tls_admin(addr, &pki.ca_pem, None).await).await;
    // A certificate from another CA: refused.
    let other = make_pki("stranger");
    assert_refused(tls_admin(addr, &pki.ca_pem, Some(&other.client)).await).await;
    // A certificate the configured CA signed: accepted.
    let mut admin = tls_admin(addr, &pki.ca_pem, Some(&pki.client))
        .await
        .expect("mutual TLS connects");
    create(&mut admin, "MTLS", "host").await;
    assert_eq!(get(&mut admin, "MTLS").await.code, "MTLS");
}

// ---------------------------------------------------------------------------
// Health and shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_is_serving_then_not_serving_once_shutdown_begins() {
    let s = spawn_server().await;
    let mut h = health(&s).await;
    assert_eq!(health_check(&mut h, "").await, ServingStatus::Serving);
    assert_eq!(
        health_check(&mut h, ADMIN_SERVICE).await,
        ServingStatus::Serving
    );
    assert_status(
        h.check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await,
        Code::NotFound,
        "",
    );

    let mut watches = Vec::new();
    for service in ["", ADMIN_SERVICE] {
        let mut w = h
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health Watch")
            .into_inner();
        assert_eq!(next_health(&mut w).await, ServingStatus::Serving);
        watches.push(w);
    }

    let stopping = tokio::spawn(s.handle.shutdown());
    for w in watches.iter_mut() {
        assert_eq!(next_health(w).await, ServingStatus::NotServing);
    }
    // Open health watches do not hold the server up: they end, and shutdown completes.
    for w in watches.iter_mut() {
        assert_stream_ends(w).await;
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes with health watchers connected")
        .expect("shutdown task");
}

/// A joined player whose socket reads nothing, with a tiny receive buffer. Once more
/// is queued for it than the buffers on the way can hold, its session cannot finish
/// its goodbye at shutdown, and the drain waits for it: until the session's close
/// timeout (2 s) or SHUTDOWN_GRACE_MS, whichever is first. That window (the calls
/// made in it take ~50 ms) is what lets a test talk to the admin plane while shutdown
/// has begun but the admin plane has not yet stopped.
async fn stalled_player(s: &TestServer, admin: &mut Admin, code: &str, player: &str) -> Client {
    let token = mint(admin, code, player).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(s.handle.addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(
        s.url.as_str(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("websocket handshake");
    let mut c = Client::new(ws);
    assert_eq!(c.join(code, player, &token).await["type"], "hello_ack");
    c
}

/// ForcePhase calls per caller (8 callers, ~7.4 KB of room_state per call).
const STALL_CALLS_EACH: usize = 150;

#[tokio::test]
async fn admin_calls_during_shutdown_are_unavailable() {
    let s = spawn_with(|c| {
        c.outbound_queue_limit = 1_000_000;
        c.shutdown_grace = Duration::from_secs(2);
    })
    .await;
    let mut admin = admin(&s).await;
    // A full roster of long entries makes every room_state big (~7 KB).
    let fat = |i: i32| pb::Player {
        id: format!("{i}{}", "𝕡".repeat(127)),
        name: "𝕟".repeat(64),
        emoji: "🎤".repeat(16),
        is_ready: false,
        is_host: i == 0,
        seat_index: i,
        connected: false,
    };
    admin
        .create_room(create_req("HOLD", Some(fat(0))))
        .await
        .expect("CreateRoom");
    for i in 1..7 {
        upsert(&mut admin, "HOLD", fat(i)).await;
    }
    upsert(&mut admin, "HOLD", pb_player("zed", 200, false)).await;
    create(&mut admin, "OTHER", "host").await;
    let _stalled = stalled_player(&s, &mut admin, "HOLD", "zed").await;
    // More than every buffer between the room and that socket can hold (the kernel's
    // send buffer is at most net.ipv4.tcp_wmem's 4 MiB, tungstenite's 1 MiB): about
    // 9 MB of room_state, sent by 8 concurrent callers.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut admin = admin.clone();
        callers.spawn(async move {
            for i in 0..STALL_CALLS_EACH {
                let status = if i % 2 == 0 {
                    pb::GameStatus::Briefing
                } else {
                    pb::GameStatus::Lobby
                };
                admin
                    .force_phase(force("HOLD", status, pb::CreationPhase::Unspecified, ""))
                    .await
                    .expect("ForcePhase");
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.expect("caller task");
    }
    assert!(
        s.handle.app.config.outbound_queue_limit > 8 * 2 * STALL_CALLS_EACH,
        "the stalled socket must not be cut off as a slow consumer"
    );
    let mut h = health(&s).await;
    let mut health_watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health Watch")
        .into_inner();
    assert_eq!(next_health(&mut health_watch).await, ServingStatus::Serving);
    let mut room_watch = admin
        .watch_room(pb::WatchRoomRequest {
            room_code: "OTHER".into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    assert_eq!(next_event(&mut room_watch).await.r#type, "room_state");
    let before = get(&mut admin, "OTHER").await;

    let stopping = tokio::spawn(s.handle.shutdown());
    // NOT_SERVING is announced first; then the room watch ends as the drain begins.
    assert_eq!(
        next_health(&mut health_watch).await,
        ServingStatus::NotServing
    );
    assert_stream_ends(&mut room_watch).await;
    // The drain is still waiting for the stalled socket: the admin plane answers,
    // and every change is refused as UNAVAILABLE by the service itself.
    assert_eq!(health_check(&mut h, "").await, ServingStatus::NotServing);
    assert_eq!(
        health_check(&mut h, ADMIN_SERVICE).await,
        ServingStatus::NotServing
    );
    let refused = "server is shutting down";
    assert_status(
        admin.create_room(create_req("LATE", None)).await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: "OTHER".into(),
                player: Some(pb_player("p2", 1, false)),
            })
            .await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .remove_player(pb::RemovePlayerRequest {
                room_code: "OTHER".into(),
                player_id: "host".into(),
            })
            .await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .force_phase(force(
                "OTHER",
                pb::GameStatus::Results,
                pb::CreationPhase::Unspecified,
                "",
            ))
            .await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .update_settings(pb::UpdateSettingsRequest {
                room_code: "OTHER".into(),
                settings: Some(pb::Settings::default()),
            })
            .await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin.publish_event(brief("OTHER", "b")).await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: "OTHER".into(),
                reason: String::new(),
            })
            .await,
        Code::Unavailable,
        refused,
    );
    assert_status(
        admin
            .watch_room(pb::WatchRoomRequest {
                room_code: "OTHER".into(),
            })
            .await,
        Code::Unavailable,
        refused,
    );
    // Reads still answer, and show that nothing changed.
    assert_eq!(get(&mut admin, "OTHER").await, before);

    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");
    // Once stopped, the admin plane is gone.
    let gone = admin.list_rooms(pb::ListRoomsRequest::default()).await;
    let status = gone.expect_err("the admin plane has stopped");
    assert_eq!(status.code(), Code::Unavailable);
    assert_ne!(status.message(), refused);
}

// ---------------------------------------------------------------------------
// Reflection (operators with grpcurl and no .proto)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_admin_and_health_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let s = spawn_server().await;
    let channel = Endpoint::from_shared(admin_url(s.handle.admin_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let expected = [ADMIN_SERVICE, "grpc.health.v1.Health"];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1 lacks {name}: {names:?}"
        );
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(
            names.iter().any(|n| n == name),
            "v1alpha lacks {name}: {names:?}"
        );
    }
}
