//! One player's socket: a reader and a writer, run together in one task.
//!
//! The reader decodes each frame, checks it against the socket's joined room and
//! authenticated player, and hands it to the room's owner. The writer drains the
//! socket's bounded outbox in batches (many frames, one flush). Either side closing
//! closes both through the outbox's control.

use super::rate::{RateLimiter, Verdict};
use crate::auth::{TokenError, now_secs};
use crate::observe::{Origin, count_outcome, counter_family};
use crate::outbox::{Frame, Outbox, close};
use crate::owner::{Member, RoomHandle};
use crate::protocol::client::{ClientMessage, JoinRoom, decode};
use crate::protocol::server::error_text;
use crate::protocol::{ErrorCode, Rejection, RoomSnapshot};
use crate::room::{Action, Room};
use crate::server::App;
use crate::telemetry::Metrics;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a closing socket gets to take its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

struct Joined {
    room: RoomHandle,
    player_id: String,
}

/// Runs one upgraded WebSocket until it closes.
pub async fn run<S>(ws: S, app: Arc<App>)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let metrics = app.metrics.clone();
    Metrics::inc(&metrics.counters.ws_connections_total);
    metrics.connections_live.fetch_add(1, Ordering::Relaxed);
    let (sink, stream) = ws.split();
    let (out, rx) = Outbox::channel(app.config.outbound_queue_limit);
    let reader = Reader {
        conn,
        joined: None,
        limiter: RateLimiter::new(
            app.config.rate_limit_per_sec,
            app.config.rate_limit_burst,
            Instant::now(),
        ),
        out: out.clone(),
        app,
    };
    tokio::join!(reader.run(stream), write_loop(sink, rx, out));
    metrics.connections_live.fetch_sub(1, Ordering::Relaxed);
}

async fn write_loop<K>(mut sink: K, mut rx: mpsc::Receiver<Frame>, out: Outbox)
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    loop {
        tokio::select! {
            biased;
            _ = out.closed() => break,
            first = rx.recv() => {
                let Some(first) = first else { break };
                let batch = write_batch(&mut sink, &mut rx, first);
                tokio::select! {
                    result = batch => if result.is_err() {
                        out.close(close::NORMAL);
                        return;
                    },
                    // A peer that stopped reading can block the flush forever.
                    _ = out.closed() => break,
                }
            }
        }
    }
    let code = out.close_code();
    let goodbye = async {
        if code != close::TRY_AGAIN_LATER {
            // Deliver what was queued before the close (shutdown flushes).
            while let Ok(frame) = rx.try_recv() {
                sink.feed(Message::Text(frame)).await?;
            }
        }
        sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: out.close_reason().into(),
        })))
        .await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
}

