//! Unit tests of one room's rules: plain data in, plain data out, no sockets and no
//! runtime. Every rejected action is checked to leave the whole room untouched.

use super::*;
use crate::protocol::canvas::{Image, Point, SRC_MAX, Stroke, TextBox};
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-03-04 05:06:07.891 UTC);
const T0_TEXT: &str = "2026-03-04T05:06:07.891Z";

// ---------------------------------------------------------------- helpers

#[track_caller]
fn ts(text: &str) -> Timestamp {
    Timestamp::parse("t", text).expect("a valid timestamp")
}

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

/// A lobby with host `h` (seat 0) and guests `p1`, `p2`.
fn room() -> Room {
    room_with(Settings::default())
}

fn room_with(settings: Settings) -> Room {
    Room::new(
        "ROOM1",
        vec![
            player("h", 0, true),
            player("p1", 1, false),
            player("p2", 2, false),
        ],
        settings,
    )
    .expect("valid room")
}

fn host() -> Actor {
    Actor::Player("h".into())
}

fn guest() -> Actor {
    Actor::Player("p1".into())
}

fn stranger() -> Actor {
    Actor::Player("nobody".into())
}

fn at(seconds: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(seconds)
}

/// Everything observable about a room, to compare before and after a rejection.
#[derive(Clone, Debug, PartialEq)]
struct State {
    snapshot: RoomSnapshot,
    settings: Settings,
    canvases: BTreeMap<String, Canvas>,
    big_ideas: BTreeMap<String, BigIdea>,
}

fn state(room: &Room) -> State {
    State {
        snapshot: room.snapshot().clone(),
        settings: room.settings.clone(),
        canvases: room.canvases.clone(),
        big_ideas: room.big_ideas.clone(),
    }
}

/// Applies an action that must succeed and change state: version +1, reported.
#[track_caller]
fn ok(room: &mut Room, actor: &Actor, action: Action, now: OffsetDateTime) -> Event {
    let before = room.version();
    let applied = room
        .apply(actor, action.clone(), now)
        .unwrap_or_else(|e| panic!("{action:?} by {actor:?} rejected: {e}"));
    assert!(applied.changed, "{action:?} should change state");
    assert_eq!(applied.version, before + 1, "version +1 for {action:?}");
    assert_eq!(room.version(), applied.version);
    assert_eq!(room.snapshot().version, applied.version);
    applied.event
}

/// Applies an action that must be rejected with `code` and leave the room as it was.
#[track_caller]
fn rejected(room: &mut Room, actor: &Actor, action: Action, code: ErrorCode) -> Rejection {
    let before = state(room);
    let err = room
        .apply(actor, action.clone(), T0)
        .expect_err(&format!("{action:?} by {actor:?} should be rejected"));
    assert_eq!(err.code, code, "{action:?} by {actor:?}: {err}");
    assert!(!err.message.is_empty());
    assert_eq!(state(room), before, "rejected {action:?} changed the room");
    err
}

fn advance(room: &mut Room, now: OffsetDateTime) -> Event {
    ok(room, &Actor::Server, Action::Advance, now)
}

/// Moves a fresh room to `creating` in the given phase.
fn creating_in(room: &mut Room, phase: CreationPhase) {
    advance(room, T0); // briefing
    advance(room, T0); // creating / big_idea
    while room.snapshot().current_phase != Some(phase) {
        advance(room, T0);
    }
    assert_eq!(room.snapshot().status, GameStatus::Creating);
}

fn set_status(status: GameStatus, phase: Option<CreationPhase>) -> Action {
    Action::SetStatus {
        status,
        phase,
        start_time: None,
    }
}

fn step(room: &Room) -> (GameStatus, Option<CreationPhase>) {
    (room.snapshot().status, room.snapshot().current_phase)
}

fn points(n: usize) -> Vec<Point> {
    (0..n)
        .map(|i| Point {
            x: i as f64,
            y: i as f64,
            pressure: None,
        })
        .collect()
}

fn stroke(id: &str) -> CanvasOp {
    CanvasOp::Stroke(Stroke {
        id: id.into(),
        color: "#000".into(),
        width: 3.0,
        points: points(2),
    })
}

fn text(id: &str, body: &str) -> CanvasOp {
    CanvasOp::Text(TextBox {
        id: id.into(),
        text: body.into(),
        x: 10.0,
        y: 20.0,
        color: "red".into(),
        font_size: 12.0,
        align: None,
        font_family: None,
    })
}

/// An image whose `src` is `src_len` bytes long.
fn image(id: &str, src_len: usize) -> CanvasOp {
    let prefix = "https://";
    CanvasOp::Image(Image {
        id: id.into(),
        src: format!("{prefix}{}", "a".repeat(src_len - prefix.len())),
        x: 0.0,
        y: 0.0,
        width: 10.0,
        height: 10.0,
        rotation: None,
    })
}

fn draw(adlob: &str, phase: CreationPhase, op: CanvasOp) -> Action {
    Action::Canvas {
        adlob_id: adlob.into(),
        phase,
        op,
    }
}

fn idea(adlob: &str, text: &str) -> Action {
    Action::BigIdea {
        adlob_id: adlob.into(),
        text: text.into(),
    }
}

fn ready_flags(room: &Room) -> Vec<bool> {
    room.snapshot().players.iter().map(|p| p.is_ready).collect()
}

/// Server-made times: UTC, millisecond precision, `Z` suffix, valid RFC 3339.
#[track_caller]
fn assert_server_time(text: &str) {
    assert_eq!(text.len(), "2026-03-04T05:06:07.891Z".len(), "{text}");
    assert!(text.ends_with('Z'), "{text}");
    assert_eq!(&text[19..20], ".", "{text}");
    assert!(text[20..23].bytes().all(|b| b.is_ascii_digit()), "{text}");
    Timestamp::parse("t", text).expect("RFC 3339");
}

// ---------------------------------------------------------------- construction

#[test]
fn new_room_starts_in_lobby_at_version_zero_sorted_by_seat() {
    let mut connected = player("a", 5, false);
    connected.connected = true;
    let r = Room::new(
        "CODE",
        vec![connected, player("b", 0, true), player("c", 3, false)],
        Settings::default(),
    )
    .expect("valid");
    let s = r.snapshot();
    assert_eq!(s.code, "CODE");
    assert_eq!(r.code(), "CODE");
    assert_eq!(s.status, GameStatus::Lobby);
    assert_eq!(s.current_phase, None);
    assert_eq!(s.phase_start_time, None);
    assert_eq!(s.phase_ends_at, None);
    assert_eq!(s.version, 0);
    assert!(
        uuid::Uuid::parse_str(&s.id).is_ok(),
        "id is a uuid: {}",
        s.id
    );
    let ids: Vec<&str> = s.players.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["b", "c", "a"]);
    assert!(
        s.players.iter().all(|p| !p.connected),
        "presence starts off"
    );
    assert!(r.canvases.is_empty() && r.big_ideas.is_empty());
    assert_eq!(r.player("c").map(|p| p.seat_index), Some(3));
    assert!(r.player("zz").is_none());
}

