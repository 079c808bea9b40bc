//! Fuzzes the client message decoder: any text frame either decodes to a message
//! whose fields are within the protocol's bounds, or is an `invalid_payload`
//! rejection. Never a panic. (tests/fuzz_decoder.rs runs the same property in CI.)
#![no_main]

use karaoke_realtime::protocol::client::{ClientMessage, decode};
use karaoke_realtime::protocol::{ErrorCode, limits};
use libfuzzer_sys::fuzz_target;

fn assert_id(value: &str, max: usize) {
    assert!(!value.is_empty());
    assert!(value.chars().count() <= max);
    assert!(!value.chars().any(char::is_control));
}

fn check(text: &str) {
    match decode(text) {
        Ok(m) => {
            if !matches!(m, ClientMessage::Heartbeat { .. }) {
                assert_id(m.room_code().unwrap_or_default(), limits::ROOM_CODE_MAX);
            }
            if let Some(id) = m.player_id() {
                assert_id(id, limits::ID_MAX);
            }
            match &m {
                ClientMessage::JoinRoom(j) => {
                    assert!(!j.player_token.as_deref().unwrap_or_default().is_empty())
                }
                ClientMessage::PresentationState(p) => {
                    assert!((0..=limits::PRESENT_INDEX_MAX).contains(&p.present_index))
                }
                ClientMessage::SubmitCanvasDelta(c) => {
                    assert_id(&c.adlob_id, limits::ID_MAX);
                    assert!(c.delta.validate().is_ok());
                    let again = serde_json::to_value(&c.delta).expect("serializes");
                    assert!(
                        karaoke_realtime::protocol::canvas::CanvasOp::from_value(again).is_ok()
                    );
                }
                ClientMessage::SubmitBigIdea(b) => {
                    assert_id(&b.adlob_id, limits::ID_MAX);
                    let n = b.text.chars().count();
                    assert!((1..=limits::BIG_IDEA_MAX).contains(&n));
                }
                _ => {}
            }
        }
        Err(r) => assert_eq!(r.code, ErrorCode::InvalidPayload),
    }
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8; anything else never reaches the decoder, but
    // its lossy reading is still a string worth trying.
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
