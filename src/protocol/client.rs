//! Decoding what a browser sends: one JSON object per text frame, tagged by `type`.
//!
//! Decoding is two steps so the error can say what went wrong: first the `type` tag
//! (an unknown one is "Unsupported event type: X"), then the fields of that type
//! (missing or ill-typed is `invalid_payload` naming the problem). Field values are
//! validated here too, so a decoded message is always safe to hand to a room.

use super::canvas::{CanvasOp, ImagePolicy};
use super::{
    CreationPhase, ErrorCode, GameStatus, Rejection, Timestamp, check_free_text, check_id,
    check_present_index, check_room_code as check_code, check_version, limits,
};
use crate::room::Action;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    JoinRoom(JoinRoom),
    LeaveRoom {
        room_code: String,
    },
    SetReady {
        room_code: String,
        player_id: String,
        is_ready: bool,
    },
    AdvancePhase {
        room_code: String,
        player_id: String,
    },
    SetStatus(SetStatus),
    PresentationState(PresentationState),
    Heartbeat {
        room_code: Option<String>,
    },
    SubmitCanvasDelta(CanvasDelta),
    SubmitBigIdea(BigIdea),
}

/// A JSON value kept as its text, checked only for being well-formed JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRoom {
    pub room_code: String,
    pub player_id: String,
    #[serde(default)]
    pub player_token: Option<String>,
    /// Only a hint: kept as the raw JSON text (not even parsed into a tree: the
    /// existing client sends it with every join) and decoded only if it seeds a new
    /// room, so a malformed copy never blocks joining a room that exists.
    #[serde(default)]
    pub initial_snapshot: Option<RawJson>,
    #[serde(default)]
    pub last_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SetStatus {
    pub room_code: String,
    pub player_id: String,
    pub status: GameStatus,
    pub current_phase: Option<CreationPhase>,
    /// Parsed and range-checked as it is decoded.
    pub phase_start_time: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetStatusFields {
    room_code: String,
    player_id: String,
    status: GameStatus,
    /// Required by Part A but may be null; missing is treated as null.
    #[serde(default)]
    current_phase: Option<CreationPhase>,
    #[serde(default)]
    phase_start_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresentationState {
    pub room_code: String,
    pub player_id: String,
    pub present_index: i64,
    pub show_campaign: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanvasDelta {
    pub room_code: String,
    pub adlob_id: String,
    pub phase: CreationPhase,
    pub delta: CanvasOp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BigIdea {
    pub room_code: String,
    pub adlob_id: String,
    pub text: String,
}

impl ClientMessage {
    /// The room action this message asks for: the one home of the mapping from what
    /// a player sends to what the room's rules apply. `None` for messages that are
    /// not room actions (join, leave, heartbeat).
    pub fn into_action(self) -> Option<Action> {
        Some(match self {
            ClientMessage::SetReady { is_ready, .. } => Action::SetReady { is_ready },
            ClientMessage::AdvancePhase { .. } => Action::Advance,
            ClientMessage::SetStatus(m) => Action::SetStatus {
                status: m.status,
                phase: m.current_phase,
                start_time: m.phase_start_time,
            },
            ClientMessage::PresentationState(m) => Action::Present {
                present_index: m.present_index,
                show_campaign: m.show_campaign,
            },
            ClientMessage::SubmitCanvasDelta(m) => Action::Canvas {
                adlob_id: m.adlob_id,
                phase: m.phase,
                op: m.delta,
            },
            ClientMessage::SubmitBigIdea(m) => Action::BigIdea {
                adlob_id: m.adlob_id,
                text: m.text,
            },
            ClientMessage::JoinRoom(_)
            | ClientMessage::LeaveRoom { .. }
            | ClientMessage::Heartbeat { .. } => return None,
        })
    }

    /// The room this message is addressed to, if it names one.
    pub fn room_code(&self) -> Option<&str> {
        match self {
            ClientMessage::JoinRoom(m) => Some(&m.room_code),
            ClientMessage::LeaveRoom { room_code }
            | ClientMessage::SetReady { room_code, .. }
            | ClientMessage::AdvancePhase { room_code, .. } => Some(room_code),
            ClientMessage::SetStatus(m) => Some(&m.room_code),
            ClientMessage::PresentationState(m) => Some(&m.room_code),
            ClientMessage::Heartbeat { room_code } => room_code.as_deref(),
            ClientMessage::SubmitCanvasDelta(m) => Some(&m.room_code),
            ClientMessage::SubmitBigIdea(m) => Some(&m.room_code),
        }
    }

    /// Checks what the message would make other browsers load against the
    /// configured image policy (`IMAGE_SOURCES`): canvas images only. Kept out of
    /// `decode`, which needs no configuration.
    pub fn check_sources(&self, policy: &ImagePolicy) -> Result<(), Rejection> {
        match self {
            ClientMessage::SubmitCanvasDelta(m) => m.delta.check_sources(policy),
            _ => Ok(()),
        }
    }

    /// The `playerId` field, for messages that carry one.
    pub fn player_id(&self) -> Option<&str> {
        match self {
            ClientMessage::JoinRoom(m) => Some(&m.player_id),
            ClientMessage::SetReady { player_id, .. }
            | ClientMessage::AdvancePhase { player_id, .. } => Some(player_id),
            ClientMessage::SetStatus(m) => Some(&m.player_id),
            ClientMessage::PresentationState(m) => Some(&m.player_id),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomOnly {
    room_code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatFields {
    #[serde(default)]
    room_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetReadyFields {
    room_code: String,
    player_id: String,
    is_ready: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlayerFields {
    room_code: String,
    player_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CanvasFields {
    room_code: String,
    adlob_id: String,
    phase: CreationPhase,
    /// Parsed straight into the typed op (not through a `Value` first: that doubled
    /// the cost of a stroke), then validated.
    delta: CanvasOp,
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidPayload, message)
}

fn fields<T: DeserializeOwned>(kind: &str, text: &str) -> Result<T, Rejection> {
    serde_json::from_str(text).map_err(|e| invalid(format!("Invalid {kind} payload: {e}")))
}

/// Decodes and validates one text frame.
pub fn decode(text: &str) -> Result<ClientMessage, Rejection> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            invalid("Message must be a JSON object with a string field \"type\"")
        } else {
            invalid(format!("Invalid JSON: {e}"))
        }
    })?;
    // serde's derived structs also accept a JSON array (fields by position), so
    // `["heartbeat"]` would decode as a heartbeat; only an object is a message.
    if !text.trim_start().starts_with('{') {
        return Err(invalid(
            "Message must be a JSON object with a string field \"type\"",
        ));
    }
    let kind = envelope.kind.as_ref();
    let message = match kind {
        "join_room" => {
            let m: JoinRoom = fields(kind, text)?;
            check_player_fields(&m.room_code, &m.player_id)?;
            if let Some(v) = m.last_version {
                check_version("lastVersion", v)?;
            }
            match &m.player_token {
                None => return Err(invalid("playerToken is required")),
                Some(t) if t.is_empty() => return Err(invalid("playerToken is required")),
                Some(_) => {}
            }
            ClientMessage::JoinRoom(m)
        }
        "leave_room" => {
            let m: RoomOnly = fields(kind, text)?;
            check_room_code(&m.room_code)?;
            ClientMessage::LeaveRoom {
                room_code: m.room_code,
            }
        }
        "set_ready" => {
            let m: SetReadyFields = fields(kind, text)?;
            check_player_fields(&m.room_code, &m.player_id)?;
            ClientMessage::SetReady {
                room_code: m.room_code,
                player_id: m.player_id,
                is_ready: m.is_ready,
            }
        }
        "advance_phase" => {
            let m: PlayerFields = fields(kind, text)?;
            check_player_fields(&m.room_code, &m.player_id)?;
            ClientMessage::AdvancePhase {
                room_code: m.room_code,
                player_id: m.player_id,
            }
        }
        "set_status" => {
            let m: SetStatusFields = fields(kind, text)?;
            check_player_fields(&m.room_code, &m.player_id)?;
            let phase_start_time = match &m.phase_start_time {
                Some(t) => Some(Timestamp::parse("phaseStartTime", t)?),
                None => None,
            };
            ClientMessage::SetStatus(SetStatus {
                room_code: m.room_code,
                player_id: m.player_id,
                status: m.status,
                current_phase: m.current_phase,
                phase_start_time,
            })
        }
        "presentation_state" => {
            let m: PresentationState = fields(kind, text)?;
            check_player_fields(&m.room_code, &m.player_id)?;
            check_present_index("presentIndex", m.present_index)?;
            ClientMessage::PresentationState(m)
        }
        "heartbeat" => {
            let m: HeartbeatFields = fields(kind, text)?;
            ClientMessage::Heartbeat {
                room_code: m.room_code,
            }
        }
        "submit_canvas_delta" => {
            let m: CanvasFields = fields(kind, text)?;
            check_room_code(&m.room_code)?;
            check_id("adlobId", &m.adlob_id, limits::ID_MAX)?;
            ClientMessage::SubmitCanvasDelta(CanvasDelta {
                room_code: m.room_code,
                adlob_id: m.adlob_id,
                phase: m.phase,
                delta: {
                    m.delta.validate()?;
                    m.delta
                },
            })
        }
        "submit_big_idea" => {
            let m: BigIdea = fields(kind, text)?;
            check_room_code(&m.room_code)?;
            check_id("adlobId", &m.adlob_id, limits::ID_MAX)?;
            let len = m.text.chars().count();
            if len == 0 || len > limits::BIG_IDEA_MAX {
                return Err(invalid(format!(
                    "text must be 1..{} characters",
                    limits::BIG_IDEA_MAX
                )));
            }
            check_free_text("text", &m.text, limits::BIG_IDEA_MAX)?;
            ClientMessage::SubmitBigIdea(m)
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(invalid(format!("Unsupported event type: {shown}")));
        }
    };
    Ok(message)
}

fn check_room_code(code: &str) -> Result<(), Rejection> {
    check_code("roomCode", code)
}

fn check_player_fields(room_code: &str, player_id: &str) -> Result<(), Rejection> {
    check_room_code(room_code)?;
    check_id("playerId", player_id, limits::ID_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        decode(text).expect_err(text).code
    }

    #[test]
    fn decodes_part_a_messages() {
        let m = decode(r#"{"type":"set_ready","roomCode":"AB","playerId":"p1","isReady":true}"#);
        assert_eq!(
            m,
            Ok(ClientMessage::SetReady {
                room_code: "AB".into(),
                player_id: "p1".into(),
                is_ready: true
            })
        );
        let m = decode(r#"{"type":"heartbeat","roomCode":"AB"}"#);
        assert_eq!(
            m,
            Ok(ClientMessage::Heartbeat {
                room_code: Some("AB".into())
            })
        );
        let m = decode(
            r#"{"type":"set_status","roomCode":"AB","playerId":"p","status":"voting","currentPhase":null}"#,
        );
        assert!(matches!(m, Ok(ClientMessage::SetStatus(_))));
    }

    #[test]
    fn unknown_type_names_it() {
        let err = decode(r#"{"type":"dance","roomCode":"AB"}"#).expect_err("unknown");
        assert_eq!(err.code, ErrorCode::InvalidPayload);
        assert_eq!(err.message, "Unsupported event type: dance");
    }

    #[test]
    fn malformed_input_is_invalid_payload() {
        for text in [
            "",
            "not json",
            "[]",
            r#"["heartbeat"]"#,
            "42",
            r#"{"roomCode":"AB"}"#,
            r#"{"type":7}"#,
            r#"{"type":"set_ready","roomCode":"AB","playerId":"p1","isReady":"yes"}"#,
            r#"{"type":"set_ready","roomCode":"AB","isReady":true}"#,
            r#"{"type":"set_status","roomCode":"AB","playerId":"p","status":"dancing","currentPhase":null}"#,
            r#"{"type":"set_status","roomCode":"AB","playerId":"p","status":"voting","currentPhase":null,"phaseStartTime":"yesterday"}"#,
            r#"{"type":"presentation_state","roomCode":"AB","playerId":"p","presentIndex":-1,"showCampaign":true}"#,
            r#"{"type":"join_room","roomCode":"AB","playerId":"p"}"#,
            r#"{"type":"join_room","roomCode":"AB","playerId":"p","playerToken":""}"#,
            r#"{"type":"join_room","roomCode":"","playerId":"p","playerToken":"x"}"#,
            r#"{"type":"submit_big_idea","roomCode":"AB","adlobId":"a","text":""}"#,
        ] {
            assert_eq!(code(text), ErrorCode::InvalidPayload, "{text}");
        }
    }

    #[test]
    fn phase_start_time_is_kept_verbatim() {
        let text = r#"{"type":"set_status","roomCode":"AB","playerId":"p","status":"voting","currentPhase":null,"phaseStartTime":"2026-01-02T03:04:05+02:00"}"#;
        match decode(text) {
            Ok(ClientMessage::SetStatus(m)) => {
                assert_eq!(
                    m.phase_start_time.as_ref().map(Timestamp::as_str),
                    Some("2026-01-02T03:04:05+02:00")
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
