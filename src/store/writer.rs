//! Persistence off the room's path: an observer that queues rows, and one task that
//! writes them in batches, in order, retrying with backoff through outages.
//!
//! The queue is bounded by counting (`depth`): past `limit` the observer refuses new
//! state changes with `unavailable`, so nothing acknowledged to a player is ever
//! dropped. Rows leave the queue only once the database has accepted them, and the
//! primary keys make a retried row a no-op: every row lands exactly once.

use super::{EventPayload, EventRow, SnapshotRow, Store};
use crate::observe::{Change, Observer};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use crate::telemetry::Metrics;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Row {
    Event(EventRow),
    Snapshot(SnapshotRow),
}

/// The observer rooms call; cheap and lock-free on their path.
pub struct Persistence {
    tx: mpsc::UnboundedSender<Row>,
    /// Rows queued or being written.
    depth: Arc<AtomicUsize>,
    limit: usize,
}

impl Persistence {
    fn push(&self, row: Row) {
        self.depth.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(row).is_err() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("persist_after_writer_stopped");
        }
    }

    /// Rows waiting to be written.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
}

impl Observer for Persistence {
    fn admit(&self, _room: &Room) -> Result<(), Rejection> {
        if self.depth() >= self.limit {
            Err(Rejection::new(
                ErrorCode::Unavailable,
                "the database is unreachable and the write queue is full; try again shortly",
            ))
        } else {
            Ok(())
        }
    }

    fn applied(&self, room: &Room, change: &Change<'_>) {
        if !change.applied.changed {
            return;
        }
        let payload = EventPayload {
            actor: change.origin.actor(),
            at: crate::protocol::Timestamp::from_instant(change.at),
            action: change.action.clone(),
        };
        let payload = match serde_json::to_string(&payload) {
            Ok(p) => p,
            Err(e) => {
                // Plain data always serializes; if it ever does not, say so loudly.
                tracing::error!(roomCode = %room.code(), error = %e, "event_encode_failed");
                return;
            }
        };
        self.push(Row::Event(EventRow {
            room_code: room.code().to_string(),
            event_type: change.applied.event.kind(),
            version: change.applied.version,
            payload,
            created_at: change.at,
        }));
    }

    fn checkpoint(&self, room: &Room, closed: bool) {
        match serde_json::to_string(&room.to_stored(closed)) {
            Ok(snapshot) => self.push(Row::Snapshot(SnapshotRow {
                room_code: room.code().to_string(),
                version: room.version(),
                snapshot,
                captured_at: OffsetDateTime::now_utc(),
            })),
            Err(e) => {
                tracing::error!(roomCode = %room.code(), error = %e, "snapshot_encode_failed")
            }
        }
    }
}

/// Settings of the writer task.
pub struct WriterConfig {
    pub limit: usize,
    pub batch_max: usize,
    pub flush_interval: Duration,
}

/// Stops the writer after it has written everything queued.
pub struct WriterHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    depth: Arc<AtomicUsize>,
}

impl WriterHandle {
    /// Writes what is queued, then stops; gives up at `deadline`. Returns the rows
    /// left unwritten (0 unless the database stayed down).
    pub async fn finish(self, deadline: Duration) -> usize {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            // The database stayed down: stop retrying, the process is exiting.
            abort.abort();
        }
        self.depth.load(Ordering::Acquire)
    }
}

/// Starts the writer; returns the observer for the rooms and the writer's handle.
pub fn start(
    store: Store,
    config: WriterConfig,
    metrics: Arc<Metrics>,
) -> (Arc<Persistence>, WriterHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = metrics.persist_queue_depth.clone();
    let stop = CancellationToken::new();
    let writer = Writer {
        rx,
        events: VecDeque::new(),
        snapshots: VecDeque::new(),
        store,
        depth: depth.clone(),
        metrics,
        batch_max: config.batch_max,
        flush_interval: config.flush_interval,
        stop: stop.clone(),
    };
    let task = tokio::spawn(writer.run());
    let persistence = Arc::new(Persistence {
        tx,
        depth: depth.clone(),
        limit: config.limit,
    });
    (persistence, WriterHandle { stop, task, depth })
}

