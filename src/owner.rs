//! The single owner of one room: a task that applies every change to it, in order.
//!
//! Everything that changes a room arrives here as a [`RoomMsg`] on one bounded
//! channel: player messages from sockets, server commands (phase timers now, the
//! admin plane and other cluster nodes later). The owner applies it with the room's
//! rules, serializes each resulting event once, records it in the bounded resume
//! history, fans the frame out to the room's sockets and tells the observers.

use crate::cluster::link::RemoteLink;
use crate::cluster::{Cluster, wire};
use crate::edge::frame::{Frame, close};
use crate::fanout::{Publication, Relay};
use crate::observe::{Change, Command, Observers, Origin};
use crate::outbox::{Outbox, Push, Weigh};
use crate::protocol::server::ServerMessage;
use crate::protocol::{ErrorCode, Rejection, RoomSnapshot};
use crate::room::{Action, Applied, Event, Room};
use crate::telemetry::{Metrics, otel};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Capacity of a room's command channel; senders wait when it is full.
const COMMAND_QUEUE: usize = 1024;
/// The longest the owner sleeps towards a phase deadline before looking again (a far
/// deadline is reached in steps; no instant arithmetic can overflow).
const DEADLINE_STEP: Duration = Duration::from_secs(3600);
/// Messages an owner handles in one turn after the one that woke it.
const BURST: usize = 32;
/// Backoff of a phase timer whose step was refused.
const TIMER_RETRY_FIRST: Duration = Duration::from_secs(1);
const TIMER_RETRY_MAX: Duration = Duration::from_secs(30);

pub use crate::observe::ConnId;

/// One event as an admin-plane watcher receives it: typed, with the JSON clients got.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub version: u64,
    /// The message's JSON text, shared with the frame the sockets received.
    pub json: Bytes,
}

impl Weigh for WatchEvent {
    fn weight(&self) -> usize {
        self.json.len()
    }
}

/// The number of watchers across all rooms, and its bound.
pub struct WatcherCount {
    pub open: AtomicUsize,
    pub max: usize,
    pub max_per_room: usize,
}

/// A watcher's place under the bounds; given back when the owner drops it.
struct Watcher {
    out: Outbox<WatchEvent>,
    count: Arc<WatcherCount>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every room owner shares.
pub struct RoomContext {
    pub metrics: Arc<Metrics>,
    pub observers: Observers,
    pub heartbeat_interval: Duration,
    pub history_limit: usize,
    /// Bytes of frames the resume history holds at most: more could never be
    /// replayed into one socket's queue anyway.
    pub history_bytes: usize,
    pub max_sockets: usize,
    /// Sockets one player may have in one room (tabs).
    pub max_sockets_per_player: usize,
    /// How often a changed room's whole state is offered to observers (snapshots).
    pub checkpoint_interval: Duration,
    /// Cancelled at shutdown: sockets then leave without changing room state, so a
    /// client that reconnects after a restart finds the version it last saw.
    pub shutdown: CancellationToken,
    pub watchers: Arc<WatcherCount>,
    /// Cluster mode: this node's place in the cluster; publications also go to the
    /// rooms' relays on other nodes. `None` on a single node.
    pub cluster: Option<Arc<Cluster>>,
    /// A client-seeded room with no socket and no watcher for this long is closed.
    pub seeded_idle_ttl: Duration,
    /// One socket's queue bound (items, bytes): cluster mode's resumes through a relay
    /// are held to it as a local socket's are.
    pub socket_queue: (usize, usize),
}

/// One socket attached to a room.
pub struct Member {
    pub conn: ConnId,
    pub player_id: String,
    pub out: Sink,
}

/// Where a member's frames go: its queue on this node, or (cluster mode) the link to
/// the node that holds the socket.
pub enum Sink {
    Local(Outbox),
    Remote(Arc<RemoteLink>),
}

impl Sink {
    fn push(&self, conn: ConnId, frame: Frame) -> Push {
        match self {
            Sink::Local(out) => out.push(frame),
            Sink::Remote(link) => {
                link.to_conn(conn, &[frame]);
                Push::Queued
            }
        }
    }

    fn push_all(&self, conn: ConnId, frames: Vec<Frame>) -> Push {
        match self {
            Sink::Local(out) => out.push_all(frames),
            Sink::Remote(link) => {
                link.to_conn(conn, &frames);
                Push::Queued
            }
        }
    }

    /// Whether `count` frames of `weight` bytes fit; the relay node keeps its own
    /// socket's bound (it closes a socket that overflows there).
    fn has_room(&self, count: usize, weight: usize) -> bool {
        match self {
            Sink::Local(out) => out.has_room(count, weight),
            Sink::Remote(link) => count <= link.queue.0 && weight <= link.queue.1,
        }
    }

    fn close(&self, conn: ConnId, code: u16, reason: Option<&str>) {
        match (self, reason) {
            (Sink::Local(out), Some(reason)) => out.close_with_reason(code, reason),
            (Sink::Local(out), None) => out.close(code),
            (Sink::Remote(link), reason) => link.close_conn(conn, code, reason.unwrap_or("")),
        }
    }