#[test]
fn new_room_validates_code_and_roster() {
    let bad_codes = [
        String::new(),
        "x".repeat(limits::ROOM_CODE_MAX + 1),
        "A\nB".into(),
    ];
    for code in &bad_codes {
        let err = Room::new(code, vec![], Settings::default()).expect_err(code);
        assert_eq!(err.code, ErrorCode::InvalidPayload);
    }
    assert!(
        Room::new(
            &"x".repeat(limits::ROOM_CODE_MAX),
            vec![],
            Settings::default()
        )
        .is_ok()
    );

    let mut long_emoji = player("e", 0, false);
    long_emoji.emoji = "🎤".repeat(limits::EMOJI_MAX + 1);
    let mut no_name = player("n", 0, false);
    no_name.name = String::new();
    let bad_rosters = [
        vec![player("", 0, true)],
        vec![player(&"i".repeat(limits::ID_MAX + 1), 0, true)],
        vec![player("a", -1, true)],
        vec![player("a", 256, true)],
        vec![player("a", 0, true), player("a", 1, false)],
        vec![long_emoji],
        vec![no_name],
        (0..=limits::MAX_PLAYERS as i64)
            .map(|i| player(&format!("p{i}"), i, i == 0))
            .collect(),
    ];
    for roster in bad_rosters {
        let err = Room::new("R", roster.clone(), Settings::default()).expect_err("bad roster");
        assert_eq!(err.code, ErrorCode::InvalidPayload, "{roster:?}");
    }
    let full: Vec<_> = (0..limits::MAX_PLAYERS as i64)
        .map(|i| player(&format!("p{i}"), i, i == 0))
        .collect();
    assert!(Room::new("R", full, Settings::default()).is_ok());
    assert!(Room::new("R", vec![player("a", 255, true)], Settings::default()).is_ok());
}

// ---------------------------------------------------------------- advance_phase

#[test]
fn advance_walks_the_whole_game_and_back_to_lobby() {
    use CreationPhase::*;
    use GameStatus::*;
    let mut r = room();
    let expected: [(GameStatus, Option<CreationPhase>, &str); 10] = [
        (Briefing, None, "status_changed"),
        (Creating, Some(BigIdea), "status_changed"),
        (Creating, Some(Visual), "phase_changed"),
        (Creating, Some(Headline), "phase_changed"),
        (Creating, Some(Pitch), "phase_changed"),
        (Presenting, None, "status_changed"),
        (Voting, None, "status_changed"),
        (Results, None, "status_changed"),
        (Lobby, None, "status_changed"),
        (Briefing, None, "status_changed"),
    ];
    for (i, (status, phase, kind)) in expected.into_iter().enumerate() {
        let now = at(i as i64 + 1);
        let version = r.version();
        let event = ok(&mut r, &host(), Action::Advance, now);
        assert_eq!(event.kind(), kind, "step {i} to {status:?}/{phase:?}");
        match kind {
            "phase_changed" => assert_eq!(event, Event::PhaseChanged),
            _ => assert_eq!(event, Event::StatusChanged),
        }
        assert!(event.sends_room_state());
        let s = r.snapshot();
        assert_eq!((s.status, s.current_phase), (status, phase), "step {i}");
        assert_eq!(s.version, version + 1);
        assert_eq!(
            s.phase_start_time.as_deref(),
            Some(format_time(now).as_str())
        );
    }
    assert_eq!(r.version(), 10);
}

#[test]
fn advance_sets_phase_start_time_to_now_in_utc_millis() {
    let mut r = room();
    ok(&mut r, &host(), Action::Advance, T0);
    assert_eq!(r.snapshot().phase_start_time.as_deref(), Some(T0_TEXT));

    // A `now` in another offset, with sub-millisecond digits, is shown in UTC, ms.
    let later = datetime!(2026-03-04 07:06:08.123_987 +02:00);
    ok(&mut r, &host(), Action::Advance, later);
    assert_eq!(
        r.snapshot().phase_start_time.as_deref(),
        Some("2026-03-04T05:06:08.123Z")
    );
    // Whole seconds still carry three digits.
    ok(
        &mut r,
        &host(),
        Action::Advance,
        datetime!(2026-03-04 05:06:09 UTC),
    );
    let t = r.snapshot().phase_start_time.clone().unwrap_or_default();
    assert_eq!(t, "2026-03-04T05:06:09.000Z");
    assert_server_time(&t);
}

#[test]
fn advance_resets_every_ready_flag() {
    let mut r = room();
    for id in ["h", "p1", "p2"] {
        ok(
            &mut r,
            &Actor::Player(id.into()),
            Action::SetReady { is_ready: true },
            T0,
        );
    }
    assert_eq!(ready_flags(&r), [true, true, true]);
    // Every step of the path resets, including moves inside `creating`: the step is
    // one change and the reset its follow-up, a change of its own at the next version.
    for _ in 0..9 {
        ok(
            &mut r,
            &Actor::Player("p2".into()),
            Action::SetReady { is_ready: true },
            T0,
        );
        let applied = r.apply(&host(), Action::Advance, T0).expect("advance");
        assert_eq!(
            applied.follow_up,
            Some(Action::ResetReady),
            "at {:?}",
            step(&r)
        );
        assert!(
            ready_flags(&r).contains(&true),
            "the step itself leaves the flags"
        );
        let event = ok(&mut r, &Actor::Server, Action::ResetReady, T0);
        assert_eq!(event, Event::ReadyReset);
        assert!(event.is_state_only());
        assert_eq!(ready_flags(&r), [false, false, false], "at {:?}", step(&r));
    }
    // With nobody ready there is nothing to reset, and no follow-up.
    let applied = r.apply(&host(), Action::Advance, T0).expect("advance");
    assert_eq!(applied.follow_up, None);
}

#[test]
fn only_the_server_resets_ready_flags() {
    let mut r = room();
    rejected(&mut r, &host(), Action::ResetReady, ErrorCode::Forbidden);
}

