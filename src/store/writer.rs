//! Persistence off the room's path: an observer that queues rows, and one task that
//! writes them in batches, in order, retrying through outages and setting aside the
//! rows the database refuses.
//!
//! The queue is bounded in rows and in bytes: past either bound the observer refuses
//! new state changes with `unavailable`, so nothing acknowledged to a player is ever
//! dropped. Rows leave the queue only once the database has accepted them (or, refused
//! for their content, once they are kept as dead letters), and the primary keys make a
//! retried row a no-op: every row lands exactly once.
//!
//! A room's checkpoint is its snapshot plus a row for each canvas that changed since
//! the last one sent; queued checkpoints of one room coalesce into one (the newest
//! snapshot, the newest row of each canvas), so an outage queues one copy of a room,
//! not one per interval.
//!
//! A batch the database refuses for its content is halved until each part is written
//! or is one row refused alone; that row goes to `persist_dead_letters`. Any other
//! failure (unreachable, timed out) retries the same rows with backoff, each time on a
//! fresh connection (see `Store::write`).

use super::{Batch, CanvasRow, DeadLetter, EventPayload, EventRow, SnapshotRow, Store, WriteError};
use crate::observe::{Change, Observer};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use crate::telemetry::{Metrics, otel};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Counted per queued row on top of its text: keys, times, the queue's bookkeeping.
const ROW_OVERHEAD: usize = 128;

/// What the observer sends the writer.
#[derive(Debug)]
enum Row {
    Event(EventRow),
    /// A room's snapshot and the rows of the canvases changed since its last one.
    Checkpoint {
        canvases: Vec<CanvasRow>,
        snapshot: SnapshotRow,
    },
}

fn event_size(e: &EventRow) -> usize {
    ROW_OVERHEAD + e.room_code.len() + e.payload.len()
}

fn canvas_size(c: &CanvasRow) -> usize {
    ROW_OVERHEAD + c.room_code.len() + c.adlob_id.len() + c.ops.len()
}

fn snapshot_size(s: &SnapshotRow) -> usize {
    let names: usize = s.canvases.keys().map(|id| id.len() + 8).sum();
    ROW_OVERHEAD + s.room_code.len() + s.snapshot.len() + names
}

impl Row {
    fn size(&self) -> (usize, usize) {
        match self {
            Row::Event(e) => (1, event_size(e)),
            Row::Checkpoint { canvases, snapshot } => (
                1 + canvases.len(),
                snapshot_size(snapshot) + canvases.iter().map(canvas_size).sum::<usize>(),
            ),
        }
    }
}

