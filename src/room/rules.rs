//! The game's state machine: lobby → briefing → creating (big_idea → visual →
//! headline → pitch) → presenting → voting → results → lobby.

use super::Event;
use crate::protocol::{CreationPhase, ErrorCode, GameStatus, Rejection};

pub type Step = (GameStatus, Option<CreationPhase>);

/// Makes a (status, phase) pair consistent: a phase only while creating, and
/// creating always has one.
pub fn normalize(status: GameStatus, phase: Option<CreationPhase>) -> Step {
    match status {
        GameStatus::Creating => (status, Some(phase.unwrap_or(CreationPhase::BigIdea))),
        _ => (status, None),
    }
}

/// The one step `advance_phase` takes from here.
pub fn next_step(status: GameStatus, phase: Option<CreationPhase>) -> Step {
    use CreationPhase::*;
    use GameStatus::*;
    match (status, phase) {
        (Lobby, _) => (Briefing, None),
        (Briefing, _) => (Creating, Some(BigIdea)),
        (Creating, None) => (Creating, Some(BigIdea)),
        (Creating, Some(BigIdea)) => (Creating, Some(Visual)),
        (Creating, Some(Visual)) => (Creating, Some(Headline)),
        (Creating, Some(Headline)) => (Creating, Some(Pitch)),
        (Creating, Some(Pitch)) => (Presenting, None),
        (Presenting, _) => (Voting, None),
        (Voting, _) => (Results, None),
        (Results, _) => (Lobby, None),
    }
}

/// Judges a player's `set_status`: it must be the next step, or `results` from
/// anywhere. A phase given outside `creating` is ignored; entering `creating`
/// without one means big_idea.
pub fn requested_step(
    from: Step,
    status: GameStatus,
    phase: Option<CreationPhase>,
) -> Result<Step, Rejection> {
    let requested = normalize(status, phase);
    let next = next_step(from.0, from.1);
    let requested = match (requested, next) {
        // Entering creating with no phase named: the step's own phase.
        ((GameStatus::Creating, _), (GameStatus::Creating, _)) if phase.is_none() => next,
        _ => requested,
    };
    if requested == next || status == GameStatus::Results {
        Ok(requested)
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidTransition,
            format!(
                "cannot go from {} to {}",
                describe(from),
                describe(requested)
            ),
        ))
    }
}

/// `phase_changed` when the game moved inside `creating`, else `status_changed`.
pub fn event_for(from: Step, to: Step) -> Event {
    if from.0 == GameStatus::Creating && to.0 == GameStatus::Creating {
        Event::PhaseChanged
    } else {
        Event::StatusChanged
    }
}

fn describe((status, phase): Step) -> String {
    match phase {
        Some(p) => format!("{}/{}", status.as_str(), p.as_str()),
        None => status.as_str().to_string(),
    }
}
