//! One room's state and rules: plain data and plain functions, no sockets, no tasks.
//!
//! Every change to a room, whoever asks for it (a player's socket, the admin plane, a
//! phase timer, another cluster node), is an [`Action`] applied by [`Room::apply`]. It
//! either returns the one [`Event`] describing the change, with the version after it,
//! or a [`Rejection`] and leaves the room untouched.

mod actions;
pub mod canvas;
pub mod rules;

use actions::Done;

use crate::protocol::canvas::CanvasOp;
use crate::protocol::{
    CreationPhase, ErrorCode, GameStatus, PlayerSummary, Rejection, RoomSnapshot, Timestamp,
    check_id, check_room_code, check_version, format_time, is_forbidden_in_name, limits,
};
use canvas::Canvas;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Settings the backend attaches to a room (brought in through the admin plane).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    pub product_category: Option<String>,
    pub phase_duration_seconds: Option<u32>,
    pub brief_style: Option<String>,
    pub wacky_brief_style: Option<String>,
    /// When on and `phase_duration_seconds` is set, the server advances creation
    /// phases itself when their time is up.
    pub auto_advance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BigIdea {
    pub text: String,
    pub author_id: String,
    pub version: u64,
}

/// Who asks for a change. Players are held to the game's rules; the server itself
/// (phase timers, and later the admin plane) is not asked for roster or host rights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Player(String),
    Server,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// A player's first socket attached (presence on).
    Connect,
    /// A player's last socket detached (presence off, ready reset).
    Disconnect,
    SetReady {
        is_ready: bool,
    },
    Advance,
    SetStatus {
        status: GameStatus,
        phase: Option<CreationPhase>,
        start_time: Option<Timestamp>,
    },
    Present {
        present_index: i64,
        show_campaign: bool,
    },
    Canvas {
        adlob_id: String,
        phase: CreationPhase,
        op: CanvasOp,
    },
    BigIdea {
        adlob_id: String,
        text: String,
    },
    // Server-only actions (the admin plane); a player asking for them is refused.
    /// Adds a roster player or updates the one with the same id.
    UpsertPlayer {
        player: PlayerSummary,
    },
    RemovePlayer {
        player_id: String,
    },
    /// Every ready flag back to false: the second half of a step (see `Advance`).
    ResetReady,
    /// One player's ready flag, set by the backend (its HTTP broadcast hook).
    SetPlayerReady {
        player_id: String,
        is_ready: bool,
    },
    /// The creation phase set outright by the backend (`phase_changed` through its
    /// HTTP broadcast hook): status `creating`, the given phase.
    SetPhase {
        phase: CreationPhase,
        start_time: Option<Timestamp>,
    },
    /// Status and phase set outright, bypassing the game rules.
    Force {
        status: GameStatus,
        phase: Option<CreationPhase>,
        start_time: Option<Timestamp>,
    },
    /// Replaces the fields that are `Some`.
    UpdateSettings {
        patch: SettingsPatch,
    },
    BriefUpdated {
        brief_id: String,
    },
    ContentSubmitted {
        adlob_id: String,
        phase: CreationPhase,
        player_id: String,
    },
}

/// The whole state of a room as the store keeps it. `format` lets a server refuse
/// state written by a newer one instead of misreading it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRoom {
    pub format: u32,
    pub snapshot: RoomSnapshot,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub canvases: BTreeMap<String, Canvas>,
    /// Canvases stored apart from this snapshot (format 2): adlob id → the canvas's
    /// version, whose row the store reads back into `canvases` before `from_stored`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub canvas_versions: BTreeMap<String, u64>,
    #[serde(default)]
    pub big_ideas: BTreeMap<String, BigIdea>,
    #[serde(default)]
    pub brief_id: Option<String>,
    /// True in the final snapshot of a room closed through the admin plane.
    #[serde(default)]
    pub closed: bool,
}

/// The `StoredRoom::format` this server writes and the newest it reads. Format 2 added
/// `canvasVersions` (canvases stored apart); a format-1 reader would ignore that field
/// and restore the room without its canvases, so it must refuse these rows instead.
pub const STORE_FORMAT: u32 = 2;

/// A partial settings update: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SettingsPatch {
    pub product_category: Option<String>,
    pub phase_duration_seconds: Option<u32>,
    pub brief_style: Option<String>,
    pub wacky_brief_style: Option<String>,
    pub auto_advance: Option<bool>,
}

