//! What nodes say to each other over Redis pub/sub: one JSON message per publish, on
//! the receiving node's inbox channel. Everything here is plain data.
//!
//! Messages to a room's owner name the room and the node asking; messages from an
//! owner to another node's relay of a room carry the owner's epoch and a sequence
//! number per (room, node) link, so the relay can drop what is stale and notice what
//! was lost (pub/sub delivers at most once).

use crate::observe::{ConnId, Origin};
use crate::protocol::{Rejection, RoomSnapshot};
use crate::room::Action;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// A socket on `from` joins the room (the owner answers `Attached`, and sends
    /// the socket its `hello_ack` through the link first).
    Attach {
        room: String,
        from: String,
        call: u64,
        /// The relay's link id: relays tagged with another one are not for it.
        link: u64,
        conn: ConnId,
        player_id: String,
        last_version: Option<u64>,
    },
    Detach {
        room: String,
        conn: ConnId,
    },
    /// A player message (no call: errors go to the socket) or an admin call.
    Command {
        room: String,
        from: String,
        call: Option<u64>,
        origin: Origin,
        action: Action,
    },
    Info {
        room: String,
        from: String,
        call: u64,
    },
    Close {
        room: String,
        from: String,
        call: u64,
        reason: String,
    },
    /// `from` relays this room (a watcher there): the owner links it and sends the
    /// room's state through the link.
    Link {
        room: String,
        from: String,
        call: u64,
        link: u64,
    },
    /// `from` relays this room no more.
    Unlink {
        room: String,
        from: String,
        link: u64,
    },
    /// From an owner to one node's relay of the room: `seq` counts from 1 per link,
    /// and `incarnation` names the owner's side of the link (a link the owner dropped
    /// and made again starts over under another one).
    Relay {
        room: String,
        /// The owner's node: a node with no relay of the room answers it `Unlink`.
        #[serde(default)]
        from: String,
        link: u64,
        #[serde(default)]
        incarnation: u64,
        epoch: u64,
        seq: u64,
        body: Relayed,
    },
    /// A room made elsewhere (an admin call or a seed on another node), for the node
    /// the room's code prefers to own it.
    Create {
        room: String,
        from: String,
        call: u64,
        stored: Box<crate::room::StoredRoom>,
        seeded: bool,
    },
    /// A room's previous owner handed it over: the node it now prefers takes it
    /// over at once, before any client comes back.
    Adopt {
        room: String,
    },
    Answer {
        call: u64,
        answer: Answer,
    },
    /// A node's probe of its own subscription.
    Ping,
}

/// What an owner sends a relay, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Relayed {
    /// A publication to every socket and watcher of the room there.
    Publish {
        version: u64,
        kind: String,
        change: bool,
        skip: Option<ConnId>,
        json: String,
    },
    /// Frames for one socket (its `hello_ack` and resumed events, an error).
    ToConn { conn: ConnId, json: Vec<String> },
    CloseConn {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// The room's state, for the watchers waiting there.
    State { version: u64, json: String },
    /// The owner serves the room no more (closed, moved, handed over).
    Gone { code: u16, reason: String },
}

/// The outcome of a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Answer {
    Attached {
        result: Result<(), Rejection>,
    },
    /// The room's version after the change.
    Applied {
        result: Result<u64, Rejection>,
    },
    Info {
        info: crate::owner::RoomInfo,
    },
    Closed {
        snapshot: RoomSnapshot,
    },
    Linked {
        result: Result<(), Rejection>,
    },
    Created {
        result: Result<(), Rejection>,
    },
    /// The node asked could not serve the call: with `moved`, because it does not own
    /// the room (nor could take it); without, for now (the room's queue was full).
    Refused {
        why: Rejection,
        #[serde(default)]
        moved: bool,
    },
}

impl Message {
    /// The room a message to an owner is about.
    pub fn owner_room(&self) -> Option<&str> {
        match self {
            Message::Attach { room, .. }
            | Message::Detach { room, .. }
            | Message::Command { room, .. }
            | Message::Info { room, .. }
            | Message::Close { room, .. }
            | Message::Link { room, .. }
            | Message::Unlink { room, .. }
            | Message::Create { room, .. }
            | Message::Adopt { room } => Some(room),
            _ => None,
        }
    }

    /// Who to answer, and under which call, if the message is a call.
    pub fn caller(&self) -> Option<(&str, u64)> {
        match self {
            Message::Attach { from, call, .. }
            | Message::Info { from, call, .. }
            | Message::Close { from, call, .. }
            | Message::Link { from, call, .. }
            | Message::Create { from, call, .. } => Some((from, *call)),
            Message::Command {
                from,
                call: Some(call),
                ..
            } => Some((from, *call)),
            _ => None,
        }
    }
}
