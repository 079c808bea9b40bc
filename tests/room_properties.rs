//! Property tests of one room's rules under hostile input: arbitrary sequences of
//! actions, from players and the server, with extreme numbers and timestamps, applied
//! through `Room::apply` exactly as the owner and the restore replay apply them. No
//! sequence may panic, wrap or skip a version, or leave a room that cannot be stored
//! and read back.

use karaoke_realtime::protocol::canvas::CanvasOp;
use karaoke_realtime::protocol::limits::{MAX_SEED_VERSION, MAX_VERSION};
use karaoke_realtime::protocol::{
    CreationPhase, GameStatus, PlayerSummary, RoomSnapshot, Timestamp,
};
use karaoke_realtime::room::{Action, Actor, Room, SettingsPatch, StoredRoom};
use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;

fn player(id: &str, seat: i64, host: bool) -> PlayerSummary {
    PlayerSummary {
        id: id.into(),
        name: format!("Player {id}"),
        emoji: "🎤".into(),
        is_ready: false,
        is_host: host,
        seat_index: seat,
        connected: false,
    }
}

fn status() -> impl Strategy<Value = GameStatus> {
    prop::sample::select(vec![
        GameStatus::Lobby,
        GameStatus::Briefing,
        GameStatus::Creating,
        GameStatus::Presenting,
        GameStatus::Voting,
        GameStatus::Results,
    ])
}

fn phase() -> impl Strategy<Value = Option<CreationPhase>> {
    prop::option::of(prop::sample::select(vec![
        CreationPhase::BigIdea,
        CreationPhase::Visual,
        CreationPhase::Headline,
        CreationPhase::Pitch,
    ]))
}

/// Timestamps at and around the accepted range's edges, with extreme offsets, and
/// some that are not timestamps at all; only those the boundary accepts survive.
fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
    let edges = prop::sample::select(vec![
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:00:00+23:59",
        "1969-12-31T23:59:59-23:59",
        "2199-12-31T23:59:59.999999999Z",
        "2199-12-31T23:59:59-23:59",
        "2200-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-01T10:00:00.5+05:30",
    ])
    .prop_map(str::to_string);
    let any_year = (0u32..10_000, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60)
        .prop_map(|(y, mo, d, h, mi)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00Z"));
    prop::option::of(prop_oneof![edges, any_year, ".{0,12}"])
        .prop_map(|t| t.and_then(|t| Timestamp::parse("t", &t).ok()))
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(-0.0),
        -200_000.0..200_000.0f64,
    ]
}

/// Canvas ops as a client might send them; the decoder's validation is applied, so
/// only what a room could ever receive is kept.
fn canvas_op() -> impl Strategy<Value = Option<CanvasOp>> {
    let id = prop::sample::select(vec!["e1", "e2", "e3"]);
    prop_oneof![
        (id.clone(), number(), number(), 0usize..6).prop_map(|(id, x, w, n)| json!({
            "op": "stroke", "id": id, "color": "#000", "width": w,
            "points": (0..n).map(|i| json!({"x": x, "y": i})).collect::<Vec<_>>()
        })),
        (id.clone(), number(), number()).prop_map(|(id, x, size)| json!({
            "op": "text", "id": id, "text": "hi", "x": x, "y": 0, "color": "red", "fontSize": size
        })),
        (id.clone(), number(), number()).prop_map(|(id, w, r)| json!({
            "op": "image", "id": id, "src": "/a.png", "x": 0, "y": 0, "width": w,
            "height": 1, "rotation": r
        })),
        id.prop_map(|id| json!({"op": "remove", "id": id})),
        Just(json!({"op": "clear"})),
    ]
    .prop_map(|v| CanvasOp::from_value(v).ok())
}

