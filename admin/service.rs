//! The `RoomAdmin` gRPC service: validates each request, turns it into a room
//! command, and reports the outcome.

use super::convert::{self, invalid, status_of};
use super::pb::{self, room_admin_server::RoomAdmin};
use crate::auth::now_secs;
use crate::edge::frame::close;
use crate::observe::Origin;
use crate::outbox::{Outbox, Weigh};
use crate::owner::RoomHandle;
use crate::owner::WatchEvent;
use crate::protocol::ErrorCode;
use crate::room::{Action, Room, Settings};
use crate::server::App;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Alphabet of generated room codes: no look-alikes (0/O, 1/I/L).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 6;
/// Events, and bytes of events, a watcher may fall behind by before it is cut off.
const WATCH_QUEUE: usize = 1024;
const WATCH_QUEUE_BYTES: usize = 1 << 20;
const LIST_PAGE_DEFAULT: u32 = 50;
const LIST_PAGE_MAX: u32 = 500;
const CLOSE_REASON_MAX: usize = 100;

pub struct AdminService {
    app: Arc<App>,
}

impl AdminService {
    pub fn new(app: Arc<App>) -> AdminService {
        AdminService { app }
    }

    /// Refuses changes once shutdown has begun.
    fn ensure_serving(&self) -> Result<(), Status> {
        if !self.app.is_shutting_down() {
            Ok(())
        } else {
            Err(Status::unavailable("server is shutting down"))
        }
    }

    async fn room(&self, field: &str, code: &str) -> Result<RoomHandle, Status> {
        convert::room_code(field, code)?;
        self.app
            .registry
            .find(code)
            .await
            .map_err(|why| room_status(code, why))
    }

    /// Applies a server command to a room and returns the version after it.
    async fn apply(&self, room: &RoomHandle, action: Action) -> Result<u64, Status> {
        self.ensure_serving()?;
        room.apply(Origin::Server, action)
            .await
            .map(|applied| applied.version)
            .map_err(status_of)
    }

    async fn info(&self, room: &RoomHandle) -> Result<pb::Room, Status> {
        let mut result = room.try_info().await;
        // Cluster mode: a handle whose room moved away just now; ask the cluster again.
        if self.app.registry.cluster().is_some()
            && matches!(&result, Err(why) if why.code == crate::protocol::ErrorCode::RoomNotFound)
            && let Ok(again) = self.app.registry.find(room.code()).await
        {
            result = again.try_info().await;
        }
        result
            .map(|info| convert::room_to_pb(&info))
            .map_err(|why| room_status(room.code(), why))
    }
}

/// A refusal about the room `code`: a missing room is `NOT_FOUND` naming it, the rest
/// as `status_of` maps them.
fn room_status(code: &str, why: crate::protocol::Rejection) -> Status {
    if why.code == crate::protocol::ErrorCode::RoomNotFound {
        Status::not_found(format!("room {code} not found"))
    } else {
        status_of(why)
    }
}

