//! The rule of each action, one function each: what it checks, what it changes, and
//! the event it reports. `Room::apply` picks the function, bumps the version and
//! refreshes the derived state; every function leaves the room untouched when it
//! refuses.

use super::canvas::{self, Canvas};
use super::{
    Action, Actor, Applied, BigIdea, Event, Room, SettingsPatch, check_player, check_settings,
    not_in_roster, require_room_for, rules,
};
use crate::protocol::canvas::CanvasOp;
use crate::protocol::{
    CreationPhase, ErrorCode, GameStatus, PlayerSummary, Rejection, Timestamp, check_id, limits,
};

/// What an action did: its event, and the change the rules ask for right after.
pub(super) struct Done {
    pub event: Event,
    pub follow_up: Option<Action>,
}

impl From<Event> for Done {
    fn from(event: Event) -> Done {
        Done {
            event,
            follow_up: None,
        }
    }
}

impl Room {
    /// A player's first socket attached.
    pub(super) fn connect(&mut self, actor: &Actor) -> Result<Event, Rejection> {
        let id = self.acting_player(actor)?;
        let p = self.player_mut(&id).ok_or_else(not_in_roster)?;
        if p.connected {
            return Err(Rejection::new(
                ErrorCode::InvalidTransition,
                "already connected",
            ));
        }
        p.connected = true;
        Ok(Event::PlayerConnected { player_id: id })
    }

    /// A player's last socket detached: offline and not ready.
    pub(super) fn disconnect(&mut self, actor: &Actor) -> Result<Event, Rejection> {
        let id = self.acting_player(actor)?;
        let p = self.player_mut(&id).ok_or_else(not_in_roster)?;
        p.connected = false;
        p.is_ready = false;
        Ok(Event::PlayerLeft { player_id: id })
    }

    /// One player's ready flag (their own `set_ready`, or the backend's hook).
    pub(super) fn set_ready(
        &mut self,
        player_id: String,
        is_ready: bool,
    ) -> Result<Event, Rejection> {
        let p = self.player_mut(&player_id).ok_or_else(not_in_roster)?;
        p.is_ready = is_ready;
        Ok(Event::ReadyUpdate {
            player_id,
            is_ready,
        })
    }

    /// The host's (or the phase timer's) one step along the game's path; the ready
    /// reset follows as its own change when anyone was ready.
    pub(super) fn advance(&mut self, actor: &Actor, now: Timestamp) -> Result<Done, Rejection> {
        self.require_host(actor)?;
        let from = (self.snapshot.status, self.snapshot.current_phase);
        let to = rules::next_step(from.0, from.1);
        self.move_to(to, now);
        let anyone_ready = self.snapshot.players.iter().any(|p| p.is_ready);
        Ok(Done {
            event: rules::event_for(from, to),
            follow_up: anyone_ready.then_some(Action::ResetReady),
        })
    }

    pub(super) fn reset_ready(&mut self) -> Event {
        for p in &mut self.snapshot.players {
            p.is_ready = false;
        }
        Event::ReadyReset
    }