fn action() -> impl Strategy<Value = Option<Action>> {
    prop_oneof![
        Just(Some(Action::Connect)),
        Just(Some(Action::Disconnect)),
        any::<bool>().prop_map(|is_ready| Some(Action::SetReady { is_ready })),
        Just(Some(Action::Advance)),
        (status(), phase(), timestamp()).prop_map(|(status, phase, start_time)| Some(
            Action::SetStatus {
                status,
                phase,
                start_time
            }
        )),
        (status(), phase(), timestamp()).prop_map(|(status, phase, start_time)| Some(
            Action::Force {
                status,
                phase,
                start_time
            }
        )),
        (any::<i64>(), any::<bool>()).prop_map(|(present_index, show_campaign)| Some(
            Action::Present {
                present_index,
                show_campaign
            }
        )),
        (prop::sample::select(vec!["a", "b"]), phase(), canvas_op()).prop_map(
            |(adlob, phase, op)| op.map(|op| Action::Canvas {
                adlob_id: adlob.into(),
                phase: phase.unwrap_or(CreationPhase::Visual),
                op
            })
        ),
        "[a-z]{1,4}".prop_map(|text| Some(Action::BigIdea {
            adlob_id: "a".into(),
            text
        })),
        (any::<u32>(), prop::option::of(any::<bool>())).prop_map(|(d, auto)| Some(
            Action::UpdateSettings {
                patch: SettingsPatch {
                    phase_duration_seconds: Some(d % 7200),
                    auto_advance: auto,
                    ..Default::default()
                }
            }
        )),
        (any::<i64>(), any::<bool>()).prop_map(|(seat, host)| Some(Action::UpsertPlayer {
            player: player("p9", seat, host)
        })),
        Just(Some(Action::RemovePlayer {
            player_id: "p9".into()
        })),
        Just(Some(Action::BriefUpdated {
            brief_id: "b".into()
        })),
    ]
}

fn actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        Just(Actor::Server),
        prop::sample::select(vec!["h", "p1", "p9", "ghost"]).prop_map(|p| Actor::Player(p.into())),
    ]
}

/// Instants the owner's clock (or a stored row's time) can give.
fn now() -> impl Strategy<Value = OffsetDateTime> {
    let earliest = Timestamp::EARLIEST.unix_timestamp();
    let latest = Timestamp::LATEST.unix_timestamp() - 1;
    prop_oneof![Just(earliest), Just(latest), earliest..latest]
        .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap_or(Timestamp::EARLIEST))
}

/// A room: seeded at any version a seed may have, or restored from a stored row at
/// or near the largest version (only a row can put a room there).
fn start() -> impl Strategy<Value = Room> {
    let seeded = prop_oneof![Just(0u64), Just(MAX_SEED_VERSION), any::<u64>()].prop_filter_map(
        "seeds past MAX_SEED_VERSION are refused",
        |version| {
            let seed = RoomSnapshot {
                id: String::new(),
                code: "PROP".into(),
                status: GameStatus::Lobby,
                current_phase: None,
                phase_start_time: None,
                players: vec![player("h", 0, true), player("p1", 1, false)],
                version,
                phase_ends_at: None,
                presentation: None,
            };
            let room = Room::from_seed("PROP", &seed);
            assert_eq!(
                room.is_ok(),
                version <= MAX_SEED_VERSION,
                "seed at {version}"
            );
            room.ok()
        },
    );
    let restored = (MAX_VERSION - 20..=MAX_VERSION).prop_map(|version| {
        let room = Room::new(
            "PROP",
            vec![player("h", 0, true), player("p1", 1, false)],
            Default::default(),
        )
        .expect("room");
        let mut stored = serde_json::to_value(room.to_stored(false)).expect("json");
        stored["snapshot"]["version"] = json!(version);
        let stored: StoredRoom = serde_json::from_value(stored).expect("stored");
        Room::from_stored(stored).expect("a row at the largest version restores")
    });
    prop_oneof![seeded, restored]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_sequence_of_actions_panics_or_wraps_a_version(
        mut room in start(),
        steps in prop::collection::vec((actor(), action(), now()), 1..60),
    ) {
        for (actor, action, now) in steps {
            let Some(action) = action else { continue };
            let before = room.version();
            match room.apply(&actor, action, now) {
                Ok(applied) if applied.changed => {
                    prop_assert_eq!(applied.version, before + 1);
                    prop_assert_eq!(room.version(), before + 1);
                }
                Ok(_) | Err(_) => prop_assert_eq!(room.version(), before),
            }
            prop_assert!(room.version() <= MAX_VERSION);
            // The derived state never panics either, and the room always survives a
            // trip through the store.
            let _ = room.phase_deadline();
            let text = serde_json::to_string(&room.to_stored(false)).expect("stores");
            let stored: StoredRoom = serde_json::from_str(&text).expect("reads back");
            let back = Room::from_stored(stored).expect("restores");
            prop_assert_eq!(back.version(), room.version());
        }
    }
}
