//! The seam every publication of a room goes through.
//!
//! A room's owner builds each message's frame once and hands it, as a
//! [`Publication`], to its fan-out: the room's own sockets and admin-plane watchers on
//! this node, then every [`Relay`] (none on a single node; cluster mode adds one that
//! carries publications to the sockets other nodes hold for this room).

use crate::edge::frame::Frame;
use crate::observe::ConnId;

/// One message a room sends to everyone in it.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    pub room_code: &'a str,
    /// The room's version the message carries (its own, or the current one).
    pub version: u64,
    /// The message's wire type.
    pub kind: &'static str,
    /// The complete WebSocket frame, shared by every recipient.
    pub frame: &'a Frame,
    /// A socket that must not receive it (a joiner gets `hello_ack` instead).
    pub skip: Option<ConnId>,
    /// Whether it announces a change (it is then the version's event, kept for
    /// resume); `false` for `room_state` follow-ups and `presentation_state`.
    pub change: bool,
}

/// Carries publications beyond this node's sockets.
pub trait Relay: Send + Sync {
    fn publish(&self, publication: &Publication<'_>);
}