impl Action {
    /// Whether only the server (never a player) may ask for this action.
    pub fn is_server_only(&self) -> bool {
        matches!(
            self,
            Action::UpsertPlayer { .. }
                | Action::RemovePlayer { .. }
                | Action::ResetReady
                | Action::SetPlayerReady { .. }
                | Action::SetPhase { .. }
                | Action::Force { .. }
                | Action::UpdateSettings { .. }
                | Action::BriefUpdated { .. }
                | Action::ContentSubmitted { .. }
        )
    }
}

/// The change an applied action made. Data that the room already holds (status,
/// phase, timestamps) is read from the room rather than copied here.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Presence on; clients learn it from `room_state`.
    PlayerConnected {
        player_id: String,
    },
    PlayerLeft {
        player_id: String,
    },
    ReadyUpdate {
        player_id: String,
        is_ready: bool,
    },
    PhaseChanged,
    StatusChanged,
    /// Every ready flag reset; clients learn it from `room_state`.
    ReadyReset,
    Presentation {
        present_index: i64,
        show_campaign: bool,
    },
    CanvasDelta {
        adlob_id: String,
        phase: CreationPhase,
        op: CanvasOp,
        player_id: String,
    },
    BigIdeaSubmitted {
        adlob_id: String,
        text: String,
        author_id: String,
    },
    PlayerJoined {
        player_id: String,
    },
    PlayerRemoved {
        player_id: String,
    },
    SettingsChanged,
    BriefUpdated {
        brief_id: String,
    },
    ContentSubmitted {
        adlob_id: String,
        phase: CreationPhase,
        player_id: String,
    },
}

impl Event {
    /// Short name used in logs, metrics and (later) the event log.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::PlayerConnected { .. } => "player_connected",
            Event::PlayerLeft { .. } => "player_left",
            Event::ReadyUpdate { .. } => "ready_update",
            Event::PhaseChanged => "phase_changed",
            Event::StatusChanged => "status_changed",
            Event::ReadyReset => "ready_reset",
            Event::Presentation { .. } => "presentation_state",
            Event::CanvasDelta { .. } => "canvas_delta",
            Event::BigIdeaSubmitted { .. } => "big_idea_submitted",
            Event::PlayerJoined { .. } => "player_joined",
            Event::PlayerRemoved { .. } => "player_removed",
            Event::SettingsChanged => "settings_changed",
            Event::BriefUpdated { .. } => "brief_updated",
            Event::ContentSubmitted { .. } => "content_submitted",
        }
    }

    /// Whether clients also get a full `room_state` after this event's own message.
    pub fn sends_room_state(&self) -> bool {
        matches!(
            self,
            Event::PlayerLeft { .. }
                | Event::PlayerJoined { .. }
                | Event::PlayerRemoved { .. }
                | Event::ReadyUpdate { .. }
                | Event::PhaseChanged
                | Event::StatusChanged
        )
    }

    /// Whether the event has no message of its own: clients learn it from the
    /// `room_state` at its version alone (presence, the ready reset).
    pub fn is_state_only(&self) -> bool {
        matches!(self, Event::PlayerConnected { .. } | Event::ReadyReset)
    }
}

/// The result of a successful [`Room::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub event: Event,
    /// The room's version after the change.
    pub version: u64,
    /// False for events that change no state (`presentation_state`).
    pub changed: bool,
    /// A second change the rules ask for right after this one, as its own version
    /// (the owner applies it): a step's ready reset. Each message clients receive then
    /// carries its whole change; the existing app records a phase event's version and
    /// would skip a `room_state` at that same version, never seeing the reset.
    pub follow_up: Option<Action>,
}

#[derive(Debug, Clone)]
pub struct Room {
    /// What clients see; kept as the wire type so a broadcast never copies it.
    snapshot: RoomSnapshot,
    pub settings: Settings,
    pub canvases: BTreeMap<String, Canvas>,
    pub big_ideas: BTreeMap<String, BigIdea>,
    /// The brief the backend last announced (`brief_updated`).
    pub brief_id: Option<String>,
    /// `snapshot.phase_start_time`, parsed once when it was set.
    phase_start: Option<OffsetDateTime>,
    /// Cluster mode: the owner epoch this node holds the room under, stamped on
    /// every row it stores (0 on a single node: nothing is fenced). Not room state.
    pub epoch: u64,
}