#[test]
fn advance_is_host_only() {
    let mut r = room();
    let err = rejected(&mut r, &guest(), Action::Advance, ErrorCode::Forbidden);
    assert!(err.message.contains("host"), "{err}");
    rejected(
        &mut r,
        &stranger(),
        Action::Advance,
        ErrorCode::PlayerNotFound,
    );
    // Also mid-game, with ready flags that must survive the rejection.
    ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);
    creating_in(&mut r, CreationPhase::Headline);
    ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);
    rejected(&mut r, &guest(), Action::Advance, ErrorCode::Forbidden);
    rejected(
        &mut r,
        &stranger(),
        Action::Advance,
        ErrorCode::PlayerNotFound,
    );
    assert_eq!(ready_flags(&r), [false, true, false]);
}

#[test]
fn server_actor_advances_without_host_or_roster() {
    // No host at all, and an empty roster: the server still moves the game.
    let mut hostless =
        Room::new("R", vec![player("a", 0, false)], Settings::default()).expect("valid");
    assert_eq!(advance(&mut hostless, T0), Event::StatusChanged);
    assert_eq!(step(&hostless), (GameStatus::Briefing, None));
    rejected(
        &mut hostless,
        &Actor::Player("a".into()),
        Action::Advance,
        ErrorCode::Forbidden,
    );

    let mut empty = Room::new("R", vec![], Settings::default()).expect("valid");
    assert_eq!(advance(&mut empty, T0), Event::StatusChanged);
    assert_eq!(advance(&mut empty, T0), Event::StatusChanged);
    assert_eq!(advance(&mut empty, at(5)), Event::PhaseChanged);
    assert_eq!(
        step(&empty),
        (GameStatus::Creating, Some(CreationPhase::Visual))
    );
    assert_eq!(
        empty.snapshot().phase_start_time.as_deref(),
        Some(format_time(at(5)).as_str())
    );
}

#[test]
fn server_actor_cannot_take_player_actions() {
    let mut r = room();
    for action in [
        Action::Connect,
        Action::Disconnect,
        Action::SetReady { is_ready: true },
    ] {
        rejected(&mut r, &Actor::Server, action, ErrorCode::InvalidPayload);
    }
    creating_in(&mut r, CreationPhase::BigIdea);
    rejected(
        &mut r,
        &Actor::Server,
        draw("a1", CreationPhase::BigIdea, stroke("s")),
        ErrorCode::InvalidPayload,
    );
    rejected(
        &mut r,
        &Actor::Server,
        idea("a1", "x"),
        ErrorCode::InvalidPayload,
    );
}

// ---------------------------------------------------------------- set_status

#[test]
fn set_status_accepts_the_next_step_along_the_whole_path() {
    use CreationPhase::*;
    use GameStatus::*;
    let mut r = room();
    let path = [
        (Briefing, None),
        (Creating, Some(BigIdea)),
        (Creating, Some(Visual)),
        (Creating, Some(Headline)),
        (Creating, Some(Pitch)),
        (Presenting, None),
        (Voting, None),
        (Results, None),
        (Lobby, None),
    ];
    for (i, (status, phase)) in path.into_iter().enumerate() {
        let now = at(i as i64);
        let event = ok(&mut r, &host(), set_status(status, phase), now);
        // set_status always reports status_changed, even inside `creating`.
        assert_eq!(event, Event::StatusChanged);
        assert_eq!(event.kind(), "status_changed");
        assert_eq!(step(&r), (status, phase));
        assert_eq!(
            r.snapshot().phase_start_time.as_deref(),
            Some(format_time(now).as_str())
        );
    }
    assert_eq!(r.version(), path.len() as u64);
}

#[test]
fn set_status_rejects_skips_repeats_and_backward_steps() {
    use CreationPhase::*;
    use GameStatus::*;
    let mut r = room();
    for (status, phase) in [
        (Lobby, None),
        (Creating, None),
        (Creating, Some(BigIdea)),
        (Presenting, None),
        (Voting, None),
    ] {
        let err = rejected(
            &mut r,
            &host(),
            set_status(status, phase),
            ErrorCode::InvalidTransition,
        );
        assert!(err.message.contains("lobby"), "{err}");
    }

    creating_in(&mut r, BigIdea);
    for (status, phase) in [
        (Creating, Some(BigIdea)),  // same phase
        (Creating, Some(Headline)), // skips visual
        (Creating, Some(Pitch)),
        (Briefing, None), // backwards
        (Lobby, None),
        (Presenting, None), // skips the remaining phases
        (Voting, None),
    ] {
        rejected(
            &mut r,
            &host(),
            set_status(status, phase),
            ErrorCode::InvalidTransition,
        );
    }

    creating_in_from_current(&mut r, Pitch);
    rejected(
        &mut r,
        &host(),
        set_status(Creating, Some(BigIdea)),
        ErrorCode::InvalidTransition,
    );
    rejected(
        &mut r,
        &host(),
        set_status(Voting, None),
        ErrorCode::InvalidTransition,
    );
    ok(&mut r, &host(), set_status(Presenting, Some(Visual)), T0);
    assert_eq!(
        step(&r),
        (Presenting, None),
        "phase ignored outside creating"
    );
}

fn creating_in_from_current(room: &mut Room, phase: CreationPhase) {
    while room.snapshot().current_phase != Some(phase) {
        advance(room, T0);
    }
}

#[test]
fn set_status_phase_rules_at_the_creating_edges() {
    use CreationPhase::*;
    use GameStatus::*;
    // Entering creating without a phase means big_idea.
    let mut r = room();
    advance(&mut r, T0);
    ok(&mut r, &host(), set_status(Creating, None), T0);
    assert_eq!(step(&r), (Creating, Some(BigIdea)));

    // Entering creating at any other phase is not one step.
    let mut r = room();
    advance(&mut r, T0);
    rejected(
        &mut r,
        &host(),
        set_status(Creating, Some(Visual)),
        ErrorCode::InvalidTransition,
    );

    // Inside creating, no phase named means the next phase.
    let mut r = room();
    creating_in(&mut r, BigIdea);
    ok(&mut r, &host(), set_status(Creating, None), T0);
    assert_eq!(step(&r), (Creating, Some(Visual)));

    // A phase given outside creating is ignored.
    let mut r = room();
    ok(&mut r, &host(), set_status(Briefing, Some(Pitch)), T0);
    assert_eq!(step(&r), (Briefing, None));
}

