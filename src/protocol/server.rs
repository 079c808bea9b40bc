//! What the server sends: every message type, serialized once per broadcast.

use super::canvas::CanvasOp;
use super::{CreationPhase, ErrorCode, GameStatus, PlayerSummary, RoomSnapshot};
use crate::room::{Applied, Event, Room};
use serde::Serialize;
use std::collections::BTreeMap;

/// One adlob's canvas as late joiners receive it in `hello_ack.canvases`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanvasState<'a> {
    pub ops: &'a [CanvasOp],
    pub version: u64,
}

/// A submitted big idea as late joiners receive it in `hello_ack.bigIdeas`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BigIdeaState<'a> {
    pub text: &'a str,
    pub author_id: &'a str,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage<'a> {
    HelloAck {
        room_code: &'a str,
        snapshot: &'a RoomSnapshot,
        recovered: bool,
        canvases: BTreeMap<&'a str, CanvasState<'a>>,
        big_ideas: BTreeMap<&'a str, BigIdeaState<'a>>,
    },
    RoomState {
        snapshot: &'a RoomSnapshot,
    },
    PlayerJoined {
        room_code: &'a str,
        player: &'a PlayerSummary,
        version: u64,
    },
    PlayerLeft {
        room_code: &'a str,
        player_id: &'a str,
        version: u64,
    },
    ReadyUpdate {
        room_code: &'a str,
        player_id: &'a str,
        is_ready: bool,
        version: u64,
    },
    PhaseChanged {
        room_code: &'a str,
        current_phase: Option<CreationPhase>,
        phase_start_time: Option<&'a str>,
        version: u64,
    },
    StatusChanged {
        room_code: &'a str,
        status: GameStatus,
        current_phase: Option<CreationPhase>,
        phase_start_time: Option<&'a str>,
        version: u64,
    },
    PresentationState {
        room_code: &'a str,
        present_index: i64,
        show_campaign: bool,
        version: u64,
    },
    CanvasDelta {
        room_code: &'a str,
        adlob_id: &'a str,
        phase: CreationPhase,
        delta: &'a CanvasOp,
        player_id: &'a str,
        version: u64,
    },
    BigIdeaSubmitted {
        room_code: &'a str,
        adlob_id: &'a str,
        text: &'a str,
        author_id: &'a str,
        version: u64,
    },
    SettingsChanged {
        room_code: &'a str,
        product_category: Option<&'a str>,
        phase_duration_seconds: Option<u32>,
        brief_style: Option<&'a str>,
        wacky_brief_style: Option<&'a str>,
        /// Part B: whether phase timers advance the game.
        auto_advance: bool,
        version: u64,
    },
    BriefUpdated {
        room_code: &'a str,
        brief_id: &'a str,
        version: u64,
    },
    ContentSubmitted {
        room_code: &'a str,
        adlob_id: &'a str,
        phase: CreationPhase,
        player_id: &'a str,
        version: u64,
    },
    Heartbeat {
        room_code: &'a str,
        timestamp: i64,
        /// Part B: lets a client notice a gap and resume without waiting for an event.
        version: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
}

impl ServerMessage<'_> {
    /// The message's `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::HelloAck { .. } => "hello_ack",
            ServerMessage::RoomState { .. } => "room_state",
            ServerMessage::PlayerJoined { .. } => "player_joined",
            ServerMessage::PlayerLeft { .. } => "player_left",
            ServerMessage::ReadyUpdate { .. } => "ready_update",
            ServerMessage::PhaseChanged { .. } => "phase_changed",
            ServerMessage::StatusChanged { .. } => "status_changed",
            ServerMessage::PresentationState { .. } => "presentation_state",
            ServerMessage::CanvasDelta { .. } => "canvas_delta",
            ServerMessage::BigIdeaSubmitted { .. } => "big_idea_submitted",
            ServerMessage::SettingsChanged { .. } => "settings_changed",
            ServerMessage::BriefUpdated { .. } => "brief_updated",
            ServerMessage::ContentSubmitted { .. } => "content_submitted",
            ServerMessage::Heartbeat { .. } => "heartbeat",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// The wire type named `kind`, as the static name `kind()` gives (cluster mode
    /// receives it as text from another node); `None` for a name no message has.
    pub fn kind_named(kind: &str) -> Option<&'static str> {
        [
            "hello_ack",
            "room_state",
            "player_joined",
            "player_left",
            "ready_update",
            "phase_changed",
            "status_changed",
            "presentation_state",
            "canvas_delta",
            "big_idea_submitted",
            "settings_changed",
            "brief_updated",
            "content_submitted",
            "heartbeat",
            "error",
        ]
        .into_iter()
        .find(|k| *k == kind)
    }

    /// Serializes to the text of one WebSocket frame.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys,
        // no foreign Serialize impls); the fallback keeps the signature infallible.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal_error","message":"encoding failed"}"#.into()
        })
    }
}