fn generate_code() -> String {
    (0..CODE_LEN)
        .map(|_| char::from(CODE_ALPHABET[rand::random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// Logs one admin call, as the edge logs player messages.
fn logged<T>(method: &'static str, room: &str, result: Result<T, Status>) -> Result<T, Status> {
    match &result {
        Ok(_) => tracing::info!(method, roomCode = %room, "admin_call"),
        Err(status) => tracing::info!(
            method,
            roomCode = %room,
            code = ?status.code(),
            error = %status.message(),
            "admin_call_failed"
        ),
    }
    result
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RoomEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RoomAdmin for AdminService {
    async fn create_room(
        &self,
        request: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        let req = request.into_inner();
        let code_hint = req.code.clone();
        let result = async {
            self.ensure_serving()?;
            if !req.code.is_empty() {
                convert::room_code("code", &req.code)?;
            }
            let players = match req.host {
                Some(host) => vec![convert::player_from_pb("host", Some(host))?],
                None => Vec::new(),
            };
            let patch = convert::settings_from_pb("settings", req.settings)?;
            let settings = Settings {
                product_category: patch.product_category,
                phase_duration_seconds: patch.phase_duration_seconds,
                brief_style: patch.brief_style,
                wacky_brief_style: patch.wacky_brief_style,
                auto_advance: patch.auto_advance.unwrap_or(false),
            };
            let handle = if req.code.is_empty() {
                // Generated codes can collide with live rooms; try a few.
                let mut created = None;
                for _ in 0..16 {
                    let room = Room::new(&generate_code(), players.clone(), settings.clone())
                        .map_err(status_of)?;
                    if let Ok(handle) = self.app.registry.create(room).await {
                        created = Some(handle);
                        break;
                    }
                }
                created.ok_or_else(|| Status::unavailable("could not generate a free room code"))?
            } else {
                let room = Room::new(&req.code, players, settings).map_err(status_of)?;
                self.app.registry.create(room).await.map_err(|why| {
                    if why.code == crate::protocol::ErrorCode::InvalidTransition {
                        Status::already_exists(why.message)
                    } else {
                        status_of(why)
                    }
                })?
            };
            let room = self.info(&handle).await?;
            Ok(Response::new(pb::CreateRoomResponse { room: Some(room) }))
        }
        .await;
        let code = match &result {
            Ok(response) => response
                .get_ref()
                .room
                .as_ref()
                .map(|r| r.code.clone())
                .unwrap_or(code_hint),
            Err(_) => code_hint,
        };
        logged("CreateRoom", &code, result)
    }

    async fn get_room(
        &self,
        request: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        let req = request.into_inner();
        let handle = self.room("room_code", &req.room_code).await?;
        let room = self.info(&handle).await?;
        Ok(Response::new(pb::GetRoomResponse { room: Some(room) }))
    }

    async fn list_rooms(
        &self,
        request: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        let req = request.into_inner();
        let size = match req.page_size {
            0 => LIST_PAGE_DEFAULT,
            n if n <= LIST_PAGE_MAX => n,
            _ => return Err(invalid("page_size", format!("must be 0..{LIST_PAGE_MAX}"))),
        } as usize;
        if !req.page_token.is_empty() {
            convert::room_code("page_token", &req.page_token)?;
        }
        // The page token is the last code of the previous page; codes are sorted.
        // In cluster mode the page is the whole cluster's (the store's open rooms).
        // One more than the page tells whether there is a next one.
        let mut page = self
            .app
            .registry
            .list(&req.page_token, size + 1)
            .await
            .map_err(status_of)?;
        let more = page.len() > size;
        page.truncate(size);
        let mut rooms = Vec::with_capacity(page.len());
        for (code, stored) in &page {
            // A room some node serves answers for itself; one nobody serves now (cluster
            // mode) is listed as the store has it, with no connections. A room closed
            // since the listing is simply skipped.
            let live = self.app.registry.served_info(code).await;
            let (snapshot, connections) = match (&live, stored) {
                (Some(info), _) => (&info.snapshot, info.connections),
                (None, Some(snapshot)) => (snapshot, 0),
                (None, None) => continue,
            };
            rooms.push(pb::RoomSummary {
                code: snapshot.code.clone(),
                status: convert::status_to_pb(snapshot.status) as i32,
                player_count: snapshot.players.len() as u32,
                connection_count: u32::try_from(connections).unwrap_or(u32::MAX),
                version: snapshot.version,
            });
        }
        let next_page_token = match page.last() {
            Some((last, _)) if more => last.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRoomsResponse {
            rooms,
            next_page_token,
        }))
    }

    async fn upsert_player(
        &self,
        request: Request<pb::UpsertPlayerRequest>,
    ) -> Result<Response<pb::UpsertPlayerResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            let player = convert::player_from_pb("player", req.player)?;
            let version = self.apply(&handle, Action::UpsertPlayer { player }).await?;
            Ok(Response::new(pb::UpsertPlayerResponse { version }))
        }
        .await;
        logged("UpsertPlayer", &req.room_code, result)
    }

    async fn remove_player(
        &self,
        request: Request<pb::RemovePlayerRequest>,
    ) -> Result<Response<pb::RemovePlayerResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            convert::id("player_id", &req.player_id)?;
            let version = self
                .apply(
                    &handle,
                    Action::RemovePlayer {
                        player_id: req.player_id.clone(),
                    },
                )
                .await?;
            Ok(Response::new(pb::RemovePlayerResponse { version }))
        }
        .await;
        logged("RemovePlayer", &req.room_code, result)
    }

    async fn mint_player_token(
        &self,
        request: Request<pb::MintPlayerTokenRequest>,
    ) -> Result<Response<pb::MintPlayerTokenResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            convert::id("player_id", &req.player_id)?;
            let config = &self.app.config;
            let ttl = match u64::from(req.ttl_seconds) {
                0 => config.token_ttl_default_secs,
                t if t <= config.token_ttl_max_secs => t,
                _ => {
                    return Err(invalid(
                        "ttl_seconds",
                        format!("must be at most {}", config.token_ttl_max_secs),
                    ));
                }
            };
            let info = handle
                .info()
                .await
                .ok_or_else(|| Status::not_found(format!("room {} not found", req.room_code)))?;
            if !info.snapshot.players.iter().any(|p| p.id == req.player_id) {
                return Err(Status::not_found(format!(
                    "player {} is not in room {}",
                    req.player_id, req.room_code
                )));
            }
            let now = now_secs();
            let token = self
                .app
                .keys
                .mint_jwt(&req.room_code, &req.player_id, now, ttl);
            Ok(Response::new(pb::MintPlayerTokenResponse {
                token,
                expires_at: now + ttl,
            }))
        }
        .await;
        logged("MintPlayerToken", &req.room_code, result)
    }

    async fn force_phase(
        &self,
        request: Request<pb::ForcePhaseRequest>,
    ) -> Result<Response<pb::ForcePhaseResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            let status = convert::status_from_pb("status", req.status)?;
            let phase = convert::phase_from_pb("current_phase", req.current_phase)?;
            match (status, phase) {
                (crate::protocol::GameStatus::Creating, None) => {
                    return Err(invalid(
                        "current_phase",
                        "is required with GAME_STATUS_CREATING",
                    ));
                }
                (s, Some(_)) if s != crate::protocol::GameStatus::Creating => {
                    return Err(invalid(
                        "current_phase",
                        "must be unspecified outside GAME_STATUS_CREATING",
                    ));
                }
                _ => {}
            }
            let start_time = if req.phase_start_time.is_empty() {
                None
            } else {
                Some(
                    crate::protocol::Timestamp::parse("phase_start_time", &req.phase_start_time)
                        .map_err(convert::status_of)?,
                )
            };
            let version = self
                .apply(
                    &handle,
                    Action::Force {
                        status,
                        phase,
                        start_time,
                    },
                )
                .await?;
            Ok(Response::new(pb::ForcePhaseResponse { version }))
        }
        .await;
        logged("ForcePhase", &req.room_code, result)
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            if req.settings.is_none() {
                return Err(invalid("settings", "is required"));
            }
            let patch = convert::settings_from_pb("settings", req.settings)?;
            let version = self
                .apply(&handle, Action::UpdateSettings { patch })
                .await?;
            Ok(Response::new(pb::UpdateSettingsResponse { version }))
        }
        .await;
        logged("UpdateSettings", &req.room_code, result)
    }

    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            let handle = self.room("room_code", &req.room_code).await?;
            let action = match req.event {
                None => {
                    return Err(invalid(
                        "event",
                        "one of brief_updated or content_submitted is required",
                    ));
                }
                Some(pb::publish_event_request::Event::BriefUpdated(e)) => {
                    convert::id("brief_updated.brief_id", &e.brief_id)?;
                    Action::BriefUpdated {
                        brief_id: e.brief_id,
                    }
                }
                Some(pb::publish_event_request::Event::ContentSubmitted(e)) => {
                    convert::id("content_submitted.adlob_id", &e.adlob_id)?;
                    convert::id("content_submitted.player_id", &e.player_id)?;
                    let phase = convert::phase_from_pb("content_submitted.phase", e.phase)?
                        .ok_or_else(|| invalid("content_submitted.phase", "is required"))?;
                    Action::ContentSubmitted {
                        adlob_id: e.adlob_id,
                        phase,
                        player_id: e.player_id,
                    }
                }
            };
            let version = self.apply(&handle, action).await?;
            Ok(Response::new(pb::PublishEventResponse { version }))
        }
        .await;
        logged("PublishEvent", &req.room_code, result)
    }

    async fn close_room(
        &self,
        request: Request<pb::CloseRoomRequest>,
    ) -> Result<Response<pb::CloseRoomResponse>, Status> {
        let req = request.into_inner();
        let result = async {
            self.ensure_serving()?;
            let handle = self.room("room_code", &req.room_code).await?;
            if req.reason.len() > CLOSE_REASON_MAX || req.reason.chars().any(char::is_control) {
                return Err(invalid(
                    "reason",
                    format!("must be at most {CLOSE_REASON_MAX} bytes of printable text"),
                ));
            }
            let reason = if req.reason.is_empty() {
                close::reason(close::ROOM_CLOSED).to_string()
            } else {
                req.reason.clone()
            };
            let snapshot = handle
                .try_close(reason)
                .await
                .map_err(|why| room_status(&req.room_code, why))?;
            self.app.registry.remove(&req.room_code);
            Ok(Response::new(pb::CloseRoomResponse {
                final_version: snapshot.version,
            }))
        }
        .await;
        logged("CloseRoom", &req.room_code, result)
    }

    type WatchRoomStream = WatchStream;

    async fn watch_room(
        &self,
        request: Request<pb::WatchRoomRequest>,
    ) -> Result<Response<Self::WatchRoomStream>, Status> {
        let req = request.into_inner();
        self.ensure_serving()?;
        let handle = self.room("room_code", &req.room_code).await?;
        let out: Outbox<WatchEvent> = Outbox::new(WATCH_QUEUE, WATCH_QUEUE_BYTES);
        handle
            .watch(out.clone())
            .await
            .map_err(|why| match why.code {
                ErrorCode::RoomNotFound => {
                    Status::not_found(format!("room {} not found", req.room_code))
                }
                _ => Status::resource_exhausted(why.message),
            })?;
        tracing::info!(roomCode = %req.room_code, "admin_watch_started");
        let watch = Watch {
            out: CloseOnDrop(out),
            pending: std::collections::VecDeque::new(),
            shutdown: self.app.shutdown.clone(),
        };
        let stream = futures_util::stream::unfold(Some(watch), |state| async move {
            let mut watch = state?;
            let next = watch.next().await?;
            Some((next, Some(watch)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A watcher's queue, closed when its stream is dropped (the caller went away), so
/// the room lets its place go at its next checkpoint tick.
struct CloseOnDrop(Outbox<WatchEvent>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(close::NORMAL);
    }
}

/// One `WatchRoom` stream's state.
struct Watch {
    out: CloseOnDrop,
    pending: std::collections::VecDeque<WatchEvent>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Watch {
    /// The next event; `None` when the stream ends.
    async fn next(&mut self) -> Option<Result<pb::RoomEvent, Status>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.out.0.release(event.weight());
                return Some(Ok(pb::RoomEvent {
                    r#type: event.kind.to_string(),
                    version: event.version,
                    json: String::from_utf8_lossy(&event.json).into_owned(),
                }));
            }
            let mut batch = Vec::new();
            let more = tokio::select! {
                biased;
                more = self.out.0.take(&mut batch) => more,
                _ = self.shutdown.cancelled() => return None,
            };
            if !more {
                // Queued events were delivered first; then the reason decides the end.
                return (self.out.0.close_code() == close::TRY_AGAIN_LATER)
                    .then(|| Err(Status::resource_exhausted("watcher fell behind the room")));
            }
            self.pending.extend(batch);
        }
    }
}