#[test]
fn set_status_is_host_only_except_results() {
    use GameStatus::*;
    let mut r = room();
    let err = rejected(
        &mut r,
        &guest(),
        set_status(Briefing, None),
        ErrorCode::Forbidden,
    );
    assert!(err.message.contains("host"), "{err}");
    rejected(
        &mut r,
        &stranger(),
        set_status(Briefing, None),
        ErrorCode::PlayerNotFound,
    );
    rejected(
        &mut r,
        &stranger(),
        set_status(Results, None),
        ErrorCode::PlayerNotFound,
    );

    // `results` from any roster player, from anywhere, even inside creating.
    creating_in(&mut r, CreationPhase::Visual);
    let event = ok(
        &mut r,
        &guest(),
        set_status(Results, Some(CreationPhase::Pitch)),
        at(9),
    );
    assert_eq!(event, Event::StatusChanged);
    assert_eq!(step(&r), (Results, None));
    assert_eq!(
        r.snapshot().phase_start_time.as_deref(),
        Some(format_time(at(9)).as_str())
    );
    // ... including again while already in results.
    ok(
        &mut r,
        &Actor::Player("p2".into()),
        set_status(Results, None),
        T0,
    );
    // And from the lobby.
    let mut r = room();
    ok(&mut r, &guest(), set_status(Results, None), T0);
    assert_eq!(step(&r), (Results, None));
    // A guest's valid-looking next step is still forbidden.
    rejected(
        &mut r,
        &guest(),
        set_status(Lobby, None),
        ErrorCode::Forbidden,
    );
    // The host may jump to results too.
    let mut r = room();
    ok(&mut r, &host(), set_status(Results, None), T0);
}

#[test]
fn set_status_echoes_a_given_phase_start_time_verbatim() {
    let mut r = room();
    for (i, given) in [
        "2026-01-02T03:04:05+02:00",
        "2026-01-02T03:04:05.123456789Z",
        "2026-01-02t03:04:05z",
        "1999-12-31T23:59:60Z",
    ]
    .into_iter()
    .enumerate()
    {
        let next = rules::next_step(r.snapshot().status, r.snapshot().current_phase);
        // Leap seconds etc. that the parser refuses never reach a room: the boundary
        // that parses the message refuses them.
        let Ok(start) = Timestamp::parse("t", given) else {
            continue;
        };
        let action = Action::SetStatus {
            status: next.0,
            phase: next.1,
            start_time: Some(start),
        };
        ok(&mut r, &host(), action, at(i as i64));
        assert_eq!(r.snapshot().phase_start_time.as_deref(), Some(given));
    }
    // Without one, the server's own now.
    let next = rules::next_step(r.snapshot().status, r.snapshot().current_phase);
    ok(&mut r, &host(), set_status(next.0, next.1), T0);
    assert_eq!(r.snapshot().phase_start_time.as_deref(), Some(T0_TEXT));
}

#[test]
fn malformed_and_out_of_range_times_never_become_timestamps() {
    for bad in [
        "",
        "yesterday",
        "2026-01-02",
        "2026-01-02 03:04:05",
        "2026-13-02T03:04:05Z",
        "9999-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z",
    ] {
        let why = Timestamp::parse("phaseStartTime", bad).expect_err(bad);
        assert_eq!(why.code, ErrorCode::InvalidPayload, "{bad}");
        assert!(why.message.starts_with("phaseStartTime"), "{}", why.message);
    }
    assert!(Timestamp::parse("t", "2199-12-31T23:59:59.999Z").is_ok());
    assert!(Timestamp::parse("t", "1970-01-01T00:00:00Z").is_ok());
}

#[test]
fn set_status_leaves_ready_flags_alone() {
    let mut r = room();
    ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);
    ok(&mut r, &host(), set_status(GameStatus::Briefing, None), T0);
    assert_eq!(ready_flags(&r), [false, true, false]);
}

// ---------------------------------------------------------------- ready, presentation

#[test]
fn set_ready_updates_one_player() {
    let mut r = room();
    let event = ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);
    assert_eq!(
        event,
        Event::ReadyUpdate {
            player_id: "p1".into(),
            is_ready: true
        }
    );
    assert_eq!(event.kind(), "ready_update");
    assert!(event.sends_room_state());
    assert_eq!(ready_flags(&r), [false, true, false]);
    // Setting the same value again is still a change with its own version.
    ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);
    ok(&mut r, &guest(), Action::SetReady { is_ready: false }, T0);
    assert_eq!(ready_flags(&r), [false, false, false]);
    assert_eq!(r.version(), 3);
    rejected(
        &mut r,
        &stranger(),
        Action::SetReady { is_ready: true },
        ErrorCode::PlayerNotFound,
    );
}

#[test]
fn presentation_state_is_remembered_without_a_version_bump() {
    let mut r = room();
    advance(&mut r, T0);
    let before = state(&r);
    for actor in [host(), guest()] {
        let applied = r
            .apply(
                &actor,
                Action::Present {
                    present_index: 3,
                    show_campaign: true,
                },
                at(100),
            )
            .expect("roster player may present");
        assert!(!applied.changed);
        assert_eq!(applied.version, 1);
        assert_eq!(
            applied.event,
            Event::Presentation {
                present_index: 3,
                show_campaign: true
            }
        );
        assert_eq!(applied.event.kind(), "presentation_state");
        assert!(!applied.event.sends_room_state());
        // Only the remembered presentation differs (for late joiners); no version bump.
        let mut expected = before.clone();
        expected.snapshot.presentation = Some(crate::protocol::Presentation {
            present_index: 3,
            show_campaign: true,
        });
        assert_eq!(state(&r), expected);
    }
    rejected(
        &mut r,
        &stranger(),
        Action::Present {
            present_index: 0,
            show_campaign: false,
        },
        ErrorCode::PlayerNotFound,
    );
    // The next real change is numbered right after the unchanged version.
    ok(&mut r, &host(), Action::Advance, T0);
    assert_eq!(r.version(), 2);
}

#[test]
fn server_may_send_presentation_state() {
    let mut r = room();
    let applied = r
        .apply(
            &Actor::Server,
            Action::Present {
                present_index: 0,
                show_campaign: false,
            },
            T0,
        )
        .expect("server needs no roster entry");
    assert!(!applied.changed);
    assert_eq!(applied.version, 0);
}

// ---------------------------------------------------------------- presence