async fn write_batch<K>(
    sink: &mut K,
    rx: &mut mpsc::Receiver<Frame>,
    first: Frame,
) -> Result<(), WsError>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    sink.feed(Message::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(frame) => sink.feed(Message::Text(frame)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

struct Reader {
    conn: u64,
    joined: Option<Joined>,
    limiter: RateLimiter,
    out: Outbox,
    app: Arc<App>,
}

impl Reader {
    async fn run<R>(mut self, mut stream: R)
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let timeout = self.app.config.heartbeat_timeout;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.out.closed() => break,
                _ = self.app.shutdown.cancelled() => {
                    self.out.close(close::RESTART);
                    break;
                }
                next = tokio::time::timeout(timeout, stream.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    Metrics::inc(&self.app.metrics.counters.heartbeat_timeouts_total);
                    tracing::info!(
                        roomCode = self.joined.as_ref().map(|j| j.room.code()).unwrap_or(""),
                        playerId = self
                            .joined
                            .as_ref()
                            .map(|j| j.player_id.as_str())
                            .unwrap_or(""),
                        "heartbeat_timeout"
                    );
                    self.out.close(close::GOING_AWAY);
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(WsError::Capacity(_)))) => {
                    Metrics::inc(&self.app.metrics.counters.oversized_frames_total);
                    self.out.close(close::TOO_BIG);
                    break;
                }
                Ok(Some(Err(_))) => break,
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    if !self.on_text(&text).await {
                        break;
                    }
                }
                // A binary frame is a message too: it spends the same budget.
                Message::Binary(_) => match self.charge() {
                    Verdict::Allow => {
                        Metrics::inc(&self.app.metrics.counters.ws_message_parse_failures_total);
                        self.reply_error(
                            ErrorCode::InvalidPayload,
                            "Binary frames are not supported",
                        );
                    }
                    Verdict::Refuse => {}
                    Verdict::Close => break,
                },
                Message::Close(_) => break,
                // Pings are answered by tungstenite; any frame proves liveness.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        self.out.close(close::NORMAL);
        if let Some(joined) = self.joined.take() {
            joined.room.detach(self.conn).await;
        }
    }

    fn reply_error(&self, code: ErrorCode, message: &str) {
        self.out.push(error_text(code, message).into());
    }

    fn reply(&self, why: &Rejection) {
        self.reply_error(why.code, &why.message);
    }

    /// Charges one message to the socket's rate budget: past it the reply is
    /// `rate_limited`, and past the debt limit the socket closes with 1008.
    fn charge(&mut self) -> Verdict {
        let verdict = self.limiter.check(Instant::now());
        let metrics = &self.app.metrics;
        match verdict {
            Verdict::Allow => {}
            Verdict::Refuse => {
                Metrics::inc(&metrics.counters.rate_limited_total);
                self.reply_error(ErrorCode::RateLimited, "Too many messages; slow down");
            }
            Verdict::Close => {
                Metrics::inc(&metrics.counters.rate_limited_total);
                tracing::warn!(
                    roomCode = self.joined.as_ref().map(|j| j.room.code()).unwrap_or(""),
                    "rate_limit_close"
                );
                self.out.close(close::POLICY);
            }
        }
        verdict
    }

    /// Handles one text frame. Returns false when the socket must close.
    async fn on_text(&mut self, text: &str) -> bool {
        Metrics::inc(&self.app.metrics.counters.ws_messages_total);
        match self.charge() {
            Verdict::Allow => {}
            Verdict::Refuse => return true,
            Verdict::Close => return false,
        }
        let metrics = &self.app.metrics;
        // IMAGE_SOURCES: canvas image sources are judged against the configured policy
        // as part of decoding (refused the same way: invalid_payload).
        let decoded =
            decode(text).and_then(|m| m.check_sources(&self.app.config.image_sources).map(|()| m));
        let message = match decoded {
            Ok(m) => m,
            Err(why) => {
                Metrics::inc(&metrics.counters.ws_message_parse_failures_total);
                self.reply(&why);
                return true;
            }
        };
        match message {
            ClientMessage::JoinRoom(join) => self.join(join).await,
            ClientMessage::Heartbeat { room_code } => {
                // Liveness is already recorded by the read; a heartbeat for another
                // room than the joined one is still refused.
                if let (Some(code), Some(joined)) = (room_code, &self.joined)
                    && code != joined.room.code()
                {
                    self.reply_error(
                        ErrorCode::Forbidden,
                        "roomCode does not match the joined room",
                    );
                }
            }
            other => self.player_message(other).await,
        }
        true
    }

    async fn player_message(&mut self, message: ClientMessage) {
        // Refusals here count like the room's own, under the action's counter family.
        let refused = |me: &Self, message: ClientMessage, why: &str| {
            let family = into_action(message).as_ref().and_then(counter_family);
            count_outcome(&me.app.metrics, family, false);
            me.reply_error(ErrorCode::Forbidden, why);
        };
        let Some(joined) = &self.joined else {
            return refused(self, message, "join_room first");
        };
        if message.room_code() != Some(joined.room.code()) {
            return refused(self, message, "roomCode does not match the joined room");
        }
        if message.player_id().is_some_and(|p| p != joined.player_id) {
            return refused(self, message, "playerId is not the authenticated player");
        }
        let (room, player_id) = (joined.room.clone(), joined.player_id.clone());
        let Some(action) = into_action(message) else {
            // leave_room, the one player message here that is not a room action.
            self.joined = None;
            room.detach(self.conn).await;
            return;
        };
        let family = counter_family(&action);
        let origin = Origin::Socket {
            conn: self.conn,
            player_id,
        };
        if let Err(why) = room.send_from_socket(origin, action).await {
            count_outcome(&self.app.metrics, family, false);
            self.reply(&why);
        }
    }

    async fn join(&mut self, join: JoinRoom) {
        let metrics = self.app.metrics.clone();
        Metrics::inc(&metrics.counters.join_room_attempts_total);
        match self.try_join(join).await {
            Ok(joined) => {
                Metrics::inc(&metrics.counters.join_room_success_total);
                tracing::info!(roomCode = %joined.room.code(), playerId = %joined.player_id, "join_room_success");
                self.joined = Some(joined);
            }
            Err(why) => {
                Metrics::inc(&metrics.counters.join_room_failures_total);
                self.reply(&why);
            }
        }
    }

    async fn try_join(&mut self, join: JoinRoom) -> Result<Joined, Rejection> {
        let token = join.player_token.as_deref().unwrap_or_default();
        let claims = self.app.keys.verify(token, now_secs()).map_err(|e| {
            Metrics::inc(&self.app.metrics.counters.auth_failures_total);
            tracing::warn!(
                roomCode = %join.room_code,
                playerId = %join.player_id,
                reason = match e {
                    TokenError::Expired => "expired",
                    TokenError::BadSignature => "bad_signature",
                    TokenError::WrongAlgorithm => "wrong_algorithm",
                    TokenError::Malformed => "malformed",
                    TokenError::UnsupportedHeader => "unsupported_header",
                    TokenError::NotYetValid => "not_yet_valid",
                    TokenError::LifetimeTooLong => "lifetime_too_long",
                },
                "token_verification_failed"
            );
            Rejection::new(ErrorCode::Unauthorized, e.to_string())
        })?;
        if claims.room_code != join.room_code || claims.player_id != join.player_id {
            Metrics::inc(&self.app.metrics.counters.auth_failures_total);
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                "token is for another room or player",
            ));
        }
        let room =
            match (
                join.initial_snapshot,
                self.app.config.allow_client_seeded_rooms,
            ) {
                (Some(seed), true) => self.app.registry.get_or_create(&join.room_code, || {
                    let seed: RoomSnapshot = serde_json::from_value(seed).map_err(|e| {
                        Rejection::new(
                            ErrorCode::InvalidPayload,
                            format!("initialSnapshot is not a room snapshot: {e}"),
                        )
                    })?;
                    Room::from_seed(&join.room_code, &seed)
                })?,
                _ => self.app.registry.get(&join.room_code).ok_or_else(|| {
                    Rejection::new(ErrorCode::RoomNotFound, "room does not exist")
                })?,
            };
        let member = Member {
            conn: self.conn,
            player_id: join.player_id.clone(),
            out: self.out.clone(),
        };
        room.attach(member, join.last_version).await?;
        // A second join on one socket moves it; the old room is left only once the
        // new one has accepted the socket (a re-join of the same room stays put).
        if let Some(previous) = self.joined.take()
            && previous.room.code() != room.code()
        {
            previous.room.detach(self.conn).await;
        }
        Ok(Joined {
            room,
            player_id: join.player_id,
        })
    }
}

/// The room action a player message asks for; `None` for messages that are not room
/// actions (join, leave, heartbeat).
fn into_action(message: ClientMessage) -> Option<Action> {
    Some(match message {
        ClientMessage::SetReady { is_ready, .. } => Action::SetReady { is_ready },
        ClientMessage::AdvancePhase { .. } => Action::Advance,
        ClientMessage::SetStatus(m) => Action::SetStatus {
            status: m.status,
            phase: m.current_phase,
            start_time: m.phase_start_time,
        },
        ClientMessage::PresentationState(m) => Action::Present {
            present_index: m.present_index,
            show_campaign: m.show_campaign,
        },
        ClientMessage::SubmitCanvasDelta(m) => Action::Canvas {
            adlob_id: m.adlob_id,
            phase: m.phase,
            op: m.delta,
        },
        ClientMessage::SubmitBigIdea(m) => Action::BigIdea {
            adlob_id: m.adlob_id,
            text: m.text,
        },
        ClientMessage::JoinRoom(_)
        | ClientMessage::LeaveRoom { .. }
        | ClientMessage::Heartbeat { .. } => return None,
    })
}
