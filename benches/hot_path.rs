//! Micro-benchmarks of one player message's path through the server: decoding the
//! frame, verifying a join token, applying the room's rules, and serializing and
//! fanning out the resulting broadcast.
//!
//! `cargo bench --bench hot_path` (criterion; no plots). Filter with a name, e.g.
//! `cargo bench --bench hot_path -- broadcast/`.

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use karaoke_realtime::edge::frame::Frame;
use karaoke_realtime::outbox::{Outbox, Push};
use karaoke_realtime::protocol::client::{ClientMessage, decode};
use karaoke_realtime::protocol::server::ServerMessage;
use karaoke_realtime::protocol::{ErrorCode, PlayerSummary};
use karaoke_realtime::room::{Action, Actor, Room, Settings};
use std::hint::black_box;
use std::time::Duration;
use time::OffsetDateTime;

const ROOM: &str = "ABCD12";
const PLAYERS: usize = 8;
const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";

fn player_id(i: usize) -> String {
    format!("player-{i}-7f3c2a")
}

/// A full room: eight players, the first one hosting.
fn players() -> Vec<PlayerSummary> {
    const NAMES: [&str; PLAYERS] = [
        "Ada", "Grace", "Linus", "Barbara", "Dennis", "Margaret", "Ken", "Frances",
    ];
    const EMOJI: [&str; PLAYERS] = ["🎤", "🎸", "🥁", "🎹", "🎺", "🎻", "🪗", "🎷"];
    (0..PLAYERS)
        .map(|i| PlayerSummary {
            id: player_id(i),
            name: NAMES[i].to_string(),
            emoji: EMOJI[i].to_string(),
            is_ready: false,
            is_host: i == 0,
            seat_index: i as i64,
            connected: false,
        })
        .collect()
}

fn room() -> Room {
    Room::new(ROOM, players(), Settings::default()).expect("valid room")
}

fn decoder(c: &mut Criterion) {
    let keys = TokenKeys::new(SECRET, karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS);
    let jwt = keys.mint_jwt(ROOM, &player_id(3), now_secs(), 3600);
    let points: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"x":{:.1},"y":{:.1},"pressure":0.{}}}"#,
                120.0 + 3.5 * i as f64,
                80.0 + 1.25 * i as f64,
                i % 10
            )
        })
        .collect();
    let frames: [(&str, String); 5] = [
        (
            "presentation_state",
            format!(
                r#"{{"type":"presentation_state","roomCode":"{ROOM}","playerId":"{}","presentIndex":3,"showCampaign":true}}"#,
                player_id(0)
            ),
        ),
        (
            "set_ready",
            format!(
                r#"{{"type":"set_ready","roomCode":"{ROOM}","playerId":"{}","isReady":true}}"#,
                player_id(3)
            ),
        ),
        (
            "join_room_jwt",
            format!(
                r#"{{"type":"join_room","roomCode":"{ROOM}","playerId":"{}","playerToken":"{jwt}","lastVersion":41}}"#,
                player_id(3)
            ),
        ),
        (
            "canvas_stroke_50pts",
            format!(
                r##"{{"type":"submit_canvas_delta","roomCode":"{ROOM}","adlobId":"adlob-3","phase":"visual","delta":{{"op":"stroke","id":"stroke-17","color":"#ff3366","width":4,"points":[{}]}}}}"##,
                points.join(",")
            ),
        ),
        (
            "invalid_unknown_type",
            format!(r#"{{"type":"dance","roomCode":"{ROOM}","playerId":"p1"}}"#),
        ),
    ];
    // Every frame decodes as intended, so the numbers measure the path they name.
    for (name, text) in &frames {
        let result = decode(text);
        match (*name, &result) {
            ("presentation_state", Ok(ClientMessage::PresentationState(_)))
            | ("set_ready", Ok(ClientMessage::SetReady { .. }))
            | ("join_room_jwt", Ok(ClientMessage::JoinRoom(_)))
            | ("canvas_stroke_50pts", Ok(ClientMessage::SubmitCanvasDelta(_))) => {}
            ("invalid_unknown_type", Err(r)) if r.code == ErrorCode::InvalidPayload => {}
            _ => panic!("{name} decoded unexpectedly: {result:?}"),
        }
    }

    let mut group = c.benchmark_group("decoder");
    for (name, text) in &frames {
        group.bench_function(*name, |b| b.iter(|| decode(black_box(text))));
    }
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let keys = TokenKeys::new(SECRET, karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS);
    let now = now_secs();
    let jwt = keys.mint_jwt(ROOM, &player_id(3), now, 3600);
    let legacy = keys.mint_legacy(ROOM, &player_id(3), now + 3600);
    for token in [&jwt, &legacy] {
        let claims = keys.verify(token, now).expect("valid token");
        assert_eq!(claims.player_id, player_id(3));
    }

    let mut group = c.benchmark_group("token_verify");
    group.bench_function("jwt", |b| {
        b.iter(|| keys.verify(black_box(&jwt), black_box(now)))
    });
    group.bench_function("legacy", |b| {
        b.iter(|| keys.verify(black_box(&legacy), black_box(now)))
    });
    group.finish();
}

