//! Regression tests for the attacker's probe of Step 5 (items 10–13), driven the way
//! the probe drove the real server: WebSocket clients, tonic clients, raw gRPC bytes
//! and the real binary's log.
//!
//! Each test asserts what the client receives (code and message), that nothing
//! changed (no room, same version, no frame to anyone else) and that everyone else is
//! still served.

mod binproc;
mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use binproc::Proc;
use bytes::{Buf, BufMut};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::auth::now_secs;
use karaoke_realtime::observe::Origin;
use karaoke_realtime::owner::RoomHandle;
use karaoke_realtime::protocol::canvas::ImagePolicy;
use karaoke_realtime::room::Action;
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

type Admin = RoomAdminClient<Channel>;

fn admin_url(addr: SocketAddr) -> String {
    format!("http://127.0.0.1:{}", addr.port())
}

async fn admin(s: &TestServer) -> Admin {
    RoomAdminClient::connect(admin_url(s.handle.admin_addr))
        .await
        .expect("admin plane connects")
}

fn pb_player(id: &str, name: &str, emoji: &str, seat: i32, host: bool) -> pb::Player {
    pb::Player {
        id: id.into(),
        name: name.into(),
        emoji: emoji.into(),
        is_ready: false,
        is_host: host,
        seat_index: seat,
        connected: false,
    }
}

/// A client seed for `code` with `(id, name)` players, the first the host.
fn seed(code: &str, players: &[(&str, &str)]) -> Value {
    let players: Vec<Value> = players
        .iter()
        .enumerate()
        .map(|(i, (id, name))| {
            json!({"id": id, "name": name, "emoji": "🎤", "isReady": false,
                   "isHost": i == 0, "seatIndex": i})
        })
        .collect();
    json!({"id": "seed-id", "code": code, "status": "lobby", "currentPhase": null,
           "phaseStartTime": null, "players": players, "version": 0})
}

/// The call failed with INVALID_ARGUMENT and a message starting with `prefix`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, prefix: &str) -> Status {
    let status = result.expect_err("the call must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(prefix),
        "message should start with {prefix:?}: {:?}",
        status.message()
    );
    status
}

/// `c` (joined in `room` as `player`) is still served: a ready change comes back.
async fn still_served(c: &mut Client, room: &str, player: &str, ready: bool) {
    c.set_ready(room, player, ready).await;
    let update = c.expect("ready_update").await;
    assert_eq!(update["playerId"], player, "{update}");
    c.expect("room_state").await;
}

/// Moves a room one step as the server itself would.
async fn server_advance(room: &RoomHandle, steps: usize) {
    for _ in 0..steps {
        room.apply(Origin::Server, Action::Advance)
            .await
            .expect("server advance");
    }
}

const BAD_NAMES: [&str; 8] = [
    "Eve\u{202E}gnp.exe",
    "\u{2066}Mallory",
    "Bob\u{2069}",
    "a\u{0}b",
    "red\u{1b}[31m",
    "next\u{85}line",
    "rtl\u{200F}",
    "line\u{2028}sep",
];

// ---------------------------------------------------------------------------
// Item 10: one rule for room codes; no control or bidi characters in names and ids
// ---------------------------------------------------------------------------

#[tokio::test]
async fn seeds_with_room_codes_outside_the_rule_are_refused_and_create_no_room() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    s.create_room("CALM", &["host"]);
    let (mut bystander, _) = s.join("CALM", "host").await;
    let now = now_secs();
    let long = "A".repeat(33);
    let mut c = s.connect().await;
    for code in [
        "zz weird code",
        "zz/../x",
        "AB\u{202E}CD",
        "ROOM\u{0}",
        "Ünïcode",
        "",
        long.as_str(),
    ] {
        let token = s.keys.mint_jwt(code, "host", now, 600);
        let reply = c
            .join_with(
                code,
                "host",
                &token,
                Some(seed(code, &[("host", "Host")])),
                None,
            )
            .await;
        assert_eq!(reply["type"], "error", "{code:?}: {reply}");
        assert_eq!(reply["code"], "invalid_payload", "{code:?}: {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(
            message == "roomCode may contain only A-Z, a-z, 0-9, '-' and '_'"
                || message == "roomCode must be 1..32 characters",
            "{code:?}: {message}"
        );
        assert!(s.handle.registry().get(code).is_none(), "{code:?}");
    }
    assert_eq!(s.handle.registry().codes(), vec!["CALM".to_string()]);
    // The same socket can still seed a room under the rule.
    let token = s.keys.mint_jwt("zz-Fine_1", "host", now, 600);
    let hello = c
        .join_with(
            "zz-Fine_1",
            "host",
            &token,
            Some(seed("zz-Fine_1", &[("host", "Host")])),
            None,
        )
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    still_served(&mut bystander, "CALM", "host", true).await;
}

