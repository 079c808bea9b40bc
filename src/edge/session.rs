//! One player's socket after the upgrade: a reader and a writer, run together in one
//! task over the same TCP stream.
//!
//! The reader takes frames from `connection::FrameReader`, charges each to the
//! socket's rate budget, decodes messages, checks them against the socket's joined
//! room and authenticated player, and hands them to the room's owner. The writer
//! drains the socket's bounded outbox into vectored writes. Closing is one mechanism
//! whoever starts it (RFC 6455 §7): the outbox's close code is set once, the writer
//! sends what was queued and then the Close frame, the reader stops acting on input
//! and reads until the client's Close, EOF or a short timeout, so a reset never
//! destroys the last frames.

use super::admission::ConnectionSlot;
use super::connection::{self, FrameReader, Incoming, ReadError};
use super::frame::{Frame, close, opcode};
use super::rate::{RateLimiter, Verdict};
use crate::auth::{TokenError, now_secs};
use crate::observe::{Origin, count_outcome, counter_family};
use crate::outbox::Outbox;
use crate::owner::{ConnId, Member, RoomHandle, Sink};
use crate::protocol::client::{ClientMessage, JoinRoom, decode};
use crate::protocol::server::ServerMessage;
use crate::protocol::{ErrorCode, Rejection, RoomSnapshot};
use crate::room::Room;
use crate::server::App;
use crate::telemetry::{Metrics, otel};
use bytes::Bytes;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

/// How long a closing socket gets to take its last frames, and to answer our Close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A write that makes no progress for this long closes the socket with 1013: the
/// client stopped reading. (A slow but reading client makes progress and stays.)
const WRITE_STALL: Duration = Duration::from_secs(15);

struct Joined {
    room: RoomHandle,
    player_id: String,
}