#[test]
fn connect_and_disconnect_track_presence() {
    let mut r = room();
    ok(&mut r, &guest(), Action::SetReady { is_ready: true }, T0);

    let event = ok(&mut r, &guest(), Action::Connect, T0);
    assert_eq!(
        event,
        Event::PlayerConnected {
            player_id: "p1".into()
        }
    );
    assert_eq!(event.kind(), "player_connected");
    assert!(event.is_state_only());
    let p = r.player("p1").cloned().expect("in roster");
    assert!(p.connected);
    assert!(p.is_ready, "connecting leaves ready alone");
    assert!(!r.player("h").is_some_and(|p| p.connected));

    // A second connect for the same player is not a change.
    rejected(
        &mut r,
        &guest(),
        Action::Connect,
        ErrorCode::InvalidTransition,
    );

    let event = ok(&mut r, &guest(), Action::Disconnect, T0);
    assert_eq!(
        event,
        Event::PlayerLeft {
            player_id: "p1".into()
        }
    );
    assert_eq!(event.kind(), "player_left");
    assert!(event.sends_room_state());
    let p = r.player("p1").cloned().expect("still in roster");
    assert!(!p.connected);
    assert!(!p.is_ready, "disconnect resets ready");
    assert_eq!(r.snapshot().players.len(), 3);

    // And back again.
    ok(&mut r, &guest(), Action::Connect, T0);
    assert!(r.player("p1").is_some_and(|p| p.connected));
    assert_eq!(r.version(), 4);
}

#[test]
fn presence_needs_a_roster_player() {
    let mut r = room();
    rejected(
        &mut r,
        &stranger(),
        Action::Connect,
        ErrorCode::PlayerNotFound,
    );
    rejected(
        &mut r,
        &stranger(),
        Action::Disconnect,
        ErrorCode::PlayerNotFound,
    );
}

#[test]
fn disconnect_does_not_touch_other_players() {
    let mut r = room();
    for id in ["h", "p1", "p2"] {
        let a = Actor::Player(id.into());
        ok(&mut r, &a, Action::Connect, T0);
        ok(&mut r, &a, Action::SetReady { is_ready: true }, T0);
    }
    ok(&mut r, &Actor::Player("p2".into()), Action::Disconnect, T0);
    let flags: Vec<(bool, bool)> = r
        .snapshot()
        .players
        .iter()
        .map(|p| (p.connected, p.is_ready))
        .collect();
    assert_eq!(flags, [(true, true), (true, true), (false, false)]);
}

// ---------------------------------------------------------------- canvas

#[test]
fn canvas_only_while_creating_in_the_named_phase() {
    use CreationPhase::*;
    let mut r = room();
    // Lobby and briefing: no phase runs.
    for phase in [BigIdea, Visual] {
        rejected(
            &mut r,
            &guest(),
            draw("a1", phase, stroke("s")),
            ErrorCode::InvalidTransition,
        );
    }
    advance(&mut r, T0);
    rejected(
        &mut r,
        &guest(),
        draw("a1", BigIdea, stroke("s")),
        ErrorCode::InvalidTransition,
    );

    for phase in [BigIdea, Visual, Headline, Pitch] {
        advance(&mut r, T0);
        assert_eq!(r.snapshot().current_phase, Some(phase));
        for other in [BigIdea, Visual, Headline, Pitch] {
            if other != phase {
                rejected(
                    &mut r,
                    &guest(),
                    draw("a1", other, stroke("s")),
                    ErrorCode::InvalidTransition,
                );
            }
        }
        let event = ok(&mut r, &guest(), draw("a1", phase, stroke("s")), T0);
        assert_eq!(
            event,
            Event::CanvasDelta {
                adlob_id: "a1".into(),
                phase,
                op: stroke("s"),
                player_id: "p1".into(),
            }
        );
        assert_eq!(event.kind(), "canvas_delta");
        assert!(!event.sends_room_state());
    }
    advance(&mut r, T0);
    assert_eq!(r.snapshot().status, GameStatus::Presenting);
    rejected(
        &mut r,
        &guest(),
        draw("a1", Pitch, stroke("s")),
        ErrorCode::InvalidTransition,
    );
    rejected(
        &mut r,
        &stranger(),
        draw("a1", Pitch, stroke("s")),
        ErrorCode::PlayerNotFound,
    );
}

#[test]
fn canvas_needs_a_roster_player() {
    let mut r = room();
    creating_in(&mut r, CreationPhase::Visual);
    rejected(
        &mut r,
        &stranger(),
        draw("a1", CreationPhase::Visual, stroke("s")),
        ErrorCode::PlayerNotFound,
    );
}

#[test]
fn canvas_adds_and_replaces_by_id_keeping_order() {
    let phase = CreationPhase::Visual;
    let mut r = room();
    creating_in(&mut r, phase);
    ok(&mut r, &guest(), draw("a1", phase, stroke("s1")), T0);
    ok(&mut r, &guest(), draw("a1", phase, text("t1", "hello")), T0);
    ok(&mut r, &host(), draw("a1", phase, image("i1", 32)), T0);
    let version = r.version();
    assert_eq!(
        r.canvases["a1"].ops,
        [stroke("s1"), text("t1", "hello"), image("i1", 32)]
    );
    assert_eq!(r.canvases["a1"].version, version);

    // Same id: replaced in place, even by another kind of element.
    ok(&mut r, &guest(), draw("a1", phase, text("t1", "bye")), T0);
    ok(
        &mut r,
        &guest(),
        draw("a1", phase, text("s1", "was a stroke")),
        T0,
    );
    assert_eq!(
        r.canvases["a1"].ops,
        [
            text("s1", "was a stroke"),
            text("t1", "bye"),
            image("i1", 32)
        ]
    );
    assert_eq!(r.canvases["a1"].version, r.version());

    // Another adlob has its own canvas; the first keeps its version.
    let first_version = r.canvases["a1"].version;
    ok(&mut r, &guest(), draw("a2", phase, stroke("s1")), T0);
    assert_eq!(r.canvases["a2"].ops, [stroke("s1")]);
    assert_eq!(r.canvases["a2"].version, r.version());
    assert_eq!(r.canvases["a1"].version, first_version);
    assert_eq!(r.canvases.len(), 2);
}