#[tokio::test]
async fn every_code_the_edge_accepts_pages_in_list_rooms_and_is_closable() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    let mut admin = admin(&s).await;
    let longest = "Z".repeat(32);
    let codes = [
        "a",
        "zz-Weird_1",
        longest.as_str(),
        "0-_",
        "A-b_C",
        "-",
        "_",
    ];
    let mut hosts = Vec::new();
    for code in codes {
        let mut c = s.connect().await;
        let token = s.token(code, "host");
        let hello = c
            .join_with(
                code,
                "host",
                &token,
                Some(seed(code, &[("host", "Host")])),
                None,
            )
            .await;
        assert_eq!(hello["type"], "hello_ack", "{code}: {hello}");
        hosts.push(c);
    }
    // Page through one code at a time: every code once, in order.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_rooms(pb::ListRoomsRequest {
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .expect("ListRooms")
            .into_inner();
        listed.extend(page.rooms.into_iter().map(|r| r.code));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(
            listed.len() <= codes.len(),
            "paging does not end: {listed:?}"
        );
    }
    let mut expected: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // Each is named by GetRoom and closed by CloseRoom; its socket is closed with 4000.
    for (code, host) in codes.iter().zip(hosts.iter_mut()) {
        let room = admin
            .get_room(pb::GetRoomRequest {
                room_code: code.to_string(),
            })
            .await
            .expect("GetRoom")
            .into_inner()
            .room
            .expect("room");
        assert_eq!(room.code, *code);
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: code.to_string(),
                reason: "probe over".into(),
            })
            .await
            .expect("CloseRoom");
        let close = host.expect_close().await.expect("a close frame");
        assert_eq!(u16::from(close.code), 4000, "{code}");
        let gone = admin
            .get_room(pb::GetRoomRequest {
                room_code: code.to_string(),
            })
            .await
            .expect_err("closed");
        assert_eq!(gone.code(), Code::NotFound, "{code}");
    }
    assert!(s.handle.registry().codes().is_empty());
}

