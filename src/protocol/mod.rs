//! The players' wire protocol: serde types and their validation, nothing else.
//!
//! `client` decodes what browsers send, `server` encodes what they receive, `canvas`
//! validates canvas deltas. Field names are camelCase exactly as the existing
//! TypeScript client spells them (see docs/protocol.md).

pub mod canvas;
pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// The error codes a client can receive in `error{code, message}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    RoomNotFound,
    InvalidPayload,
    PlayerNotFound,
    Forbidden,
    InternalError,
    RateLimited,
    InvalidTransition,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::PlayerNotFound => "player_not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// An error code together with the human-readable message sent beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GameStatus {
    Lobby,
    Briefing,
    Creating,
    Presenting,
    Voting,
    Results,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreationPhase {
    BigIdea,
    Visual,
    Headline,
    Pitch,
}

impl GameStatus {
    /// The wire name (`"lobby"`, …), for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            GameStatus::Lobby => "lobby",
            GameStatus::Briefing => "briefing",
            GameStatus::Creating => "creating",
            GameStatus::Presenting => "presenting",
            GameStatus::Voting => "voting",
            GameStatus::Results => "results",
        }
    }
}

impl CreationPhase {
    /// The wire name (`"big_idea"`, …), for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CreationPhase::BigIdea => "big_idea",
            CreationPhase::Visual => "visual",
            CreationPhase::Headline => "headline",
            CreationPhase::Pitch => "pitch",
        }
    }
}

/// One roster entry as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerSummary {
    pub id: String,
    pub name: String,
    pub emoji: String,
    pub is_ready: bool,
    pub is_host: bool,
    pub seat_index: i64,
    /// Part B presence: whether the player has a live socket. Absent in client seeds.
    #[serde(default)]
    pub connected: bool,
}

/// The authoritative state of a room as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSnapshot {
    pub id: String,
    pub code: String,
    pub status: GameStatus,
    pub current_phase: Option<CreationPhase>,
    pub phase_start_time: Option<String>,
    pub players: Vec<PlayerSummary>,
    pub version: u64,
    /// Part B phase timers: when the running creation phase auto-advances.
    #[serde(default)]
    pub phase_ends_at: Option<String>,
    /// Part B: the last `presentation_state`, so a client that (re)joins while
    /// presenting knows which campaign is on screen. Changes without a version bump,
    /// like the broadcast it mirrors.
    #[serde(default)]
    pub presentation: Option<Presentation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presentation {
    pub present_index: i64,
    pub show_campaign: bool,
}

/// Limits on identifiers and text, shared by every decoder so they are judged one way.
pub mod limits {
    pub const ROOM_CODE_MAX: usize = 32;
    pub const ID_MAX: usize = 128;
    pub const NAME_MAX: usize = 64;
    pub const EMOJI_MAX: usize = 16;
    pub const TOKEN_MAX: usize = 4096;
    pub const BIG_IDEA_MAX: usize = 500;
    pub const MAX_PLAYERS: usize = 8;
    pub const PRESENT_INDEX_MAX: i64 = 1000;
    pub const SETTING_TEXT_MAX: usize = 200;
    pub const PHASE_DURATION_MAX: u32 = 3600;
}

/// Checks an identifier (room code, player id, adlob id): non-empty, bounded, printable.
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().count() > max {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!("{field} is longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!("{field} contains control characters"),
        ));
    }
    Ok(())
}

/// Checks that `value` is an RFC 3339 timestamp; the original text is kept and echoed.
pub fn check_timestamp(field: &str, value: &str) -> Result<time::OffsetDateTime, Rejection> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(
        |_| {
            Rejection::new(
                ErrorCode::InvalidPayload,
                format!("{field} must be an RFC 3339 timestamp"),
            )
        },
    )
}

/// Formats a server-made time: UTC, millisecond precision, `Z` suffix.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}