#[test]
fn canvas_remove_and_clear() {
    let phase = CreationPhase::Headline;
    let mut r = room();
    creating_in(&mut r, phase);
    for id in ["a", "b", "c"] {
        ok(&mut r, &guest(), draw("x", phase, stroke(id)), T0);
    }
    ok(
        &mut r,
        &guest(),
        draw("x", phase, CanvasOp::Remove { id: "b".into() }),
        T0,
    );
    assert_eq!(r.canvases["x"].ops, [stroke("a"), stroke("c")]);
    assert_eq!(r.canvases["x"].version, r.version());

    // Removing it again, or an id never drawn, is rejected and changes nothing.
    for id in ["b", "zzz"] {
        let err = rejected(
            &mut r,
            &guest(),
            draw("x", phase, CanvasOp::Remove { id: id.into() }),
            ErrorCode::InvalidPayload,
        );
        assert!(err.message.contains(id), "{err}");
    }

    ok(&mut r, &host(), draw("x", phase, CanvasOp::Clear), T0);
    assert!(r.canvases["x"].ops.is_empty());
    assert_eq!(r.canvases["x"].version, r.version());
    // Clearing an empty canvas is still a (versioned) change.
    ok(&mut r, &host(), draw("x", phase, CanvasOp::Clear), T0);
    assert_eq!(r.canvases["x"].version, r.version());
    // And it can be drawn on again.
    ok(&mut r, &guest(), draw("x", phase, stroke("a")), T0);
    assert_eq!(r.canvases["x"].ops, [stroke("a")]);
}

#[test]
fn removing_from_a_canvas_that_does_not_exist_leaves_no_trace() {
    let phase = CreationPhase::BigIdea;
    let mut r = room();
    creating_in(&mut r, phase);
    rejected(
        &mut r,
        &guest(),
        draw("ghost", phase, CanvasOp::Remove { id: "s".into() }),
        ErrorCode::InvalidPayload,
    );
    assert!(!r.canvases.contains_key("ghost"));
}

#[test]
fn canvas_element_count_is_bounded() {
    let phase = CreationPhase::Pitch;
    let mut r = room();
    creating_in(&mut r, phase);
    for i in 0..canvas::MAX_OPS {
        ok(
            &mut r,
            &guest(),
            draw("a", phase, stroke(&format!("s{i}"))),
            T0,
        );
    }
    assert_eq!(r.canvases["a"].ops.len(), canvas::MAX_OPS);
    let err = rejected(
        &mut r,
        &guest(),
        draw("a", phase, stroke("one-more")),
        ErrorCode::InvalidPayload,
    );
    assert!(err.message.contains("full"), "{err}");
    // Replacing an element of a full canvas is fine, as is freeing room first.
    ok(
        &mut r,
        &guest(),
        draw("a", phase, text("s0", "replaced")),
        T0,
    );
    ok(
        &mut r,
        &guest(),
        draw("a", phase, CanvasOp::Remove { id: "s1".into() }),
        T0,
    );
    ok(&mut r, &guest(), draw("a", phase, stroke("one-more")), T0);
    assert_eq!(r.canvases["a"].ops.len(), canvas::MAX_OPS);
    rejected(
        &mut r,
        &guest(),
        draw("a", phase, stroke("two-more")),
        ErrorCode::InvalidPayload,
    );
    // Other canvases are not affected by a full one.
    ok(&mut r, &guest(), draw("b", phase, stroke("s0")), T0);
}

#[test]
fn canvas_size_in_bytes_is_bounded() {
    let phase = CreationPhase::Visual;
    let mut r = room();
    creating_in(&mut r, phase);
    let big = |i: usize| image(&format!("i{i:02}"), SRC_MAX);
    let mut added = 0;
    loop {
        match r.apply(&guest(), draw("a", phase, big(added)), T0) {
            Ok(_) => added += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::InvalidPayload, "{e}");
                break;
            }
        }
        assert!(added <= canvas::MAX_OPS, "byte limit never reached");
    }
    // Each big image counts at least its src; the canvas holds about MAX_BYTES of them.
    assert!(added > 0);
    assert!(added * SRC_MAX <= canvas::MAX_BYTES, "{added} images fit");
    assert!(
        (added + 1) * (SRC_MAX + 128) > canvas::MAX_BYTES,
        "{added} images fit"
    );
    assert_eq!(r.canvases["a"].ops.len(), added);
    rejected(
        &mut r,
        &guest(),
        draw("a", phase, big(added)),
        ErrorCode::InvalidPayload,
    );
    // Small elements may still fit in what is left ...
    ok(&mut r, &guest(), draw("a", phase, stroke("tiny")), T0);
    // ... and replacing a big image by a small one frees its bytes.
    ok(&mut r, &guest(), draw("a", phase, stroke("i00")), T0);
    ok(&mut r, &guest(), draw("a", phase, big(added)), T0);
    rejected(
        &mut r,
        &guest(),
        draw("a", phase, big(added + 1)),
        ErrorCode::InvalidPayload,
    );
    // Removing one frees its bytes too.
    ok(
        &mut r,
        &guest(),
        draw("a", phase, CanvasOp::Remove { id: "i01".into() }),
        T0,
    );
    ok(&mut r, &guest(), draw("a", phase, big(added + 1)), T0);
    // Replacing a big image by another of the same size fits on a full canvas.
    ok(
        &mut r,
        &guest(),
        draw("a", phase, image("i02", SRC_MAX)),
        T0,
    );
    // Clearing frees everything.
    ok(&mut r, &guest(), draw("a", phase, CanvasOp::Clear), T0);
    for i in 0..added {
        ok(&mut r, &guest(), draw("a", phase, big(i)), T0);
    }
}

#[test]
fn canvases_per_room_are_bounded() {
    let phase = CreationPhase::BigIdea;
    let mut r = room();
    creating_in(&mut r, phase);
    for i in 0..canvas::MAX_CANVASES {
        ok(
            &mut r,
            &guest(),
            draw(&format!("ad{i}"), phase, stroke("s")),
            T0,
        );
    }
    let err = rejected(
        &mut r,
        &guest(),
        draw("one-more", phase, stroke("s")),
        ErrorCode::InvalidPayload,
    );
    assert!(err.message.contains("canvases"), "{err}");
    rejected(
        &mut r,
        &guest(),
        draw("one-more", phase, CanvasOp::Clear),
        ErrorCode::InvalidPayload,
    );
    // Existing canvases still take deltas.
    ok(&mut r, &guest(), draw("ad0", phase, stroke("t")), T0);
    ok(&mut r, &guest(), draw("ad63", phase, CanvasOp::Clear), T0);
    assert_eq!(r.canvases.len(), canvas::MAX_CANVASES);
}

// ---------------------------------------------------------------- big ideas

