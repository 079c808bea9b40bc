//! What the existing Next.js backend POSTs to `/api/broadcast`: a body
//! `{roomCode, event, secret}` whose `event` is one of the server → client messages,
//! decoded and checked here into the room action it stands for.
//!
//! The backend sends `version: 0` ("version will be managed by WS server"): any
//! version in the event is ignored, and the room's own sequence applies.

use super::{
    CreationPhase, ErrorCode, GameStatus, PlayerSummary, Rejection, Timestamp, check_id,
    check_present_index, limits,
};
use crate::room::{Action, SettingsPatch, check_player, check_settings};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A request body, before the secret is judged.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    #[serde(default)]
    pub room_code: Option<String>,
    #[serde(default)]
    pub event: Option<serde_json::Value>,
    #[serde(default)]
    pub secret: Option<String>,
}

/// One decoded event: the action it applies, and the type the backend named.
#[derive(Debug, Clone, PartialEq)]
pub struct HookEvent {
    pub kind: &'static str,
    pub action: Action,
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidPayload, message)
}

fn fields<T: DeserializeOwned>(kind: &str, event: serde_json::Value) -> Result<T, Rejection> {
    serde_json::from_value(event).map_err(|e| invalid(format!("Invalid {kind} event: {e}")))
}

#[derive(Deserialize)]
struct PlayerJoined {
    player: PlayerSummary,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadyUpdate {
    player_id: String,
    is_ready: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusChanged {
    status: GameStatus,
    #[serde(default)]
    current_phase: Option<CreationPhase>,
    #[serde(default)]
    phase_start_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhaseChanged {
    current_phase: CreationPhase,
    #[serde(default)]
    phase_start_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettingsChanged {
    #[serde(default)]
    product_category: Option<String>,
    #[serde(default)]
    phase_duration_seconds: Option<u32>,
    #[serde(default)]
    brief_style: Option<String>,
    #[serde(default)]
    wacky_brief_style: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BriefUpdated {
    brief_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentSubmitted {
    adlob_id: String,
    phase: CreationPhase,
    player_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PresentationState {
    present_index: i64,
    show_campaign: bool,
}

fn start_time(text: Option<String>) -> Result<Option<Timestamp>, Rejection> {
    text.map(|t| Timestamp::parse("event.phaseStartTime", &t))
        .transpose()
}

/// Decodes and checks the `event` of a request for room `room_code`.
pub fn decode(room_code: &str, event: serde_json::Value) -> Result<HookEvent, Rejection> {
    let serde_json::Value::Object(object) = &event else {
        return Err(invalid(
            "event must be a JSON object with a string field \"type\"",
        ));
    };
    let Some(serde_json::Value::String(kind)) = object.get("type") else {
        return Err(invalid(
            "event must be a JSON object with a string field \"type\"",
        ));
    };
    // The event's own room code, if it names one, must be the request's.
    match object.get("roomCode") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(code)) if code == room_code => {}
        Some(_) => return Err(invalid("event.roomCode does not match roomCode")),
    }
    let (kind, action) = match kind.as_str() {
        "player_joined" => {
            let m: PlayerJoined = fields("player_joined", event)?;
            check_player(&m.player)?;
            ("player_joined", Action::UpsertPlayer { player: m.player })
        }
        "ready_update" => {
            let m: ReadyUpdate = fields("ready_update", event)?;
            check_id("event.playerId", &m.player_id, limits::ID_MAX)?;
            (
                "ready_update",
                Action::SetPlayerReady {
                    player_id: m.player_id,
                    is_ready: m.is_ready,
                },
            )
        }
        "status_changed" => {
            let m: StatusChanged = fields("status_changed", event)?;
            (
                "status_changed",
                Action::Force {
                    status: m.status,
                    phase: m.current_phase,
                    start_time: start_time(m.phase_start_time)?,
                },
            )
        }
        "phase_changed" => {
            let m: PhaseChanged = fields("phase_changed", event)?;
            (
                "phase_changed",
                Action::SetPhase {
                    phase: m.current_phase,
                    start_time: start_time(m.phase_start_time)?,
                },
            )
        }
        "settings_changed" => {
            let m: SettingsChanged = fields("settings_changed", event)?;
            let patch = SettingsPatch {
                product_category: m.product_category,
                phase_duration_seconds: m.phase_duration_seconds,
                brief_style: m.brief_style,
                wacky_brief_style: m.wacky_brief_style,
                auto_advance: None,
            };
            check_settings(&patch)?;
            ("settings_changed", Action::UpdateSettings { patch })
        }
        "brief_updated" => {
            let m: BriefUpdated = fields("brief_updated", event)?;
            check_id("event.briefId", &m.brief_id, limits::ID_MAX)?;
            (
                "brief_updated",
                Action::BriefUpdated {
                    brief_id: m.brief_id,
                },
            )
        }
        "content_submitted" => {
            let m: ContentSubmitted = fields("content_submitted", event)?;
            check_id("event.adlobId", &m.adlob_id, limits::ID_MAX)?;
            check_id("event.playerId", &m.player_id, limits::ID_MAX)?;
            (
                "content_submitted",
                Action::ContentSubmitted {
                    adlob_id: m.adlob_id,
                    phase: m.phase,
                    player_id: m.player_id,
                },
            )
        }
        "presentation_state" => {
            let m: PresentationState = fields("presentation_state", event)?;
            check_present_index("event.presentIndex", m.present_index)?;
            (
                "presentation_state",
                Action::Present {
                    present_index: m.present_index,
                    show_campaign: m.show_campaign,
                },
            )
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(invalid(format!("Unsupported event type: {shown}")));
        }
    };
    Ok(HookEvent { kind, action })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_backends_events_become_actions() {
        let e = decode(
            "R",
            json!({"type":"player_joined","roomCode":"R","version":0,"player":
                   {"id":"p1","name":"Ann","emoji":"🎤","isReady":false,"isHost":true,"seatIndex":0}}),
        )
        .expect("player_joined");
        assert!(matches!(e.action, Action::UpsertPlayer { .. }));
        let e = decode(
            "R",
            json!({"type":"phase_changed","currentPhase":"visual","version":0}),
        )
        .expect("phase_changed");
        assert_eq!(
            e.action,
            Action::SetPhase {
                phase: CreationPhase::Visual,
                start_time: None
            }
        );
        let e = decode(
            "R",
            json!({"type":"ready_update","playerId":"p1","isReady":true}),
        )
        .expect("ready_update");
        assert_eq!(e.kind, "ready_update");
    }

    #[test]
    fn bad_events_are_refused_with_what_is_wrong() {
        for (event, says) in [
            (json!("player_joined"), "JSON object"),
            (json!({"roomCode":"R"}), "JSON object"),
            (json!({"type":"dance"}), "Unsupported event type: dance"),
            (
                json!({"type":"ready_update","playerId":"p1"}),
                "Invalid ready_update event",
            ),
            (
                json!({"type":"phase_changed","currentPhase":null}),
                "Invalid phase_changed event",
            ),
            (
                json!({"type":"status_changed","status":"creating","phaseStartTime":"9999-12-31T00:00:00Z"}),
                "between 1970 and 2199",
            ),
            (
                json!({"type":"brief_updated","briefId":"b","roomCode":"OTHER"}),
                "does not match",
            ),
            (
                json!({"type":"settings_changed","phaseDurationSeconds":0}),
                "phaseDurationSeconds",
            ),
        ] {
            let why = decode("R", event.clone()).expect_err(&event.to_string());
            assert_eq!(why.code, ErrorCode::InvalidPayload);
            assert!(why.message.contains(says), "{event}: {}", why.message);
        }
    }
}
