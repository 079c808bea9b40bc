//! The bounded link from a room (or the socket's own reader) to one socket's writer.
//!
//! Frames are already-serialized text shared by reference count, so a broadcast
//! serializes once and every recipient's queue holds a pointer. The queue is bounded:
//! a socket that does not read fills it and is closed with 1013 instead of growing
//! the server's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// One serialized server → client text frame.
pub type Frame = Utf8Bytes;

/// Close codes the server uses, with their reasons.
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// Heartbeat timeout: the peer went away without closing.
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The room was closed through the admin plane.
    pub const ROOM_CLOSED: u16 = 4000;
    /// The player was removed from the room's roster.
    pub const REMOVED: u16 = 4001;

    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "heartbeat timeout",
            POLICY => "rate limit exceeded",
            TOO_BIG => "message too big",
            RESTART => "server restarting",
            TRY_AGAIN_LATER => "outbound queue full",
            ROOM_CLOSED => "room closed",
            REMOVED => "removed from room",
            _ => "",
        }
    }
}

/// Shared between a socket's reader, writer and every room it is attached to.
#[derive(Debug)]
struct Control {
    /// Cancelled once when the socket must close; reader and writer both wait on it.
    closing: CancellationToken,
    /// The close code to send; the first caller of `close` wins.
    code: AtomicU16,
    /// A reason other than the code's usual one, set with the code.
    reason: std::sync::OnceLock<String>,
}

#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    control: Arc<Control>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full; the socket is now closing with 1013.
    Overflowed,
    /// The socket is already gone.
    Gone,
}

impl Outbox {
    pub fn channel(limit: usize) -> (Outbox, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(limit);
        let control = Arc::new(Control {
            closing: CancellationToken::new(),
            code: AtomicU16::new(0),
            reason: std::sync::OnceLock::new(),
        });
        (Outbox { tx, control }, rx)
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Frame) -> Push {
        match self.tx.try_send(frame) {
            Ok(()) => Push::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(close::TRY_AGAIN_LATER);
                Push::Overflowed
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Gone,
        }
    }

    /// Asks the socket to close with `code`; only the first request counts.
    pub fn close(&self, code: u16) {
        self.close_with_reason(code, close::reason(code));
    }

    pub fn is_closing(&self) -> bool {
        self.control.closing.is_cancelled()
    }

    /// Like `close`, with a reason of the caller's (at most 123 bytes are sent).
    pub fn close_with_reason(&self, code: u16, reason: &str) {
        if self
            .control
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let _ = self.control.reason.set(reason[..end].to_string());
        }
        self.control.closing.cancel();
    }

    /// The reason sent with the close frame.
    pub fn close_reason(&self) -> String {
        match self.control.reason.get() {
            Some(reason) => reason.clone(),
            None => close::reason(self.close_code()).to_string(),
        }
    }

    /// Resolves once `close` has been called.
    pub async fn closed(&self) {
        self.control.closing.cancelled().await
    }

    pub fn close_code(&self) -> u16 {
        match self.control.code.load(Ordering::Acquire) {
            0 => close::NORMAL,
            code => code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_1013() {
        let (out, _rx) = Outbox::channel(2);
        assert_eq!(out.push("a".into()), Push::Queued);
        assert_eq!(out.push("b".into()), Push::Queued);
        assert_eq!(out.push("c".into()), Push::Overflowed);
        assert!(out.is_closing());
        assert_eq!(out.close_code(), close::TRY_AGAIN_LATER);
    }

    #[test]
    fn first_close_code_wins() {
        let (out, _rx) = Outbox::channel(2);
        out.close(close::RESTART);
        out.close(close::POLICY);
        assert_eq!(out.close_code(), close::RESTART);
    }
}