    fn remote(&self) -> Option<&Arc<RemoteLink>> {
        match self {
            Sink::Local(_) => None,
            Sink::Remote(link) => Some(link),
        }
    }
}

pub enum RoomMsg {
    Attach {
        member: Member,
        last_version: Option<u64>,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    Detach {
        conn: ConnId,
    },
    Command {
        /// What to do, as plain data (see `Command`). Boxed: an action is the largest
        /// message by far, and every room's channel allocates its slots up front.
        command: Box<Command>,
        /// Callers outside a socket (admin, tests) get the outcome here; a socket's
        /// errors go to its own outbox.
        reply: Option<oneshot::Sender<Result<Done, Rejection>>>,
        /// telemetry: the caller's span (an admin call), continued by the owner's
        /// span for this command; `None` when traces are not exported.
        cause: Option<Box<tracing::Span>>,
    },
    /// The room's state as the admin plane (and tests) see it.
    Info {
        reply: oneshot::Sender<Result<RoomInfo, Rejection>>,
    },
    /// Adds a watcher: it receives every event (not heartbeats), starting with the
    /// current `room_state`. Refused past the bounds on watchers.
    Watch {
        out: Outbox<WatchEvent>,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// Saves the room now if it changed (shutdown), then replies.
    Checkpoint {
        reply: oneshot::Sender<()>,
    },
    /// Disconnects everyone with `reason`, ends watchers, and stops the owner.
    Close {
        reason: String,
        reply: oneshot::Sender<Result<RoomSnapshot, Rejection>>,
    },
    /// Cluster mode: a message from another node for this room's owner.
    Remote(Box<wire::Message>),
    /// Cluster mode: stop serving the room here without closing it (lost, fenced,
    /// handed over): every socket and relay is told `code`, then the owner ends.
    /// With `checkpoint`, the room's state is offered to the store first.
    Stop {
        code: u16,
        reason: &'static str,
        checkpoint: bool,
        reply: Option<oneshot::Sender<()>>,
    },
    /// Cluster mode: a node left; its sockets and relay of this room are gone.
    NodeGone {
        node: String,
    },
    /// Cluster mode, a relay's own: a message from the room's owner.
    Relayed(Box<wire::Message>),
    /// Cluster mode, a relay's own: the owner refused a socket it had sent on; with
    /// `stale`, the node asked is not (or no longer) the room's owner.
    AttachRefused {
        conn: ConnId,
        stale: bool,
    },
    /// Cluster mode, a relay's own: the owner refused a watcher it had sent on.
    WatchRefused {
        id: u64,
    },
}

/// What a change made, as a caller outside the room sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The room's version after the change.
    pub version: u64,
}

/// How an owner ended, which decides what becomes of its code here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Closed, expired or crashed: the code is retired.
    Ended,
    /// Cluster mode: the room lives on with another owner.
    Moved,
}

/// A room's state as the admin plane reports it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoomInfo {
    pub snapshot: RoomSnapshot,
    pub settings: crate::room::Settings,
    pub connections: usize,
}

/// A cheap, cloneable address of a room's owner.
#[derive(Clone)]
pub struct RoomHandle {
    code: Arc<str>,
    tx: mpsc::Sender<RoomMsg>,
}

fn gone() -> Rejection {
    Rejection::new(ErrorCode::RoomNotFound, "room is closed")
}

impl RoomHandle {
    /// A handle on a task that speaks for a room (cluster mode's relays).
    pub(crate) fn new(code: Arc<str>, tx: mpsc::Sender<RoomMsg>) -> RoomHandle {
        RoomHandle { code, tx }
    }

