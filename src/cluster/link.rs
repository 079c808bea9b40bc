//! The owner's side of a room's relay on another node: one link per (room, node),
//! through which every message for that node's sockets and watchers goes, in order
//! and numbered.

use super::Cluster;
use super::wire::{Message, Relayed};
use crate::edge::frame::Frame;
use crate::fanout::{Publication, Relay};
use crate::observe::ConnId;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct RemoteLink {
    pub node: Arc<str>,
    /// The id the relay chose; it ignores messages under any other.
    pub id: u64,
    incarnation: u64,
    room: Arc<str>,
    epoch: u64,
    seq: AtomicU64,
    cluster: Arc<Cluster>,
    /// A socket's queue bound there (items, bytes), the same on every node: what a
    /// resume through this link may send at once.
    pub queue: (usize, usize),
}

fn text(frame: &Frame) -> String {
    String::from_utf8_lossy(&frame.payload()).into_owned()
}

impl RemoteLink {
    pub fn new(
        cluster: Arc<Cluster>,
        node: Arc<str>,
        id: u64,
        room: Arc<str>,
        epoch: u64,
        queue: (usize, usize),
    ) -> Arc<Self> {
        Arc::new(RemoteLink {
            node,
            id,
            incarnation: rand::random(),
            room,
            epoch,
            seq: AtomicU64::new(0),
            cluster,
            queue,
        })
    }

    fn relay(&self, body: Relayed) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.cluster.send(
            &self.node,
            &Message::Relay {
                room: self.room.to_string(),
                from: self.cluster.node.to_string(),
                link: self.id,
                incarnation: self.incarnation,
                epoch: self.epoch,
                seq,
                body,
            },
        );
    }

    pub fn to_conn(&self, conn: ConnId, frames: &[Frame]) {
        self.relay(Relayed::ToConn {
            conn,
            json: frames.iter().map(text).collect(),
        });
    }

    pub fn close_conn(&self, conn: ConnId, code: u16, reason: &str) {
        self.relay(Relayed::CloseConn {
            conn,
            code,
            reason: reason.to_string(),
        });
    }

    pub fn state(&self, version: u64, frame: &Frame) {
        self.relay(Relayed::State {
            version,
            json: text(frame),
        });
    }

    pub fn gone(&self, code: u16, reason: &str) {
        self.relay(Relayed::Gone {
            code,
            reason: reason.to_string(),
        });
    }
}

impl Relay for RemoteLink {
    fn publish(&self, publication: &Publication<'_>) {
        crate::telemetry::Metrics::inc(&self.cluster.metrics.counters.cluster_relayed_total);
        self.relay(Relayed::Publish {
            version: publication.version,
            kind: publication.kind.to_string(),
            change: publication.change,
            skip: publication.skip,
            json: text(publication.frame),
        });
    }
}