#[test]
fn big_ideas_only_in_the_big_idea_phase() {
    let mut r = room();
    rejected(
        &mut r,
        &guest(),
        idea("a1", "x"),
        ErrorCode::InvalidTransition,
    ); // lobby
    advance(&mut r, T0);
    rejected(
        &mut r,
        &guest(),
        idea("a1", "x"),
        ErrorCode::InvalidTransition,
    ); // briefing
    advance(&mut r, T0);
    let event = ok(&mut r, &guest(), idea("a1", "Socks that sing"), T0);
    assert_eq!(
        event,
        Event::BigIdeaSubmitted {
            adlob_id: "a1".into(),
            text: "Socks that sing".into(),
            author_id: "p1".into(),
        }
    );
    assert_eq!(event.kind(), "big_idea_submitted");
    assert!(!event.sends_room_state());
    assert_eq!(
        r.big_ideas["a1"],
        BigIdea {
            text: "Socks that sing".into(),
            author_id: "p1".into(),
            version: r.version(),
        }
    );
    rejected(
        &mut r,
        &stranger(),
        idea("a1", "x"),
        ErrorCode::PlayerNotFound,
    );

    for _ in 0..3 {
        advance(&mut r, T0); // visual, headline, pitch
        rejected(
            &mut r,
            &guest(),
            idea("a1", "late"),
            ErrorCode::InvalidTransition,
        );
    }
    for _ in 0..4 {
        advance(&mut r, T0); // presenting, voting, results, lobby
        rejected(
            &mut r,
            &guest(),
            idea("a1", "late"),
            ErrorCode::InvalidTransition,
        );
    }
    assert_eq!(r.big_ideas["a1"].text, "Socks that sing");
}

#[test]
fn big_idea_resubmission_replaces_and_count_is_bounded() {
    let mut r = room();
    creating_in(&mut r, CreationPhase::BigIdea);
    ok(&mut r, &guest(), idea("a1", "first"), T0);
    ok(&mut r, &host(), idea("a1", "second"), T0);
    assert_eq!(
        r.big_ideas["a1"],
        BigIdea {
            text: "second".into(),
            author_id: "h".into(),
            version: r.version(),
        }
    );
    for i in 1..canvas::MAX_CANVASES {
        ok(&mut r, &guest(), idea(&format!("b{i}"), "x"), T0);
    }
    assert_eq!(r.big_ideas.len(), canvas::MAX_CANVASES);
    rejected(
        &mut r,
        &guest(),
        idea("one-more", "x"),
        ErrorCode::InvalidPayload,
    );
    ok(&mut r, &guest(), idea("a1", "third"), T0);
    assert_eq!(r.big_ideas["a1"].text, "third");
}

// ---------------------------------------------------------------- phase timers

#[test]
fn no_deadline_without_duration_and_auto_advance() {
    for settings in [
        Settings::default(),
        Settings {
            phase_duration_seconds: Some(60),
            auto_advance: false,
            ..Settings::default()
        },
        Settings {
            phase_duration_seconds: None,
            auto_advance: true,
            ..Settings::default()
        },
    ] {
        let mut r = room_with(settings.clone());
        for _ in 0..9 {
            advance(&mut r, T0);
            assert_eq!(r.phase_deadline(), None, "{settings:?} at {:?}", step(&r));
            assert_eq!(r.snapshot().phase_ends_at, None);
        }
    }
}

#[test]
fn deadline_runs_only_while_creating() {
    let mut r = room_with(Settings {
        phase_duration_seconds: Some(90),
        auto_advance: true,
        ..Settings::default()
    });
    assert_eq!(r.phase_deadline(), None);
    advance(&mut r, at(0)); // briefing
    assert_eq!(r.phase_deadline(), None);
    assert_eq!(r.snapshot().phase_ends_at, None);

    for (i, phase) in [
        CreationPhase::BigIdea,
        CreationPhase::Visual,
        CreationPhase::Headline,
        CreationPhase::Pitch,
    ]
    .into_iter()
    .enumerate()
    {
        let start = at(10 * (i as i64 + 1));
        let event = advance(&mut r, start);
        assert_eq!(r.snapshot().current_phase, Some(phase));
        if i > 0 {
            assert_eq!(event, Event::PhaseChanged);
        }
        let deadline = start + time::Duration::seconds(90);
        assert_eq!(r.phase_deadline(), Some(deadline));
        let ends_at = r.snapshot().phase_ends_at.clone().unwrap_or_default();
        assert_eq!(ends_at, format_time(deadline));
        assert_server_time(&ends_at);
    }
    // Actions that do not move the phase keep the deadline.
    let deadline = r.phase_deadline();
    ok(
        &mut r,
        &guest(),
        Action::SetReady { is_ready: true },
        at(500),
    );
    assert_eq!(r.phase_deadline(), deadline);

    advance(&mut r, at(60)); // presenting
    assert_eq!(r.phase_deadline(), None);
    assert_eq!(r.snapshot().phase_ends_at, None);
}

#[test]
fn deadline_counts_from_a_given_phase_start_time() {
    let mut r = room_with(Settings {
        phase_duration_seconds: Some(30),
        auto_advance: true,
        ..Settings::default()
    });
    advance(&mut r, T0);
    ok(
        &mut r,
        &host(),
        Action::SetStatus {
            status: GameStatus::Creating,
            phase: None,
            start_time: Some(ts("2026-03-04T07:00:00.5+02:00")),
        },
        T0,
    );
    assert_eq!(
        r.snapshot().phase_start_time.as_deref(),
        Some("2026-03-04T07:00:00.5+02:00")
    );
    assert_eq!(
        r.phase_deadline(),
        Some(datetime!(2026-03-04 05:00:30.5 UTC))
    );
    assert_eq!(
        r.snapshot().phase_ends_at.as_deref(),
        Some("2026-03-04T05:00:30.500Z")
    );
}

#[test]
fn the_server_advances_when_the_deadline_passes() {
    let mut r = room_with(Settings {
        phase_duration_seconds: Some(45),
        auto_advance: true,
        ..Settings::default()
    });
    creating_in(&mut r, CreationPhase::BigIdea);
    let deadline = r.phase_deadline().expect("timer runs");
    let version = r.version();
    let event = advance(&mut r, deadline);
    assert_eq!(event, Event::PhaseChanged);
    assert_eq!(r.version(), version + 1);
    assert_eq!(r.snapshot().current_phase, Some(CreationPhase::Visual));
    assert_eq!(
        r.phase_deadline(),
        Some(deadline + time::Duration::seconds(45))
    );
}

// ---------------------------------------------------------------- seeds

