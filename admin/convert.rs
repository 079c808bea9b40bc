//! Conversions between the admin plane's protobuf messages and the room's types,
//! with validation that names the offending field (INVALID_ARGUMENT).

use super::pb;
use crate::owner::RoomInfo;
use crate::protocol::{
    CreationPhase, ErrorCode, GameStatus, PlayerSummary, Rejection, check_id, limits,
};
use crate::room::{SettingsPatch, check_player, check_settings};
use tonic::Status;

/// Maps a room's refusal to the gRPC status that fits it.
pub fn status_of(why: Rejection) -> Status {
    let message = why.message;
    match why.code {
        ErrorCode::InvalidPayload => Status::invalid_argument(message),
        ErrorCode::RoomNotFound | ErrorCode::PlayerNotFound => Status::not_found(message),
        ErrorCode::InvalidTransition => Status::failed_precondition(message),
        ErrorCode::Unavailable => Status::unavailable(message),
        ErrorCode::Forbidden => Status::permission_denied(message),
        ErrorCode::Unauthorized => Status::unauthenticated(message),
        ErrorCode::RateLimited => Status::resource_exhausted(message),
        ErrorCode::InternalError => Status::internal(message),
    }
}

/// `field: problem` as INVALID_ARGUMENT.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// A room code given by a caller, under the one rule every entry point uses.
pub fn room_code(field: &str, code: &str) -> Result<(), Status> {
    crate::protocol::check_room_code(field, code).map_err(|why| {
        // The rule's messages read "<field> <problem>"; the admin plane says "field: problem".
        let problem = why
            .message
            .strip_prefix(field)
            .unwrap_or(&why.message)
            .trim_start();
        invalid(field, problem)
    })
}

pub fn id(field: &str, value: &str) -> Result<(), Status> {
    // check_id's messages already start with the field name.
    check_id(field, value, limits::ID_MAX).map_err(status_of)
}

pub fn status_to_pb(status: GameStatus) -> pb::GameStatus {
    match status {
        GameStatus::Lobby => pb::GameStatus::Lobby,
        GameStatus::Briefing => pb::GameStatus::Briefing,
        GameStatus::Creating => pb::GameStatus::Creating,
        GameStatus::Presenting => pb::GameStatus::Presenting,
        GameStatus::Voting => pb::GameStatus::Voting,
        GameStatus::Results => pb::GameStatus::Results,
    }
}

pub fn status_from_pb(field: &str, value: i32) -> Result<GameStatus, Status> {
    match pb::GameStatus::try_from(value) {
        Ok(pb::GameStatus::Lobby) => Ok(GameStatus::Lobby),
        Ok(pb::GameStatus::Briefing) => Ok(GameStatus::Briefing),
        Ok(pb::GameStatus::Creating) => Ok(GameStatus::Creating),
        Ok(pb::GameStatus::Presenting) => Ok(GameStatus::Presenting),
        Ok(pb::GameStatus::Voting) => Ok(GameStatus::Voting),
        Ok(pb::GameStatus::Results) => Ok(GameStatus::Results),
        Ok(pb::GameStatus::Unspecified) => Err(invalid(field, "is required")),
        Err(_) => Err(invalid(field, format!("unknown value {value}"))),
    }
}

pub fn phase_to_pb(phase: Option<CreationPhase>) -> pb::CreationPhase {
    match phase {
        None => pb::CreationPhase::Unspecified,
        Some(CreationPhase::BigIdea) => pb::CreationPhase::BigIdea,
        Some(CreationPhase::Visual) => pb::CreationPhase::Visual,
        Some(CreationPhase::Headline) => pb::CreationPhase::Headline,
        Some(CreationPhase::Pitch) => pb::CreationPhase::Pitch,
    }
}

pub fn phase_from_pb(field: &str, value: i32) -> Result<Option<CreationPhase>, Status> {
    match pb::CreationPhase::try_from(value) {
        Ok(pb::CreationPhase::Unspecified) => Ok(None),
        Ok(pb::CreationPhase::BigIdea) => Ok(Some(CreationPhase::BigIdea)),
        Ok(pb::CreationPhase::Visual) => Ok(Some(CreationPhase::Visual)),
        Ok(pb::CreationPhase::Headline) => Ok(Some(CreationPhase::Headline)),
        Ok(pb::CreationPhase::Pitch) => Ok(Some(CreationPhase::Pitch)),
        Err(_) => Err(invalid(field, format!("unknown value {value}"))),
    }
}

