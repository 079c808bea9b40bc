//! Property tests that act as a fuzzer for the client message decoder.
//!
//! Whatever a browser sends, `decode` must not panic and must answer either a
//! validated message or an `invalid_payload` rejection. Inputs are arbitrary text,
//! arbitrary bytes, arbitrary JSON trees, and valid messages of every type mutated
//! structurally (fields dropped, retyped, added) and textually (characters cut,
//! inserted, replaced). Every accepted message is re-validated independently here.
//! The cargo-fuzz targets in `fuzz/` run the same checks for longer, on nightly.

use karaoke_realtime::protocol::canvas::{
    COLOR_MAX, COORD_MAX, CanvasOp, FONT_SIZE, POINTS_MAX, SRC_MAX, STROKE_WIDTH, TEXT_MAX,
};
use karaoke_realtime::protocol::client::{ClientMessage, decode};
use karaoke_realtime::protocol::{ErrorCode, limits};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

const TYPES: [&str; 9] = [
    "join_room",
    "leave_room",
    "set_ready",
    "advance_phase",
    "set_status",
    "presentation_state",
    "heartbeat",
    "submit_canvas_delta",
    "submit_big_idea",
];

const FIELDS: [&str; 38] = [
    "type",
    "roomCode",
    "playerId",
    "playerToken",
    "initialSnapshot",
    "lastVersion",
    "isReady",
    "status",
    "currentPhase",
    "phaseStartTime",
    "presentIndex",
    "showCampaign",
    "adlobId",
    "phase",
    "delta",
    "text",
    "op",
    "id",
    "color",
    "width",
    "height",
    "points",
    "x",
    "y",
    "pressure",
    "fontSize",
    "align",
    "fontFamily",
    "src",
    "rotation",
    "players",
    "version",
    "code",
    "seatIndex",
    "isHost",
    "emoji",
    "name",
    "phaseEndsAt",
];

// ------------------------------------------------------------------ the oracle

/// An identifier as the protocol bounds it: non-empty, at most `max` characters,
/// no control characters. Written independently of the crate's own check.
fn assert_id(field: &str, value: &str, max: usize) {
    assert!(!value.is_empty(), "{field} is empty");
    assert!(
        value.chars().count() <= max,
        "{field} longer than {max}: {value:?}"
    );
    assert!(
        !value.chars().any(char::is_control),
        "{field} has control characters: {value:?}"
    );
}

fn assert_rfc3339(field: &str, value: &str) {
    let parsed = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339);
    assert!(parsed.is_ok(), "{field} is not RFC 3339: {value:?}");
}

fn assert_in(field: &str, v: f64, lo: f64, hi: f64) {
    assert!(
        v.is_finite() && v >= lo && v <= hi,
        "{field} = {v} not in {lo}..={hi}"
    );
}