fn seed() -> RoomSnapshot {
    let mut a = player("a", 2, false);
    a.connected = true;
    a.is_ready = true;
    let mut b = player("b", 0, true);
    b.connected = true;
    RoomSnapshot {
        id: "seed-room-id".into(),
        code: "SEED".into(),
        status: GameStatus::Voting,
        current_phase: None,
        phase_start_time: Some("2026-01-02T03:04:05+02:00".into()),
        players: vec![a, b, player("c", 1, false)],
        version: 41,
        phase_ends_at: Some("2030-01-01T00:00:00.000Z".into()),
        presentation: None,
    }
}

#[test]
fn from_seed_keeps_the_seed_but_not_its_presence() {
    let r = Room::from_seed("SEED", &seed()).expect("valid seed");
    let s = r.snapshot();
    assert_eq!(s.id, "seed-room-id");
    assert_eq!(s.code, "SEED");
    assert_eq!(s.status, GameStatus::Voting);
    assert_eq!(s.current_phase, None);
    assert_eq!(
        s.phase_start_time.as_deref(),
        Some("2026-01-02T03:04:05+02:00")
    );
    assert_eq!(s.version, 41);
    assert_eq!(s.phase_ends_at, None, "no timer without settings");
    let ids: Vec<&str> = s.players.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["b", "c", "a"], "sorted by seat");
    assert!(s.players.iter().all(|p| !p.connected), "presence is reset");
    assert!(r.player("a").is_some_and(|p| p.is_ready), "ready is kept");
    assert_eq!(r.settings, Settings::default());

    // The next change follows the seed's version.
    let mut r = r;
    ok(&mut r, &Actor::Player("b".into()), Action::Advance, T0);
    assert_eq!(r.version(), 42);
    assert_eq!(step(&r), (GameStatus::Results, None));
}

#[test]
fn from_seed_normalizes_status_and_phase() {
    use CreationPhase::*;
    use GameStatus::*;
    for (status, phase, expected) in [
        (Creating, None, (Creating, Some(BigIdea))),
        (Creating, Some(Headline), (Creating, Some(Headline))),
        (Lobby, Some(Visual), (Lobby, None)),
        (Results, Some(Pitch), (Results, None)),
        (Presenting, None, (Presenting, None)),
    ] {
        let mut s = seed();
        s.status = status;
        s.current_phase = phase;
        let r = Room::from_seed("SEED", &s).expect("valid seed");
        assert_eq!(step(&r), expected, "{status:?}/{phase:?}");
    }
}

#[test]
fn from_seed_without_id_gets_a_fresh_one() {
    let mut s = seed();
    s.id = String::new();
    let r = Room::from_seed("SEED", &s).expect("valid seed");
    assert!(uuid::Uuid::parse_str(&r.snapshot().id).is_ok());
}

#[test]
fn from_seed_rejects_bad_seeds() {
    let mut cases: Vec<(&str, RoomSnapshot)> = Vec::new();

    let mut s = seed();
    s.code = "OTHER".into();
    cases.push(("code mismatch", s));

    let mut s = seed();
    s.players.push(player("a", 7, false));
    cases.push(("duplicate id", s));

    let mut s = seed();
    s.players = (0..=limits::MAX_PLAYERS as i64)
        .map(|i| player(&format!("p{i}"), i, i == 0))
        .collect();
    cases.push(("too many players", s));

    let mut s = seed();
    s.id = "x".repeat(limits::ID_MAX + 1);
    cases.push(("long id", s));

    let mut s = seed();
    s.phase_start_time = Some("not a time".into());
    cases.push(("bad phaseStartTime", s));

    let mut s = seed();
    s.players[0].id = String::new();
    cases.push(("empty player id", s));

    let mut s = seed();
    s.players[0].seat_index = 1000;
    cases.push(("seat out of range", s));

    let mut s = seed();
    s.players[0].name = "a\u{0}b".into();
    cases.push(("control character", s));

    for (why, s) in cases {
        let err = Room::from_seed("SEED", &s).expect_err(why);
        assert_eq!(err.code, ErrorCode::InvalidPayload, "{why}: {err}");
    }

    // The code must match exactly, also when the seed's is empty.
    let mut s = seed();
    s.code = String::new();
    assert!(Room::from_seed("SEED", &s).is_err());
    assert!(
        Room::from_seed("", &s).is_err(),
        "an empty code is never valid"
    );

    // Exactly MAX_PLAYERS is fine.
    let mut s = seed();
    s.players = (0..limits::MAX_PLAYERS as i64)
        .map(|i| player(&format!("p{i}"), i, i == 0))
        .collect();
    assert!(Room::from_seed("SEED", &s).is_ok());
}

// ---------------------------------------------------------------- rules

#[test]
fn next_step_cycles_through_nine_steps() {
    let mut at = (GameStatus::Lobby, None);
    let mut seen = Vec::new();
    for _ in 0..9 {
        at = rules::next_step(at.0, at.1);
        seen.push(at);
    }
    assert_eq!(at, (GameStatus::Lobby, None));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            seen.iter().filter(|t| *t == s).count(),
            1,
            "step {i} repeats"
        );
        assert_eq!(rules::normalize(s.0, s.1), *s, "steps are normalized");
    }
    // A stray phase outside creating does not change the step.
    assert_eq!(
        rules::next_step(GameStatus::Voting, Some(CreationPhase::Pitch)),
        (GameStatus::Results, None)
    );
    assert_eq!(
        rules::next_step(GameStatus::Creating, None),
        (GameStatus::Creating, Some(CreationPhase::BigIdea))
    );
}

#[test]
fn event_for_distinguishes_moves_inside_creating() {
    use CreationPhase::*;
    use GameStatus::*;
    assert_eq!(
        rules::event_for((Creating, Some(BigIdea)), (Creating, Some(Visual))),
        Event::PhaseChanged
    );
    assert_eq!(
        rules::event_for((Briefing, None), (Creating, Some(BigIdea))),
        Event::StatusChanged
    );
    assert_eq!(
        rules::event_for((Creating, Some(Pitch)), (Presenting, None)),
        Event::StatusChanged
    );
    assert_eq!(
        rules::event_for((Lobby, None), (Briefing, None)),
        Event::StatusChanged
    );
}

#[test]
fn requested_step_names_both_ends_on_rejection() {
    let err = rules::requested_step(
        (GameStatus::Creating, Some(CreationPhase::Visual)),
        GameStatus::Lobby,
        None,
    )
    .expect_err("not one step");
    assert_eq!(err.code, ErrorCode::InvalidTransition);
    assert!(err.message.contains("creating/visual"), "{err}");
    assert!(err.message.contains("lobby"), "{err}");
}