impl Room {
    /// A new room in the lobby at version 0 with the given roster.
    pub fn new(
        code: &str,
        players: Vec<PlayerSummary>,
        settings: Settings,
    ) -> Result<Room, Rejection> {
        check_room_code("roomCode", code)?;
        let mut room = Room {
            snapshot: RoomSnapshot {
                id: uuid::Uuid::new_v4().to_string(),
                code: code.to_string(),
                status: GameStatus::Lobby,
                current_phase: None,
                phase_start_time: None,
                players: Vec::new(),
                version: 0,
                phase_ends_at: None,
                presentation: None,
            },
            settings,
            canvases: BTreeMap::new(),
            big_ideas: BTreeMap::new(),
            brief_id: None,
            phase_start: None,
            epoch: 0,
        };
        room.set_players(players)?;
        Ok(room)
    }

    /// A room created from the first client's `initialSnapshot`
    /// (`ALLOW_CLIENT_SEEDED_ROOMS`). The seed is validated like any other input.
    pub fn from_seed(code: &str, seed: &RoomSnapshot) -> Result<Room, Rejection> {
        if seed.code != code {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                "initialSnapshot.code must equal roomCode",
            ));
        }
        let mut room = Room::new(code, seed.players.clone(), Settings::default())?;
        if !seed.id.is_empty() {
            check_id("initialSnapshot.id", &seed.id, limits::ID_MAX)?;
            room.snapshot.id = seed.id.clone();
        }
        let start = match &seed.phase_start_time {
            Some(t) => Some(Timestamp::parse("initialSnapshot.phaseStartTime", t)?),
            None => None,
        };
        if seed.version > limits::MAX_SEED_VERSION {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!(
                    "initialSnapshot.version must be at most {}",
                    limits::MAX_SEED_VERSION
                ),
            ));
        }
        room.snapshot.version = seed.version;
        let (status, phase) = rules::normalize(seed.status, seed.current_phase);
        room.snapshot.status = status;
        room.snapshot.current_phase = phase;
        room.set_phase_start(start);
        room.refresh_deadline();
        Ok(room)
    }

    fn set_players(&mut self, mut players: Vec<PlayerSummary>) -> Result<(), Rejection> {
        if players.len() > limits::MAX_PLAYERS {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!("a room holds at most {} players", limits::MAX_PLAYERS),
            ));
        }
        for p in players.iter_mut() {
            check_player(p)?;
            // Presence is the server's to know, never a seed's to claim.
            p.connected = false;
        }
        for (i, p) in players.iter().enumerate() {
            if players[..i].iter().any(|q| q.id == p.id) {
                return Err(Rejection::new(
                    ErrorCode::InvalidPayload,
                    "players.id must be unique",
                ));
            }
        }
        players.sort_by_key(|p| p.seat_index);
        self.snapshot.players = players;
        Ok(())
    }

    pub fn code(&self) -> &str {
        &self.snapshot.code
    }

    /// The room's whole state for the store.
    pub fn to_stored(&self, closed: bool) -> StoredRoom {
        StoredRoom {
            format: STORE_FORMAT,
            snapshot: self.snapshot.clone(),
            settings: self.settings.clone(),
            canvases: self.canvases.clone(),
            canvas_versions: BTreeMap::new(),
            big_ideas: self.big_ideas.clone(),
            brief_id: self.brief_id.clone(),
            closed,
        }
    }

    /// The room's state for the store without its canvases, which the store keeps
    /// apart (only changed ones are rewritten): each is named by its version instead.
    pub fn to_stored_apart(&self, closed: bool) -> StoredRoom {
        StoredRoom {
            format: STORE_FORMAT,
            snapshot: self.snapshot.clone(),
            settings: self.settings.clone(),
            canvases: BTreeMap::new(),
            canvas_versions: self
                .canvases
                .iter()
                .map(|(id, c)| (id.clone(), c.version))
                .collect(),
            big_ideas: self.big_ideas.clone(),
            brief_id: self.brief_id.clone(),
            closed,
        }
    }

    /// A room from stored state, validated like any other input. Presence is not
    /// restored: nobody is connected to a room that was just loaded.
    pub fn from_stored(stored: StoredRoom) -> Result<Room, Rejection> {
        if stored.format > STORE_FORMAT {
            return Err(Rejection::new(
                ErrorCode::InternalError,
                format!(
                    "stored with format {} by a newer server (this one reads up to {STORE_FORMAT})",
                    stored.format
                ),
            ));
        }
        let snapshot = stored.snapshot;
        let mut room = Room::new(&snapshot.code, snapshot.players.clone(), stored.settings)?;
        check_id("id", &snapshot.id, limits::ID_MAX)?;
        check_version("version", snapshot.version)?;
        let start = match &snapshot.phase_start_time {
            Some(t) => Some(Timestamp::parse("phaseStartTime", t)?),
            None => None,
        };
        let (status, phase) = rules::normalize(snapshot.status, snapshot.current_phase);
        room.snapshot = RoomSnapshot {
            status,
            current_phase: phase,
            players: room.snapshot.players,
            phase_ends_at: None,
            ..snapshot
        };
        room.set_phase_start(start);
        room.canvases = stored.canvases;
        room.big_ideas = stored.big_ideas;
        room.brief_id = stored.brief_id;
        room.refresh_deadline();
        Ok(room)
    }

    /// Marks every player offline without a version bump: used after a restore,
    /// when replayed presence events describe sockets of a previous process.
    pub fn clear_presence(&mut self) {
        for p in &mut self.snapshot.players {
            p.connected = false;
        }
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// Moves the version forward to `version` without a change (cluster mode's
    /// takeover starts past every version the previous owner may have published
    /// unsaved). Never backwards, never past the versions a client may hold.
    pub fn skip_to(&mut self, version: u64) {
        if version > self.snapshot.version && version <= limits::MAX_VERSION {
            self.snapshot.version = version;
        }
    }

    pub fn snapshot(&self) -> &RoomSnapshot {
        &self.snapshot
    }

    pub fn player(&self, id: &str) -> Option<&PlayerSummary> {
        self.snapshot.players.iter().find(|p| p.id == id)
    }

    fn player_mut(&mut self, id: &str) -> Option<&mut PlayerSummary> {
        self.snapshot.players.iter_mut().find(|p| p.id == id)
    }

    /// When the running creation phase ends, if a phase timer applies.
    pub fn phase_deadline(&self) -> Option<OffsetDateTime> {
        let seconds = self.settings.phase_duration_seconds?;
        if !self.settings.auto_advance || self.snapshot.status != GameStatus::Creating {
            return None;
        }
        self.phase_start?
            .checked_add(time::Duration::seconds(i64::from(seconds)))
    }

    fn set_phase_start(&mut self, start: Option<Timestamp>) {
        self.phase_start = start.as_ref().map(Timestamp::at);
        self.snapshot.phase_start_time = start.map(|t| t.as_str().to_string());
    }

    /// The version the next change gets; refused once the room has used its last.
    fn next_version(&self) -> Result<u64, Rejection> {
        self.snapshot
            .version
            .checked_add(1)
            .filter(|v| *v <= limits::MAX_VERSION)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::InvalidTransition,
                    "the room has used its last version",
                )
            })
    }

    fn refresh_deadline(&mut self) {
        self.snapshot.phase_ends_at = self.phase_deadline().map(format_time);
    }

    /// Applies one action. On error nothing about the room has changed. Each action's
    /// rule is its own function, in `actions.rs`.
    pub fn apply(
        &mut self,
        actor: &Actor,
        action: Action,
        now: OffsetDateTime,
    ) -> Result<Applied, Rejection> {
        if action.is_server_only() && *actor != Actor::Server {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                "only the server may do this",
            ));
        }
        // Every action but a presentation moves the version; refuse it up front, with
        // the room untouched, once the version is spent.
        let next = match action {
            Action::Present { .. } => self.snapshot.version,
            _ => self.next_version()?,
        };
        let now = || Timestamp::from_instant(now);
        let done: Done = match action {
            // Changes no version: answered as it is.
            Action::Present {
                present_index,
                show_campaign,
            } => return self.present(actor, present_index, show_campaign),
            Action::Connect => self.connect(actor)?.into(),
            Action::Disconnect => self.disconnect(actor)?.into(),
            Action::SetReady { is_ready } => {
                let id = self.acting_player(actor)?;
                self.set_ready(id, is_ready)?.into()
            }
            Action::SetPlayerReady {
                player_id,
                is_ready,
            } => self.set_ready(player_id, is_ready)?.into(),
            Action::Advance => self.advance(actor, now())?,
            Action::ResetReady => self.reset_ready().into(),
            Action::SetStatus {
                status,
                phase,
                start_time,
            } => self
                .set_status(actor, status, phase, start_time.unwrap_or_else(now))?
                .into(),
            Action::SetPhase { phase, start_time } => {
                self.set_phase(phase, start_time.unwrap_or_else(now)).into()
            }
            Action::Force {
                status,
                phase,
                start_time,
            } => self
                .force(
                    rules::normalize(status, phase),
                    start_time.unwrap_or_else(now),
                )
                .into(),
            Action::Canvas {
                adlob_id,
                phase,
                op,
            } => self.canvas(actor, adlob_id, phase, op, next)?.into(),
            Action::BigIdea { adlob_id, text } => {
                self.big_idea(actor, adlob_id, text, next)?.into()
            }
            Action::UpsertPlayer { player } => self.upsert_player(player)?.into(),
            Action::RemovePlayer { player_id } => self.remove_player(player_id)?.into(),
            Action::UpdateSettings { patch } => self.update_settings(patch)?.into(),
            Action::BriefUpdated { brief_id } => self.brief_updated(brief_id)?.into(),
            Action::ContentSubmitted {
                adlob_id,
                phase,
                player_id,
            } => self.content_submitted(adlob_id, phase, player_id)?.into(),
        };
        self.snapshot.version = next;
        self.refresh_deadline();
        Ok(Applied {
            event: done.event,
            version: self.snapshot.version,
            changed: true,
            follow_up: done.follow_up,
        })
    }

    fn move_to(&mut self, (status, phase): (GameStatus, Option<CreationPhase>), start: Timestamp) {
        self.snapshot.status = status;
        self.snapshot.current_phase = phase;
        self.set_phase_start(Some(start));
    }

    fn acting_player(&self, actor: &Actor) -> Result<String, Rejection> {
        match actor {
            Actor::Player(id) => Ok(id.clone()),
            Actor::Server => Err(Rejection::new(
                ErrorCode::InvalidPayload,
                "this action needs a player",
            )),
        }
    }

    /// The acting player's roster entry; `None` for the server, which needs none.
    fn require_roster(&self, actor: &Actor) -> Result<Option<&PlayerSummary>, Rejection> {
        match actor {
            Actor::Player(id) => self.player(id).map(Some).ok_or_else(not_in_roster),
            Actor::Server => Ok(None),
        }
    }

    /// The room must be creating, in `phase`.
    fn require_phase(&self, phase: CreationPhase, refusal: &str) -> Result<(), Rejection> {
        if self.snapshot.status == GameStatus::Creating
            && self.snapshot.current_phase == Some(phase)
        {
            Ok(())
        } else {
            Err(Rejection::new(ErrorCode::InvalidTransition, refusal))
        }
    }

    fn require_host(&self, actor: &Actor) -> Result<(), Rejection> {
        match self.require_roster(actor)? {
            Some(p) if !p.is_host => Err(Rejection::new(
                ErrorCode::Forbidden,
                "only the host may advance the phase",
            )),
            _ => Ok(()),
        }
    }
}