    /// A player's `set_status`: the host's next step, or `results` from anyone.
    pub(super) fn set_status(
        &mut self,
        actor: &Actor,
        status: GameStatus,
        phase: Option<CreationPhase>,
        start: Timestamp,
    ) -> Result<Event, Rejection> {
        let roster = self.require_roster(actor)?;
        let is_host = roster.map(|p| p.is_host).unwrap_or(true);
        if !is_host && status != GameStatus::Results {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                "only the host may set the status",
            ));
        }
        let from = (self.snapshot.status, self.snapshot.current_phase);
        let to = rules::requested_step(from, status, phase)?;
        self.move_to(to, start);
        Ok(Event::StatusChanged)
    }

    /// Status and phase set outright (`ForcePhase`, the backend's `status_changed`):
    /// announced as a status event, as `set_status` is.
    pub(super) fn force(&mut self, to: rules::Step, start: Timestamp) -> Event {
        self.move_to(to, start);
        Event::StatusChanged
    }

    /// The creation phase set outright (the backend's `phase_changed`): announced as
    /// the phase event the backend sent.
    pub(super) fn set_phase(&mut self, phase: CreationPhase, start: Timestamp) -> Event {
        self.move_to((GameStatus::Creating, Some(phase)), start);
        Event::PhaseChanged
    }

    /// A `presentation_state`: remembered in the snapshot, no version.
    pub(super) fn present(
        &mut self,
        actor: &Actor,
        present_index: i64,
        show_campaign: bool,
    ) -> Result<Applied, Rejection> {
        self.require_roster(actor)?;
        self.snapshot.presentation = Some(crate::protocol::Presentation {
            present_index,
            show_campaign,
        });
        Ok(Applied {
            event: Event::Presentation {
                present_index,
                show_campaign,
            },
            version: self.snapshot.version,
            changed: false,
            follow_up: None,
        })
    }

    /// A roster player's canvas op, in the running creation phase.
    pub(super) fn canvas(
        &mut self,
        actor: &Actor,
        adlob_id: String,
        phase: CreationPhase,
        op: CanvasOp,
        next: u64,
    ) -> Result<Event, Rejection> {
        let id = self.acting_player(actor)?;
        self.require_roster(actor)?;
        self.require_phase(
            phase,
            "canvas deltas are accepted only in the running creation phase",
        )?;
        require_room_for(&self.canvases, &adlob_id, "canvases")?;
        // A new canvas is inserted only once its first op applied, so a rejected op
        // (e.g. `remove` on an empty canvas) leaves no trace.
        let total: usize = self.canvases.values().map(Canvas::bytes).sum();
        match self.canvases.get_mut(&adlob_id) {
            Some(canvas) => {
                let others = total - canvas.bytes();
                let left = canvas::MAX_ROOM_BYTES.saturating_sub(others);
                canvas.apply(op.clone(), next, left)?
            }
            None => {
                let left = canvas::MAX_ROOM_BYTES.saturating_sub(total);
                let mut canvas = Canvas::default();
                canvas.apply(op.clone(), next, left)?;
                self.canvases.insert(adlob_id.clone(), canvas);
            }
        }
        Ok(Event::CanvasDelta {
            adlob_id,
            phase,
            op,
            player_id: id,
        })
    }

    /// A roster player's big idea, in the big_idea phase.
    pub(super) fn big_idea(
        &mut self,
        actor: &Actor,
        adlob_id: String,
        text: String,
        next: u64,
    ) -> Result<Event, Rejection> {
        let id = self.acting_player(actor)?;
        self.require_roster(actor)?;
        self.require_phase(
            CreationPhase::BigIdea,
            "big ideas are accepted only in the big_idea phase",
        )?;
        require_room_for(&self.big_ideas, &adlob_id, "big ideas")?;
        self.big_ideas.insert(
            adlob_id.clone(),
            BigIdea {
                text: text.clone(),
                author_id: id.clone(),
                version: next,
            },
        );
        Ok(Event::BigIdeaSubmitted {
            adlob_id,
            text,
            author_id: id,
        })
    }

    pub(super) fn remove_player(&mut self, player_id: String) -> Result<Event, Rejection> {
        let before = self.snapshot.players.len();
        self.snapshot.players.retain(|p| p.id != player_id);
        if self.snapshot.players.len() == before {
            return Err(not_in_roster());
        }
        Ok(Event::PlayerRemoved { player_id })
    }

    /// Replaces the settings the patch names.
    pub(super) fn update_settings(&mut self, patch: SettingsPatch) -> Result<Event, Rejection> {
        check_settings(&patch)?;
        let s = &mut self.settings;
        let SettingsPatch {
            product_category,
            phase_duration_seconds,
            brief_style,
            wacky_brief_style,
            auto_advance,
        } = patch;
        if product_category.is_some() {
            s.product_category = product_category;
        }
        if phase_duration_seconds.is_some() {
            s.phase_duration_seconds = phase_duration_seconds;
        }
        if brief_style.is_some() {
            s.brief_style = brief_style;
        }
        if wacky_brief_style.is_some() {
            s.wacky_brief_style = wacky_brief_style;
        }
        if let Some(on) = auto_advance {
            s.auto_advance = on;
        }
        Ok(Event::SettingsChanged)
    }

    pub(super) fn brief_updated(&mut self, brief_id: String) -> Result<Event, Rejection> {
        check_id("briefId", &brief_id, limits::ID_MAX)?;
        self.brief_id = Some(brief_id.clone());
        Ok(Event::BriefUpdated { brief_id })
    }

    pub(super) fn content_submitted(
        &mut self,
        adlob_id: String,
        phase: CreationPhase,
        player_id: String,
    ) -> Result<Event, Rejection> {
        check_id("adlobId", &adlob_id, limits::ID_MAX)?;
        if self.player(&player_id).is_none() {
            return Err(not_in_roster());
        }
        Ok(Event::ContentSubmitted {
            adlob_id,
            phase,
            player_id,
        })
    }

    /// Adds or replaces a roster entry. `player.connected` is set by the room's owner,
    /// which knows the sockets.
    pub(super) fn upsert_player(&mut self, player: PlayerSummary) -> Result<Event, Rejection> {
        check_player(&player)?;
        let player_id = player.id.clone();
        let players = &mut self.snapshot.players;
        let count = players.len();
        match players.iter_mut().find(|p| p.id == player.id) {
            Some(existing) => *existing = player,
            None if count >= limits::MAX_PLAYERS => {
                return Err(Rejection::new(
                    ErrorCode::InvalidTransition,
                    format!("room is full ({} players)", limits::MAX_PLAYERS),
                ));
            }
            None => players.push(player),
        }
        players.sort_by_key(|p| p.seat_index);
        Ok(Event::PlayerJoined { player_id })
    }
}