/// The text of an `error` frame.
pub fn error_text(code: ErrorCode, message: &str) -> String {
    ServerMessage::Error { code, message }.to_text()
}

impl<'a> ServerMessage<'a> {
    /// The message that announces an applied change: the one home of the mapping
    /// from a room's events to what clients receive. Data the room holds (status,
    /// phase, start time, the player who joined, settings) is read from the room as
    /// it is after the change.
    pub fn of_event(room: &'a Room, applied: &'a Applied) -> ServerMessage<'a> {
        let room_code = room.code();
        let snapshot = room.snapshot();
        let version = applied.version;
        match &applied.event {
            Event::PlayerConnected { .. } | Event::ReadyReset => {
                ServerMessage::RoomState { snapshot }
            }
            Event::PlayerLeft { player_id } | Event::PlayerRemoved { player_id } => {
                ServerMessage::PlayerLeft {
                    room_code,
                    player_id,
                    version,
                }
            }
            Event::ReadyUpdate {
                player_id,
                is_ready,
            } => ServerMessage::ReadyUpdate {
                room_code,
                player_id,
                is_ready: *is_ready,
                version,
            },
            Event::PhaseChanged => ServerMessage::PhaseChanged {
                room_code,
                current_phase: snapshot.current_phase,
                phase_start_time: snapshot.phase_start_time.as_deref(),
                version,
            },
            Event::StatusChanged => ServerMessage::StatusChanged {
                room_code,
                status: snapshot.status,
                current_phase: snapshot.current_phase,
                phase_start_time: snapshot.phase_start_time.as_deref(),
                version,
            },
            Event::Presentation {
                present_index,
                show_campaign,
            } => ServerMessage::PresentationState {
                room_code,
                present_index: *present_index,
                show_campaign: *show_campaign,
                version,
            },
            Event::CanvasDelta {
                adlob_id,
                phase,
                op,
                player_id,
            } => ServerMessage::CanvasDelta {
                room_code,
                adlob_id,
                phase: *phase,
                delta: op,
                player_id,
                version,
            },
            Event::BigIdeaSubmitted {
                adlob_id,
                text,
                author_id,
            } => ServerMessage::BigIdeaSubmitted {
                room_code,
                adlob_id,
                text,
                author_id,
                version,
            },
            Event::PlayerJoined { player_id } => match room.player(player_id) {
                Some(player) => ServerMessage::PlayerJoined {
                    room_code,
                    player,
                    version,
                },
                None => ServerMessage::RoomState { snapshot },
            },
            Event::SettingsChanged => {
                let s = &room.settings;
                ServerMessage::SettingsChanged {
                    room_code,
                    product_category: s.product_category.as_deref(),
                    phase_duration_seconds: s.phase_duration_seconds,
                    brief_style: s.brief_style.as_deref(),
                    wacky_brief_style: s.wacky_brief_style.as_deref(),
                    auto_advance: s.auto_advance,
                    version,
                }
            }
            Event::BriefUpdated { brief_id } => ServerMessage::BriefUpdated {
                room_code,
                brief_id,
                version,
            },
            Event::ContentSubmitted {
                adlob_id,
                phase,
                player_id,
            } => ServerMessage::ContentSubmitted {
                room_code,
                adlob_id,
                phase: *phase,
                player_id,
                version,
            },
        }
    }

    /// `hello_ack` for a socket joining `room`.
    pub fn hello_ack(room: &'a Room, recovered: bool) -> ServerMessage<'a> {
        let canvases = room
            .canvases
            .iter()
            .map(|(id, c)| {
                (
                    id.as_str(),
                    CanvasState {
                        ops: &c.ops,
                        version: c.version,
                    },
                )
            })
            .collect();
        let big_ideas = room
            .big_ideas
            .iter()
            .map(|(id, b)| {
                (
                    id.as_str(),
                    BigIdeaState {
                        text: &b.text,
                        author_id: &b.author_id,
                        version: b.version,
                    },
                )
            })
            .collect();
        ServerMessage::HelloAck {
            room_code: room.code(),
            snapshot: room.snapshot(),
            recovered,
            canvases,
            big_ideas,
        }
    }
}