fn assert_delta(op: &CanvasOp) {
    assert!(
        op.validate().is_ok(),
        "accepted delta does not validate: {op:?}"
    );
    match op {
        CanvasOp::Stroke(s) => {
            assert_id("delta.id", &s.id, limits::ID_MAX);
            assert_id("delta.color", &s.color, COLOR_MAX);
            assert_in("width", s.width, STROKE_WIDTH.0, STROKE_WIDTH.1);
            assert!((2..=POINTS_MAX).contains(&s.points.len()));
            for p in &s.points {
                assert_in("x", p.x, -COORD_MAX, COORD_MAX);
                assert_in("y", p.y, -COORD_MAX, COORD_MAX);
                if let Some(pr) = p.pressure {
                    assert_in("pressure", pr, 0.0, 1.0);
                }
            }
        }
        CanvasOp::Text(t) => {
            assert_id("delta.id", &t.id, limits::ID_MAX);
            assert!(t.text.chars().count() <= TEXT_MAX);
            assert_in("x", t.x, -COORD_MAX, COORD_MAX);
            assert_in("y", t.y, -COORD_MAX, COORD_MAX);
            assert_id("delta.color", &t.color, COLOR_MAX);
            assert_in("fontSize", t.font_size, FONT_SIZE.0, FONT_SIZE.1);
            if let Some(f) = &t.font_family {
                assert_id("delta.fontFamily", f, 64);
            }
        }
        CanvasOp::Image(i) => {
            assert_id("delta.id", &i.id, limits::ID_MAX);
            assert!(i.src.len() <= SRC_MAX);
            // A path a browser could read as another host (`//h`, `/\h`, `/<tab>/h`) never decodes.
            let path =
                i.src.starts_with('/') && !i.src.starts_with("//") && !i.src.starts_with("/\\");
            assert!(
                !i.src.chars().any(|c| c.is_whitespace() || c.is_control()),
                "src {:?}",
                i.src
            );
            assert!(
                i.src.starts_with("https://")
                    || path
                    || karaoke_realtime::protocol::canvas::DATA_IMAGE_PREFIXES
                        .iter()
                        .any(|p| i.src.starts_with(p)),
                "src {:?}",
                i.src
            );
            assert!(!i.src.to_ascii_lowercase().starts_with("javascript:"));
            assert_in("x", i.x, -COORD_MAX, COORD_MAX);
            assert_in("y", i.y, -COORD_MAX, COORD_MAX);
            assert!(i.width.is_finite() && i.width > 0.0 && i.width <= COORD_MAX);
            assert!(i.height.is_finite() && i.height > 0.0 && i.height <= COORD_MAX);
            if let Some(r) = i.rotation {
                assert_in("rotation", r, -360.0, 360.0);
            }
        }
        CanvasOp::Remove { id } => assert_id("delta.id", id, limits::ID_MAX),
        CanvasOp::Clear => {}
    }
    // What is broadcast is the re-serialized delta: it must decode again.
    let again = serde_json::to_value(op).expect("a delta serializes");
    assert!(
        CanvasOp::from_value(again).is_ok(),
        "re-serialized delta rejected"
    );
}

/// Re-validates an accepted message: everything a room relies on holds.
fn assert_valid(m: &ClientMessage) {
    if !matches!(m, ClientMessage::Heartbeat { .. }) {
        let code = m
            .room_code()
            .expect("every non-heartbeat message names a room");
        assert_id("roomCode", code, limits::ROOM_CODE_MAX);
        assert!(
            code.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "roomCode outside the one rule for codes: {code:?}"
        );
    }
    if let Some(id) = m.player_id() {
        assert_id("playerId", id, limits::ID_MAX);
    }
    match m {
        ClientMessage::JoinRoom(j) => {
            let token = j.player_token.as_deref().unwrap_or_default();
            assert!(!token.is_empty(), "join_room accepted without a token");
            assert!(j.last_version.unwrap_or(0) <= limits::MAX_VERSION);
        }
        ClientMessage::SetStatus(s) => {
            if let Some(t) = &s.phase_start_time {
                assert_rfc3339("phaseStartTime", t.as_str());
            }
        }
        ClientMessage::PresentationState(p) => {
            assert!((0..=limits::PRESENT_INDEX_MAX).contains(&p.present_index));
        }
        ClientMessage::SubmitCanvasDelta(c) => {
            assert_id("adlobId", &c.adlob_id, limits::ID_MAX);
            assert_delta(&c.delta);
        }
        ClientMessage::SubmitBigIdea(b) => {
            assert_id("adlobId", &b.adlob_id, limits::ID_MAX);
            let n = b.text.chars().count();
            assert!(
                (1..=limits::BIG_IDEA_MAX).contains(&n),
                "big idea of {n} chars"
            );
        }
        ClientMessage::LeaveRoom { .. }
        | ClientMessage::SetReady { .. }
        | ClientMessage::AdvancePhase { .. }
        | ClientMessage::Heartbeat { .. } => {}
    }
}

/// The fuzzing property: no panic, and either a valid message or `invalid_payload`.
fn check(text: &str) -> Option<ClientMessage> {
    match decode(text) {
        Ok(m) => {
            assert_valid(&m);
            Some(m)
        }
        Err(r) => {
            assert_eq!(r.code, ErrorCode::InvalidPayload, "{text:?} -> {r}");
            assert!(!r.message.is_empty());
            None
        }
    }
}