/// A roster entry from a request; `field` is the message field it came in.
pub fn player_from_pb(field: &str, p: Option<pb::Player>) -> Result<PlayerSummary, Status> {
    let p = p.ok_or_else(|| invalid(field, "is required"))?;
    let player = PlayerSummary {
        id: p.id,
        name: p.name,
        emoji: p.emoji,
        is_ready: p.is_ready,
        is_host: p.is_host,
        seat_index: i64::from(p.seat_index),
        connected: false,
    };
    check_player(&player).map_err(|why| {
        // The room's messages say `player.x`; name the request's field instead.
        let message = why.message.replacen("player.", &format!("{field}."), 1);
        Status::invalid_argument(message)
    })?;
    Ok(player)
}

pub fn player_to_pb(p: &PlayerSummary) -> pb::Player {
    pb::Player {
        id: p.id.clone(),
        name: p.name.clone(),
        emoji: p.emoji.clone(),
        is_ready: p.is_ready,
        is_host: p.is_host,
        seat_index: i32::try_from(p.seat_index).unwrap_or(i32::MAX),
        connected: p.connected,
    }
}

pub fn settings_from_pb(field: &str, s: Option<pb::Settings>) -> Result<SettingsPatch, Status> {
    let s = s.unwrap_or_default();
    let patch = SettingsPatch {
        product_category: s.product_category,
        phase_duration_seconds: s.phase_duration_seconds,
        brief_style: s.brief_style,
        wacky_brief_style: s.wacky_brief_style,
        auto_advance: s.auto_advance,
    };
    check_settings(&patch).map_err(|why| invalid(field, why.message))?;
    Ok(patch)
}

pub fn room_to_pb(info: &RoomInfo) -> pb::Room {
    let s = &info.snapshot;
    let settings = &info.settings;
    pb::Room {
        id: s.id.clone(),
        code: s.code.clone(),
        status: status_to_pb(s.status) as i32,
        current_phase: phase_to_pb(s.current_phase) as i32,
        phase_start_time: s.phase_start_time.clone().unwrap_or_default(),
        players: s.players.iter().map(player_to_pb).collect(),
        version: s.version,
        phase_ends_at: s.phase_ends_at.clone().unwrap_or_default(),
        settings: Some(pb::Settings {
            product_category: settings.product_category.clone(),
            phase_duration_seconds: settings.phase_duration_seconds,
            brief_style: settings.brief_style.clone(),
            wacky_brief_style: settings.wacky_brief_style.clone(),
            auto_advance: Some(settings.auto_advance),
        }),
        connection_count: u32::try_from(info.connections).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_codes_are_checked() {
        assert!(room_code("code", "ABC-12_x").is_ok());
        for bad in ["", "has space", "é", &"A".repeat(33)] {
            let err = room_code("code", bad).expect_err(bad);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("code:"), "{}", err.message());
        }
    }

    #[test]
    fn enums_round_trip_and_reject_unknown_values() {
        for s in [GameStatus::Lobby, GameStatus::Creating, GameStatus::Results] {
            assert_eq!(
                status_from_pb("status", status_to_pb(s) as i32).ok(),
                Some(s)
            );
        }
        assert!(status_from_pb("status", 0).is_err());
        assert!(status_from_pb("status", 99).is_err());
        assert!(phase_from_pb("current_phase", 99).is_err());
        assert_eq!(phase_from_pb("current_phase", 0).ok(), Some(None));
    }

    #[test]
    fn player_errors_name_the_request_field() {
        let err = player_from_pb(
            "player",
            Some(pb::Player {
                id: "p1".into(),
                name: String::new(),
                ..Default::default()
            }),
        )
        .expect_err("empty name");
        assert!(
            err.message().starts_with("player.name"),
            "{}",
            err.message()
        );
        let err = player_from_pb("host", None).expect_err("missing");
        assert_eq!(err.message(), "host: is required");
    }
}