/// Runs one upgraded WebSocket until it closes. `initial` are bytes the client sent
/// right after its upgrade request; `slot` holds the connection's place under the
/// connection caps until the socket is gone.
pub async fn run(
    mut stream: TcpStream,
    initial: Bytes,
    peer: IpAddr,
    app: Arc<App>,
    slot: ConnectionSlot,
) {
    let conn = ConnId::next();
    let metrics = app.metrics.clone();
    Metrics::inc(&metrics.counters.ws_connections_total);
    metrics.connections_live.fetch_add(1, Ordering::Relaxed);
    let out = Outbox::new(
        app.config.outbound_queue_limit,
        app.config.outbound_queue_bytes,
    );
    let stall = WRITE_STALL.min(app.config.heartbeat_timeout);
    let frames = FrameReader::new(app.config.max_message_bytes, initial);
    let reader = Reader {
        conn,
        peer,
        joined: None,
        limiter: RateLimiter::new(
            app.config.rate_limit_per_sec,
            app.config.rate_limit_burst,
            Instant::now(),
        ),
        out: out.clone(),
        app,
    };
    let (mut read_half, write_half) = stream.split();
    tokio::join!(
        reader.run(&mut read_half, frames),
        connection::write_loop(write_half.as_ref(), &out, stall, CLOSE_TIMEOUT)
    );
    metrics.connections_live.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

struct Reader {
    conn: ConnId,
    peer: IpAddr,
    joined: Option<Joined>,
    limiter: RateLimiter,
    out: Outbox,
    app: Arc<App>,
}

/// How the reading phase ended.
enum Ended {
    /// The client is done sending (its Close frame, EOF or a broken socket).
    PeerDone,
    /// The server closes; the client may still be sending frames.
    ServerClosing,
    /// The client broke the framing: what it sends next cannot be parsed.
    Violated,
}

impl Reader {
    async fn run(mut self, stream: &mut ReadHalf<'_>, mut frames: FrameReader) {
        let ended = self.read(stream, &mut frames).await;
        if let Some(joined) = self.joined.take() {
            joined.room.detach(self.conn).await;
        }
        // The writer sends our Close (and a FIN) once what was queued is out;
        // meanwhile, and until the client answers, input is read and dropped.
        let limit = CLOSE_TIMEOUT;
        match ended {
            Ended::PeerDone => {}
            Ended::ServerClosing => {
                let until_close = async {
                    while let Ok(incoming) = frames.next(stream).await {
                        if let Incoming::Close(_) = incoming {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(limit, Box::pin(until_close)).await;
            }
            Ended::Violated => Box::pin(connection::drain(stream, limit)).await,
        }
    }

    async fn read(&mut self, stream: &mut ReadHalf<'_>, frames: &mut FrameReader) -> Ended {
        let timeout = self.app.config.heartbeat_timeout;
        let join_timeout = self.app.config.join_timeout;
        let mut join_by = Some(tokio::time::Instant::now() + join_timeout);
        // The futures waited on for every frame are made once: registering a fresh
        // timer and two cancellation waiters per frame was a measurable share of the
        // hot path. The idle timer is re-armed only when it fires early.
        let (out, shutdown) = (self.out.clone(), self.app.shutdown.clone());
        let closed = out.closed();
        let stopping = shutdown.cancelled();
        let idle = tokio::time::sleep(timeout);
        tokio::pin!(closed, stopping, idle);
        let mut last_frame = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut closed => return Ended::ServerClosing,
                _ = &mut stopping => {
                    self.out.close(close::RESTART);
                    return Ended::ServerClosing;
                }
                _ = sleep_until(join_by) => {
                    tracing::info!("join_timeout");
                    self.out.close_with_reason(close::POLICY, "no join_room in time");
                    return Ended::ServerClosing;
                }
                _ = &mut idle => {
                    if last_frame.elapsed() < timeout {
                        idle.as_mut().reset(last_frame + timeout);
                        continue;
                    }
                    Err(())
                }
                next = frames.next(stream) => Ok(next),
            };
            last_frame = tokio::time::Instant::now();
            let incoming = match next {
                Err(()) => {
                    Metrics::inc(&self.app.metrics.counters.heartbeat_timeouts_total);
                    tracing::info!(
                        roomCode = self.room_code(),
                        playerId = self.player_id(),
                        "heartbeat_timeout"
                    );
                    self.out.close(close::GOING_AWAY);
                    return Ended::ServerClosing;
                }
                Ok(Err(ReadError::Eof | ReadError::Io(_))) => {
                    self.out.close(close::NORMAL);
                    return Ended::PeerDone;
                }
                Ok(Err(ReadError::Violation(v))) => {
                    let c = &self.app.metrics.counters;
                    Metrics::inc(if v.close_code() == close::TOO_BIG {
                        &c.oversized_frames_total
                    } else {
                        &c.protocol_errors_total
                    });
                    tracing::info!(
                        roomCode = self.room_code(),
                        reason = v.reason(),
                        code = v.close_code(),
                        "ws_protocol_violation"
                    );
                    self.out.close_with_reason(v.close_code(), v.reason());
                    return Ended::Violated;
                }
                Ok(Ok(incoming)) => incoming,
            };
            // Every frame proves liveness and spends the rate budget: fragments and
            // pings too, so a stream of empty continuation frames is throttled like
            // any message.
            match incoming {
                Incoming::Close(code) => {
                    // Echo the client's code (RFC 6455 §5.5.1), after what is queued.
                    self.out
                        .close_with_reason(code.unwrap_or(close::NORMAL), "");
                    return Ended::PeerDone;
                }
                Incoming::Text(text) => {
                    Metrics::inc(&self.app.metrics.counters.ws_messages_total);
                    match self.charge() {
                        // Boxed: a message's handling (a join's round trip to the
                        // room, above all) is a large state; inline, every idle
                        // socket's task would carry its size.
                        Verdict::Allow => Box::pin(self.on_text(&text)).await,
                        Verdict::Refuse => {}
                        Verdict::Close => return Ended::ServerClosing,
                    }
                }
                Incoming::Binary => match self.charge() {
                    Verdict::Allow => {
                        Metrics::inc(&self.app.metrics.counters.ws_message_parse_failures_total);
                        self.reply_error(
                            ErrorCode::InvalidPayload,
                            "Binary frames are not supported",
                        );
                    }
                    Verdict::Refuse => {}
                    Verdict::Close => return Ended::ServerClosing,
                },
                Incoming::Ping(payload) => match self.limiter.check(Instant::now()) {
                    Verdict::Allow => {
                        self.out.push(Frame::new(opcode::PONG, &payload));
                    }
                    Verdict::Refuse => {}
                    Verdict::Close => {
                        self.rate_close();
                        return Ended::ServerClosing;
                    }
                },
                Incoming::Pong | Incoming::Fragment => {
                    if self.limiter.check(Instant::now()) == Verdict::Close {
                        self.rate_close();
                        return Ended::ServerClosing;
                    }
                }
            }
            if self.out.is_closing() {
                return Ended::ServerClosing;
            }
            join_by = match (&self.joined, join_by) {
                (Some(_), _) => None,
                // Left the room: the join deadline starts again.
                (None, None) => Some(tokio::time::Instant::now() + join_timeout),
                (None, deadline) => deadline,
            };
        }
    }

    fn room_code(&self) -> &str {
        self.joined.as_ref().map(|j| j.room.code()).unwrap_or("")
    }

    fn player_id(&self) -> &str {
        self.joined
            .as_ref()
            .map(|j| j.player_id.as_str())
            .unwrap_or("")
    }

    fn reply_error(&self, code: ErrorCode, message: &str) {
        self.out
            .push(Frame::json(&ServerMessage::Error { code, message }));
    }

    fn reply(&self, why: &Rejection) {
        self.reply_error(why.code, &why.message);
    }

    /// Charges one message to the socket's rate budget: past it the reply is
    /// `rate_limited`, and past the debt limit the socket closes with 1008.
    fn charge(&mut self) -> Verdict {
        let verdict = self.limiter.check(Instant::now());
        match verdict {
            Verdict::Allow => {}
            Verdict::Refuse => {
                Metrics::inc(&self.app.metrics.counters.rate_limited_total);
                self.reply_error(ErrorCode::RateLimited, "Too many messages; slow down");
            }
            Verdict::Close => self.rate_close(),
        }
        verdict
    }

    fn rate_close(&self) {
        Metrics::inc(&self.app.metrics.counters.rate_limited_total);
        tracing::warn!(roomCode = self.room_code(), "rate_limit_close");
        self.out.close(close::POLICY);
    }

    /// Handles one text message.
    async fn on_text(&mut self, text: &str) {
        // IMAGE_SOURCES: canvas image sources are judged against the configured policy
        // as part of decoding (refused the same way: invalid_payload).
        let decoded =
            decode(text).and_then(|m| m.check_sources(&self.app.config.image_sources).map(|()| m));
        let message = match decoded {
            Ok(m) => m,
            Err(why) => {
                Metrics::inc(&self.app.metrics.counters.ws_message_parse_failures_total);
                self.reply(&why);
                return;
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
    }

    async fn player_message(&mut self, message: ClientMessage) {
        // Refusals here count like the room's own, under the action's counter family.
        let refused = |me: &Self, message: ClientMessage, why: &str| {
            let family = message.into_action().as_ref().and_then(counter_family);
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
        let Some(action) = message.into_action() else {
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
        // telemetry: the join's span; the log lines written during it carry its ids.
        let span = otel::join_span(
            &join.room_code,
            &join.player_id,
            join.player_token.as_deref(),
        );
        tracing::Instrument::instrument(self.join_in(join, &span), span.clone()).await
    }

    async fn join_in(&mut self, join: JoinRoom, span: &tracing::Span) {
        let metrics = self.app.metrics.clone();
        Metrics::inc(&metrics.counters.join_room_attempts_total);
        match self.try_join(join).await {
            Ok(joined) => {
                Metrics::inc(&metrics.counters.join_room_success_total);
                otel::record_join(span, None);
                tracing::info!(roomCode = %joined.room.code(), playerId = %joined.player_id, "join_room_success");
                self.joined = Some(joined);
            }
            Err(why) => {
                Metrics::inc(&metrics.counters.join_room_failures_total);
                otel::record_join(span, Some(why.code.as_str()));
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
        let room = match (
            join.initial_snapshot,
            self.app.config.allow_client_seeded_rooms,
        ) {
            (Some(seed), true) => {
                let (app, peer) = (&self.app, self.peer);
                app.registry
                    .get_or_create(&join.room_code, || {
                        if !app.seed_limiter.allow(peer, Instant::now()) {
                            return Err(Rejection::new(
                                ErrorCode::RateLimited,
                                "too many rooms created from this address; try again in a minute",
                            ));
                        }
                        let seed: RoomSnapshot = serde_json::from_str(seed.get()).map_err(|e| {
                            Rejection::new(
                                ErrorCode::InvalidPayload,
                                format!("initialSnapshot is not a room snapshot: {e}"),
                            )
                        })?;
                        Room::from_seed(&join.room_code, &seed)
                    })
                    .await?
            }
            _ => self.app.registry.find(&join.room_code).await?,
        };
        let member = Member {
            conn: self.conn,
            player_id: join.player_id.clone(),
            out: Sink::Local(self.out.clone()),
        };
        if let Err(why) = room.attach(member, join.last_version).await {
            // Re-joining the same room as another player first left as the old one:
            // after a refusal this socket is in no room.
            if self
                .joined
                .as_ref()
                .is_some_and(|previous| previous.room.code() == room.code())
            {
                self.joined = None;
            }
            return Err(why);
        }
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// Every idle socket carries its task's whole state: a message's handling and the
    /// closing handshake are boxed so the idle state stays small (docs/benchmarks.md
    /// has the memory per idle socket this is part of).
    #[tokio::test]
    async fn an_idle_sockets_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let server = server.expect("accept").0;
        let handle = crate::server::start(crate::config::Config::for_tests(
            "size-test-secret-0123456789",
        ))
        .await
        .expect("server");
        let limits = crate::edge::admission::ConnectionLimits::new(10, 10);
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let slot = limits.admit(ip).expect("a place");
        let task = super::run(server, bytes::Bytes::new(), ip, handle.app.clone(), slot);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a socket's task is {size} bytes");
        drop(task);
        handle.shutdown().await;
    }

    /// A message's handling is boxed once per message (see `read`), so its size is
    /// an allocation and a copy for every message: the cluster's paths a join can take
    /// (Redis calls, a takeover's store reads) are boxed where they start, so that on
    /// one node the join's room lookup carries none of their state.
    #[tokio::test]
    async fn a_room_lookup_carries_no_cluster_state() {
        let handle = crate::server::start(crate::config::Config::for_tests(
            "size-test-secret-0123456789",
        ))
        .await
        .expect("server");
        let registry = &handle.app.registry;
        let find = registry.find("ABCD");
        let seeded = registry.get_or_create("ABCD", || {
            Err(crate::protocol::Rejection::new(
                crate::protocol::ErrorCode::Forbidden,
                "not seeded",
            ))
        });
        let sizes = (std::mem::size_of_val(&find), std::mem::size_of_val(&seeded));
        assert!(
            sizes.0 <= 256 && sizes.1 <= 256,
            "lookups of {sizes:?} bytes"
        );
        drop((find, seeded));
        handle.shutdown().await;
    }
}
