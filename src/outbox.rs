//! The bounded link from a room (or the socket's own reader) to one consumer: a
//! socket's writer, or an admin-plane watcher.
//!
//! A socket's items are complete WebSocket frames shared by reference count, so a
//! broadcast is built once and every recipient's queue holds a pointer. The queue is
//! bounded in items and in bytes (the bytes of every frame queued or being written):
//! a consumer that does not keep up is closed with 1013 instead of growing the
//! server's memory. The consumer takes everything queued at each wake-up, so a burst
//! leaves in one write.

use crate::edge::frame::{Frame, close};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a queue's byte bound counts for one item.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Frame {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// A cheap, cloneable handle to one consumer's queue.
pub struct Outbox<T = Frame> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closing", &self.is_closing())
            .finish_non_exhaustive()
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the consumer: items arrived, or the queue is closing.
    wake: Notify,
    /// Cancelled once when the consumer must stop; a socket's reader waits on it too.
    closing: CancellationToken,
    max_items: usize,
    max_bytes: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Weight of the items queued and of those taken but not yet released.
    bytes: usize,
    /// The close code; the first `close` wins. 0 while open.
    code: u16,
    /// A reason other than the code's usual one.
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The bound was reached; the consumer is now closing with 1013.
    Overflowed,
    /// The consumer is already closing.
    Gone,
}

impl<T: Weigh> Outbox<T> {
    /// A queue holding at most `max_items` items and `max_bytes` bytes.
    pub fn new(max_items: usize, max_bytes: usize) -> Outbox<T> {
        Outbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    items: VecDeque::new(),
                    bytes: 0,
                    code: 0,
                    reason: None,
                }),
                wake: Notify::new(),
                closing: CancellationToken::new(),
                max_items,
                max_bytes,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (each
        // critical section is a few field updates), so keep using it.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one item without waiting.
    pub fn push(&self, item: T) -> Push {
        let weight = item.weight();
        self.push_with(1, weight, move |items| items.push_back(item))
    }

    /// Queues `items` in order, all or none.
    pub fn push_all(&self, items: Vec<T>) -> Push {
        let weight = items.iter().map(Weigh::weight).sum();
        self.push_with(items.len(), weight, move |queue| queue.extend(items))
    }

    fn push_with(&self, count: usize, weight: usize, add: impl FnOnce(&mut VecDeque<T>)) -> Push {
        let mut state = self.lock();
        if state.code != 0 {
            return Push::Gone;
        }
        let fits = state.items.len().saturating_add(count) <= self.shared.max_items
            && state.bytes.saturating_add(weight) <= self.shared.max_bytes;
        if !fits {
            drop(state);
            self.close(close::TRY_AGAIN_LATER);
            return Push::Overflowed;
        }
        // Only the first item wakes the consumer: it takes everything queued when
        // it runs, so later pushes before then need no wake-up of their own.
        let was_empty = state.items.is_empty();
        add(&mut state.items);
        state.bytes += weight;
        drop(state);
        if was_empty {
            self.shared.wake.notify_one();
        }
        Push::Queued
    }

    /// Whether `count` more items weighing `weight` would fit now.
    pub fn has_room(&self, count: usize, weight: usize) -> bool {
        let state = self.lock();
        state.code == 0
            && state.items.len().saturating_add(count) <= self.shared.max_items
            && state.bytes.saturating_add(weight) <= self.shared.max_bytes
    }

    /// Waits until items are queued or the queue closes, then moves every queued item
    /// to `out`. Returns false once the queue is closing and nothing is left. The
    /// items taken still count against the byte bound until [`Outbox::release`].
    pub async fn take(&self, out: &mut Vec<T>) -> bool {
        loop {
            {
                let mut state = self.lock();
                if !state.items.is_empty() {
                    out.extend(state.items.drain(..));
                    // An idle socket keeps no queue memory.
                    if state.items.capacity() > 64 {
                        state.items = VecDeque::new();
                    }
                    return true;
                }
                if state.code != 0 {
                    return false;
                }
            }
            self.shared.wake.notified().await;
        }
    }

    /// Takes what is queued without waiting (what a closing writer still sends).
    pub fn take_now(&self, out: &mut Vec<T>) {
        out.extend(self.lock().items.drain(..));
    }

    /// The consumer is done with items weighing `weight` (written, or dropped).
    pub fn release(&self, weight: usize) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(weight);
    }
}