#[tokio::test]
async fn names_and_ids_with_bidi_or_control_characters_are_refused_everywhere() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    let mut admin = admin(&s).await;
    admin
        .create_room(pb::CreateRoomRequest {
            code: "CALM".into(),
            host: Some(pb_player("host", "Host", "🎤", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom");
    let (mut bystander, _) = s.join("CALM", "host").await;
    let version = s.version("CALM").await;
    let mut c = s.connect().await;
    for bad in BAD_NAMES {
        // Seeds: a bad name, then a bad id, each refused with no room made.
        let token = s.token("BIDI", "host");
        let reply = c
            .join_with(
                "BIDI",
                "host",
                &token,
                Some(seed("BIDI", &[("host", "Host"), ("p2", bad)])),
                None,
            )
            .await;
        assert_eq!(reply["code"], "invalid_payload", "{bad:?}: {reply}");
        assert_eq!(
            reply["message"], "player.name contains control characters",
            "{bad:?}"
        );
        let reply = c
            .join_with(
                "BIDI",
                "host",
                &token,
                Some(seed("BIDI", &[("host", "Host"), (bad, "Mallory")])),
                None,
            )
            .await;
        assert_eq!(reply["code"], "invalid_payload", "{bad:?}: {reply}");
        assert_eq!(
            reply["message"], "player.id contains control characters",
            "{bad:?}"
        );
        assert!(s.handle.registry().get("BIDI").is_none(), "{bad:?}");
        // The edge: a join as such a player id.
        let reply = c.join("CALM", bad, &s.token("CALM", bad)).await;
        assert_eq!(reply["code"], "invalid_payload", "{bad:?}: {reply}");
        assert_eq!(reply["message"], "playerId contains control characters");

        // The admin plane: UpsertPlayer (name, id, emoji) and CreateRoom's host.
        for (player, field) in [
            (pb_player("p2", bad, "🎸", 1, false), "player.name"),
            (pb_player(bad, "Mallory", "🎸", 1, false), "player.id"),
        ] {
            assert_invalid(
                admin
                    .upsert_player(pb::UpsertPlayerRequest {
                        room_code: "CALM".into(),
                        player: Some(player),
                    })
                    .await,
                field,
            );
        }
        assert_invalid(
            admin
                .create_room(pb::CreateRoomRequest {
                    code: "BIDI".into(),
                    host: Some(pb_player("host", bad, "🎤", 0, true)),
                    settings: None,
                })
                .await,
            "host.name",
        );
        assert!(s.handle.registry().get("BIDI").is_none(), "{bad:?}");
    }
    // The emoji beside a name may not reorder it either.
    assert_invalid(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: "CALM".into(),
                player: Some(pb_player("p2", "Mallory", "🎸\u{202E}", 1, false)),
            })
            .await,
        "player.emoji",
    );
    // Emoji sequences (zero-width joiner, variation selector) are fine.
    admin
        .upsert_player(pb::UpsertPlayerRequest {
            room_code: "CALM".into(),
            player: Some(pb_player("p2", "Ada", "👩\u{200D}🎤\u{FE0F}", 1, false)),
        })
        .await
        .expect("UpsertPlayer with an emoji sequence");
    // Nothing before that accepted change reached the room: its broadcast is the
    // bystander's next frame, one version on.
    bystander.see("room_state", version + 1).await;
    still_served(&mut bystander, "CALM", "host", true).await;
}

// ---------------------------------------------------------------------------
// Item 11: tokens
// ---------------------------------------------------------------------------

fn sign(input: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("any key");
    mac.update(input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A JWT with exactly `header` and `claims`, correctly signed with the server's secret.
fn jwt(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    format!("{input}.{}", sign(&input))
}

/// A legacy token with exactly `body`, correctly signed.
fn legacy(body: &str) -> String {
    let body = URL_SAFE_NO_PAD.encode(body);
    format!("{body}.{}", sign(&body))
}

#[tokio::test]
async fn long_lived_not_yet_valid_and_odd_tokens_are_unauthorized() {
    const R: &str = "TOKN";
    const YEAR_2100: u64 = 4_102_444_800;
    let s = spawn_server().await;
    s.create_room(R, &["host", "p2"]);
    let (mut host, _) = s.join(R, "host").await;
    let version = s.version(R).await;
    let now = now_secs();
    let hs256 = json!({"alg":"HS256","typ":"JWT"});
    let claims = |extra: Value| {
        let mut c = json!({"roomCode": R, "playerId": "p2", "exp": now + 600});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    let cases = [
        (
            "legacy exp 2100",
            s.keys.mint_legacy(R, "p2", YEAR_2100),
            "token lifetime is too long",
        ),
        (
            "legacy exp u64::MAX",
            s.keys.mint_legacy(R, "p2", u64::MAX),
            "token lifetime is too long",
        ),
        (
            "JWT exp 2100",
            s.keys.mint_jwt(R, "p2", now, YEAR_2100 - now),
            "token lifetime is too long",
        ),
        (
            "JWT exp u64::MAX",
            jwt(&hs256, &claims(json!({"exp": u64::MAX, "iat": now}))),
            "token lifetime is too long",
        ),
        (
            "JWT issued for 3 days, 2 days ago",
            s.keys.mint_jwt(R, "p2", now - 2 * 86_400, 3 * 86_400),
            "token lifetime is too long",
        ),
        (
            "nbf in an hour",
            jwt(&hs256, &claims(json!({"nbf": now + 3600}))),
            "token is not valid yet",
        ),
        (
            "iat in an hour",
            jwt(&hs256, &claims(json!({"iat": now + 3600}))),
            "token is not valid yet",
        ),
        (
            "crit header",
            jwt(
                &json!({"alg":"HS256","typ":"JWT","crit":["exp"]}),
                &claims(json!({})),
            ),
            "token header is not supported",
        ),
        (
            "legacy array body",
            legacy(&json!([R, "p2", now + 600]).to_string()),
            "token is malformed",
        ),
        (
            "JWT array body",
            jwt(&hs256, &json!([R, "p2", now + 600])),
            "token is malformed",
        ),
        (
            "float exp",
            legacy(&format!(
                r#"{{"roomCode":"{R}","playerId":"p2","exp":{}.0}}"#,
                now + 600
            )),
            "token is malformed",
        ),
    ];
    let mut c = s.connect().await;
    for (what, token, message) in &cases {
        let reply = c.join(R, "p2", token).await;
        assert_eq!(reply["type"], "error", "{what}: {reply}");
        assert_eq!(reply["code"], "unauthorized", "{what}: {reply}");
        assert_eq!(reply["message"], *message, "{what}: {reply}");
    }
    assert_eq!(s.version(R).await, version, "no join changed the room");
    // A token within the maximum, with nbf now, joins on the same socket; the host's
    // next frame is that join.
    let good = jwt(&hs256, &claims(json!({"iat": now, "nbf": now})));
    let hello = c.join(R, "p2", &good).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    host.see("room_state", version + 1).await;
}

// ---------------------------------------------------------------------------
// Item 12: image sources
// ---------------------------------------------------------------------------

fn image(id: &str, src: &str) -> Value {
    json!({"op":"image","id":id,"src":src,"x":0.0,"y":0.0,"width":10.0,"height":10.0})
}

fn canvas(room: &str, delta: Value) -> Value {
    json!({"type":"submit_canvas_delta","roomCode":room,"adlobId":"ad1","phase":"big_idea","delta":delta})
}

/// `room` in creating/big_idea with `host` and `p2` joined.
async fn creating(s: &TestServer, room: &str) -> (Client, Client) {
    let handle = s.create_room(room, &["host", "p2"]);
    server_advance(&handle, 2).await;
    let (host, _) = s.join(room, "host").await;
    let (p2, _) = s.join(room, "p2").await;
    (host, p2)
}

#[tokio::test]
async fn image_sources_a_browser_would_load_from_elsewhere_are_refused() {
    const R: &str = "IMGS";
    let s = spawn_server().await;
    let (mut host, mut p2) = creating(&s, R).await;
    let version = s.version(R).await;
    // p2's join reached the host too.
    host.see("room_state", version).await;
    let form = "delta.src must be an https URL, a /path, or a png/jpeg/gif/webp data URL";
    let blank = "delta.src must not contain whitespace or control characters";
    let policy =
        "delta.src is not an allowed image source (allowed: a /path, a png/jpeg/gif/webp data URL)";
    for (src, message) in [
        ("/\\evil.example/x.png", form),
        ("\\\\evil.example/x.png", form),
        ("//evil.example/x.png", form),
        ("/\t/evil.example/x.png", blank),
        ("/\n/evil.example/x.png", blank),
        ("/\r/evil.example/x.png", blank),
        ("\t//evil.example/x.png", blank),
        ("/ /evil.example/x.png", blank),
        ("javascript:alert(1)", form),
        ("data:image/svg+xml;base64,PHN2Zz4=", form),
        ("https://evil.example/x.png", policy),
        ("https://attacker.example:8443/track.gif", policy),
    ] {
        host.send(canvas(R, image("i1", src))).await;
        let e = host.expect_error("invalid_payload").await;
        assert_eq!(e["message"], message, "{src:?}");
    }
    assert_eq!(s.version(R).await, version);
    // Same-origin and data images are still drawn, and reach the other player as
    // the next frame: nothing was broadcast for the refused ones.
    for (i, src) in ["/uploads/a.png", "data:image/png;base64,AAAA"]
        .iter()
        .enumerate()
    {
        host.send(canvas(R, image(&format!("ok{i}"), src))).await;
        let seen = p2.see("canvas_delta", version + 1 + i as u64).await;
        assert_eq!(seen["delta"]["src"], *src);
        host.see("canvas_delta", version + 1 + i as u64).await;
    }
}

#[tokio::test]
async fn configured_https_origins_are_allowed_by_exact_host_and_port() {
    const R: &str = "IMGC";
    let s = spawn_with(|c| {
        c.image_sources =
            ImagePolicy::parse("self,https://cdn.example,https://img.example:8443").expect("valid")
    })
    .await;
    let (mut host, mut p2) = creating(&s, R).await;
    let mut version = s.version(R).await;
    host.see("room_state", version).await;
    for src in [
        "https://cdn.example/a.png",
        "https://CDN.Example:443/b.png",
        "https://img.example:8443/c.png",
        "/uploads/d.png",
    ] {
        host.send(canvas(R, image("i", src))).await;
        version += 1;
        let seen = p2.see("canvas_delta", version).await;
        assert_eq!(seen["delta"]["src"], src);
        host.see("canvas_delta", version).await;
    }
    let allowed = "delta.src is not an allowed image source (allowed: a /path, \
                   https://cdn.example/…, https://img.example:8443/…)";
    for (src, message) in [
        ("https://cdn.example.evil.example/x.png", allowed),
        ("https://evil.example/cdn.example/x.png", allowed),
        ("https://img.example/x.png", allowed),
        ("https://cdn.example:8443/x.png", allowed),
        ("data:image/png;base64,AAAA", allowed),
        (
            "https://cdn.example@evil.example/x.png",
            "delta.src https URLs must be https://host[:port]/… with no user name",
        ),
        (
            "https://cdn.example\\@evil.example/x.png",
            "delta.src https URLs must be https://host[:port]/… with no user name",
        ),
    ] {
        host.send(canvas(R, image("i", src))).await;
        let e = host.expect_error("invalid_payload").await;
        assert_eq!(e["message"], message, "{src:?}");
    }
    assert_eq!(s.version(R).await, version);
    still_served(&mut p2, R, "p2", true).await;
}

#[tokio::test]
async fn a_bad_image_sources_value_stops_start_up_with_one_line_naming_it() {
    let mut server = Proc::spawn(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("DATABASE_URL", "memory:"),
        ("IMAGE_SOURCES", "self,http://cdn.example"),
    ]);
    let exit = server.wait_exit().await;
    let (stdout, stderr) = server.finish().await;
    assert!(!exit.success(), "exit status {exit}");
    assert!(stdout.is_empty(), "nothing is logged: {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("IMAGE_SOURCES: ") && lines[0].contains("http://cdn.example"),
        "{}",
        lines[0]
    );
}

// ---------------------------------------------------------------------------
// Item 13: admin requests that are not UTF-8, and unbounded input
// ---------------------------------------------------------------------------

/// Sends and receives raw protobuf bytes, so a test can send what no generated
/// client would: strings that are not UTF-8.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// A length-delimited protobuf field (`tag`, wire type 2) holding `bytes`.
fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3) | 2];
    let mut len = bytes.len();
    loop {
        let byte = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

async fn raw_call(addr: SocketAddr, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = Endpoint::from_shared(admin_url(addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("admin plane connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path =
        PathAndQuery::try_from(format!("/karaoke.admin.v1.RoomAdmin/{method}")).expect("path");
    grpc.unary(Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn admin_strings_that_are_not_utf8_are_invalid_argument_and_change_nothing() {
    const R: &str = "UTF8ROOM";
    let s = spawn_server().await;
    let addr = s.handle.admin_addr;
    let mut admin = admin(&s).await;
    admin
        .create_room(pb::CreateRoomRequest {
            code: R.into(),
            host: Some(pb_player("host", "Host", "🎤", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom");
    let (mut host, _) = s.join(R, "host").await;
    let version = s.version(R).await;
    // The raw path itself works: a valid GetRoom answers.
    raw_call(addr, "GetRoom", field(1, R.as_bytes()))
        .await
        .expect("a valid raw GetRoom");
    let not_utf8 = "invalid string value: data is not UTF-8 encoded";
    let player = [field(1, b"p9"), field(2, b"Eve\xC3")].concat();
    for (method, body, message) in [
        ("GetRoom", field(1, b"UTF8ROOM\xFF"), "room_code"),
        ("CloseRoom", field(1, b"UTF8\xFFROOM"), "room_code"),
        (
            "CloseRoom",
            [field(1, R.as_bytes()), field(2, b"bye\xFF")].concat(),
            "reason",
        ),
        (
            "UpsertPlayer",
            [field(1, R.as_bytes()), field(2, &player)].concat(),
            "player.name",
        ),
        ("CreateRoom", field(1, b"NEW\xFF"), "code"),
        (
            "MintPlayerToken",
            [field(1, R.as_bytes()), field(2, b"\xFFhost")].concat(),
            "player_id",
        ),
    ] {
        let status = raw_call(addr, method, body)
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert_eq!(
            status.message(),
            format!("{message}: {not_utf8}"),
            "{method}"
        );
    }
    // Nothing changed: the room is there at the same version, no other room exists,
    // and the player's next frame is the broadcast of the next accepted change.
    assert_eq!(s.version(R).await, version);
    assert_eq!(s.handle.registry().codes(), vec![R.to_string()]);
    admin
        .upsert_player(pb::UpsertPlayerRequest {
            room_code: R.into(),
            player: Some(pb_player("p2", "Bo", "🎸", 1, false)),
        })
        .await
        .expect("UpsertPlayer");
    host.see("room_state", version + 1).await;
    still_served(&mut host, R, "host", true).await;
}

#[tokio::test]
async fn a_megabyte_room_code_is_invalid_argument_and_never_echoed() {
    let s = spawn_server().await;
    let mut admin = admin(&s).await;
    let huge = "Q".repeat(1 << 20);
    let host = || Some(pb_player("host", "Host", "🎤", 0, true));
    let results = [
        admin
            .get_room(pb::GetRoomRequest {
                room_code: huge.clone(),
            })
            .await
            .map(|_| ()),
        admin
            .close_room(pb::CloseRoomRequest {
                room_code: huge.clone(),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: huge.clone(),
                player: host(),
            })
            .await
            .map(|_| ()),
        admin
            .mint_player_token(pb::MintPlayerTokenRequest {
                room_code: huge.clone(),
                player_id: "host".into(),
                ttl_seconds: 0,
            })
            .await
            .map(|_| ()),
    ];
    for result in results {
        let status = assert_invalid(result, "room_code: ");
        assert_eq!(status.message(), "room_code: must be 1..32 characters");
    }
    let status = assert_invalid(
        admin
            .create_room(pb::CreateRoomRequest {
                code: huge.clone(),
                host: host(),
                settings: None,
            })
            .await,
        "code: ",
    );
    assert_eq!(status.message(), "code: must be 1..32 characters");
    // A megabyte player id and name are refused without echo too.
    let status = assert_invalid(
        admin
            .create_room(pb::CreateRoomRequest {
                code: "BIG".into(),
                host: Some(pb_player(&huge, &huge, "🎤", 0, true)),
                settings: None,
            })
            .await,
        "host.id",
    );
    assert!(status.message().len() < 100, "{}", status.message());
    assert!(s.handle.registry().codes().is_empty());
}

#[tokio::test]
async fn the_binary_cuts_long_log_fields_and_logs_why_a_token_was_refused() {
    let secret = "input-rules-binary-secret-0042";
    let mut server = Proc::spawn(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", secret),
        ("DATABASE_URL", "memory:"),
        ("METRICS_FLUSH_INTERVAL_MS", "0"),
    ]);
    let port = server.listening_port().await;
    let admin_port = server.find_message("admin_plane_listening").await["port"]
        .as_u64()
        .expect("admin port") as u16;
    let mut admin = RoomAdminClient::connect(format!("http://127.0.0.1:{admin_port}"))
        .await
        .expect("admin plane connects");
    let huge = "Q".repeat(1 << 20);
    assert_invalid(
        admin
            .upsert_player(pb::UpsertPlayerRequest {
                room_code: huge.clone(),
                player: Some(pb_player("p", "P", "🎤", 0, false)),
            })
            .await,
        "room_code: ",
    );
    let line = server
        .find("admin_call_failed for UpsertPlayer", |v| {
            v["message"] == "admin_call_failed" && v["method"] == "UpsertPlayer"
        })
        .await;
    let logged = line["roomCode"].as_str().expect("roomCode is text");
    assert_eq!(
        logged,
        format!("{}…[+{} chars]", &huge[..256], huge.len() - 256),
        "the code is cut to 256 characters with a marker"
    );
    assert_eq!(line["code"], "InvalidArgument", "{line}");

    // A token for year 2100 is refused, and the log says why.
    admin
        .create_room(pb::CreateRoomRequest {
            code: "LOGS".into(),
            host: Some(pb_player("host", "Host", "🎤", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom");
    let keys = karaoke_realtime::auth::TokenKeys::new(
        secret.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    );
    let mut c = Client::connect(port, "LOGS", binproc::WAIT).await;
    let reply = c
        .join(
            "LOGS",
            "host",
            &keys.mint_legacy("LOGS", "host", 4_102_444_800),
        )
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let line = server.find_message("token_verification_failed").await;
    assert_eq!(line["reason"], "lifetime_too_long", "{line}");
    assert_eq!(line["roomCode"], "LOGS", "{line}");

    for raw in server.stdout_lines() {
        assert!(raw.len() < 4096, "a log line of {} bytes", raw.len());
    }
}
