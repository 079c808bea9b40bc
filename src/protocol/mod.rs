//! The players' wire protocol: serde types and their validation, nothing else.
//!
//! `client` decodes what browsers send, `server` encodes what they receive, `canvas`
//! validates canvas deltas. Field names are camelCase exactly as the existing
//! TypeScript client spells them (see docs/protocol.md).

pub mod canvas;
pub mod client;
pub mod hook;
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The largest room version: JavaScript clients hold versions as numbers, which
    /// are exact only up to 2^53 - 1. A seed, a stored row or a change that would pass
    /// it is refused, so a version never wraps, saturates or loses precision.
    pub const MAX_VERSION: u64 = (1 << 53) - 1;
    /// The largest version a client seed may start a room at: half the range, so a
    /// seeded room has more versions left than it could ever use (2^52 changes is
    /// over a century at a million a second) and never meets `MAX_VERSION`.
    pub const MAX_SEED_VERSION: u64 = 1 << 52;
}

/// Characters that may not appear in identifiers or names: control characters, and
/// the invisible marks that reorder text (bidirectional overrides, isolates and
/// marks), which can make one player's name display as another's.
pub fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{FEFF}'
        )
}

/// Checks an identifier or name (player id, adlob id, player name): non-empty,
/// bounded, and free of control and bidirectional-formatting characters.
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    if value.chars().any(is_forbidden_in_name) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

/// The one range for a presentation's index, from a player or the broadcast hook.
pub fn check_present_index(field: &str, index: i64) -> Result<(), Rejection> {
    if !(0..=limits::PRESENT_INDEX_MAX).contains(&index) {
        return Err(invalid(format!(
            "{field} must be between 0 and {}",
            limits::PRESENT_INDEX_MAX
        )));
    }
    Ok(())
}

/// The one rule for room codes, wherever one arrives (a join, a seed, the admin
/// plane, the broadcast hook): 1..32 of `A-Z a-z 0-9 - _`. Generated codes are 6 of
/// these, and a code any entry point accepts can be named by every other one
/// (GetRoom, CloseRoom, ListRooms paging).
pub fn check_room_code(field: &str, code: &str) -> Result<(), Rejection> {
    if code.is_empty() || code.len() > limits::ROOM_CODE_MAX {
        return Err(invalid(format!(
            "{field} must be 1..{} characters",
            limits::ROOM_CODE_MAX
        )));
    }
    if !code
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!(
            "{field} may contain only A-Z, a-z, 0-9, '-' and '_'"
        )));
    }
    Ok(())
}

/// Checks free text players write (big ideas, canvas text): bounded, and no control
/// characters but line breaks and tabs (a NUL, for one, cannot be stored in a
/// PostgreSQL JSON value).
pub fn check_free_text(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

/// Checks that a room version is one the server can hold (`limits::MAX_VERSION`).
pub fn check_version(field: &str, version: u64) -> Result<u64, Rejection> {
    if version > limits::MAX_VERSION {
        return Err(invalid(format!(
            "{field} must be at most {}",
            limits::MAX_VERSION
        )));
    }
    Ok(version)
}

fn invalid(message: String) -> Rejection {
    Rejection::new(ErrorCode::InvalidPayload, message)
}

/// An instant given as RFC 3339 text (a client's `phaseStartTime`, an admin call's),
/// parsed and range-checked once where it enters; the text is kept so it is echoed
/// exactly as sent. Only instants from 1970 up to (not including) 2200 are accepted:
/// anything else is a mistake or an attack, and a deadline computed from an accepted
/// instant can never leave the range the date type holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    at: time::OffsetDateTime,
}

impl Timestamp {
    /// The earliest accepted instant (inclusive).
    pub const EARLIEST: time::OffsetDateTime = time::macros::datetime!(1970-01-01 00:00 UTC);
    /// The latest accepted instant (exclusive).
    pub const LATEST: time::OffsetDateTime = time::macros::datetime!(2200-01-01 00:00 UTC);

    /// The longest accepted text: RFC 3339 with nanoseconds and an offset is 35
    /// characters; the parser would take any number of fraction digits, which would
    /// then ride in every snapshot.
    pub const MAX_LEN: usize = 64;

    /// Parses and range-checks `text`; errors name `field`.
    pub fn parse(field: &str, text: &str) -> Result<Timestamp, Rejection> {
        if text.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "{field} must be an RFC 3339 timestamp of at most {} characters",
                Self::MAX_LEN
            )));
        }
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| invalid(format!("{field} must be an RFC 3339 timestamp")))?;
        if at < Self::EARLIEST || at >= Self::LATEST {
            return Err(invalid(format!("{field} must be between 1970 and 2199")));
        }
        Ok(Timestamp {
            text: text.to_string(),
            at,
        })
    }

    /// A server-made time (UTC, milliseconds, `Z`). `at` comes from the server's own
    /// clock, so it is in range.
    pub fn from_instant(at: time::OffsetDateTime) -> Timestamp {
        Timestamp {
            text: format_time(at),
            at,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn at(&self) -> time::OffsetDateTime {
        self.at
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Timestamp::parse("timestamp", &text).map_err(|why| serde::de::Error::custom(why.message))
    }
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