fn room_rules(c: &mut Criterion) {
    let host = Actor::Player(player_id(0));
    let guest = Actor::Player(player_id(5));
    let mut group = c.benchmark_group("room_apply");

    // Like the room's owner, each apply reads the clock.
    group.bench_function("set_ready_toggle", |b| {
        let mut room = room();
        let mut is_ready = false;
        b.iter(|| {
            is_ready = !is_ready;
            let applied = room.apply(
                &guest,
                Action::SetReady { is_ready },
                OffsetDateTime::now_utc(),
            );
            black_box(applied).expect("set_ready applies")
        })
    });
    group.bench_function("present", |b| {
        let mut room = room();
        let mut index = 0i64;
        b.iter(|| {
            index = (index + 1) % 8;
            let applied = room.apply(
                &host,
                Action::Present {
                    present_index: index,
                    show_campaign: index % 2 == 0,
                },
                OffsetDateTime::now_utc(),
            );
            black_box(applied).expect("present applies")
        })
    });
    // Cycles lobby → briefing → creating ×4 → presenting → voting → results → lobby.
    group.bench_function("advance_cycle", |b| {
        let mut room = room();
        b.iter(|| {
            let applied = room.apply(&host, Action::Advance, OffsetDateTime::now_utc());
            black_box(applied).expect("advance applies")
        })
    });
    group.finish();
}

/// Drains every receiver so the bounded queues never fill.
/// What a socket's writer does at each wake-up: take everything queued, release it.
fn drain(outboxes: &[Outbox]) {
    let mut batch = Vec::new();
    for outbox in outboxes {
        outbox.take_now(&mut batch);
        outbox.release(batch.iter().map(Frame::len).sum());
        black_box(&batch);
        batch.clear();
    }
}

fn push(outbox: &Outbox, frame: Frame) {
    let pushed = outbox.push(frame);
    debug_assert_eq!(pushed, Push::Queued);
    black_box(pushed);
}

/// Three ways to get one message to every player: serialize only (the baseline),
/// serialize once and share the frame (what the server does), and serialize once per
/// recipient (what it avoids).
fn bench_fanout(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    message: &ServerMessage<'_>,
    outboxes: &[Outbox],
) {
    group.bench_function(format!("{name}/serialize"), |b| {
        b.iter(|| Frame::json(black_box(message)))
    });
    group.bench_function(format!("{name}/serialize_once_fanout_8"), |b| {
        b.iter(|| {
            let frame = Frame::json(black_box(message));
            for outbox in outboxes {
                push(outbox, frame.clone());
            }
            drain(outboxes);
        })
    });
    group.bench_function(format!("{name}/serialize_per_recipient_8"), |b| {
        b.iter(|| {
            for outbox in outboxes {
                push(outbox, Frame::json(black_box(message)));
            }
            drain(outboxes);
        })
    });
}

fn broadcast(c: &mut Criterion) {
    let outboxes: Vec<Outbox> = (0..PLAYERS).map(|_| Outbox::new(1024, 8 << 20)).collect();

    // A mid-game snapshot: everyone connected, some ready, in the visual phase.
    let mut room = room();
    let now = OffsetDateTime::now_utc();
    for i in 0..PLAYERS {
        let actor = Actor::Player(player_id(i));
        room.apply(&actor, Action::Connect, now).expect("connect");
        if i % 2 == 0 {
            room.apply(&actor, Action::SetReady { is_ready: true }, now)
                .expect("ready");
        }
    }
    let host = Actor::Player(player_id(0));
    for _ in 0..3 {
        room.apply(&host, Action::Advance, now).expect("advance");
    }

    let presentation = ServerMessage::PresentationState {
        room_code: ROOM,
        present_index: 3,
        show_campaign: true,
        version: room.version(),
    };
    let room_state = ServerMessage::RoomState {
        snapshot: room.snapshot(),
    };

    let mut group = c.benchmark_group("broadcast");
    bench_fanout(&mut group, "presentation_state", &presentation, &outboxes);
    bench_fanout(&mut group, "room_state_8p", &room_state, &outboxes);
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .nresamples(20_000)
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = decoder, tokens, room_rules, broadcast
}
criterion_main!(hot_path);