impl<T> Outbox<T> {
    /// Asks the consumer to close with `code` and its usual reason; only the first
    /// request counts.
    pub fn close(&self, code: u16) {
        self.close_as(code, None);
    }

    /// Like `close`, with a reason of the caller's (cut to fit a Close frame).
    pub fn close_with_reason(&self, code: u16, reason: &str) {
        self.close_as(code, Some(reason));
    }

    fn close_as(&self, code: u16, reason: Option<&str>) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.code == 0 {
                state.code = code;
                state.reason = reason.map(|r| r.chars().take(123).collect());
            }
        }
        self.shared.closing.cancel();
        self.shared.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.shared.closing.is_cancelled()
    }

    /// Resolves once `close` has been called.
    pub async fn closed(&self) {
        self.shared.closing.cancelled().await
    }

    /// The code to close with (1000 if `close` was never called).
    pub fn close_code(&self) -> u16 {
        match self
            .shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .code
        {
            0 => close::NORMAL,
            code => code,
        }
    }

    /// The reason sent with the close frame.
    pub fn close_reason(&self) -> String {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        match &state.reason {
            Some(reason) => reason.clone(),
            None => close::reason(if state.code == 0 {
                close::NORMAL
            } else {
                state.code
            })
            .to_string(),
        }
    }

    /// Whether two handles are the same queue.
    pub fn same(&self, other: &Outbox<T>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame::text(&"x".repeat(n))
    }

    #[test]
    fn overflow_in_items_closes_with_1013() {
        let out = Outbox::new(2, 1 << 20);
        assert_eq!(out.push(frame(1)), Push::Queued);
        assert_eq!(out.push(frame(1)), Push::Queued);
        assert_eq!(out.push(frame(1)), Push::Overflowed);
        assert!(out.is_closing());
        assert_eq!(out.close_code(), close::TRY_AGAIN_LATER);
        assert_eq!(out.push(frame(1)), Push::Gone);
    }

    #[test]
    fn overflow_in_bytes_closes_with_1013() {
        let out = Outbox::new(100, 1000);
        assert_eq!(out.push(frame(600)), Push::Queued);
        assert!(!out.has_room(1, 600));
        assert_eq!(out.push(frame(600)), Push::Overflowed);
        assert_eq!(out.close_code(), close::TRY_AGAIN_LATER);
    }

    #[tokio::test]
    async fn taken_items_count_until_released() {
        let out = Outbox::new(100, 1000);
        assert_eq!(out.push(frame(600)), Push::Queued);
        let mut batch = Vec::new();
        assert!(out.take(&mut batch).await);
        assert_eq!(batch.len(), 1);
        // Still being written: its bytes are held.
        assert!(!out.has_room(1, 600));
        out.release(batch.iter().map(Weigh::weight).sum());
        assert!(out.has_room(1, 600));
    }

    #[tokio::test]
    async fn push_all_is_all_or_nothing_and_keeps_order() {
        let out = Outbox::new(3, 1 << 20);
        assert_eq!(out.push_all(vec![frame(1), frame(2)]), Push::Queued);
        let mut batch = Vec::new();
        assert!(out.take(&mut batch).await);
        assert_eq!(
            batch.iter().map(|f| f.payload().len()).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            out.push_all(vec![frame(1), frame(1), frame(1), frame(1)]),
            Push::Overflowed
        );
    }

    #[tokio::test]
    async fn a_closed_queue_drains_then_ends() {
        let out = Outbox::new(10, 1 << 20);
        out.push(frame(1));
        out.close(close::RESTART);
        let mut batch = Vec::new();
        assert!(out.take(&mut batch).await);
        batch.clear();
        assert!(!out.take(&mut batch).await);
        assert_eq!(out.close_code(), close::RESTART);
    }

    #[test]
    fn first_close_code_wins() {
        let out: Outbox = Outbox::new(2, 1 << 20);
        out.close(close::RESTART);
        out.close(close::POLICY);
        assert_eq!(out.close_code(), close::RESTART);
        assert_eq!(out.close_reason(), "server restarting");
    }
}