/// Rows and bytes queued or being written: the observer adds, the writer removes.
/// Both are the gauges `persist_queue_depth` and `persist_queue_bytes`.
#[derive(Clone)]
struct Size {
    rows: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Size {
    fn add(&self, (rows, bytes): (usize, usize)) {
        self.rows.fetch_add(rows, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    fn sub(&self, (rows, bytes): (usize, usize)) {
        let sub = |a: &AtomicUsize, n: usize| {
            // Saturating: a slip in the bookkeeping must not wrap the bound open.
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.rows, rows);
        sub(&self.bytes, bytes);
    }

    fn rows(&self) -> usize {
        self.rows.load(Ordering::Acquire)
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// What the observer (on the rooms' tasks) and the writer share.
struct Shared {
    size: Size,
    /// The last database call failed (unreachable, timed out): a full queue then
    /// means the database is down, not merely slower than the load.
    failing: AtomicBool,
    /// Per room, the version of each canvas last sent to the writer: a checkpoint
    /// sends only the canvases changed since. A room's entry is cleared when one of
    /// its canvas rows is refused, so that its next checkpoint sends them all.
    sent: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// Rooms that lost an event row (a dead letter) and need a snapshot past the gap
    /// it leaves in their log, checkpointed even if unchanged.
    forced: Mutex<HashSet<String>>,
    /// `forced.len()`, read without the lock on every room's checkpoint tick.
    forced_count: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent across a panic elsewhere (each update is one call).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn force_checkpoint(&self, room: &str) {
        let mut forced = lock(&self.forced);
        if forced.insert(room.to_string()) {
            self.forced_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn take_forced(&self, room: &str) -> bool {
        if self.forced_count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut forced = lock(&self.forced);
        let removed = forced.remove(room);
        if removed {
            self.forced_count.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    fn forget_sent(&self, room: &str) {
        lock(&self.sent).remove(room);
    }
}

/// The refusal a state change gets while the queue is at a bound; it says which of
/// the two situations it is, since operators and players act differently on each.
pub fn queue_full_message(failing: bool) -> &'static str {
    if failing {
        "the database is unreachable and the write queue is full; try again shortly"
    } else {
        "the database is slower than the load and the write queue is full; try again shortly"
    }
}

/// The observer rooms call; cheap and lock-free on their change path (a checkpoint
/// takes one short lock to learn which canvases changed).
pub struct Persistence {
    tx: mpsc::UnboundedSender<Row>,
    shared: Arc<Shared>,
    limit: usize,
    byte_limit: usize,
}

impl Persistence {
    fn push(&self, row: Row) {
        let size = row.size();
        self.shared.size.add(size);
        if self.tx.send(row).is_err() {
            self.shared.size.sub(size);
            tracing::error!("persist_after_writer_stopped");
        }
    }

    /// Rows waiting to be written.
    pub fn depth(&self) -> usize {
        self.shared.size.rows()
    }

    /// The canvases of `room` changed since they were last sent, as rows; marks them
    /// sent. `None` if one could not be encoded (then all are sent next time).
    fn changed_canvases(&self, room: &Room, closed: bool) -> Option<Vec<CanvasRow>> {
        let code = room.code();
        let changed: Vec<&String> = {
            let mut sent = lock(&self.shared.sent);
            let changed: Vec<&String> = match sent.get(code) {
                Some(marks) => room
                    .canvases
                    .iter()
                    .filter(|(id, c)| marks.get(id.as_str()) != Some(&c.version))
                    .map(|(id, _)| id)
                    .collect(),
                None => room.canvases.keys().collect(),
            };
            if closed {
                // The room's last checkpoint: nothing more to remember.
                sent.remove(code);
            } else {
                let marks = sent.entry(code.to_string()).or_default();
                for id in &changed {
                    if let Some(c) = room.canvases.get(id.as_str()) {
                        marks.insert((*id).clone(), c.version);
                    }
                }
            }
            changed
        };
        let captured_at = OffsetDateTime::now_utc();
        let mut rows = Vec::with_capacity(changed.len());
        for id in changed {
            let Some(canvas) = room.canvases.get(id) else {
                continue;
            };
            match serde_json::to_string(&canvas.ops) {
                Ok(ops) => rows.push(CanvasRow {
                    room_code: code.to_string(),
                    adlob_id: id.clone(),
                    version: canvas.version,
                    ops,
                    captured_at,
                    epoch: room.epoch,
                }),
                Err(e) => {
                    // Plain data always serializes; if it ever does not, say so loudly.
                    tracing::error!(roomCode = %code, adlobId = %id, error = %e, "snapshot_encode_failed");
                    self.shared.forget_sent(code);
                    return None;
                }
            }
        }
        Some(rows)
    }
}

impl Observer for Persistence {
    fn admit(&self, _room: &Room) -> Result<(), Rejection> {
        let size = &self.shared.size;
        if size.rows() >= self.limit || size.bytes() >= self.byte_limit {
            let failing = self.shared.failing.load(Ordering::Acquire);
            Err(Rejection::new(
                ErrorCode::Unavailable,
                queue_full_message(failing),
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
            trace: crate::telemetry::otel::current_link(), // telemetry
            epoch: room.epoch,
        }));
    }

    fn checkpoint(&self, room: &Room, closed: bool) {
        let Some(canvases) = self.changed_canvases(room, closed) else {
            return;
        };
        if closed {
            // A room that is closing needs no forced snapshot any more.
            self.shared.take_forced(room.code());
        }
        let stored = room.to_stored_apart(closed);
        let canvas_versions = stored.canvas_versions.clone();
        match serde_json::to_string(&stored) {
            Ok(snapshot) => self.push(Row::Checkpoint {
                canvases,
                snapshot: SnapshotRow {
                    room_code: room.code().to_string(),
                    version: room.version(),
                    snapshot,
                    captured_at: OffsetDateTime::now_utc(),
                    canvases: canvas_versions,
                    closed,
                    epoch: room.epoch,
                },
            }),
            Err(e) => {
                tracing::error!(roomCode = %room.code(), error = %e, "snapshot_encode_failed");
                self.shared.forget_sent(room.code());
            }
        }
    }

    fn wants_checkpoint(&self, room: &Room) -> bool {
        self.shared.take_forced(room.code())
    }
}

/// Told of a (room, epoch) the store fenced off (cluster mode).
pub type OnFenced = Box<dyn Fn(&str, u64) + Send + Sync>;

/// Settings of the writer task. (The statement timeout is the store's own.)
pub struct WriterConfig {
    /// Rows queued at most (`PERSIST_QUEUE_LIMIT`).
    pub limit: usize,
    /// Bytes queued at most (`PERSIST_QUEUE_BYTES`).
    pub queue_bytes: usize,
    /// Rows per batch at most (`PERSIST_BATCH_MAX`).
    pub batch_max: usize,
    /// Bytes per batch at most (`PERSIST_BATCH_BYTES`); a single larger row goes alone.
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    /// Cluster mode: told of each (room, epoch) whose rows the store refused because
    /// another node has taken the room over; its owner must stop serving it.
    pub on_fenced: Option<OnFenced>,
}

/// Stops the writer after it has written everything queued.
pub struct WriterHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    size: Size,
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
        self.size.rows()
    }
}

/// How long a database call may be in flight before `persist_write_stalled` is
/// logged (it is abandoned at the statement timeout).
fn stall_after(statement_timeout: Duration) -> Duration {
    (statement_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Starts the writer; returns the observer for the rooms and the writer's handle.
pub fn start(
    store: Store,
    config: WriterConfig,
    metrics: Arc<Metrics>,
) -> (Arc<Persistence>, WriterHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let size = Size {
        rows: metrics.persist_queue_depth.clone(),
        bytes: metrics.persist_queue_bytes.clone(),
    };
    let shared = Arc::new(Shared {
        size: size.clone(),
        failing: AtomicBool::new(false),
        sent: Mutex::new(HashMap::new()),
        forced: Mutex::new(HashSet::new()),
        forced_count: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let writer = Writer {
        rx,
        queue: Queue::default(),
        inflight: Inflight::default(),
        landed: HashMap::new(),
        stall_after: stall_after(store.statement_timeout()),
        store,
        shared: shared.clone(),
        metrics,
        batch_max: config.batch_max.max(1),
        batch_bytes: config.batch_bytes,
        flush_interval: config.flush_interval,
        on_fenced: config.on_fenced,
        stop: stop.clone(),
        outage_since: None,
        backoff: BACKOFF_FIRST,
    };
    let task = tokio::spawn(writer.run());
    let persistence = Arc::new(Persistence {
        tx,
        shared,
        limit: config.limit,
        byte_limit: config.queue_bytes,
    });
    (persistence, WriterHandle { stop, task, size })
}

// ---------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------

/// One row of a batch.
#[derive(Debug, Clone)]
enum Item {
    Event(EventRow),
    Canvas(CanvasRow),
    Snapshot(SnapshotRow),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Event(e) => event_size(e),
            Item::Canvas(c) => canvas_size(c),
            Item::Snapshot(s) => snapshot_size(s),
        }
    }

    /// The (room, epoch) it was made under.
    fn fence(&self) -> (&str, u64) {
        match self {
            Item::Event(e) => (&e.room_code, e.epoch),
            Item::Canvas(c) => (&c.room_code, c.epoch),
            Item::Snapshot(s) => (&s.room_code, s.epoch),
        }
    }

    fn dead_letter<'a>(&'a self, error: &'a str) -> DeadLetter<'a> {
        match self {
            Item::Event(e) => DeadLetter {
                kind: "event",
                room_code: &e.room_code,
                adlob_id: None,
                event_type: Some(e.event_type),
                version: e.version,
                body: &e.payload,
                error,
            },
            Item::Canvas(c) => DeadLetter {
                kind: "canvas",
                room_code: &c.room_code,
                adlob_id: Some(&c.adlob_id),
                event_type: None,
                version: c.version,
                body: &c.ops,
                error,
            },
            Item::Snapshot(s) => DeadLetter {
                kind: "snapshot",
                room_code: &s.room_code,
                adlob_id: None,
                event_type: None,
                version: s.version,
                body: &s.snapshot,
                error,
            },
        }
    }
}

fn batch_of(items: &[Item]) -> Batch<'_> {
    let mut batch = Batch::default();
    for item in items {
        match item {
            Item::Event(e) => batch.events.push(e),
            Item::Canvas(c) => batch.canvases.push(c),
            Item::Snapshot(s) => batch.snapshots.push(s),
        }
    }
    batch
}

/// A room's checkpoint waiting in the queue.
#[derive(Debug)]
struct Pending {
    canvases: BTreeMap<String, CanvasRow>,
    snapshot: SnapshotRow,
}

/// Rows received but not yet taken into a batch. Events keep their order; the
/// checkpoints of one room coalesce into one.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<EventRow>,
    /// Rooms with a checkpoint waiting, in the order their checkpoint was queued.
    rooms: VecDeque<String>,
    checkpoints: HashMap<String, Pending>,
    rows: usize,
    bytes: usize,
}

/// What a batch has taken so far.
#[derive(Debug, Default)]
struct Used {
    rows: usize,
    bytes: usize,
}

impl Used {
    /// Whether a row of `size` fits under the bounds. The first row always does: a
    /// row bigger than the batch bound goes alone.
    fn fits(&self, size: usize, max_rows: usize, max_bytes: usize) -> bool {
        self.rows == 0 || (self.rows < max_rows && self.bytes.saturating_add(size) <= max_bytes)
    }

    fn add(&mut self, size: usize) {
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(size);
    }
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn count(&mut self, rows: usize, bytes: usize) {
        self.rows += rows;
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn uncount(&mut self, rows: usize, bytes: usize) {
        self.rows = self.rows.saturating_sub(rows);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Adds a row; returns the rows and bytes it made redundant (coalesced away).
    fn push(&mut self, row: Row) -> (usize, usize) {
        let (rows, bytes) = row.size();
        self.count(rows, bytes);
        let (canvases, snapshot) = match row {
            Row::Event(e) => {
                self.events.push_back(e);
                return (0, 0);
            }
            Row::Checkpoint { canvases, snapshot } => (canvases, snapshot),
        };
        let Some(pending) = self.checkpoints.get_mut(&snapshot.room_code) else {
            self.rooms.push_back(snapshot.room_code.clone());
            let canvases = canvases
                .into_iter()
                .map(|c| (c.adlob_id.clone(), c))
                .collect();
            self.checkpoints
                .insert(snapshot.room_code.clone(), Pending { canvases, snapshot });
            return (0, 0);
        };
        // Only the newest row of each canvas and the newest snapshot matter.
        let mut redundant = (0, 0);
        let mut drop_row = |size: usize| {
            redundant.0 += 1;
            redundant.1 += size;
        };
        for canvas in canvases {
            match pending.canvases.get(&canvas.adlob_id) {
                Some(queued) if queued.version > canvas.version => drop_row(canvas_size(&canvas)),
                _ => {
                    if let Some(old) = pending.canvases.insert(canvas.adlob_id.clone(), canvas) {
                        drop_row(canvas_size(&old));
                    }
                }
            }
        }
        // A closed snapshot is the room's last word: never replaced by another.
        if pending.snapshot.closed && !snapshot.closed {
            drop_row(snapshot_size(&snapshot));
        } else {
            let old = std::mem::replace(&mut pending.snapshot, snapshot);
            drop_row(snapshot_size(&old));
        }
        self.uncount(redundant.0, redundant.1);
        redundant
    }

    /// Drops every queued row whose (room, epoch) is stale; returns the rows and bytes.
    fn drop_fenced(&mut self, is_stale: &dyn Fn(&str, u64) -> bool) -> (usize, usize) {
        let mut dropped = (0, 0);
        self.events.retain(|e| {
            let stale = is_stale(&e.room_code, e.epoch);
            if stale {
                dropped.0 += 1;
                dropped.1 += event_size(e);
            }
            !stale
        });
        for pending in self.checkpoints.values_mut() {
            // A checkpoint of a newer epoch may still hold an older one's canvas rows.
            pending.canvases.retain(|_, c| {
                let stale = is_stale(&c.room_code, c.epoch);
                if stale {
                    dropped.0 += 1;
                    dropped.1 += canvas_size(c);
                }
                !stale
            });
        }
        self.checkpoints.retain(|_, pending| {
            let stale = is_stale(&pending.snapshot.room_code, pending.snapshot.epoch);
            if stale {
                dropped.0 += 1 + pending.canvases.len();
                dropped.1 += snapshot_size(&pending.snapshot)
                    + pending.canvases.values().map(canvas_size).sum::<usize>();
            }
            !stale
        });
        self.uncount(dropped.0, dropped.1);
        dropped
    }

    /// The next batch: at most `max_rows` rows and `max_bytes` bytes, and at least one
    /// row. A quarter of the budget goes first to checkpoints, so that a stream of
    /// events never starves them; events take what is left, then checkpoints again. A
    /// checkpoint's canvas rows come before its snapshot and may span batches.
    fn take(&mut self, max_rows: usize, max_bytes: usize) -> Vec<Item> {
        let mut batch = Vec::new();
        let mut used = Used::default();
        self.take_checkpoints(&mut batch, &mut used, (max_rows / 4).max(1), max_bytes / 4);
        while let Some(e) = self.events.front() {
            let size = event_size(e);
            if !used.fits(size, max_rows, max_bytes) {
                break;
            }
            if let Some(e) = self.events.pop_front() {
                used.add(size);
                self.uncount(1, size);
                batch.push(Item::Event(e));
            }
        }
        self.take_checkpoints(&mut batch, &mut used, max_rows, max_bytes);
        batch
    }

    fn take_checkpoints(
        &mut self,
        batch: &mut Vec<Item>,
        used: &mut Used,
        max_rows: usize,
        max_bytes: usize,
    ) {
        while let Some(code) = self.rooms.front() {
            let Some(pending) = self.checkpoints.get_mut(code) else {
                self.rooms.pop_front();
                continue;
            };
            while let Some(entry) = pending.canvases.first_entry() {
                let size = canvas_size(entry.get());
                if !used.fits(size, max_rows, max_bytes) {
                    return;
                }
                used.add(size);
                self.rows = self.rows.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(size);
                batch.push(Item::Canvas(entry.remove()));
            }
            let size = snapshot_size(&pending.snapshot);
            if !used.fits(size, max_rows, max_bytes) {
                return;
            }
            if let Some(pending) = self.checkpoints.remove(code) {
                used.add(size);
                self.uncount(1, size);
                batch.push(Item::Snapshot(pending.snapshot));
            }
            self.rooms.pop_front();
        }
    }
}

// ---------------------------------------------------------------------------------
// The batch in flight
// ---------------------------------------------------------------------------------

/// Room → adlob → the version of its canvas row written last (by this process).
type Landed = HashMap<String, HashMap<String, u64>>;

/// One part of the batch being written.
#[derive(Debug)]
enum Group {
    /// Rows to write together.
    Write(Vec<Item>),
    /// A row the database refused alone, to keep in `persist_dead_letters`, and why.
    DeadLetter(Item, String),
}

/// The batch being written, split when the database refuses part of it. Its groups
/// are written in order, so rows still land in queue order (refused ones aside).
#[derive(Debug, Default)]
struct Inflight {
    groups: VecDeque<Group>,
}

impl Inflight {
    fn start(&mut self, batch: Vec<Item>) {
        if !batch.is_empty() {
            self.groups.push_back(Group::Write(batch));
        }
    }

    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn front(&self) -> Option<&Group> {
        self.groups.front()
    }

    fn pop_front(&mut self) -> Option<Group> {
        self.groups.pop_front()
    }

    /// The database refused the front group for its content: halve it (each half is
    /// tried on its own), or, if it is one row, set that row aside.
    fn refused(&mut self, error: String) {
        match self.groups.front() {
            Some(Group::Write(items)) if items.len() > 1 => self.halve(),
            Some(Group::Write(_)) => {
                if let Some(Group::Write(mut items)) = self.groups.pop_front()
                    && let Some(item) = items.pop()
                {
                    self.groups.push_front(Group::DeadLetter(item, error));
                }
            }
            _ => {}
        }
    }

    /// Splits the front group in two halves, written one after the other.
    fn halve(&mut self) {
        if let Some(Group::Write(items)) = self.groups.front_mut()
            && items.len() > 1
        {
            let right = items.split_off(items.len() / 2);
            self.groups.insert(1, Group::Write(right));
        }
    }

    /// Before the front group is written: sets aside each snapshot that needs a
    /// canvas row neither written (`landed`) nor in the group, because one was
    /// refused. Written, it would be a latest snapshot its room cannot be restored
    /// from; set aside, the room restores from its previous snapshot and the log.
    fn hold_back_incomplete(&mut self, landed: &Landed) {
        let Some(Group::Write(items)) = self.groups.front_mut() else {
            return;
        };
        let in_group: HashSet<(String, String, u64)> = items
            .iter()
            .filter_map(|item| match item {
                Item::Canvas(c) => Some((c.room_code.clone(), c.adlob_id.clone(), c.version)),
                _ => None,
            })
            .collect();
        let mut held = Vec::new();
        let mut at = 0;
        while at < items.len() {
            let missing = match &items[at] {
                Item::Snapshot(s) => s.canvases.iter().find(|(adlob, v)| {
                    let written = landed
                        .get(&s.room_code)
                        .and_then(|room| room.get(adlob.as_str()))
                        == Some(*v);
                    !written && !in_group.contains(&(s.room_code.clone(), (*adlob).clone(), **v))
                }),
                _ => None,
            };
            match missing {
                Some((adlob, v)) => {
                    let why = format!(
                        "not written: it needs canvas {adlob}@{v}, whose row was refused; \
                         the room's next checkpoint writes all its canvases again"
                    );
                    held.push(Group::DeadLetter(items.remove(at), why));
                }
                None => at += 1,
            }
        }
        if items.is_empty() {
            self.groups.pop_front();
        }
        for group in held.into_iter().rev() {
            self.groups.push_front(group);
        }
    }
}

// ---------------------------------------------------------------------------------
// The writer task
// ---------------------------------------------------------------------------------

struct Writer {
    rx: mpsc::UnboundedReceiver<Row>,
    queue: Queue,
    inflight: Inflight,
    landed: Landed,
    store: Store,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    batch_bytes: usize,
    flush_interval: Duration,
    stall_after: Duration,
    on_fenced: Option<OnFenced>,
    stop: CancellationToken,
    /// When the first database call that stalled or failed started; `None` while
    /// calls succeed. `persistence_recovered` reports the outage from here.
    outage_since: Option<Instant>,
    backoff: Duration,
}

/// Takes a row from the rooms into the queue; what it made redundant leaves the
/// shared size at once.
fn receive(queue: &mut Queue, shared: &Shared, row: Row) {
    let redundant = queue.push(row);
    shared.size.sub(redundant);
}

/// Runs one database call. Meanwhile it takes in the rows rooms send (so that they
/// coalesce while the database is slow) and, once the call has been in flight for
/// `stall_after`, logs `persist_write_stalled` (while it is still stalled, not after
/// it returns). Returns the call's outcome and whether it stalled.
async fn watch<T>(
    call: impl Future<Output = Result<T, WriteError>>,
    rx: &mut mpsc::UnboundedReceiver<Row>,
    queue: &mut Queue,
    shared: &Shared,
    stall_after: Duration,
    rows: usize,
) -> (Result<T, WriteError>, bool) {
    tokio::pin!(call);
    let started = Instant::now();
    let stall = tokio::time::sleep(stall_after);
    tokio::pin!(stall);
    let (mut stalled, mut open) = (false, true);
    loop {
        tokio::select! {
            result = &mut call => return (result, stalled),
            () = &mut stall, if !stalled => {
                stalled = true;
                tracing::warn!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    rows,
                    queued = shared.size.rows(),
                    "persist_write_stalled"
                );
            }
            row = rx.recv(), if open => match row {
                Some(row) => receive(queue, shared, row),
                None => open = false,
            },
        }
    }
}

impl Writer {
    async fn run(mut self) {
        loop {
            if self.inflight.is_empty() {
                self.receive_ready();
                if self.queue.is_empty() {
                    if self.stop.is_cancelled() || !self.wait_for_rows().await {
                        return;
                    }
                    continue;
                }
                let batch = self.queue.take(self.batch_max, self.batch_bytes);
                self.inflight.start(batch);
            }
            self.write_front().await;
        }
    }

    /// Moves whatever the rooms have sent so far into the queue.
    fn receive_ready(&mut self) {
        while let Ok(row) = self.rx.try_recv() {
            receive(&mut self.queue, &self.shared, row);
        }
    }

    /// Waits for the next row, then lets a batch build up for one window (the most a
    /// `kill -9` loses). False once no room can send anything any more.
    async fn wait_for_rows(&mut self) -> bool {
        tokio::select! {
            row = self.rx.recv() => match row {
                Some(row) => receive(&mut self.queue, &self.shared, row),
                None => return false,
            },
            () = self.stop.cancelled() => return true,
        }
        let window = tokio::time::sleep(self.flush_interval);
        tokio::pin!(window);
        while self.queue.rows < self.batch_max && self.queue.bytes < self.batch_bytes {
            tokio::select! {
                row = self.rx.recv() => match row {
                    Some(row) => receive(&mut self.queue, &self.shared, row),
                    None => break,
                },
                () = &mut window => break,
                () = self.stop.cancelled() => break,
            }
        }
        true
    }

    /// Writes (or dead-letters) the front group of the batch in flight, then deals
    /// with the outcome.
    async fn write_front(&mut self) {
        self.inflight.hold_back_incomplete(&self.landed);
        let started = Instant::now();
        let (result, stalled) = {
            let Writer {
                inflight,
                rx,
                queue,
                store,
                shared,
                stall_after,
                ..
            } = &mut *self;
            let Some(group) = inflight.front() else {
                return;
            };
            match group {
                Group::Write(items) => {
                    let batch = batch_of(items);
                    // telemetry: the batch joins the traces of the rows it stores.
                    let mut traces = batch.events.iter().filter_map(|e| e.trace.as_deref());
                    let first = traces.next();
                    let span = otel::persist_span(store.backend(), items.len(), first.is_some());
                    if !span.is_disabled() {
                        otel::join_traces(&span, first.into_iter().chain(traces));
                    }
                    let call = store.write(&batch);
                    let watched = watch(call, rx, queue, shared, *stall_after, items.len());
                    let (result, stalled) =
                        tracing::Instrument::instrument(watched, span.clone()).await;
                    otel::record_persist(
                        &span,
                        if result.is_ok() { "written" } else { "failed" },
                        result.as_ref().err().map(|e| match e {
                            WriteError::Refused(_) => "refused",
                            WriteError::TimedOut(_) => "timed_out",
                            WriteError::Failed(_) => "failed",
                            WriteError::Fenced(_) => "fenced",
                        }),
                    );
                    (result, stalled)
                }
                Group::DeadLetter(item, error) => {
                    let letter = item.dead_letter(error);
                    let call = store.dead_letter(&letter);
                    watch(call, rx, queue, shared, *stall_after, 1).await
                }
            }
        };
        if stalled {
            self.outage_since.get_or_insert(started);
        }
        match result {
            Ok(()) => {
                self.answered();
                match self.inflight.pop_front() {
                    Some(Group::Write(items)) => self.written(items, started.elapsed()),
                    Some(Group::DeadLetter(item, error)) => self.set_aside(item, &error, None),
                    None => {}
                }
            }
            Err(WriteError::Refused(e)) => {
                self.answered();
                match self.inflight.front() {
                    Some(Group::Write(_)) => self.inflight.refused(e),
                    // Even the dead letter was refused: log the row itself, go on.
                    Some(Group::DeadLetter(..)) => {
                        if let Some(Group::DeadLetter(item, error)) = self.inflight.pop_front() {
                            self.set_aside(item, &error, Some(&e));
                        }
                    }
                    None => {}
                }
            }
            Err(WriteError::Fenced(stale)) => {
                self.answered();
                self.fenced(&stale);
            }
            Err(WriteError::TimedOut(after)) => {
                // Perhaps too much for the database as it is now: smaller parts first.
                self.inflight.halve();
                self.failed(&WriteError::TimedOut(after).to_string(), started)
                    .await;
            }
            Err(WriteError::Failed(e)) => self.failed(&e, started).await,
        }
    }

    /// The database answered (whether it accepted the rows or refused them).
    fn answered(&mut self) {
        self.shared.failing.store(false, Ordering::Release);
        self.backoff = BACKOFF_FIRST;
        if let Some(since) = self.outage_since.take() {
            tracing::info!(
                outage_ms = since.elapsed().as_millis() as u64,
                queued = self.shared.size.rows(),
                "persistence_recovered"
            );
        }
    }

    fn written(&mut self, items: Vec<Item>, took: Duration) {
        let (mut events, mut canvases, mut snapshots) = (0u64, 0u64, 0u64);
        let mut bytes = 0;
        for item in &items {
            bytes += item.size();
            match item {
                Item::Event(_) => events += 1,
                Item::Canvas(c) => {
                    canvases += 1;
                    self.landed
                        .entry(c.room_code.clone())
                        .or_default()
                        .insert(c.adlob_id.clone(), c.version);
                }
                Item::Snapshot(s) => {
                    snapshots += 1;
                    if s.closed {
                        self.landed.remove(&s.room_code);
                    }
                }
            }
        }
        self.shared.size.sub((items.len(), bytes));
        let c = &self.metrics.counters;
        c.event_persist_success_total
            .fetch_add(events, Ordering::Relaxed);
        c.canvases_persisted_total
            .fetch_add(canvases, Ordering::Relaxed);
        c.snapshots_persisted_total
            .fetch_add(snapshots, Ordering::Relaxed);
        self.metrics.record_persist_batch(took);
    }

    /// A row the database refused is out of the queue: kept in `persist_dead_letters`
    /// (or, if even that was refused, only in this log line). Its room is told what
    /// it needs: a snapshot past the gap (an event), or all canvases again (a canvas).
    fn set_aside(&mut self, item: Item, error: &str, unstored: Option<&str>) {
        let letter = item.dead_letter(error);
        Metrics::inc(&self.metrics.counters.persist_dead_letters_total);
        match unstored {
            None => tracing::error!(
                roomCode = %letter.room_code,
                version = letter.version,
                kind = letter.kind,
                adlobId = letter.adlob_id.unwrap_or(""),
                error = %letter.error,
                stored = true,
                "persist_dead_letter"
            ),
            Some(why) => tracing::error!(
                roomCode = %letter.room_code,
                version = letter.version,
                kind = letter.kind,
                adlobId = letter.adlob_id.unwrap_or(""),
                error = %letter.error,
                stored = false,
                storeError = %why,
                body = %letter.body,
                "persist_dead_letter"
            ),
        }
        self.shared.size.sub((1, item.size()));
        match &item {
            Item::Event(e) => self.shared.force_checkpoint(&e.room_code),
            Item::Canvas(c) => self.shared.forget_sent(&c.room_code),
            Item::Snapshot(_) => {}
        }
    }

    /// The store refused rows made under a stale owner epoch: another node owns those
    /// rooms now. Every row of those (room, epoch) pairs leaves the batch and the
    /// queue (written, they would fork the room's history), and each owner is told.
    fn fenced(&mut self, stale: &[(String, u64)]) {
        let is_stale = |room: &str, epoch: u64| stale.iter().any(|(r, e)| r == room && *e == epoch);
        let mut dropped = (0usize, 0usize);
        let mut keep = |item: &Item| {
            let (room, epoch) = item.fence();
            let stale = is_stale(room, epoch);
            if stale {
                dropped.0 += 1;
                dropped.1 += item.size();
            }
            !stale
        };
        for group in self.inflight.groups.iter_mut() {
            if let Group::Write(items) = group {
                items.retain(&mut keep);
            }
        }
        self.inflight.groups.retain(|g| match g {
            Group::Write(items) => !items.is_empty(),
            Group::DeadLetter(item, _) => {
                let (room, epoch) = item.fence();
                !is_stale(room, epoch)
            }
        });
        let queued = self.queue.drop_fenced(&is_stale);
        dropped.0 += queued.0;
        dropped.1 += queued.1;
        self.shared.size.sub(dropped);
        self.metrics
            .counters
            .persist_fenced_rows_total
            .fetch_add(dropped.0 as u64, Ordering::Relaxed);
        for (room, epoch) in stale {
            tracing::error!(roomCode = %room, epoch, rows = dropped.0, "persist_fenced");
            self.shared.forget_sent(room);
            if let Some(on_fenced) = &self.on_fenced {
                on_fenced(room, *epoch);
            }
        }
    }

    async fn failed(&mut self, error: &str, started: Instant) {
        Metrics::inc(&self.metrics.counters.event_persist_failures_total);
        self.shared.failing.store(true, Ordering::Release);
        self.outage_since.get_or_insert(started);
        tracing::warn!(
            error = %error,
            queued = self.shared.size.rows(),
            retry_in_ms = self.backoff.as_millis() as u64,
            "persist_batch_failed"
        );
        // The name operators of the Node service alert on, once per failed attempt
        // that carried snapshots.
        let in_front = match self.inflight.front() {
            Some(Group::Write(items)) => items
                .iter()
                .filter(|i| matches!(i, Item::Snapshot(_)))
                .count(),
            Some(Group::DeadLetter(Item::Snapshot(_), _)) => 1,
            _ => 0,
        };
        if in_front > 0 {
            tracing::warn!(
                error = %error,
                rooms = in_front + self.queue.checkpoints.len(),
                "snapshot_persist_failed"
            );
        }
        let pause = tokio::time::sleep(self.backoff);
        tokio::pin!(pause);
        let mut open = true;
        loop {
            tokio::select! {
                () = &mut pause => break,
                row = self.rx.recv(), if open => match row {
                    Some(row) => receive(&mut self.queue, &self.shared, row),
                    None => open = false,
                },
            }
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, version: u64, bytes: usize) -> EventRow {
        EventRow {
            room_code: room.into(),
            event_type: "ready_update",
            version,
            payload: "x".repeat(bytes),
            created_at: OffsetDateTime::UNIX_EPOCH,
            trace: None,
            epoch: 0,
        }
    }

    fn canvas(room: &str, adlob: &str, version: u64, bytes: usize) -> CanvasRow {
        CanvasRow {
            room_code: room.into(),
            adlob_id: adlob.into(),
            version,
            ops: "o".repeat(bytes),
            captured_at: OffsetDateTime::UNIX_EPOCH,
            epoch: 0,
        }
    }

    fn snapshot(room: &str, version: u64, canvases: &[(&str, u64)], closed: bool) -> SnapshotRow {
        SnapshotRow {
            room_code: room.into(),
            version,
            snapshot: format!("{{\"v\":{version}}}"),
            captured_at: OffsetDateTime::UNIX_EPOCH,
            canvases: canvases.iter().map(|(a, v)| (a.to_string(), *v)).collect(),
            closed,
            epoch: 0,
        }
    }

    fn checkpoint(canvases: Vec<CanvasRow>, snapshot: SnapshotRow) -> Row {
        Row::Checkpoint { canvases, snapshot }
    }

    /// A readable name per item: e:ROOM@v, c:ROOM/adlob@v, s:ROOM@v.
    fn name(item: &Item) -> String {
        match item {
            Item::Event(e) => format!("e:{}@{}", e.room_code, e.version),
            Item::Canvas(c) => format!("c:{}/{}@{}", c.room_code, c.adlob_id, c.version),
            Item::Snapshot(s) => format!("s:{}@{}", s.room_code, s.version),
        }
    }

    fn names(items: &[Item]) -> Vec<String> {
        items.iter().map(name).collect()
    }

    fn bytes_of(items: &[Item]) -> usize {
        items.iter().map(Item::size).sum()
    }

    #[test]
    fn batches_respect_the_row_and_byte_bounds_and_a_big_row_goes_alone() {
        let mut q = Queue::default();
        for v in 1..=10 {
            q.push(Row::Event(event("A", v, 1000)));
        }
        q.push(Row::Event(event("A", 11, 50_000)));
        q.push(Row::Event(event("A", 12, 10)));
        let max_bytes = 4 * (ROW_OVERHEAD + 1 + 1000);
        let mut taken = Vec::new();
        while !q.is_empty() {
            let batch = q.take(3, max_bytes);
            assert!(!batch.is_empty(), "every batch makes progress");
            assert!(batch.len() <= 3, "{:?}", names(&batch));
            assert!(
                batch.len() == 1 || bytes_of(&batch) <= max_bytes,
                "only a lone row may pass the byte bound: {:?}",
                names(&batch)
            );
            taken.push(names(&batch));
        }
        assert!(
            taken.contains(&vec!["e:A@11".to_string()]),
            "the 50 kB row went alone: {taken:?}"
        );
        let order: Vec<String> = taken.concat();
        let expected: Vec<String> = (1..=12).map(|v| format!("e:A@{v}")).collect();
        assert_eq!(order, expected, "events in queue order, each once");
        assert_eq!((q.rows, q.bytes), (0, 0));

        // The byte bound alone splits too.
        for v in 1..=8 {
            q.push(Row::Event(event("B", v, 1000)));
        }
        let batch = q.take(500, max_bytes);
        assert_eq!(batch.len(), 4, "{:?}", names(&batch));
    }

    #[test]
    fn a_checkpoints_canvases_come_before_its_snapshot_and_may_span_batches() {
        let mut q = Queue::default();
        let canvases: Vec<CanvasRow> = (0..6)
            .map(|i| canvas("R", &format!("ad{i}"), 10 + i, 1000))
            .collect();
        let refs: Vec<(String, u64)> = canvases
            .iter()
            .map(|c| (c.adlob_id.clone(), c.version))
            .collect();
        let refs: Vec<(&str, u64)> = refs.iter().map(|(a, v)| (a.as_str(), *v)).collect();
        q.push(checkpoint(canvases, snapshot("R", 20, &refs, false)));
        let max_bytes = 2 * (ROW_OVERHEAD + 1 + 3 + 1000);
        let mut order = Vec::new();
        let mut batches = 0;
        while !q.is_empty() {
            order.extend(names(&q.take(500, max_bytes)));
            batches += 1;
        }
        assert!(batches >= 3, "six 1 kB canvases in 2 kB batches");
        assert_eq!(order.last().map(String::as_str), Some("s:R@20"));
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn a_stream_of_events_leaves_a_quarter_of_each_batch_to_checkpoints() {
        let mut q = Queue::default();
        for v in 1..=100 {
            q.push(Row::Event(event("A", v, 10)));
        }
        for room in ["R1", "R2", "R3", "R4", "R5"] {
            q.push(checkpoint(Vec::new(), snapshot(room, 1, &[], false)));
        }
        let batch = q.take(8, usize::MAX);
        let snapshots = batch
            .iter()
            .filter(|i| matches!(i, Item::Snapshot(_)))
            .count();
        assert_eq!(batch.len(), 8);
        assert_eq!(snapshots, 2, "{:?}", names(&batch));
    }

    #[test]
    fn checkpoints_of_one_room_coalesce_and_a_closed_one_is_never_replaced() {
        let mut q = Queue::default();
        let first = checkpoint(
            vec![canvas("R", "a", 3, 100), canvas("R", "b", 4, 100)],
            snapshot("R", 5, &[("a", 3), ("b", 4)], false),
        );
        let first_size = first.size();
        assert_eq!(q.push(first), (0, 0));
        let second = checkpoint(
            vec![canvas("R", "a", 6, 300)],
            snapshot("R", 7, &[("a", 6), ("b", 4)], false),
        );
        let redundant = q.push(second);
        assert_eq!(
            redundant,
            (
                2,
                canvas_size(&canvas("R", "a", 3, 100))
                    + snapshot_size(&snapshot("R", 5, &[("a", 3), ("b", 4)], false))
            ),
            "the old row of canvas a and the old snapshot"
        );
        assert_eq!(q.rows, 3, "canvases a@6 and b@4, snapshot 7");
        assert!(
            q.bytes < first_size.1 + 300,
            "the replaced rows no longer count"
        );
        let closing = checkpoint(Vec::new(), snapshot("R", 7, &[("a", 6), ("b", 4)], true));
        q.push(closing);
        let late = checkpoint(Vec::new(), snapshot("R", 7, &[("a", 6), ("b", 4)], false));
        let late_size = late.size();
        assert_eq!(q.push(late), late_size, "a closed snapshot stays");
        let batch = q.take(500, usize::MAX);
        assert_eq!(names(&batch), ["c:R/a@6", "c:R/b@4", "s:R@7"]);
        assert!(matches!(&batch[2], Item::Snapshot(s) if s.closed));
        assert!(q.is_empty() && q.checkpoints.is_empty() && q.rooms.is_empty());
    }

    /// Writes `inflight` against a fake database that refuses any group holding a
    /// poison row (and counts the attempts); returns (written in order, dead letters).
    fn resolve(
        inflight: &mut Inflight,
        poison: impl Fn(&Item) -> bool,
        landed: &mut Landed,
        attempts: &mut usize,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let (mut written, mut dead) = (Vec::new(), Vec::new());
        loop {
            inflight.hold_back_incomplete(landed);
            let Some(group) = inflight.front() else {
                break;
            };
            *attempts += 1;
            match group {
                Group::Write(items) if items.iter().any(&poison) => {
                    inflight.refused("poison".into());
                }
                Group::Write(_) => {
                    if let Some(Group::Write(items)) = inflight.pop_front() {
                        for item in &items {
                            if let Item::Canvas(c) = item {
                                landed
                                    .entry(c.room_code.clone())
                                    .or_default()
                                    .insert(c.adlob_id.clone(), c.version);
                            }
                        }
                        written.extend(names(&items));
                    }
                }
                Group::DeadLetter(..) => {
                    if let Some(Group::DeadLetter(item, why)) = inflight.pop_front() {
                        dead.push((name(&item), why));
                    }
                }
            }
        }
        (written, dead)
    }

    #[test]
    fn a_refused_batch_is_halved_until_only_the_poison_rows_are_left_out() {
        let mut items = Vec::new();
        for v in 1..=20 {
            items.push(Item::Event(event("OK", v, 10)));
            if v % 7 == 0 {
                items.push(Item::Event(event("POISON", v, 10)));
            }
        }
        let total = items.len();
        let mut inflight = Inflight::default();
        inflight.start(items);
        let mut attempts = 0;
        let (written, dead) = resolve(
            &mut inflight,
            |i| matches!(i, Item::Event(e) if e.room_code == "POISON"),
            &mut Landed::new(),
            &mut attempts,
        );
        let expected: Vec<String> = (1..=20).map(|v| format!("e:OK@{v}")).collect();
        assert_eq!(written, expected, "every good row, once, in order");
        let dead: Vec<&str> = dead.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(dead, ["e:POISON@7", "e:POISON@14"]);
        assert!(
            attempts <= 4 * total,
            "bisection, not a retry loop: {attempts} attempts"
        );
    }

    #[test]
    fn a_snapshot_whose_canvas_was_refused_is_set_aside_not_written() {
        let items = vec![
            Item::Canvas(canvas("R", "good", 3, 10)),
            Item::Canvas(canvas("R", "bad", 4, 10)),
            Item::Snapshot(snapshot(
                "R",
                5,
                &[("good", 3), ("bad", 4), ("old", 1)],
                false,
            )),
            Item::Event(event("R", 6, 10)),
        ];
        let mut landed = Landed::new();
        landed
            .entry("R".into())
            .or_default()
            .insert("old".into(), 1);
        let mut inflight = Inflight::default();
        inflight.start(items);
        let (written, dead) = resolve(
            &mut inflight,
            |i| matches!(i, Item::Canvas(c) if c.adlob_id == "bad"),
            &mut landed,
            &mut 0,
        );
        assert_eq!(written, ["c:R/good@3", "e:R@6"]);
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(dead[0].0, "c:R/bad@4");
        assert_eq!(dead[1].0, "s:R@5");
        assert!(dead[1].1.contains("canvas bad@4"), "{}", dead[1].1);
    }

    #[test]
    fn a_snapshot_is_written_once_its_canvases_are_landed_or_beside_it() {
        let mut landed = Landed::new();
        landed.entry("R".into()).or_default().insert("a".into(), 2);
        let mut inflight = Inflight::default();
        inflight.start(vec![
            Item::Canvas(canvas("R", "b", 3, 10)),
            Item::Snapshot(snapshot("R", 4, &[("a", 2), ("b", 3)], false)),
        ]);
        let (written, dead) = resolve(&mut inflight, |_| false, &mut landed, &mut 0);
        assert_eq!(written, ["c:R/b@3", "s:R@4"]);
        assert!(dead.is_empty());
    }

    #[test]
    fn a_batch_that_timed_out_is_retried_in_halves_in_order() {
        let mut inflight = Inflight::default();
        inflight.start((1..=5).map(|v| Item::Event(event("A", v, 10))).collect());
        inflight.halve();
        inflight.halve();
        let groups: Vec<Vec<String>> = inflight
            .groups
            .iter()
            .map(|g| match g {
                Group::Write(items) => names(items),
                Group::DeadLetter(item, _) => vec![name(item)],
            })
            .collect();
        assert_eq!(
            groups,
            [
                vec!["e:A@1"],
                vec!["e:A@2"],
                vec!["e:A@3", "e:A@4", "e:A@5"]
            ]
        );
    }

    #[test]
    fn the_refusal_says_whether_the_database_is_down_or_slow() {
        assert!(queue_full_message(true).contains("the database is unreachable"));
        assert!(queue_full_message(false).contains("the database is slower than the load"));
        for failing in [true, false] {
            assert!(queue_full_message(failing).contains("write queue is full"));
        }
    }

    #[test]
    fn the_stall_warning_comes_well_before_the_timeout() {
        assert_eq!(stall_after(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(
            stall_after(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            stall_after(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