    /// Hands the room's task a message without waiting; false if its queue is full
    /// or it is gone (cluster mode's inbox must never wait on one room).
    pub(crate) fn offer(&self, msg: RoomMsg) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// Hands the room's task a control message that must not be lost (stop, a node
    /// gone): sent from a task of its own, which waits for room in the queue.
    pub(crate) fn deliver(&self, msg: RoomMsg) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(msg).await;
        });
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// Attaches a socket; the owner sends `hello_ack` (and resumed events) to it.
    pub async fn attach(&self, member: Member, last_version: Option<u64>) -> Result<(), Rejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RoomMsg::Attach {
                member,
                last_version,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn detach(&self, conn: ConnId) {
        let _ = self.tx.send(RoomMsg::Detach { conn }).await;
    }

    /// Sends a command from a socket; errors are answered on the socket itself.
    pub async fn send_from_socket(&self, origin: Origin, action: Action) -> Result<(), Rejection> {
        self.tx
            .send(RoomMsg::Command {
                command: Box::new(Command { origin, action }),
                reply: None,
                cause: None,
            })
            .await
            .map_err(|_| gone())
    }

    /// Applies a command and waits for its outcome.
    pub async fn apply(&self, origin: Origin, action: Action) -> Result<Done, Rejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RoomMsg::Command {
                command: Box::new(Command { origin, action }),
                reply: Some(reply),
                cause: crate::telemetry::otel::cause(),
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn snapshot(&self) -> Option<RoomSnapshot> {
        self.info().await.map(|info| info.snapshot)
    }

    pub async fn info(&self) -> Option<RoomInfo> {
        self.try_info().await.ok()
    }

    /// The room's state, or why it cannot be had: `room_not_found` when the room is
    /// gone, `unavailable` when (cluster mode) its owner node did not answer.
    pub async fn try_info(&self) -> Result<RoomInfo, Rejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RoomMsg::Info { reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Saves the room now if it changed since its last checkpoint.
    pub async fn checkpoint(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(RoomMsg::Checkpoint { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Registers a watcher's queue; refused when the room is gone or past the
    /// bounds on watchers.
    pub async fn watch(&self, out: Outbox<WatchEvent>) -> Result<(), Rejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RoomMsg::Watch { out, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Whether the owner task has ended (closed, expired or crashed).
    pub fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// Cluster mode: stops serving the room here (see `RoomMsg::Stop`), and waits.
    pub async fn stop(&self, code: u16, reason: &'static str, checkpoint: bool) {
        let (reply, rx) = oneshot::channel();
        let msg = RoomMsg::Stop {
            code,
            reason,
            checkpoint,
            reply: Some(reply),
        };
        if self.tx.send(msg).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Closes the room; returns its final snapshot, or `None` if it was already gone.
    pub async fn close(&self, reason: String) -> Option<RoomSnapshot> {
        self.try_close(reason).await.ok()
    }

    /// Closes the room, or says why not (as `try_info`).
    pub async fn try_close(&self, reason: String) -> Result<RoomSnapshot, Rejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RoomMsg::Close { reason, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// How a room came to exist, which decides whether it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Created by the admin plane; it lives until CloseRoom.
    Server,
    /// Created from a client's `initialSnapshot`; it closes itself after
    /// `seeded_idle_ttl` with no socket and no watcher.
    Seeded,
    /// Loaded from the store at start-up (already saved as it is).
    Restored,
}

/// Starts the owner task of `room` and returns its handle. `on_exit` runs once when
/// the task ends, however it ends (closed, expired, or crashed), so the registry
/// never keeps a handle to an owner that is gone.
pub fn spawn(
    room: Room,
    ctx: Arc<RoomContext>,
    provenance: Provenance,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> RoomHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let code: Arc<str> = room.code().into();
    let saved = provenance == Provenance::Restored;
    let owner = Owner {
        checkpointed: saved.then(|| saved_state(&room)),
        restored_at: saved.then(|| room.version()),
        joined_since_restore: HashSet::new(),
        seeded: provenance == Provenance::Seeded,
        code: code.clone(),
        idle_since: Instant::now(),
        deadline: None,
        room,
        members: Vec::new(),
        watchers: Vec::new(),
        history: VecDeque::new(),
        history_bytes: 0,
        hello_cache: None,
        timer_retry: None,
        links: Vec::new(),
        moved: false,
        ctx,
    };
    tokio::spawn(async move {
        let exit = owner.run(rx).await;
        on_exit(exit);
    });
    RoomHandle { code, tx }
}

/// What tells one saved state of a room from another: its version, and the
/// presentation on screen, which changes without a version bump.
type SavedState = (u64, Option<crate::protocol::Presentation>);

fn saved_state(room: &Room) -> SavedState {
    (room.version(), room.snapshot().presentation)
}

/// Whether the owner goes on after a step (it stops after `Close`).
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One thing the owner's loop woke up for. It only lives on the stack for one step,
/// so its size does not matter (boxing the message would cost an allocation each).
#[allow(clippy::large_enum_variant)]
enum Wake {
    Msg(RoomMsg),
    Heartbeat,
    Checkpoint,
    Deadline,
}

struct Owner {
    room: Room,
    /// The room's code, shared with its handle and every publication.
    code: Arc<str>,
    members: Vec<Member>,
    /// Admin-plane watchers of this room's events.
    watchers: Vec<Watcher>,
    /// What the last checkpoint offered to observers held (see `saved_state`).
    checkpointed: Option<SavedState>,
    /// (version, frame) of the last changes, oldest first, for `lastVersion` resume.
    history: VecDeque<(u64, Frame)>,
    /// The bytes of the frames in `history`.
    history_bytes: usize,
    /// `hello_ack` as built for the room's current state (and `recovered`): joins
    /// between two changes share one frame instead of each serializing the room.
    hello_cache: Option<(SavedState, bool, Frame)>,
    /// After the phase timer's step was refused (a full persistence queue), when to
    /// try again and the wait after that: a refused step is retried with backoff,
    /// not on every tick.
    timer_retry: Option<(Instant, Duration)>,
    /// The version the room had when it was loaded from the store, if it was. After
    /// a crash the versions past it may have named lost changes before the restart.
    restored_at: Option<u64>,
    /// Players who have joined since the room was restored (see `resumable`).
    joined_since_restore: HashSet<String>,
    /// Created by a client seed: expires when idle.
    seeded: bool,
    /// When the room last had no socket and no watcher (valid while it has none).
    idle_since: Instant,
    /// When the running phase's timer fires, computed once per change.
    deadline: Option<Instant>,
    /// Cluster mode: the relays of this room on other nodes, one per node.
    links: Vec<Arc<RemoteLink>>,
    /// Cluster mode: the owner stopped because the room moved to another node.
    moved: bool,
    ctx: Arc<RoomContext>,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>) -> Exit {
        self.ctx.metrics.rooms_live.fetch_add(1, Ordering::Relaxed);
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + self.ctx.heartbeat_interval,
            self.ctx.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoints = tokio::time::interval(self.ctx.checkpoint_interval);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: a new room is saved as soon as it exists.
        self.refresh_deadline();
        loop {
            let wake = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => Wake::Msg(msg),
                    None => break,
                },
                _ = heartbeat.tick() => Wake::Heartbeat,
                _ = checkpoints.tick() => Wake::Checkpoint,
                _ = sleep_until(self.deadline) => Wake::Deadline,
            };
            // No input may take a room down for good: a panic in the room's rules or
            // here is contained to this room, which is then closed (see `contain`).
            // Messages already waiting are handled in the same turn (up to a bound,
            // so timers still get their turn), saving a trip through the select.
            let burst = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut flow = self.step(wake);
                for _ in 0..BURST {
                    if flow == Flow::Stop {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(msg) => flow = self.step(Wake::Msg(msg)),
                        Err(_) => break,
                    }
                }
                flow
            }));
            match burst {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(panic) => {
                    self.contain(panic.as_ref());
                    break;
                }
            }
        }
        self.ctx.metrics.rooms_live.fetch_sub(1, Ordering::Relaxed);
        if self.moved { Exit::Moved } else { Exit::Ended }
    }

    fn step(&mut self, wake: Wake) -> Flow {
        let flow = match wake {
            Wake::Msg(msg) => self.handle(msg),
            Wake::Heartbeat => {
                self.send_heartbeat();
                Flow::Continue
            }
            Wake::Checkpoint => self.tick(),
            Wake::Deadline => {
                let retry_due = self.timer_retry.is_none_or(|(at, _)| at <= Instant::now());
                if self.deadline_passed()
                    && retry_due
                    && self.change(&Origin::Server, Action::Advance, None).is_err()
                {
                    let wait = self.timer_retry.map_or(TIMER_RETRY_FIRST, |(_, w)| w);
                    self.timer_retry =
                        Some((Instant::now() + wait, (wait * 2).min(TIMER_RETRY_MAX)));
                }
                Flow::Continue
            }
        };
        self.refresh_deadline();
        flow
    }

    /// A panic escaped the room's rules or the owner: say so, close every socket
    /// with 1011 and every watcher, and stop. The registry then forgets the room
    /// (`on_exit`) and retires its code; its last snapshot stays in the store, so a
    /// restart restores it as it was before the failing change.
    fn contain(&mut self, panic: &(dyn std::any::Any + Send)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        Metrics::inc(&self.ctx.metrics.counters.room_owner_panics_total);
        tracing::error!(
            roomCode = %self.room.code(),
            version = self.room.version(),
            error = %message,
            "room_owner_panicked"
        );
        for m in self.members.drain(..) {
            m.out.close(m.conn, close::INTERNAL_ERROR, None);
        }
        for w in self.watchers.drain(..) {
            w.out.close(close::INTERNAL_ERROR);
        }
        for link in self.links.drain(..) {
            link.gone(close::INTERNAL_ERROR, "room failed");
        }
    }

    /// Recomputes when the phase timer fires (after every step: only a change can
    /// move it, and computing it here keeps the loop free of date arithmetic).
    fn refresh_deadline(&mut self) {
        self.deadline = self.room.phase_deadline().map(|at| {
            let left = Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
            let due = Instant::now() + left.min(DEADLINE_STEP);
            match self.timer_retry {
                Some((retry_at, _)) => due.max(retry_at),
                None => due,
            }
        });
    }

    /// Whether the phase deadline has really passed (a far one is slept towards in
    /// steps of `DEADLINE_STEP`).
    fn deadline_passed(&self) -> bool {
        self.room
            .phase_deadline()
            .is_some_and(|at| at <= OffsetDateTime::now_utc())
    }

    /// The checkpoint timer: save the room if it changed, drop watchers that went
    /// away, and close a seeded room that has been idle for too long.
    fn tick(&mut self) -> Flow {
        self.checkpoint(false);
        self.watchers.retain(|w| !w.out.is_closing());
        if !self.members.is_empty() || !self.watchers.is_empty() {
            self.idle_since = Instant::now();
            return Flow::Continue;
        }
        if self.seeded && self.idle_since.elapsed() >= self.ctx.seeded_idle_ttl {
            tracing::info!(roomCode = %self.room.code(), version = self.room.version(), "room_expired");
            self.close("room expired");
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn handle(&mut self, msg: RoomMsg) -> Flow {
        match msg {
            RoomMsg::Attach {
                member,
                last_version,
                reply,
            } => {
                let _ = reply.send(self.attach(member, last_version));
            }
            RoomMsg::Detach { conn } => self.detach(conn),
            RoomMsg::Command {
                command,
                reply,
                cause,
            } => {
                let Command { origin, action } = *command;
                // telemetry: a span per handled command, timed only while exporting.
                let span = otel::command_span(cause.as_deref(), self.room.code(), &origin, &action);
                let _entered = span.enter();
                let started = otel::metrics_enabled().then(std::time::Instant::now);
                self.command(origin, action, reply);
                if let Some(started) = started {
                    otel::record_message(started.elapsed());
                }
            }
            RoomMsg::Info { reply } => {
                let _ = reply.send(Ok(self.info()));
            }
            RoomMsg::Checkpoint { reply } => {
                self.checkpoint(false);
                let _ = reply.send(());
            }
            RoomMsg::Watch { out, reply } => {
                let _ = reply.send(self.watch(out));
            }
            RoomMsg::Close { reason, reply } => {
                self.close(&reason);
                let _ = reply.send(Ok(self.room.snapshot().clone()));
                return Flow::Stop;
            }
            RoomMsg::Remote(message) => return self.remote(*message),
            RoomMsg::Stop {
                code,
                reason,
                checkpoint,
                reply,
            } => {
                self.stop_serving(code, reason, checkpoint);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return Flow::Stop;
            }
            RoomMsg::NodeGone { node } => self.node_gone(&node),
            // A relay's own messages never reach an owner.
            RoomMsg::Relayed(_) | RoomMsg::AttachRefused { .. } | RoomMsg::WatchRefused { .. } => {}
        }
        Flow::Continue
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            snapshot: self.room.snapshot().clone(),
            settings: self.room.settings.clone(),
            connections: self.members.len(),
        }
    }

    /// Cluster mode: the room moves to another node. Sockets here and on relays are
    /// closed with `code` (1012: reconnect, and resume wherever you land).
    fn stop_serving(&mut self, code: u16, reason: &str, checkpoint: bool) {
        if checkpoint {
            self.checkpoint(false);
        }
        for m in self.members.drain(..) {
            if m.out.remote().is_none() {
                m.out.close(m.conn, code, Some(reason));
            }
        }
        for w in self.watchers.drain(..) {
            w.out.close(code);
        }
        for link in self.links.drain(..) {
            link.gone(code, reason);
        }
        self.moved = true;
        tracing::warn!(roomCode = %self.room.code(), version = self.room.version(), epoch = self.room.epoch, reason, "room_released");
    }

    /// A node left the cluster: its sockets leave the room, its relay is dropped.
    fn node_gone(&mut self, node: &str) {
        let conns: Vec<ConnId> = self
            .members
            .iter()
            .filter(|m| m.out.remote().is_some_and(|l| &*l.node == node))
            .map(|m| m.conn)
            .collect();
        for conn in conns {
            self.detach(conn);
        }
        // If that node is alive after all (it was only slow to renew), its relay
        // learns that it lost the link and sends its sockets to resume.
        for link in self.links.iter().filter(|l| &*l.node == node) {
            link.gone(close::RESTART, "resync");
        }
        self.links.retain(|l| &*l.node != node);
    }

    /// The link to `node`'s relay with id `id`, made if there is none. A relay with
    /// a new id replaced the old one there, whose sockets are gone with it.
    fn link(&mut self, node: &str, id: u64) -> Option<Arc<RemoteLink>> {
        let cluster = self.ctx.cluster.clone()?;
        if let Some(link) = self.links.iter().find(|l| &*l.node == node && l.id == id) {
            return Some(link.clone());
        }
        if self.links.iter().any(|l| &*l.node == node) {
            self.node_gone(node);
        }
        let link = RemoteLink::new(
            cluster,
            node.into(),
            id,
            self.code.clone(),
            self.room.epoch,
            self.ctx.socket_queue,
        );
        self.links.push(link.clone());
        Some(link)
    }

    /// Cluster mode: a message from another node for this room.
    fn remote(&mut self, message: wire::Message) -> Flow {
        let Some(cluster) = self.ctx.cluster.clone() else {
            return Flow::Continue;
        };
        use wire::{Answer, Message};
        match message {
            Message::Attach {
                from,
                call,
                link,
                conn,
                player_id,
                last_version,
                ..
            } => {
                // A socket of this node's own cannot be joined again from another one.
                let local = self
                    .members
                    .iter()
                    .any(|m| m.conn == conn && m.out.remote().is_none());
                let result = if local {
                    Err(Rejection::new(
                        ErrorCode::Forbidden,
                        "that socket belongs to the room's own node",
                    ))
                } else {
                    match self.link(&from, link) {
                        Some(link) => self.attach(
                            Member {
                                conn,
                                player_id,
                                out: Sink::Remote(link),
                            },
                            last_version,
                        ),
                        None => Err(gone()),
                    }
                };
                cluster.answer(&from, call, Answer::Attached { result });
            }
            Message::Detach { conn, .. } => self.detach(conn),
            Message::Command {
                from,
                call,
                origin,
                action,
                ..
            } => {
                let result = self.command_result(origin, action, call.is_none());
                if let Some(call) = call {
                    let result = result.map(|applied| applied.version);
                    cluster.answer(&from, call, Answer::Applied { result });
                }
            }
            Message::Info { from, call, .. } => {
                let info = self.info();
                cluster.answer(&from, call, Answer::Info { info });
            }
            Message::Close {
                from, call, reason, ..
            } => {
                self.close(&reason);
                let snapshot = self.room.snapshot().clone();
                cluster.answer(&from, call, Answer::Closed { snapshot });
                return Flow::Stop;
            }
            Message::Link {
                from, call, link, ..
            } => {
                let result = match self.link(&from, link) {
                    Some(link) => {
                        link.state(self.room.version(), &self.room_state_frame());
                        Ok(())
                    }
                    None => Err(gone()),
                };
                cluster.answer(&from, call, Answer::Linked { result });
            }
            Message::Unlink { from, link, .. } => {
                if self.links.iter().any(|l| *l.node == *from && l.id == link) {
                    self.node_gone(&from);
                }
            }
            Message::Create { from, call, .. } => {
                let why = Rejection::new(
                    ErrorCode::InvalidTransition,
                    format!("room {} already exists", self.code),
                );
                cluster.answer(&from, call, Answer::Created { result: Err(why) });
            }
            Message::Relay { .. }
            | Message::Adopt { .. }
            | Message::Answer { .. }
            | Message::Ping => {}
        }
        Flow::Continue
    }

    fn watch(&mut self, out: Outbox<WatchEvent>) -> Result<(), Rejection> {
        self.watchers.retain(|w| !w.out.is_closing());
        let count = &self.ctx.watchers;
        if self.watchers.len() >= count.max_per_room {
            return Err(Rejection::new(
                ErrorCode::RateLimited,
                format!(
                    "this room has {} watchers, the most it takes",
                    count.max_per_room
                ),
            ));
        }
        if count.open.fetch_add(1, Ordering::AcqRel) >= count.max {
            count.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::new(
                ErrorCode::RateLimited,
                format!("the server has {} watchers, the most it takes", count.max),
            ));
        }
        let watcher = Watcher {
            out,
            count: count.clone(),
        };
        let state = self.room_state_frame();
        if watcher
            .out
            .push(watch_event("room_state", self.room.version(), &state))
            == Push::Queued
        {
            self.watchers.push(watcher);
        }
        Ok(())
    }

    /// Offers the room's whole state to observers if it changed since the last time.
    fn checkpoint(&mut self, closed: bool) {
        let state = saved_state(&self.room);
        if self.checkpointed == Some(state) && !closed
            // Unchanged, unless the store lost a row of this room (a dead letter) and
            // needs a snapshot past it.
            && !self.ctx.observers.iter().any(|o| o.wants_checkpoint(&self.room))
        {
            return;
        }
        self.checkpointed = Some(state);
        for o in self.ctx.observers.iter() {
            o.checkpoint(&self.room, closed);
        }
    }

    fn close(&mut self, reason: &str) {
        self.checkpoint(true);
        for m in self.members.drain(..) {
            if m.out.remote().is_none() {
                m.out.close(m.conn, close::ROOM_CLOSED, Some(reason));
            }
        }
        for w in self.watchers.drain(..) {
            w.out.close(close::ROOM_CLOSED);
        }
        for link in self.links.drain(..) {
            link.gone(close::ROOM_CLOSED, reason);
        }
        tracing::info!(roomCode = %self.room.code(), version = self.room.version(), "room_closed");
    }

    fn attach(&mut self, member: Member, last_version: Option<u64>) -> Result<(), Rejection> {
        // The same socket joining again: as the same player it simply gets a fresh
        // hello_ack; as another player it first leaves as the old one.
        if let Some(at) = self.members.iter().position(|m| m.conn == member.conn) {
            if self.members[at].player_id == member.player_id {
                self.members.swap_remove(at);
            } else {
                self.detach(member.conn);
            }
        }
        if self.members.len() >= self.ctx.max_sockets {
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                "room has too many open sockets",
            ));
        }
        let tabs = self
            .members
            .iter()
            .filter(|m| m.player_id == member.player_id)
            .count();
        if tabs >= self.ctx.max_sockets_per_player {
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                format!(
                    "this player has {} open sockets in the room, the most it may have",
                    self.ctx.max_sockets_per_player
                ),
            ));
        }
        let conn = member.conn;
        let player_id = member.player_id.clone();
        // Judged before the joiner's own presence change, which moves the version.
        let last_version = self.resumable(&player_id, last_version);
        let comes_online = self.room.player(&player_id).is_some_and(|p| !p.connected);
        self.members.push(member);
        if comes_online {
            let origin = Origin::Socket {
                conn,
                player_id: player_id.clone(),
            };
            if let Err(why) = self.change(&origin, Action::Connect, Some(conn)) {
                self.members.retain(|m| m.conn != conn);
                return Err(why);
            }
        } else {
            // Part A: every other socket gets room_state on a join, changed or not.
            let frame = self.room_state_frame();
            let code = self.code.clone();
            self.fan_out(&Publication {
                room_code: &code,
                version: self.room.version(),
                kind: "room_state",
                frame: &frame,
                skip: Some(conn),
                change: false,
            });
        }
        if self.restored_at.is_some() {
            self.joined_since_restore.insert(player_id.clone());
        }
        let recovered = self.send_hello(conn, last_version);
        tracing::debug!(roomCode = %self.room.code(), playerId = %player_id, recovered, "attached");
        Ok(())
    }

    /// The client's `lastVersion` if it can name a version of this room as it is now,
    /// `None` if it cannot (then `hello_ack` says `recovered: false` and the snapshot
    /// is the truth). A version the room has not reached was lost in a crash. So may
    /// be one past the version the room was restored at, from a player who has not
    /// joined since: that number has been reused by the changes made since the restart.
    fn resumable(&self, player_id: &str, last_version: Option<u64>) -> Option<u64> {
        let v = last_version?;
        if v > self.room.version() {
            return None;
        }
        if let Some(restored_at) = self.restored_at
            && v > restored_at
            && !self.joined_since_restore.contains(player_id)
        {
            return None;
        }
        Some(v)
    }

    /// Sends `hello_ack`, then the events after `last_version` if the history still
    /// holds all of them and they fit the socket's queue together. Returns whether it
    /// did (`recovered`); if not, the snapshot in `hello_ack` is the truth.
    fn send_hello(&mut self, conn: ConnId, last_version: Option<u64>) -> bool {
        let Some(at) = self.members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        let version = self.room.version();
        let mut missed: Option<Vec<Frame>> = match last_version {
            Some(v) if v == version => Some(Vec::new()),
            Some(v) if v < version => match self.history.front() {
                // `v < version <= MAX_VERSION`, so `v + 1` cannot overflow.
                Some((first, _)) if *first <= v + 1 => Some(
                    self.history
                        .iter()
                        .filter(|(ver, _)| *ver > v)
                        .map(|(_, f)| f.clone())
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        };
        let mut frame = self.hello_frame(missed.is_some());
        let out = &self.members[at].out;
        if let Some(events) = &missed {
            let weight = frame.len() + events.iter().map(Frame::len).sum::<usize>();
            if !out.has_room(events.len() + 1, weight) {
                // Too much to replay into this socket's budget: the snapshot instead.
                missed = None;
                frame = self.hello_frame(false);
            }
        }
        let recovered = missed.is_some();
        let mut frames = vec![frame];
        frames.extend(missed.into_iter().flatten());
        if self.members[at].out.push_all(conn, frames) == Push::Overflowed {
            Metrics::inc(&self.ctx.metrics.counters.slow_consumer_closes_total);
        }
        recovered
    }

    fn hello_frame(&mut self, recovered: bool) -> Frame {
        let state = saved_state(&self.room);
        if let Some((cached, was_recovered, frame)) = &self.hello_cache
            && *cached == state
            && *was_recovered == recovered
        {
            return frame.clone();
        }
        let frame = self.build_hello(recovered);
        self.hello_cache = Some((state, recovered, frame.clone()));
        frame
    }

    fn build_hello(&self, recovered: bool) -> Frame {
        Frame::json(&ServerMessage::hello_ack(&self.room, recovered))
    }

    fn detach(&mut self, conn: ConnId) {
        let Some(at) = self.members.iter().position(|m| m.conn == conn) else {
            return;
        };
        let member = self.members.swap_remove(at);
        let last_socket = !self.members.iter().any(|m| m.player_id == member.player_id);
        if last_socket
            && !self.ctx.shutdown.is_cancelled()
            && self.room.player(&member.player_id).is_some()
        {
            let origin = Origin::Socket {
                conn,
                player_id: member.player_id,
            };
            let _ = self.change(&origin, Action::Disconnect, None);
        }
    }

    fn command(
        &mut self,
        origin: Origin,
        action: Action,
        reply: Option<oneshot::Sender<Result<Done, Rejection>>>,
    ) {
        let result = self.command_result(origin, action, reply.is_none());
        if let Some(reply) = reply {
            let _ = reply.send(result.map(|applied| Done {
                version: applied.version,
            }));
        }
    }

    /// Applies a command; with `answer_socket`, a socket's refusal is answered on
    /// that socket (a caller waiting for the outcome gets it instead).
    fn command_result(
        &mut self,
        origin: Origin,
        mut action: Action,
        answer_socket: bool,
    ) -> Result<Applied, Rejection> {
        if let Action::UpsertPlayer { player } = &mut action {
            // A token may have joined before the backend added the player.
            player.connected = self.members.iter().any(|m| m.player_id == player.id);
        }
        let result = self.change(&origin, action, None);
        otel::record_outcome(&result); // telemetry
        if let Ok(Applied {
            event: Event::PlayerRemoved { player_id },
            ..
        }) = &result
        {
            self.members.retain(|m| {
                let removed = &m.player_id == player_id;
                if removed {
                    m.out.close(m.conn, close::REMOVED, None);
                }
                !removed
            });
        }
        if let (true, Origin::Socket { conn, .. }, Err(why)) = (answer_socket, &origin, &result) {
            let frame = Frame::json(&ServerMessage::Error {
                code: why.code,
                message: &why.message,
            });
            if let Some(m) = self.members.iter().find(|m| m.conn == *conn) {
                m.out.push(*conn, frame);
            }
        }
        result
    }

    /// The one place a room changes: admit, apply, publish, observe.
    fn change(
        &mut self,
        origin: &Origin,
        action: Action,
        except: Option<ConnId>,
    ) -> Result<Applied, Rejection> {
        let actor = origin.actor();
        let observers = self.ctx.observers.clone();
        // A socket leaving (a closed socket cannot be refused) and a change's
        // follow-up (its first half is already accepted) are never asked. A socket
        // coming online is: at the queue's bound its join is refused, so presence
        // rows cannot grow the queue past it.
        let unasked = matches!(action, Action::Disconnect | Action::ResetReady);
        if let Err(why) = observers
            .iter()
            .filter(|_| !unasked)
            .try_for_each(|o| o.admit(&self.room))
        {
            observers
                .iter()
                .for_each(|o| o.rejected(&self.room, origin, &action, &why));
            return Err(why);
        }
        let for_observers = action.clone();
        let at = OffsetDateTime::now_utc();
        match self.room.apply(&actor, action, at) {
            Ok(applied) => {
                self.timer_retry = None;
                self.publish(&applied, except);
                let change = Change {
                    origin,
                    action: &for_observers,
                    at,
                    applied: &applied,
                };
                observers
                    .iter()
                    .for_each(|o| o.applied(&self.room, &change));
                if let Some(next) = applied.follow_up.clone() {
                    // Its own version, message and event row; it cannot be refused
                    // (server-only, nothing to check), so its result is not needed.
                    let _ = self.change(&Origin::Server, next, except);
                }
                Ok(applied)
            }
            Err(why) => {
                observers
                    .iter()
                    .for_each(|o| o.rejected(&self.room, origin, &for_observers, &why));
                Err(why)
            }
        }
    }

    /// Builds the event's frame once, records it for resume, and fans it out.
    fn publish(&mut self, applied: &Applied, except: Option<ConnId>) {
        let (kind, frame) = self.event_frame(applied);
        if applied.changed && self.ctx.history_limit > 0 {
            self.history_bytes += frame.len();
            self.history.push_back((applied.version, frame.clone()));
            while self.history.len() > self.ctx.history_limit
                || self.history_bytes > self.ctx.history_bytes
            {
                let Some((_, old)) = self.history.pop_front() else {
                    break;
                };
                self.history_bytes -= old.len();
            }
        }
        let code = self.code.clone();
        // telemetry: the broadcast as a child of the command that caused it.
        let span = otel::broadcast_span(&code, kind, applied.version, self.members.len());
        let _entered = span.enter();
        let started = otel::metrics_enabled().then(std::time::Instant::now);
        self.fan_out(&Publication {
            room_code: &code,
            version: applied.version,
            kind,
            frame: &frame,
            skip: except,
            change: applied.changed,
        });
        // With a follow-up, its own room_state comes right after and carries both.
        if applied.event.sends_room_state() && applied.follow_up.is_none() {
            let state = self.room_state_frame();
            self.fan_out(&Publication {
                room_code: &code,
                version: applied.version,
                kind: "room_state",
                frame: &state,
                skip: except,
                change: false,
            });
        }
        if let Some(started) = started {
            otel::record_fanout(started.elapsed());
        }
    }

    /// The one way a publication leaves the owner: this node's sockets, its
    /// watchers, then every relay.
    fn fan_out(&mut self, publication: &Publication<'_>) {
        self.broadcast(publication.frame, publication.skip);
        if !self.watchers.is_empty() {
            let event = watch_event(publication.kind, publication.version, publication.frame);
            self.watchers
                .retain(|w| w.out.push(event.clone()) == Push::Queued);
        }
        for link in &self.links {
            link.publish(publication);
        }
    }

    fn room_state_frame(&self) -> Frame {
        Frame::json(&ServerMessage::RoomState {
            snapshot: self.room.snapshot(),
        })
    }

    /// The event's wire type and frame.
    fn event_frame(&self, applied: &Applied) -> (&'static str, Frame) {
        let message = ServerMessage::of_event(&self.room, applied);
        (message.kind(), Frame::json(&message))
    }

    fn broadcast(&self, frame: &Frame, except: Option<ConnId>) {
        for m in &self.members {
            // Another node's sockets get the publication through its relay.
            let Sink::Local(out) = &m.out else {
                continue;
            };
            if Some(m.conn) == except {
                continue;
            }
            if out.push(frame.clone()) == Push::Overflowed {
                Metrics::inc(&self.ctx.metrics.counters.slow_consumer_closes_total);
                tracing::warn!(roomCode = %self.room.code(), playerId = %m.player_id, "slow_consumer_closed");
            }
        }
    }

    fn send_heartbeat(&self) {
        if self.members.is_empty() {
            return;
        }
        let now_ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let frame = Frame::json(&ServerMessage::Heartbeat {
            room_code: self.room.code(),
            timestamp: i64::try_from(now_ms).unwrap_or(i64::MAX),
            version: self.room.version(),
        });
        self.broadcast(&frame, None);
        // Sockets on other nodes get the owner's heartbeat through their relay.
        for link in &self.links {
            link.publish(&Publication {
                room_code: &self.code,
                version: self.room.version(),
                kind: "heartbeat",
                frame: &frame,
                skip: None,
                change: false,
            });
        }
    }
}

fn watch_event(kind: &'static str, version: u64, frame: &Frame) -> WatchEvent {
    WatchEvent {
        kind,
        version,
        json: frame.payload(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