struct Writer {
    rx: mpsc::UnboundedReceiver<Row>,
    /// Rows taken from the channel but not yet accepted by the database, in order
    /// (per kind; a snapshot holds the whole room, so it needs no order with events).
    events: VecDeque<EventRow>,
    snapshots: VecDeque<SnapshotRow>,
    store: Store,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    flush_interval: Duration,
    stop: CancellationToken,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let stopping = self.stop.is_cancelled();
            if self.pending_len() == 0 {
                if stopping {
                    self.drain_channel();
                    if self.pending_len() == 0 {
                        return;
                    }
                } else {
                    tokio::select! {
                        row = self.rx.recv() => match row {
                            Some(row) => self.take(row),
                            None => return,
                        },
                        _ = self.stop.cancelled() => continue,
                    }
                    // Let a batch build up for one window (the kill -9 loss bound).
                    let window = tokio::time::sleep(self.flush_interval);
                    tokio::pin!(window);
                    while self.pending_len() < self.batch_max {
                        tokio::select! {
                            row = self.rx.recv() => match row {
                                Some(row) => self.take(row),
                                None => break,
                            },
                            _ = &mut window => break,
                            _ = self.stop.cancelled() => break,
                        }
                    }
                }
            }
            self.drain_channel();
            match self.write_batch().await {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            queued = self.depth.load(Ordering::Acquire),
                            "persistence_recovered"
                        );
                    }
                    backoff = BACKOFF_FIRST;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.counters.event_persist_failures_total);
                    failing_since.get_or_insert_with(std::time::Instant::now);
                    tracing::warn!(
                        error = %e,
                        queued = self.depth.load(Ordering::Acquire),
                        retry_in_ms = backoff.as_millis() as u64,
                        "persist_batch_failed"
                    );
                    // The name operators of the Node service alert on, once per
                    // failed attempt that carried snapshots.
                    if !self.snapshots.is_empty() {
                        tracing::warn!(
                            error = %e,
                            rooms = self.snapshots.len(),
                            "snapshot_persist_failed"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn pending_len(&self) -> usize {
        self.events.len() + self.snapshots.len()
    }

    fn take(&mut self, row: Row) {
        match row {
            Row::Event(e) => self.events.push_back(e),
            Row::Snapshot(s) => self.snapshots.push_back(s),
        }
    }

    /// Moves whatever is in the channel now into the pending queues (keeps order).
    fn drain_channel(&mut self) {
        while let Ok(row) = self.rx.try_recv() {
            self.take(row);
        }
    }

    /// Writes the oldest pending rows (at most `batch_max`, events first); removes
    /// them only once the database has accepted them.
    async fn write_batch(&mut self) -> Result<(), sqlx::Error> {
        // A quarter of each batch is kept for snapshots, so a steady stream of
        // events can never starve them.
        let snapshots = self.snapshots.make_contiguous();
        let n_snapshots = snapshots.len().min(self.batch_max / 4 + 1);
        let events = self.events.make_contiguous();
        let n_events = events
            .len()
            .min(self.batch_max.saturating_sub(n_snapshots).max(1));
        let started = std::time::Instant::now();
        self.store
            .write(&events[..n_events], &snapshots[..n_snapshots])
            .await?;
        self.events.drain(..n_events);
        self.snapshots.drain(..n_snapshots);
        let n = n_events + n_snapshots;
        self.depth.fetch_sub(n, Ordering::AcqRel);
        let c = &self.metrics.counters;
        c.event_persist_success_total
            .fetch_add(n_events as u64, Ordering::Relaxed);
        c.snapshots_persisted_total
            .fetch_add(n_snapshots as u64, Ordering::Relaxed);
        self.metrics.record_persist_batch(started.elapsed());
        Ok(())
    }
}
