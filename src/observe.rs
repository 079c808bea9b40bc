//! Observers of the room change path.
//!
//! Telemetry now, persistence and cluster fan-out later, watch every command a room
//! owner applies or rejects without being woven through the rules. An observer may
//! also refuse changes before they happen (a persistence backlog at its bound answers
//! `unavailable`), so that nothing acknowledged to a client is ever dropped.

use crate::protocol::Rejection;
use crate::room::{Action, Applied, Room};
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// One socket's identity, unique beyond this process: the process's own random tag
/// and a counter, so a command that names a socket can cross to another node and
/// still name exactly one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnId {
    /// Drawn once per process.
    pub node: u64,
    pub seq: u64,
}

impl ConnId {
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        static NODE: OnceLock<u64> = OnceLock::new();
        ConnId {
            node: *NODE.get_or_init(rand::random),
            seq: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A socket id no process hands out (tests, and callers acting as a player).
    pub fn detached(seq: u64) -> ConnId {
        ConnId { node: 0, seq }
    }
}

/// A command to a room's owner, as plain data: who asks, and for what. It holds no
/// channel and no socket, so it can be logged, stored, or sent to the node that owns
/// the room; the answer travels separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub origin: Origin,
    pub action: Action,
}

/// Where a command came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Origin {
    /// A player's socket on this node.
    Socket { conn: ConnId, player_id: String },
    /// The server itself: phase timers, and later the admin plane.
    Server,
}

/// One applied command, as observers see it.
pub struct Change<'a> {
    pub origin: &'a Origin,
    /// The action as it was applied (replaying it at `at` reproduces the change).
    pub action: &'a Action,
    /// The time the room's rules were given.
    pub at: time::OffsetDateTime,
    pub applied: &'a Applied,
}

impl Origin {
    /// Who the room's rules see acting: a player is held to the rules, the server not.
    pub fn actor(&self) -> crate::room::Actor {
        match self {
            Origin::Socket { player_id, .. } => crate::room::Actor::Player(player_id.clone()),
            Origin::Server => crate::room::Actor::Server,
        }
    }
}

pub trait Observer: Send + Sync {
    /// Asked before a state change is applied; an error refuses it. Presence changes
    /// (a socket arriving or leaving) are not asked: a closed socket cannot be refused.
    fn admit(&self, _room: &Room) -> Result<(), Rejection> {
        Ok(())
    }
    /// A command was applied (state changed, or a stateless broadcast was made).
    fn applied(&self, _room: &Room, _change: &Change<'_>) {}
    /// A command was refused; the room is unchanged.
    fn rejected(&self, _room: &Room, _origin: &Origin, _action: &Action, _why: &Rejection) {}
    /// The room's whole state is due to be saved: changes since the last checkpoint
    /// coalesce into this one call (on an interval, at shutdown, at close).
    fn checkpoint(&self, _room: &Room, _closed: bool) {}
    /// Asked when a checkpoint is due but the room did not change since the last one:
    /// true makes the owner checkpoint anyway (the store lost a row of this room and
    /// needs a snapshot past it). Called on every checkpoint tick: keep it cheap.
    fn wants_checkpoint(&self, _room: &Room) -> bool {
        false
    }
}

pub type Observers = Arc<[Arc<dyn Observer>]>;

/// Which operator-facing counter family an action belongs to.
pub fn counter_family(action: &Action) -> Option<Family> {
    match action {
        Action::SetReady { .. } | Action::SetPlayerReady { .. } => Some(Family::Ready),
        Action::Advance
        | Action::SetStatus { .. }
        | Action::Force { .. }
        | Action::SetPhase { .. } => Some(Family::Phase),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ready,
    Phase,
}

/// Counts attempts, successes and failures under the names operators alert on.
pub fn count_outcome(metrics: &Metrics, family: Option<Family>, ok: bool) {
    let c = &metrics.counters;
    let (attempts, success, failures) = match family {
        Some(Family::Ready) => (
            &c.ready_update_attempts_total,
            &c.ready_update_success_total,
            &c.ready_update_failures_total,
        ),
        Some(Family::Phase) => (
            &c.phase_change_attempts_total,
            &c.phase_change_success_total,
            &c.phase_change_failures_total,
        ),
        None => {
            if !ok {
                Metrics::inc(&c.ws_message_handler_failures_total);
            }
            return;
        }
    };
    Metrics::inc(attempts);
    Metrics::inc(if ok { success } else { failures });
    if !ok {
        Metrics::inc(&c.ws_message_handler_failures_total);
    }
}

/// The telemetry observer: counters and log lines for every applied change.
pub struct Telemetry(pub Arc<Metrics>);

impl Observer for Telemetry {
    fn applied(&self, room: &Room, change: &Change<'_>) {
        let (origin, applied) = (change.origin, change.applied);
        if applied.changed {
            Metrics::inc(&self.0.counters.room_events_total);
        }
        let family = counter_family(change.action);
        if family.is_some() {
            count_outcome(&self.0, family, true);
        }
        if matches!(
            applied.event,
            crate::room::Event::PhaseChanged | crate::room::Event::StatusChanged
        ) {
            let snapshot = room.snapshot();
            tracing::info!(
                roomCode = %room.code(),
                status = snapshot.status.as_str(),
                currentPhase = snapshot.current_phase.map(|p| p.as_str()).unwrap_or("null"),
                version = applied.version,
                by = if matches!(origin, Origin::Server) { "server" } else { "player" },
                "phase_changed"
            );
        }
    }

    fn rejected(&self, room: &Room, origin: &Origin, action: &Action, why: &Rejection) {
        count_outcome(&self.0, counter_family(action), false);
        if let Origin::Socket { player_id, .. } = origin {
            tracing::debug!(
                roomCode = %room.code(),
                playerId = %player_id,
                code = why.code.as_str(),
                reason = %why.message,
                "command_rejected"
            );
        }
    }
}