/// Validates one roster entry's fields.
pub fn check_player(p: &PlayerSummary) -> Result<(), Rejection> {
    check_id("player.id", &p.id, limits::ID_MAX)?;
    check_id("player.name", &p.name, limits::NAME_MAX)?;
    // The emoji is shown beside the name: the same marks are refused in it (a
    // zero-width joiner, which emoji sequences need, is not among them).
    if p.emoji.chars().count() > limits::EMOJI_MAX || p.emoji.chars().any(is_forbidden_in_name) {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!(
                "player.emoji must be at most {} characters",
                limits::EMOJI_MAX
            ),
        ));
    }
    if !(0..=i64::from(u8::MAX)).contains(&p.seat_index) {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            "player.seatIndex must be between 0 and 255",
        ));
    }
    Ok(())
}

/// Bounds on settings text and durations.
pub fn check_settings(patch: &SettingsPatch) -> Result<(), Rejection> {
    for (field, value) in [
        ("productCategory", &patch.product_category),
        ("briefStyle", &patch.brief_style),
        ("wackyBriefStyle", &patch.wacky_brief_style),
    ] {
        if let Some(v) = value
            && (v.chars().count() > limits::SETTING_TEXT_MAX || v.chars().any(char::is_control))
        {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!(
                    "{field} must be at most {} characters",
                    limits::SETTING_TEXT_MAX
                ),
            ));
        }
    }
    if let Some(d) = patch.phase_duration_seconds
        && !(1..=limits::PHASE_DURATION_MAX).contains(&d)
    {
        return Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!(
                "phaseDurationSeconds must be 1..{}",
                limits::PHASE_DURATION_MAX
            ),
        ));
    }
    Ok(())
}

/// A new adlob entry in `map` must fit under the per-room bound on adlobs.
fn require_room_for<V>(
    map: &BTreeMap<String, V>,
    adlob_id: &str,
    what: &str,
) -> Result<(), Rejection> {
    if map.contains_key(adlob_id) || map.len() < canvas::MAX_CANVASES {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidPayload,
            format!("a room holds at most {} {what}", canvas::MAX_CANVASES),
        ))
    }
}

fn not_in_roster() -> Rejection {
    Rejection::new(
        ErrorCode::PlayerNotFound,
        "player is not in this room's roster",
    )
}

#[cfg(test)]
mod tests;
