//! A room's relay on a node that does not own it: a task behind an ordinary
//! [`RoomHandle`], so sockets and the admin plane use it exactly as they use an owner.
//! It passes their messages to the owner node and delivers what the owner sends back
//! to the sockets and watchers here, checking each relayed message's link, epoch and
//! sequence number. Anything out of order means something was lost (pub/sub is at
//! most once): the relay then closes its sockets with 1012, and the clients resume
//! with `lastVersion` from the owner, rather than see a gap.

use super::Cluster;
use super::wire::{Answer, Message, Relayed};
use crate::edge::frame::{Frame, close};
use crate::observe::ConnId;
use crate::outbox::{Outbox, Push};
use crate::owner::{Done, Exit, Member, RoomHandle, RoomMsg, Sink, WatchEvent, WatcherCount};
use crate::protocol::server::ServerMessage;
use crate::protocol::{ErrorCode, Rejection};
use crate::registry::unavailable;
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// A relay with no socket and no watcher for this long stops.
const IDLE: Duration = Duration::from_secs(5);
const QUEUE: usize = 1024;

struct Local {
    conn: ConnId,
    out: Outbox,
    /// Its `hello_ack` has not come yet: publications before it are not its own.
    waiting: bool,
}

struct Watching {
    /// Names a watcher waiting for the owner's answer.
    id: u64,
    out: Outbox<WatchEvent>,
    count: Arc<WatcherCount>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Proxy {
    code: Arc<str>,
    owner: String,
    link: u64,
    cluster: Arc<Cluster>,
    members: Vec<Local>,
    watchers: Vec<Watching>,
    /// Watchers waiting for the room's state from the owner.
    waiting_watchers: Vec<Watching>,
    epoch: Option<u64>,
    /// The owner's side of the link, learnt from its first message.
    incarnation: Option<u64>,
    next_seq: u64,
    /// When the owner was last heard from; a relay with sockets that hears nothing
    /// (not even a heartbeat) for `silence` resyncs.
    last_heard: tokio::time::Instant,
    silence: Duration,
    next_watcher: u64,
    watcher_count: Arc<WatcherCount>,
    tx: mpsc::WeakSender<RoomMsg>,
    /// The owner closed the room (not moved it): its code is retired here too.
    closed: bool,
}

/// Starts a relay of `code`, whose owner is `owner`. `on_exit` runs when it ends.
pub fn spawn(
    code: &str,
    owner: String,
    cluster: Arc<Cluster>,
    watcher_count: Arc<WatcherCount>,
    silence: Duration,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> RoomHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    let code: Arc<str> = code.into();
    let proxy = Proxy {
        code: code.clone(),
        owner,
        link: rand::random(),
        members: Vec::new(),
        watchers: Vec::new(),
        waiting_watchers: Vec::new(),
        epoch: None,
        incarnation: None,
        next_seq: 1,
        last_heard: tokio::time::Instant::now(),
        silence,
        next_watcher: 0,
        watcher_count,
        tx: tx.downgrade(),
        closed: false,
        cluster,
    };
    tokio::spawn(async move {
        let exit = proxy.run(rx).await;
        on_exit(exit);
    });
    RoomHandle::new(code, tx)
}

/// A call to the owner, and the one answer it expects (`pick`); a refusal or a
/// timeout is the call's error. A refusal saying that node no longer serves the room
/// also makes the relay go, so that the room's next user finds where it is now.
async fn ask<T>(
    cluster: &Cluster,
    owner: &str,
    tx: &mpsc::WeakSender<RoomMsg>,
    message: impl FnOnce(u64) -> Message,
    pick: impl FnOnce(Answer) -> Option<Result<T, Rejection>>,
) -> Result<T, Rejection> {
    match cluster.call(owner, message).await? {
        Answer::Refused { why, moved } => {
            if moved && let Some(tx) = tx.upgrade() {
                let node = owner.to_string();
                let _ = tx.send(RoomMsg::NodeGone { node }).await;
            }
            Err(why)
        }
        answer => pick(answer).unwrap_or_else(|| Err(unavailable("unexpected answer"))),
    }
}

impl Proxy {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomMsg>) -> Exit {
        let mut live = self.cluster.watch_live();
        let mut idle = tokio::time::interval(IDLE);
        idle.tick().await;
        let mut was_idle = false;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => if !self.handle(msg) { break },
                    None => break,
                },
                changed = live.changed() => {
                    if changed.is_err() || !live.borrow().contains(&self.owner) {
                        self.resync("the room's node left the cluster");
                        break;
                    }
                }
                _ = idle.tick() => {
                    self.waiting_watchers.retain(|w| !w.out.is_closing());
                    if !self.members.is_empty() && self.last_heard.elapsed() > self.silence {
                        self.resync("nothing heard from the room's node");
                        break;
                    }
                    let empty = self.members.is_empty()
                        && self.watchers.is_empty()
                        && self.waiting_watchers.is_empty();
                    if empty && was_idle {
                        break;
                    }
                    was_idle = empty;
                    self.watchers.retain(|w| !w.out.is_closing());
                }
            }
        }
        self.cluster.send(
            &self.owner,
            &Message::Unlink {
                room: self.code.to_string(),
                from: self.cluster.node.to_string(),
                link: self.link,
            },
        );
        if self.closed {
            Exit::Ended
        } else {
            Exit::Moved
        }
    }

    /// Handles one message; false once the relay is to stop.
    fn handle(&mut self, msg: RoomMsg) -> bool {
        // The relay's hot path (every publication) allocates nothing here.
        let msg = match msg {
            RoomMsg::Relayed(message) => return self.relayed(*message),
            other => other,
        };
        let room = self.code.to_string();
        let from = self.cluster.node.to_string();
        match msg {
            RoomMsg::Attach {
                member,
                last_version,
                reply,
            } => {
                let Member {
                    conn,
                    player_id,
                    out,
                } = member;
                let Sink::Local(out) = out else {
                    let _ = reply.send(Err(unavailable("not a socket of this node")));
                    return true;
                };
                self.members.retain(|m| m.conn != conn);
                if self.members.is_empty() {
                    // The first socket starts the silence clock afresh.
                    self.last_heard = tokio::time::Instant::now();
                }
                self.members.push(Local {
                    conn,
                    out,
                    waiting: true,
                });
                let (cluster, owner, link, tx) = (
                    self.cluster.clone(),
                    self.owner.clone(),
                    self.link,
                    self.tx.clone(),
                );
                let code = room.clone();
                tokio::spawn(async move {
                    let answer = cluster
                        .call(&owner, |call| Message::Attach {
                            room,
                            from,
                            call,
                            link,
                            conn,
                            player_id,
                            last_version,
                        })
                        .await;
                    // Refused by the rules (a full room) the relay goes on; any other
                    // failure means the node asked does not serve the room (any more).
                    let (result, stale) = match answer {
                        Ok(Answer::Attached { result }) => (result, false),
                        Ok(Answer::Refused { why, moved }) => (Err(why), moved),
                        Ok(_) => (Err(unavailable("unexpected answer")), true),
                        Err(why) => (Err(why), true),
                    };
                    if result.is_err() {
                        // The owner may have taken the socket all the same (an answer
                        // lost or late): it must not stay there as a ghost.
                        cluster.send(&owner, &Message::Detach { room: code, conn });
                        if let Some(tx) = tx.upgrade() {
                            let _ = tx.send(RoomMsg::AttachRefused { conn, stale }).await;
                        }
                    }
                    let _ = reply.send(result);
                });
            }
            RoomMsg::AttachRefused { conn, stale } => {
                self.members.retain(|m| m.conn != conn);
                if stale {
                    self.resync("the room's node does not serve it");
                    return false;
                }
            }
            RoomMsg::WatchRefused { id } => self.waiting_watchers.retain(|w| w.id != id),
            RoomMsg::Detach { conn } => {
                self.members.retain(|m| m.conn != conn);
                self.cluster
                    .send(&self.owner, &Message::Detach { room, conn });
            }
            RoomMsg::Command { command, reply, .. } => {
                let crate::observe::Command { origin, action } = *command;
                match reply {
                    None => self.cluster.send(
                        &self.owner,
                        &Message::Command {
                            room,
                            from,
                            call: None,
                            origin,
                            action,
                        },
                    ),
                    Some(reply) => {
                        let (cluster, owner, tx) =
                            (self.cluster.clone(), self.owner.clone(), self.tx.clone());
                        tokio::spawn(async move {
                            let message = |call| Message::Command {
                                room,
                                from,
                                call: Some(call),
                                origin,
                                action,
                            };
                            let result = ask(&cluster, &owner, &tx, message, |a| match a {
                                Answer::Applied { result } => {
                                    Some(result.map(|version| Done { version }))
                                }
                                _ => None,
                            });
                            let _ = reply.send(result.await);
                        });
                    }
                }
            }
            RoomMsg::Info { reply } => {
                let (cluster, owner, tx) =
                    (self.cluster.clone(), self.owner.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let message = |call| Message::Info { room, from, call };
                    let result = ask(&cluster, &owner, &tx, message, |a| match a {
                        Answer::Info { info } => Some(Ok(info)),
                        _ => None,
                    });
                    let _ = reply.send(result.await);
                });
            }
            RoomMsg::Close { reason, reply } => {
                let (cluster, owner, tx) =
                    (self.cluster.clone(), self.owner.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let message = |call| Message::Close {
                        room,
                        from,
                        call,
                        reason,
                    };
                    let result = ask(&cluster, &owner, &tx, message, |a| match a {
                        Answer::Closed { snapshot } => Some(Ok(snapshot)),
                        _ => None,
                    });
                    let _ = reply.send(result.await);
                });
            }
            RoomMsg::Watch { out, reply } => {
                let count = &self.watcher_count;
                if count.open.fetch_add(1, Ordering::AcqRel) >= count.max {
                    count.open.fetch_sub(1, Ordering::AcqRel);
                    let _ = reply.send(Err(Rejection::new(
                        ErrorCode::RateLimited,
                        format!("the server has {} watchers, the most it takes", count.max),
                    )));
                    return true;
                }
                let id = self.next_watcher;
                self.next_watcher += 1;
                self.waiting_watchers.push(Watching {
                    id,
                    out,
                    count: count.clone(),
                });
                let (cluster, owner, link, tx) = (
                    self.cluster.clone(),
                    self.owner.clone(),
                    self.link,
                    self.tx.clone(),
                );
                tokio::spawn(async move {
                    let message = |call| Message::Link {
                        room,
                        from,
                        call,
                        link,
                    };
                    let result = ask(&cluster, &owner, &tx, message, |a| match a {
                        Answer::Linked { result } => Some(result),
                        _ => None,
                    })
                    .await;
                    if result.is_err()
                        && let Some(tx) = tx.upgrade()
                    {
                        let _ = tx.send(RoomMsg::WatchRefused { id }).await;
                    }
                    let _ = reply.send(result);
                });
            }
            RoomMsg::Checkpoint { reply } => {
                let _ = reply.send(());
            }
            RoomMsg::Relayed(_) => {}
            RoomMsg::Stop {
                code,
                reason,
                reply,
                ..
            } => {
                self.close_all(code, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return false;
            }
            RoomMsg::NodeGone { node } => {
                if node == self.owner {
                    self.resync("the room's node left the cluster");
                    return false;
                }
            }
            RoomMsg::Remote(_) => {}
        }
        true
    }

    /// One message from the owner, checked against the link before it is delivered.
    fn relayed(&mut self, message: Message) -> bool {
        let Message::Relay {
            link,
            incarnation,
            epoch,
            seq,
            body,
            ..
        } = message
        else {
            return true;
        };
        if link != self.link {
            return true; // for an earlier relay of this room here
        }
        match self.epoch {
            Some(known) if epoch < known => return true, // a stale owner's
            Some(known) if epoch > known => {
                self.resync("the room has a new owner");
                return false;
            }
            _ => self.epoch = Some(epoch),
        }
        match self.incarnation {
            Some(known) if known != incarnation => {
                self.resync("the room's node made the link again");
                return false;
            }
            _ => self.incarnation = Some(incarnation),
        }
        self.last_heard = tokio::time::Instant::now();
        if seq < self.next_seq {
            return true; // a duplicate
        }
        if seq > self.next_seq {
            self.resync("messages from the room's node were lost");
            return false;
        }
        self.next_seq += 1;
        match body {
            Relayed::Publish {
                version,
                kind,
                skip,
                json,
                ..
            } => {
                let frame = Frame::text(&json);
                for m in &self.members {
                    if m.waiting || Some(m.conn) == skip {
                        continue;
                    }
                    if m.out.push(frame.clone()) == Push::Overflowed {
                        Metrics::inc(&self.cluster.metrics.counters.slow_consumer_closes_total);
                    }
                }
                // Watchers get every event, not heartbeats (as on the owner's node).
                if !self.watchers.is_empty() && kind != "heartbeat" {
                    let event = WatchEvent {
                        kind: ServerMessage::kind_named(&kind).unwrap_or("event"),
                        version,
                        json: frame.payload(),
                    };
                    self.watchers
                        .retain(|w| w.out.push(event.clone()) == Push::Queued);
                }
            }
            Relayed::ToConn { conn, json } => {
                if let Some(m) = self.members.iter_mut().find(|m| m.conn == conn) {
                    m.waiting = false;
                    let frames = json.iter().map(|j| Frame::text(j)).collect();
                    if m.out.push_all(frames) == Push::Overflowed {
                        Metrics::inc(&self.cluster.metrics.counters.slow_consumer_closes_total);
                    }
                }
            }
            Relayed::CloseConn { conn, code, reason } => {
                self.members.retain(|m| {
                    if m.conn == conn {
                        if reason.is_empty() {
                            m.out.close(code);
                        } else {
                            m.out.close_with_reason(code, &reason);
                        }
                        false
                    } else {
                        true
                    }
                });
            }
            Relayed::State { version, json } => {
                let event = WatchEvent {
                    kind: "room_state",
                    version,
                    json: Frame::text(&json).payload(),
                };
                for w in self.waiting_watchers.drain(..) {
                    if w.out.push(event.clone()) == Push::Queued {
                        self.watchers.push(w);
                    }
                }
            }
            Relayed::Gone { code, reason } => {
                self.closed = code == close::ROOM_CLOSED;
                self.close_all(code, &reason);
                return false;
            }
        }
        true
    }

    fn close_all(&mut self, code: u16, reason: &str) {
        for m in self.members.drain(..) {
            m.out.close_with_reason(code, reason);
        }
        for w in self
            .watchers
            .drain(..)
            .chain(self.waiting_watchers.drain(..))
        {
            w.out.close(code);
        }
    }

    /// Something was lost between the owner and here: every socket reconnects and
    /// resumes from the owner with `lastVersion` (1012), never sees a gap.
    fn resync(&mut self, why: &str) {
        Metrics::inc(&self.cluster.metrics.counters.cluster_resyncs_total);
        tracing::warn!(roomCode = %self.code, owner = %self.owner, sockets = self.members.len(), reason = why, "cluster_relay_resync");
        self.close_all(close::RESTART, "resync");
    }
}