// ------------------------------------------------------------------ generators

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,16}"
}

fn room_code() -> impl Strategy<Value = String> {
    "[A-Z0-9]{1,8}"
}

fn status() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "lobby",
        "briefing",
        "creating",
        "presenting",
        "voting",
        "results",
    ])
}

fn phase() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["big_idea", "visual", "headline", "pitch"])
}

fn timestamp() -> impl Strategy<Value = String> {
    (
        1970u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of(0u32..1000),
        prop::sample::select(vec!["Z", "+02:00", "-05:30", "+00:00"]),
    )
        .prop_map(|(y, mo, d, h, mi, s, ms, off)| {
            let frac = ms.map(|ms| format!(".{ms:03}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

fn coord() -> impl Strategy<Value = f64> {
    -1000.0f64..1000.0
}

fn canvas_op() -> impl Strategy<Value = Value> {
    let point = (coord(), coord(), prop::option::of(0.0f64..=1.0)).prop_map(|(x, y, p)| {
        let mut v = json!({"x": x, "y": y});
        if let Some(p) = p {
            v["pressure"] = json!(p);
        }
        v
    });
    prop_oneof![
        (
            ident(),
            "#[0-9a-f]{6}",
            1.0f64..=40.0,
            prop::collection::vec(point, 2..8)
        )
            .prop_map(|(id, color, width, points)| json!({
                "op": "stroke", "id": id, "color": color, "width": width, "points": points
            })),
        (
            ident(),
            "[a-zA-Z !?é🎤]{0,40}",
            coord(),
            coord(),
            8.0f64..=96.0,
            prop::option::of(prop::sample::select(vec!["left", "center", "right"]))
        )
            .prop_map(|(id, text, x, y, size, align)| {
                let mut v = json!({
                    "op": "text", "id": id, "text": text, "x": x, "y": y,
                    "color": "red", "fontSize": size
                });
                if let Some(a) = align {
                    v["align"] = json!(a);
                }
                v
            }),
        (
            ident(),
            prop::sample::select(vec![
                "https://cdn.example/a.png",
                "/img/b.png",
                "data:image/png;base64,AAAA"
            ]),
            coord(),
            coord(),
            0.5f64..500.0,
            0.5f64..500.0,
            prop::option::of(-360.0f64..=360.0)
        )
            .prop_map(|(id, src, x, y, w, h, rot)| {
                let mut v = json!({
                    "op": "image", "id": id, "src": src, "x": x, "y": y, "width": w, "height": h
                });
                if let Some(r) = rot {
                    v["rotation"] = json!(r);
                }
                v
            }),
        ident().prop_map(|id| json!({"op": "remove", "id": id})),
        Just(json!({"op": "clear"})),
    ]
}

fn snapshot(code: String) -> impl Strategy<Value = Value> {
    let player = (
        ident(),
        "[A-Za-z ]{1,12}",
        any::<bool>(),
        any::<bool>(),
        0i64..8,
    )
        .prop_map(|(id, name, ready, host, seat)| {
            json!({"id": id, "name": name, "emoji": "🎤", "isReady": ready,
                   "isHost": host, "seatIndex": seat})
        });
    (
        status(),
        prop::option::of(phase()),
        prop::option::of(timestamp()),
        prop::collection::vec(player, 0..4),
        0u64..1000,
    )
        .prop_map(move |(status, phase, start, players, version)| {
            json!({"id": "", "code": code, "status": status, "currentPhase": phase,
                   "phaseStartTime": start, "players": players, "version": version})
        })
}

/// A valid message of every type the decoder knows.
fn valid_message() -> BoxedStrategy<Value> {
    prop_oneof![
        (
            room_code(),
            ident(),
            "[A-Za-z0-9._-]{1,64}",
            prop::option::of(0..=limits::MAX_VERSION),
            any::<bool>()
        )
            .prop_flat_map(|(room, player, token, last, seeded)| {
                let seed = if seeded {
                    snapshot(room.clone()).prop_map(Some).boxed()
                } else {
                    Just(None).boxed()
                };
                seed.prop_map(move |seed| {
                    let mut v = json!({"type": "join_room", "roomCode": room,
                                       "playerId": player, "playerToken": token});
                    if let Some(last) = last {
                        v["lastVersion"] = json!(last);
                    }
                    if let Some(seed) = seed {
                        v["initialSnapshot"] = seed;
                    }
                    v
                })
            }),
        room_code().prop_map(|room| json!({"type": "leave_room", "roomCode": room})),
        (room_code(), ident(), any::<bool>()).prop_map(|(room, player, ready)| json!({
            "type": "set_ready", "roomCode": room, "playerId": player, "isReady": ready
        })),
        (room_code(), ident()).prop_map(|(room, player)| json!({
            "type": "advance_phase", "roomCode": room, "playerId": player
        })),
        (
            room_code(),
            ident(),
            status(),
            prop::option::of(phase()),
            prop::option::of(timestamp())
        )
            .prop_map(|(room, player, status, phase, start)| {
                let mut v = json!({"type": "set_status", "roomCode": room, "playerId": player,
                                   "status": status, "currentPhase": phase});
                if let Some(start) = start {
                    v["phaseStartTime"] = json!(start);
                }
                v
            }),
        (
            room_code(),
            ident(),
            0i64..=limits::PRESENT_INDEX_MAX,
            any::<bool>()
        )
            .prop_map(|(room, player, index, show)| json!({
                "type": "presentation_state", "roomCode": room, "playerId": player,
                "presentIndex": index, "showCampaign": show
            })),
        prop::option::of(room_code()).prop_map(|room| match room {
            Some(room) => json!({"type": "heartbeat", "roomCode": room}),
            None => json!({"type": "heartbeat"}),
        }),
        (room_code(), ident(), phase(), canvas_op()).prop_map(|(room, adlob, phase, delta)| {
            json!({"type": "submit_canvas_delta", "roomCode": room, "adlobId": adlob,
                   "phase": phase, "delta": delta})
        }),
        (room_code(), ident(), "[a-zA-Z ,.!é🎤]{1,80}").prop_map(|(room, adlob, text)| json!({
            "type": "submit_big_idea", "roomCode": room, "adlobId": adlob, "text": text
        })),
    ]
    .boxed()
}

/// Strings that probe the validators' edges.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".into()),
        Just("\u{0}".into()),
        Just("a\nb".into()),
        Just("\u{7f}".into()),
        Just("\u{200b}".into()),
        Just("javascript:alert(1)".into()),
        Just("JaVaScRiPt:alert(1)".into()),
        Just("data:text/html,<script>".into()),
        Just("//evil.example/x.png".into()),
        Just("NaN".into()),
        Just("1e309".into()),
        Just("2026-13-45T99:99:99Z".into()),
        Just("2026-01-02T03:04:05".into()),
        Just("🎤".repeat(limits::ROOM_CODE_MAX + 1)),
        Just("x".repeat(limits::ID_MAX + 1)),
        Just("x".repeat(limits::BIG_IDEA_MAX + 1)),
        Just("é".repeat(TEXT_MAX + 1)),
        (0usize..700).prop_map(|n| "y".repeat(n)),
        ".{0,24}",
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.5,
            1.0,
            7.999,
            8.0,
            40.0,
            40.001,
            96.0,
            96.5,
            360.0,
            360.5,
            1e5,
            1e5 + 1.0,
            -1e5,
            -1e300,
            1e300,
            f64::MIN_POSITIVE,
        ])
        .prop_map(|f| json!(f)),
        prop::sample::select(vec![
            -1i64,
            0,
            1,
            2,
            255,
            256,
            1000,
            1001,
            i64::MAX,
            i64::MIN
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        nasty_string().prop_map(Value::String),
        status().prop_map(|s| json!(s)),
        phase().prop_map(|s| json!(s)),
        timestamp().prop_map(Value::String),
        prop::sample::select(TYPES.to_vec()).prop_map(|s| json!(s)),
        prop::sample::select(vec![
            "stroke", "text", "image", "remove", "clear", "explode"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_string),
        1 => ".{0,10}",
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove(Index),
    Replace(Index, Value),
    Insert(String, Value),
    Retype(String),
    Wrap(Index),
    MutateDelta(Index, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (field_name(), json_value()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        prop_oneof![
            prop::sample::select(TYPES.to_vec()).prop_map(str::to_string),
            ".{0,100}",
            Just("JOIN_ROOM".to_string()),
            Just("join_room ".to_string()),
        ]
        .prop_map(Mutation::Retype),
        any::<Index>().prop_map(Mutation::Wrap),
        (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::MutateDelta(i, v)),
    ]
}

fn pick_key(obj: &Map<String, Value>, i: &Index) -> Option<String> {
    if obj.is_empty() {
        None
    } else {
        obj.keys().nth(i.index(obj.len())).cloned()
    }
}

fn apply_mutation(v: &mut Value, m: &Mutation) {
    let Value::Object(obj) = v else { return };
    match m {
        Mutation::Remove(i) => {
            if let Some(k) = pick_key(obj, i) {
                obj.remove(&k);
            }
        }
        Mutation::Replace(i, new) => {
            if let Some(k) = pick_key(obj, i) {
                obj.insert(k, new.clone());
            }
        }
        Mutation::Insert(k, new) => {
            obj.insert(k.clone(), new.clone());
        }
        Mutation::Retype(t) => {
            obj.insert("type".into(), json!(t));
        }
        Mutation::Wrap(i) => {
            if let Some(k) = pick_key(obj, i) {
                let old = obj.remove(&k).unwrap_or(Value::Null);
                obj.insert(k, Value::Array(vec![old]));
            }
        }
        Mutation::MutateDelta(i, new) => {
            // Into the nested object a message carries: a delta or a room seed.
            let target = if obj.get("delta").is_some_and(Value::is_object) {
                "delta"
            } else {
                "initialSnapshot"
            };
            if let Some(Value::Object(inner)) = obj.get_mut(target)
                && let Some(k) = pick_key(inner, i)
            {
                inner.insert(k, new.clone());
            }
        }
    }
}

#[derive(Debug, Clone)]
enum TextMutation {
    Truncate(Index),
    Insert(Index, char),
    Delete(Index),
    Replace(Index, char),
    Duplicate(Index, Index),
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    let ch = prop_oneof![
        prop::sample::select(vec![
            '"', '\\', '{', '}', '[', ']', ',', ':', '\0', '\n', 'é', '🎤', 'u', '0'
        ]),
        any::<char>(),
    ];
    prop_oneof![
        any::<Index>().prop_map(TextMutation::Truncate),
        (any::<Index>(), ch.clone()).prop_map(|(i, c)| TextMutation::Insert(i, c)),
        any::<Index>().prop_map(TextMutation::Delete),
        (any::<Index>(), ch).prop_map(|(i, c)| TextMutation::Replace(i, c)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextMutation::Duplicate(a, b)),
    ]
}

fn apply_text_mutation(text: &str, m: &TextMutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        TextMutation::Truncate(i) => chars.truncate(at(i, chars.len())),
        TextMutation::Insert(i, c) => {
            let pos = at(i, chars.len() + 1);
            chars.insert(pos, *c);
        }
        TextMutation::Delete(i) => {
            if !chars.is_empty() {
                chars.remove(at(i, chars.len()));
            }
        }
        TextMutation::Replace(i, c) => {
            if !chars.is_empty() {
                let pos = at(i, chars.len());
                chars[pos] = *c;
            }
        }
        TextMutation::Duplicate(a, b) => {
            if !chars.is_empty() {
                let (x, y) = (at(a, chars.len()), at(b, chars.len()));
                let (from, to) = (x.min(y), x.max(y));
                let piece: Vec<char> = chars[from..=to].to_vec();
                chars.splice(to..to, piece);
            }
        }
    }
    chars.into_iter().collect()
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn json_shaped_text_never_panics(text in r#"[{}\[\]":,0-9a-zA-Z_ .\-\\]{0,200}"#) {
        check(&text);
        check(&format!("{{\"type\":\"join_room\",{text}"));
    }

    #[test]
    fn mutated_messages_are_valid_or_invalid_payload(
        message in valid_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut v = message;
        for m in &mutations {
            apply_mutation(&mut v, m);
        }
        check(&v.to_string());
    }

    #[test]
    fn textually_mutated_messages_are_valid_or_invalid_payload(
        message in valid_message(),
        mutations in prop::collection::vec(text_mutation(), 1..4),
    ) {
        let mut text = message.to_string();
        for m in &mutations {
            text = apply_text_mutation(&text, m);
        }
        check(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn valid_messages_decode_to_what_was_sent(message in valid_message()) {
        let text = message.to_string();
        let decoded = check(&text);
        prop_assert!(decoded.is_some(), "valid message rejected: {text} -> {:?}", decode(&text));
        let decoded = decoded.unwrap_or(ClientMessage::Heartbeat { room_code: None });
        prop_assert_eq!(decoded.room_code(), message["roomCode"].as_str());
        prop_assert_eq!(decoded.player_id(), message["playerId"].as_str());
        let kind = message["type"].as_str().unwrap_or_default();
        let matches_kind = matches!(
            (&decoded, kind),
            (ClientMessage::JoinRoom(_), "join_room")
                | (ClientMessage::LeaveRoom { .. }, "leave_room")
                | (ClientMessage::SetReady { .. }, "set_ready")
                | (ClientMessage::AdvancePhase { .. }, "advance_phase")
                | (ClientMessage::SetStatus(_), "set_status")
                | (ClientMessage::PresentationState(_), "presentation_state")
                | (ClientMessage::Heartbeat { .. }, "heartbeat")
                | (ClientMessage::SubmitCanvasDelta(_), "submit_canvas_delta")
                | (ClientMessage::SubmitBigIdea(_), "submit_big_idea")
        );
        prop_assert!(matches_kind, "{kind} decoded as {decoded:?}");
        if let ClientMessage::SetStatus(s) = &decoded {
            // A given phaseStartTime is kept verbatim.
            prop_assert_eq!(s.phase_start_time.as_ref().map(|t| t.as_str()), message["phaseStartTime"].as_str());
        }
    }

    #[test]
    fn arbitrary_json_is_valid_or_invalid_payload(v in json_value()) {
        check(&v.to_string());
    }

    #[test]
    fn arbitrary_objects_of_known_types_are_valid_or_invalid_payload(
        kind in prop::sample::select(TYPES.to_vec()),
        fields in prop::collection::vec((field_name(), json_value()), 0..8),
    ) {
        let mut obj: Map<String, Value> = fields.into_iter().collect();
        obj.insert("type".into(), json!(kind));
        check(&Value::Object(obj).to_string());
    }

    #[test]
    fn unknown_types_are_named_but_bounded(kind in ".{0,200}") {
        prop_assume!(!TYPES.contains(&kind.as_str()));
        let err = decode(&json!({"type": kind, "roomCode": "AB"}).to_string())
            .expect_err("unknown type");
        prop_assert_eq!(err.code, ErrorCode::InvalidPayload);
        let shown = err
            .message
            .strip_prefix("Unsupported event type: ")
            .unwrap_or_else(|| panic!("unexpected message {:?}", err.message));
        prop_assert!(shown.chars().count() <= 64);
        prop_assert!(kind.starts_with(shown));
    }

    #[test]
    fn non_object_json_is_invalid_payload(v in json_value(), wrap in any::<bool>()) {
        // Objects (and, half the time, anything else) are wrapped in an array.
        let v = match v {
            Value::Object(_) => Value::Array(vec![v]),
            other if wrap => Value::Array(vec![other]),
            other => other,
        };
        let err = decode(&v.to_string()).expect_err("not an object");
        prop_assert_eq!(err.code, ErrorCode::InvalidPayload);
    }
}

// ------------------------------------------------------------------ fixed edge cases

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    for depth in [200, 10_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        check(&arrays);
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        check(&objects);
        let inside = format!(
            r#"{{"type":"join_room","roomCode":"AB","playerId":"p","playerToken":"t","initialSnapshot":{arrays}}}"#
        );
        // The hint is kept as raw text and only parsed (with serde_json's depth limit)
        // when it seeds a room; skipping over it must not overflow the stack either.
        if let Some(ClientMessage::JoinRoom(j)) = check(&inside) {
            let raw = j.initial_snapshot.expect("the hint is kept");
            assert!(
                serde_json::from_str::<Value>(raw.get()).is_err(),
                "too deep to seed"
            );
        }
        let delta = format!(
            r#"{{"type":"submit_canvas_delta","roomCode":"AB","adlobId":"a","phase":"visual","delta":{objects}}}"#
        );
        assert!(check(&delta).is_none());
    }
}

#[test]
fn huge_and_odd_numbers_are_rejected_or_bounded() {
    for index in [
        "1e999",
        "-1",
        "1001",
        "1.5",
        "9223372036854775808",
        "\"3\"",
        "null",
    ] {
        let text = format!(
            r#"{{"type":"presentation_state","roomCode":"AB","playerId":"p","presentIndex":{index},"showCampaign":true}}"#
        );
        assert!(check(&text).is_none(), "{text}");
    }
    for width in ["1e999", "-0", "0.999", "40.0001", "NaN", "Infinity"] {
        let text = format!(
            r#"{{"type":"submit_canvas_delta","roomCode":"AB","adlobId":"a","phase":"visual","delta":{{"op":"stroke","id":"s","color":"c","width":{width},"points":[{{"x":0,"y":0}},{{"x":1,"y":1}}]}}}}"#
        );
        assert!(check(&text).is_none(), "{text}");
    }
}

#[test]
fn bounds_are_exact() {
    let ok = |room: &str, player: &str| {
        check(&json!({"type":"advance_phase","roomCode": room,"playerId": player}).to_string())
    };
    let room_max = "R".repeat(limits::ROOM_CODE_MAX);
    let id_max = "🎤".repeat(limits::ID_MAX);
    assert!(
        ok(&room_max, &id_max).is_some(),
        "limits are counted in characters"
    );
    assert!(ok(&format!("{room_max}R"), "p").is_none());
    assert!(ok("R", &format!("{id_max}x")).is_none());
    assert!(ok("", "p").is_none());
    assert!(ok("R", "").is_none());
    assert!(ok("R\u{0}", "p").is_none());
    assert!(ok("R", "p\u{1b}").is_none());

    let idea = |text: &str| {
        check(
            &json!({"type":"submit_big_idea","roomCode":"R","adlobId":"a","text": text})
                .to_string(),
        )
    };
    assert!(idea(&"é".repeat(limits::BIG_IDEA_MAX)).is_some());
    assert!(idea(&"é".repeat(limits::BIG_IDEA_MAX + 1)).is_none());
    assert!(idea("").is_none());
}

#[test]
fn duplicate_and_escaped_type_fields() {
    // Duplicate keys are ambiguous: rejected, never half-decoded.
    assert!(check(r#"{"type":"heartbeat","type":"leave_room","roomCode":"AB"}"#).is_none());
    // An escaped type name is the same name.
    let m = check(r#"{"type":"leave\u005froom","roomCode":"AB"}"#);
    assert_eq!(
        m,
        Some(ClientMessage::LeaveRoom {
            room_code: "AB".into()
        })
    );
    // Lone surrogates in escapes are invalid JSON text.
    assert!(check(r#"{"type":"leave_room","roomCode":"\ud800"}"#).is_none());
}

#[test]
fn arrays_are_never_messages() {
    // serde's derived structs accept a sequence of fields by position; a frame must
    // still be a JSON object.
    for kind in TYPES {
        for text in [
            format!(r#"["{kind}"]"#),
            format!(r#" ["{kind}","AB"]"#),
            format!(r#"["{kind}","AB","p1",true]"#),
            format!(r#"[{{"type":"{kind}","roomCode":"AB","playerId":"p"}}]"#),
        ] {
            assert!(check(&text).is_none(), "{text}");
        }
    }
}
