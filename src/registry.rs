//! The rooms this node owns, by code.
//!
//! Only joins, room creation and closing touch this map; once a socket has joined it
//! holds its room's handle, so the message path never takes this lock. An owner that
//! ends for any reason (closed, expired, crashed) removes its own entry, so the map
//! never holds a handle to a room that is gone.

use crate::cluster::wire::{Answer, Message};
use crate::cluster::{Cluster, proxy};
use crate::owner::{self, Exit, Provenance, RoomContext, RoomHandle, RoomMsg};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use crate::store::writer::Persistence;
use crate::store::{Batch, SnapshotRow, Store, Stored};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

#[derive(Default)]
struct Rooms {
    live: HashMap<String, Entry>,
    /// Codes of rooms that existed and were closed (here or, per the store, before
    /// a restart). A code is never reused: its versions and rows stay one history.
    retired: HashSet<String>,
    /// Live rooms created from a client seed (bounded by `max_seeded`).
    seeded: usize,
    /// Cluster mode: rooms closed here whose final snapshot may not be stored yet;
    /// their leases are renewed until it is, so no node takes them back meanwhile.
    /// (`None` on a single node, which needs no such list.)
    closing: Option<HashMap<String, std::time::Instant>>,
}

impl Rooms {
    /// Takes a room's entry out of the map. With `retire`, its code is retired too
    /// and, for an owner (only an owner holds the room's lease), the lease is kept
    /// until the room's close is stored.
    fn take_out(&mut self, code: &str, retire: bool) -> Option<Entry> {
        let entry = self.live.remove(code)?;
        self.seeded = self.seeded.saturating_sub(usize::from(entry.seeded));
        if retire {
            self.retired.insert(code.to_string());
            if !entry.relay
                && let Some(closing) = self.closing.as_mut()
            {
                closing.insert(code.to_string(), std::time::Instant::now());
            }
        }
        Some(entry)
    }
}

struct Entry {
    handle: RoomHandle,
    seeded: bool,
    /// Cluster mode: a relay of a room another node owns (not counted as ours).
    relay: bool,
    /// Cluster mode: the owner epoch this node holds the room under (0 for a relay).
    epoch: u64,
}

pub struct Registry {
    rooms: Arc<RwLock<Rooms>>,
    ctx: Arc<RoomContext>,
    max_seeded: usize,
    /// Cluster mode's parts; `None` on a single node.
    cluster: Option<ClusterParts>,
}

/// What cluster mode adds: the cluster, the store rooms are taken over from, the
/// persistence queue (drained before a lease is given up), and one lock per room
/// being taken over, so that one node takes a room once.
pub struct ClusterParts {
    pub cluster: Arc<Cluster>,
    pub store: Store,
    pub persistence: Arc<Persistence>,
    takeovers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set at SIGTERM: this node takes no room any more.
    handing_over: AtomicBool,
    /// Rooms being handed over now: not taken back while their rows are written.
    handing: Arc<Mutex<HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterParts {
    /// Whether this node is giving rooms up (all at SIGTERM, or `code` now).
    fn giving_up(&self, code: &str) -> bool {
        self.handing_over.load(Ordering::Acquire) || lock(&self.handing).contains(code)
    }

    /// SIGTERM's hand-over has begun (`/readyz` says so).
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    pub fn new(cluster: Arc<Cluster>, store: Store, persistence: Arc<Persistence>) -> Self {
        ClusterParts {
            cluster,
            store,
            persistence,
            takeovers: Mutex::new(HashMap::new()),
            handing_over: AtomicBool::new(false),
            handing: Arc::new(Mutex::new(HashSet::new())),
        }
    }
}

/// The outcome of trying to take a room over.
enum Takeover {
    Taken(RoomHandle),
    /// Another live node holds the lease.
    HeldBy(String),
}

pub(crate) fn unavailable(why: impl std::fmt::Display) -> Rejection {
    Rejection::new(ErrorCode::Unavailable, why.to_string())
}

/// A room whose code belonged to a room that was closed: never reused.
fn closed() -> Rejection {
    Rejection::new(ErrorCode::RoomNotFound, "room was closed")
}

fn handing_over() -> Rejection {
    unavailable("this node is handing the room over; try again")
}

fn not_found() -> Rejection {
    Rejection::new(ErrorCode::RoomNotFound, "room does not exist")
}

impl Registry {
    /// A registry that will never hand out `retired` codes, and holds at most
    /// `max_seeded` client-seeded rooms at once.
    pub fn new(
        ctx: Arc<RoomContext>,
        retired: impl IntoIterator<Item = String>,
        max_seeded: usize,
    ) -> Registry {
        Registry {
            rooms: Arc::new(RwLock::new(Rooms {
                live: HashMap::new(),
                retired: retired.into_iter().collect(),
                seeded: 0,
                closing: None,
            })),
            ctx,
            max_seeded,
            cluster: None,
        }
    }

    /// Cluster mode: rooms are taken over from `parts.store` on demand.
    pub fn with_cluster(mut self, parts: ClusterParts) -> Registry {
        self.cluster = Some(parts);
        write(&self.rooms).closing = Some(HashMap::new());
        self
    }

    pub fn cluster(&self) -> Option<&ClusterParts> {
        self.cluster.as_ref()
    }

    pub fn get(&self, code: &str) -> Option<RoomHandle> {
        read(&self.rooms)
            .live
            .get(code)
            .filter(|e| !e.handle.is_gone())
            .map(|e| e.handle.clone())
    }

    /// The room's owner here, if this node owns it (not a relay).
    fn owned(&self, code: &str) -> Option<RoomHandle> {
        read(&self.rooms)
            .live
            .get(code)
            .filter(|e| !e.relay && !e.handle.is_gone())
            .map(|e| e.handle.clone())
    }

    fn taken(rooms: &Rooms, code: &str) -> Option<Rejection> {
        if rooms.live.contains_key(code) {
            Some(Rejection::new(
                ErrorCode::InvalidTransition,
                format!("room {code} already exists"),
            ))
        } else if rooms.retired.contains(code) {
            Some(Rejection::new(
                ErrorCode::InvalidTransition,
                format!("room code {code} belonged to a closed room and is not reused"),
            ))
        } else {
            None
        }
    }

    /// Starts an owner for `room` and records it; the caller holds the write lock.
    fn start(&self, rooms: &mut Rooms, room: Room, provenance: Provenance) -> RoomHandle {
        let code = room.code().to_string();
        let seeded = provenance == Provenance::Seeded;
        let epoch = room.epoch;
        let on_exit = {
            let rooms = Arc::downgrade(&self.rooms);
            let code = code.clone();
            move |exit| forget(&rooms, &code, exit)
        };
        let handle = owner::spawn(room, self.ctx.clone(), provenance, on_exit);
        rooms.retired.remove(&code);
        rooms.seeded += usize::from(seeded);
        rooms.live.insert(
            code,
            Entry {
                handle: handle.clone(),
                seeded,
                relay: false,
                epoch,
            },
        );
        handle
    }

    /// Starts an owner for a new room (in cluster mode, on the node its code
    /// prefers). A taken or retired code is refused.
    pub async fn create(&self, room: Room) -> Result<RoomHandle, Rejection> {
        match &self.cluster {
            None => self.create_here(room),
            Some(_) => Box::pin(self.create_in_cluster(room, Provenance::Server)).await,
        }
    }

    /// Starts an owner for a new room on this node, now (embedding and tests; cluster
    /// mode refuses it, a room there needs its lease and epoch: use `create`).
    pub fn create_here(&self, room: Room) -> Result<RoomHandle, Rejection> {
        if self.cluster.is_some() {
            return Err(unavailable(
                "cluster mode creates rooms with Registry::create",
            ));
        }
        let mut rooms = write(&self.rooms);
        if let Some(why) = Self::taken(&rooms, room.code()) {
            return Err(why);
        }
        Ok(self.start(&mut rooms, room, Provenance::Server))
    }

    /// Starts an owner for a room loaded from the store (already saved as it is).
    pub fn restore(&self, room: Room) -> RoomHandle {
        self.start(&mut write(&self.rooms), room, Provenance::Restored)
    }

    /// The room with `code`: here, or (cluster mode) wherever it is owned, taken
    /// over from the store if nobody owns it. `room_not_found` if there is none.
    pub async fn find(&self, code: &str) -> Result<RoomHandle, Rejection> {
        // A closed room's relay may linger here until its owner's word arrives.
        if self.cluster.is_some() && read(&self.rooms).retired.contains(code) {
            return Err(closed());
        }
        if let Some(handle) = self.get(code) {
            return Ok(handle);
        }
        let Some(parts) = &self.cluster else {
            return Err(not_found());
        };
        // Boxed, as every cluster path a join can take: their state (Redis calls, a
        // takeover's store reads) is tens of KB, and inline it sized every socket
        // message's future on one node too (a 34 KB allocation and copy each).
        Box::pin(self.find_in_cluster(parts, code)).await
    }

    async fn find_in_cluster(
        &self,
        parts: &ClusterParts,
        code: &str,
    ) -> Result<RoomHandle, Rejection> {
        let cluster = &parts.cluster;
        let holder = cluster.holder(code).await.map_err(unavailable)?;
        let target = match holder {
            Some(node) if cluster.live().contains(&node) => node,
            _ => cluster.preferred(code),
        };
        if target != *cluster.node {
            return Ok(self.relay(parts, code, target));
        }
        match self.take_over(code, None).await? {
            Takeover::Taken(handle) => Ok(handle),
            Takeover::HeldBy(node) => Ok(self.relay(parts, code, node)),
        }
    }

    /// The room with `code`, or one made by `seed` if there is none. The existing
    /// room always wins over the seed; a retired code is `room_not_found`, and past
    /// `max_seeded` live seeded rooms a new seed is `unavailable`.
    pub async fn get_or_create(
        &self,
        code: &str,
        seed: impl FnOnce() -> Result<Room, Rejection>,
    ) -> Result<RoomHandle, Rejection> {
        if let Some(parts) = &self.cluster {
            return Box::pin(self.get_or_create_in_cluster(parts, code, seed)).await;
        }
        if let Some(handle) = self.get(code) {
            return Ok(handle);
        }
        {
            let rooms = read(&self.rooms);
            if rooms.retired.contains(code) {
                return Err(closed());
            }
            if rooms.seeded >= self.max_seeded {
                self.ctx
                    .metrics
                    .counters
                    .seeded_rooms_refused_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Rejection::new(
                    ErrorCode::Unavailable,
                    "the server holds as many client-created rooms as it takes",
                ));
            }
        }
        let room = seed()?;
        let mut rooms = write(&self.rooms);
        if let Some(entry) = rooms.live.get(code) {
            return Ok(entry.handle.clone());
        }
        if rooms.retired.contains(code) {
            return Err(closed());
        }
        if rooms.seeded >= self.max_seeded {
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                "the server holds as many client-created rooms as it takes",
            ));
        }
        Ok(self.start(&mut rooms, room, Provenance::Seeded))
    }

    async fn get_or_create_in_cluster(
        &self,
        parts: &ClusterParts,
        code: &str,
        seed: impl FnOnce() -> Result<Room, Rejection>,
    ) -> Result<RoomHandle, Rejection> {
        if let Some(handle) = self.get(code) {
            return Ok(handle);
        }
        if read(&self.rooms).retired.contains(code) {
            return Err(closed());
        }
        // A room some live node owns is joined there; otherwise the seed goes to
        // the node the code prefers, where the stored room (if any) still wins.
        let cluster = &parts.cluster;
        let holder = cluster.holder(code).await.map_err(unavailable)?;
        if let Some(node) = holder.filter(|n| cluster.live().contains(n))
            && node != *cluster.node
        {
            return Ok(self.relay(parts, code, node));
        }
        let room = seed()?;
        match self.create_in_cluster(room, Provenance::Seeded).await {
            // Made meanwhile by another joiner: theirs wins, as on one node.
            Err(why) if why.code == ErrorCode::InvalidTransition => self.find(code).await,
            other => other,
        }
    }

    /// Forgets a room whose owner is closing it; its code is retired.
    pub fn remove(&self, code: &str) -> Option<RoomHandle> {
        let mut rooms = write(&self.rooms);
        // A relay stays until its owner's `Gone` reaches it (it closes its sockets then
        // and forgets itself): removed now, that message would find no one here.
        if let Some(entry) = rooms.live.get(code)
            && entry.relay
        {
            let handle = entry.handle.clone();
            rooms.retired.insert(code.to_string());
            return Some(handle);
        }
        rooms.take_out(code, true).map(|entry| entry.handle)
    }

    /// Rooms this node owns.
    pub fn len(&self) -> usize {
        read(&self.rooms).live.values().filter(|e| !e.relay).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Codes of the rooms this node owns.
    pub fn codes(&self) -> Vec<String> {
        read(&self.rooms)
            .live
            .iter()
            .filter(|(_, e)| !e.relay)
            .map(|(code, _)| code.clone())
            .collect()
    }

    /// One page of open rooms, sorted by code, after `after`: this node's rooms, or in
    /// cluster mode every open room the store holds, with its latest stored snapshot
    /// (for a room no node serves now: listing never takes a room over).
    pub async fn list(
        &self,
        after: &str,
        size: usize,
    ) -> Result<Vec<(String, Option<crate::protocol::RoomSnapshot>)>, Rejection> {
        if let Some(parts) = &self.cluster {
            return parts
                .store
                .open_rooms(after, size)
                .await
                .map_err(unavailable);
        }
        let mut codes = self.codes();
        codes.sort();
        Ok(codes
            .into_iter()
            .filter(|c| after.is_empty() || c.as_str() > after)
            .take(size)
            .map(|c| (c, None))
            .collect())
    }

    /// The room's state if some node serves it now (here, or a live lease holder
    /// elsewhere, asked once, with no relay left behind); `None` for a room nobody
    /// serves: nothing is taken over.
    pub async fn served_info(&self, code: &str) -> Option<crate::owner::RoomInfo> {
        if let Some(handle) = self.get(code) {
            return handle.try_info().await.ok();
        }
        let parts = self.cluster.as_ref()?;
        let cluster = &parts.cluster;
        let holder = cluster.holder(code).await.ok()??;
        if holder == *cluster.node || !cluster.live().contains(&holder) {
            return None;
        }
        let (room, from) = (code.to_string(), cluster.node.to_string());
        match cluster
            .call(&holder, |call| Message::Info { room, from, call })
            .await
        {
            Ok(Answer::Info { info }) => Some(info),
            _ => None,
        }
    }

    /// Handles of every room this node owns (for shutdown's final checkpoints).
    pub fn handles(&self) -> Vec<RoomHandle> {
        read(&self.rooms)
            .live
            .values()
            .filter(|e| !e.relay)
            .map(|e| e.handle.clone())
            .collect()
    }

    /// Every live entry, owners and relays (cluster mode tells each of a node that
    /// left).
    fn all(&self) -> Vec<RoomHandle> {
        read(&self.rooms)
            .live
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// Cluster mode
// ---------------------------------------------------------------------------------

impl Registry {
    /// A relay of `code` towards `owner`, started if there is none here.
    fn relay(&self, parts: &ClusterParts, code: &str, owner: String) -> RoomHandle {
        let mut rooms = write(&self.rooms);
        if let Some(entry) = rooms.live.get(code)
            && !entry.handle.is_gone()
        {
            return entry.handle.clone();
        }
        let on_exit = {
            let rooms = Arc::downgrade(&self.rooms);
            let code = code.to_string();
            move |exit| forget(&rooms, &code, exit)
        };
        // Three heartbeats missed: the owner is gone or has forgotten this relay.
        let silence = self.ctx.heartbeat_interval.saturating_mul(3);
        let handle = proxy::spawn(
            code,
            owner,
            parts.cluster.clone(),
            self.ctx.watchers.clone(),
            silence,
            on_exit,
        );
        rooms.live.insert(
            code.to_string(),
            Entry {
                handle: handle.clone(),
                seeded: false,
                relay: true,
                epoch: 0,
            },
        );
        handle
    }

    /// Cluster mode: a new room, made on the node its code prefers.
    async fn create_in_cluster(
        &self,
        room: Room,
        provenance: Provenance,
    ) -> Result<RoomHandle, Rejection> {
        let Some(parts) = &self.cluster else {
            return Err(unavailable("not in cluster mode"));
        };
        let code = room.code().to_string();
        if let Some(why) = Self::taken(&read(&self.rooms), &code) {
            return Err(why);
        }
        let target = parts.cluster.preferred(&code);
        if target == *parts.cluster.node {
            return match self.take_over(&code, Some((room, provenance))).await? {
                Takeover::Taken(handle) => Ok(handle),
                // A seed joins the room that exists wherever it is.
                Takeover::HeldBy(node) if provenance == Provenance::Seeded => {
                    Ok(self.relay(parts, &code, node))
                }
                Takeover::HeldBy(_) => Err(exists(&code)),
            };
        }
        let stored = Box::new(room.to_stored(false));
        let from = parts.cluster.node.to_string();
        let answer = parts
            .cluster
            .call(&target, |call| Message::Create {
                room: code.clone(),
                from,
                call,
                stored,
                seeded: provenance == Provenance::Seeded,
            })
            .await?;
        match answer {
            Answer::Created { result: Ok(()) } => Ok(self.relay(parts, &code, target)),
            Answer::Created { result: Err(why) } | Answer::Refused { why, .. } => Err(why),
            _ => Err(unavailable("unexpected answer")),
        }
    }

    fn takeover_lock(&self, parts: &ClusterParts, code: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = parts.takeovers.lock().unwrap_or_else(|e| e.into_inner());
        // Locks of takeovers that finished go (nobody else holds them).
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(code.to_string()).or_default().clone()
    }

    /// Takes `code` over for this node: its lease, then (for a room the store holds)
    /// a new owner epoch in Postgres, the room as the store has it after that, and a
    /// version past anything the previous owner may have published unsaved, saved
    /// before anyone sees it. With `create`, a room the store has never held is made.
    async fn take_over(
        &self,
        code: &str,
        create: Option<(Room, Provenance)>,
    ) -> Result<Takeover, Rejection> {
        let Some(parts) = &self.cluster else {
            return Err(not_found());
        };
        if parts.giving_up(code) {
            return Err(handing_over());
        }
        let lock = self.takeover_lock(parts, code);
        let _one_at_a_time = lock.lock().await;
        if parts.giving_up(code) {
            return Err(handing_over());
        }
        // Closed here (its final snapshot may still be on its way to the store): the
        // lease stays with this node until it expires, and nothing takes it back.
        if read(&self.rooms).retired.contains(code) {
            return Err(closed());
        }
        if let Some(handle) = self.owned(code) {
            return match create {
                Some(_) => Err(exists(code)),
                None => Ok(Takeover::Taken(handle)),
            };
        }
        let cluster = &parts.cluster;
        let holder = cluster.acquire(code).await.map_err(unavailable)?;
        if holder != *cluster.node {
            return Ok(Takeover::HeldBy(holder));
        }
        let refuse = |why: Rejection| async move {
            cluster.release(code).await;
            Err(why)
        };
        let stored = match parts.store.load_room(code).await {
            Ok(stored) => stored,
            Err(e) => return refuse(unavailable(e)).await,
        };
        let (room, provenance) = match (stored, create) {
            (Stored::Absent, Some((_, Provenance::Seeded)))
                if read(&self.rooms).seeded >= self.max_seeded =>
            {
                crate::telemetry::Metrics::inc(
                    &self.ctx.metrics.counters.seeded_rooms_refused_total,
                );
                return refuse(unavailable(
                    "the server holds as many client-created rooms as it takes",
                ))
                .await;
            }
            (Stored::Absent, Some((room, provenance))) => (room, provenance),
            (Stored::Absent, None) => return refuse(not_found()).await,
            (Stored::Closed, _) => {
                write(&self.rooms).retired.insert(code.to_string());
                return refuse(closed()).await;
            }
            (Stored::Failed(reason), _) => {
                tracing::error!(roomCode = %code, reason = %reason, "room_restore_failed");
                return refuse(unavailable("the room cannot be restored")).await;
            }
            (Stored::Open(_), Some((_, Provenance::Server))) => {
                return refuse(exists(code)).await;
            }
            (Stored::Open(room), _) => (*room, Provenance::Restored),
        };
        let epoch = match parts.store.raise_epoch(code, &cluster.node).await {
            Ok(epoch) => epoch,
            Err(e) => return refuse(unavailable(e)).await,
        };
        // Read again under the new epoch: every write of a previous owner has landed
        // or will be refused from now on. A room that appeared meanwhile (its first
        // snapshot landed late) is restored, not made again.
        let (mut room, provenance) = match parts.store.load_room(code).await {
            Ok(Stored::Open(_)) if provenance == Provenance::Server => {
                return refuse(exists(code)).await;
            }
            Ok(Stored::Open(stored)) => (*stored, Provenance::Restored),
            Ok(Stored::Absent) if provenance != Provenance::Restored => (room, provenance),
            Ok(Stored::Closed) => {
                write(&self.rooms).retired.insert(code.to_string());
                return refuse(closed()).await;
            }
            Ok(_) | Err(_) => {
                return refuse(unavailable("the room changed while taken over")).await;
            }
        };
        // Anyone who owned the room before (an epoch above 1) may have published
        // versions it never saved: start past all of them, saved before anyone sees it.
        if epoch > 1 || provenance == Provenance::Restored {
            let stored_at = room.version();
            let Some(next) = stored_at
                .checked_add(cluster.version_jump)
                .filter(|v| *v <= crate::protocol::limits::MAX_VERSION)
            else {
                tracing::error!(roomCode = %code, version = stored_at, "room_versions_exhausted");
                return refuse(unavailable(
                    "the room has no versions left to take it over with",
                ))
                .await;
            };
            room.skip_to(next);
            room.epoch = epoch;
            if let Err(why) = save_jump(&parts.store, &room).await {
                return refuse(why).await;
            }
            tracing::info!(roomCode = %code, epoch, storedVersion = stored_at, version = room.version(), "room_taken_over");
            crate::telemetry::Metrics::inc(&cluster.metrics.counters.cluster_takeovers_total);
        } else {
            room.epoch = epoch;
            tracing::info!(roomCode = %code, epoch, "room_created_here");
        }
        // A hand-over that began while this takeover ran gets the room as well.
        if parts.giving_up(code) {
            return refuse(handing_over()).await;
        }
        let mut rooms = write(&self.rooms);
        // A relay of this room here gives way to the owner.
        if let Some(entry) = rooms.live.remove(code) {
            entry.handle.deliver(RoomMsg::Stop {
                code: crate::edge::frame::close::RESTART,
                reason: "the room moved to this node",
                checkpoint: false,
                reply: None,
            });
        }
        Ok(Takeover::Taken(self.start(&mut rooms, room, provenance)))
    }

    /// Handles a message from another node: a relay's for its relay here, an owner's
    /// for the owner (taking the room over if nobody owns it). Never waits on a room.
    pub fn dispatch(self: &Arc<Self>, message: Message) {
        let Some(parts) = &self.cluster else {
            return;
        };
        if let Message::Relay {
            room, from, link, ..
        } = &message
        {
            let relay = read(&self.rooms)
                .live
                .get(room)
                .filter(|e| e.relay)
                .map(|e| e.handle.clone());
            match relay {
                // A full relay queue loses the message; its link then shows a gap.
                Some(handle) => {
                    handle.offer(RoomMsg::Relayed(Box::new(message)));
                }
                // Nothing here relays the room any more (its Unlink was lost): the
                // owner is told, and drops the link and the sockets it still counts.
                None if !from.is_empty() => {
                    let unlink = Message::Unlink {
                        room: room.clone(),
                        from: parts.cluster.node.to_string(),
                        link: *link,
                    };
                    parts.cluster.send(from, &unlink);
                }
                None => {}
            }
            return;
        }
        let Some(code) = message.owner_room().map(str::to_string) else {
            return;
        };
        let caller = message
            .caller()
            .map(|(node, call)| (node.to_string(), call));
        let cluster = parts.cluster.clone();
        if let Message::Create { stored, seeded, .. } = message {
            let registry = self.clone();
            tokio::spawn(async move {
                let result = match Room::from_stored(*stored) {
                    // The lease and epoch taken are the code's: the room must be it.
                    Ok(room) if room.code() != code => Err(Rejection::new(
                        ErrorCode::InvalidPayload,
                        "the room to create does not carry the code it is created under",
                    )),
                    Ok(room) => {
                        let provenance = if seeded {
                            Provenance::Seeded
                        } else {
                            Provenance::Server
                        };
                        match registry.take_over(&code, Some((room, provenance))).await {
                            Ok(Takeover::Taken(_)) => Ok(()),
                            Ok(Takeover::HeldBy(_)) => Err(exists(&code)),
                            Err(why) => Err(why),
                        }
                    }
                    Err(why) => Err(why),
                };
                if let Some((node, call)) = caller {
                    cluster.answer(&node, call, Answer::Created { result });
                }
            });
            return;
        }
        if let Some(handle) = self.owned(&code) {
            // A socket leaving must never be lost (it would stay online for ever).
            if matches!(message, Message::Detach { .. } | Message::Unlink { .. }) {
                handle.deliver(RoomMsg::Remote(Box::new(message)));
                return;
            }
            if !handle.offer(RoomMsg::Remote(Box::new(message)))
                && let Some((node, call)) = caller
            {
                cluster.answer(
                    &node,
                    call,
                    Answer::Refused {
                        why: unavailable("the room is busy; try again"),
                        moved: false,
                    },
                );
            }
            return;
        }
        // Leaving messages for a room nobody here owns need no takeover; but one whose
        // takeover is in flight gets them once it is done (its Attach went ahead).
        if matches!(message, Message::Detach { .. } | Message::Unlink { .. }) {
            let registry = self.clone();
            tokio::spawn(async move {
                let Some(parts) = registry.cluster.as_ref() else {
                    return;
                };
                let lock = registry.takeover_lock(parts, &code);
                let _after_the_takeover = lock.lock().await;
                if let Some(handle) = registry.owned(&code) {
                    handle.deliver(RoomMsg::Remote(Box::new(message)));
                }
            });
            return;
        }
        if matches!(message, Message::Adopt { .. }) {
            let registry = self.clone();
            tokio::spawn(async move {
                if let Err(why) = registry.take_over(&code, None).await {
                    tracing::warn!(roomCode = %code, error = %why.message, "room_adopt_failed");
                }
            });
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            // `moved`: this node is not the room's (the asker's relay must find it
            // again); a busy room is only busy.
            let (why, moved) = match registry.take_over(&code, None).await {
                Ok(Takeover::Taken(handle)) => {
                    if handle.offer(RoomMsg::Remote(Box::new(message))) {
                        return;
                    }
                    (unavailable("the room is busy; try again"), false)
                }
                Ok(Takeover::HeldBy(node)) => (
                    unavailable(format!("the room is served by node {node}; try again")),
                    true,
                ),
                Err(why) => (why, true),
            };
            if let Some((node, call)) = caller {
                cluster.answer(&node, call, Answer::Refused { why, moved });
            }
        });
    }

    /// Stops the owner of a room that this node lost (another node's epoch or lease),
    /// if it is the owner of that `epoch` (`None`: whichever it is): an older owner's
    /// refused rows must not stop a newer one.
    pub fn lost(&self, code: &str, epoch: Option<u64>, why: &'static str) {
        let handle = read(&self.rooms)
            .live
            .get(code)
            .filter(|e| !e.relay && epoch.is_none_or(|epoch| e.epoch == epoch))
            .map(|e| e.handle.clone());
        if let Some(handle) = handle {
            crate::telemetry::Metrics::inc(&self.ctx.metrics.counters.cluster_rooms_lost_total);
            handle.deliver(RoomMsg::Stop {
                code: crate::edge::frame::close::RESTART,
                reason: why,
                checkpoint: false,
                reply: None,
            });
        }
    }

    /// Cluster mode: the rooms closed here whose leases are still kept, and forgets
    /// them once the store holds everything queued (`flushed`).
    /// Returns (still kept, to release now): a room is released once the queue was
    /// empty after it closed, or after `CLOSING_KEPT` whatever the queue (bounded).
    fn closing(&self) -> (Vec<String>, Vec<String>) {
        let mut rooms = write(&self.rooms);
        // Read under the lock rooms are added under: a room closed before it had its
        // rows counted already (they are queued before its owner ends).
        let flushed = self
            .cluster
            .as_ref()
            .is_some_and(|p| p.persistence.depth() == 0);
        let Some(closing) = rooms.closing.as_mut() else {
            return (Vec::new(), Vec::new());
        };
        let (mut kept, mut done) = (Vec::new(), Vec::new());
        closing.retain(|code, since| {
            let release = flushed || since.elapsed() >= CLOSING_KEPT;
            if release {
                done.push(code.clone());
            } else {
                kept.push(code.clone());
            }
            !release
        });
        (kept, done)
    }

    /// The owned rooms and the epoch of each.
    fn owned_epochs(&self) -> Vec<(String, u64)> {
        read(&self.rooms)
            .live
            .iter()
            .filter(|(_, e)| !e.relay)
            .map(|(code, e)| (code.clone(), e.epoch))
            .collect()
    }

    /// Gives up rooms: each stops (checkpointed, sockets closed with 1012), what is
    /// queued reaches the store (bounded by `wait`), then the leases go, so the next
    /// owner takes the rooms at once.
    pub async fn hand_over(&self, codes: &[String], wait: Duration) {
        let Some(parts) = &self.cluster else {
            return;
        };
        // Not taken back by a client that reconnects here before the lease is gone.
        lock(&parts.handing).extend(codes.iter().cloned());
        for code in codes {
            if let Some(handle) = self.owned(code) {
                handle
                    .stop(crate::edge::frame::close::RESTART, "handover", true)
                    .await;
            }
        }
        // The leases are renewed meanwhile: a backlog longer than a lease must not let
        // another node take a room from an older snapshot while its last rows land.
        let deadline = tokio::time::Instant::now() + wait;
        // Renewed at once: the rooms stopped first have been out of the upkeep's
        // renewals since they stopped.
        let mut renewed = tokio::time::Instant::now()
            .checked_sub(parts.cluster.lease_ttl)
            .unwrap_or_else(tokio::time::Instant::now);
        while parts.persistence.depth() > 0 && tokio::time::Instant::now() < deadline {
            if renewed.elapsed() >= parts.cluster.lease_ttl / 3 {
                let _ = parts.cluster.renew(codes).await;
                renewed = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut others = (*parts.cluster.live()).clone();
        others.remove(&*parts.cluster.node);
        for code in codes {
            parts.cluster.release(code).await;
            if let Some(next) = crate::cluster::preferred(code, &others) {
                parts
                    .cluster
                    .send(&next, &Message::Adopt { room: code.clone() });
            }
        }
        // Still not taken back for one lease TTL: a message from a node whose view is
        // older may arrive after the release, before the next owner has the lease.
        let (codes_done, handing, ttl) = (
            codes.to_vec(),
            parts.handing.clone(),
            parts.cluster.lease_ttl,
        );
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut handing = lock(&handing);
            for code in &codes_done {
                handing.remove(code);
            }
        });
        tracing::info!(rooms = codes.len(), "rooms_handed_over");
    }

    /// SIGTERM in cluster mode: no more takeovers here, and every room handed over.
    pub async fn hand_over_all(&self, wait: Duration) {
        let Some(parts) = &self.cluster else {
            return;
        };
        parts.handing_over.store(true, Ordering::Release);
        let codes = self.codes();
        self.hand_over(&codes, wait).await;
        parts.cluster.leave().await;
    }
}

/// The longest a closed room's lease is kept waiting for its final snapshot.
const CLOSING_KEPT: Duration = Duration::from_secs(600);

fn exists(code: &str) -> Rejection {
    Rejection::new(
        ErrorCode::InvalidTransition,
        format!("room {code} already exists"),
    )
}

/// The snapshot a takeover writes at its new version, under its new epoch, before the
/// room serves anyone: restoring from the store after that starts past the skip.
async fn save_jump(store: &Store, room: &Room) -> Result<(), Rejection> {
    let stored = room.to_stored_apart(false);
    let canvases = stored.canvas_versions.clone();
    let snapshot = serde_json::to_string(&stored).map_err(unavailable)?;
    // Every canvas goes with it: replayed events may have moved a canvas past its last
    // stored row, and a snapshot must never name a row that is not there.
    let captured_at = time::OffsetDateTime::now_utc();
    let mut canvas_rows = Vec::with_capacity(room.canvases.len());
    for (adlob_id, canvas) in &room.canvases {
        canvas_rows.push(crate::store::CanvasRow {
            room_code: room.code().to_string(),
            adlob_id: adlob_id.clone(),
            version: canvas.version,
            ops: serde_json::to_string(&canvas.ops).map_err(unavailable)?,
            captured_at,
            epoch: room.epoch,
        });
    }
    let row = SnapshotRow {
        room_code: room.code().to_string(),
        version: room.version(),
        snapshot,
        captured_at: time::OffsetDateTime::now_utc(),
        canvases,
        closed: false,
        epoch: room.epoch,
    };
    let batch = Batch {
        canvases: canvas_rows.iter().collect(),
        snapshots: vec![&row],
        ..Batch::default()
    };
    store.write(&batch).await.map_err(unavailable)
}

/// Cluster mode's upkeep, every third of the lease TTL: renew the leases of the rooms
/// owned here (stopping those another node has), and when Redis cannot be asked,
/// ask Postgres whether each room's epoch is still ours. When a node leaves: its
/// sockets leave the rooms here, and the rooms it owned that prefer this node are
/// taken over now, not when a client comes back. When a node joins: the rooms that
/// now prefer it are handed over to it.
pub async fn upkeep(registry: Weak<Registry>, stop: tokio_util::sync::CancellationToken) {
    let Some((cluster, store)) = registry.upgrade().and_then(|r| {
        r.cluster
            .as_ref()
            .map(|p| (p.cluster.clone(), p.store.clone()))
    }) else {
        return;
    };
    let mut tick = tokio::time::interval(cluster.lease_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = cluster.watch_live();
    let mut known = live.borrow().clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let Some(registry) = registry.upgrade() else { return };
                // Closed rooms keep their lease until their final snapshot is stored.
                let (kept, done) = registry.closing();
                if !done.is_empty() {
                    let cluster = cluster.clone();
                    tokio::spawn(async move {
                        for code in &done {
                            cluster.release(code).await;
                        }
                    });
                }
                if !kept.is_empty() {
                    let _ = cluster.renew(&kept).await;
                }
                let owned = registry.owned_epochs();
                if owned.is_empty() {
                    continue;
                }
                let codes: Vec<String> = owned.iter().map(|(c, _)| c.clone()).collect();
                match cluster.renew(&codes).await {
                    Ok(lost) => {
                        for code in lost {
                            tracing::warn!(roomCode = %code, "room_lease_lost");
                            registry.lost(&code, None, "lost its lease");
                        }
                    }
                    Err(_) => match store.epochs(&codes).await {
                        Ok(current) => {
                            for (code, epoch) in &owned {
                                if current.get(code).is_some_and(|now| now != epoch) {
                                    tracing::warn!(roomCode = %code, epoch, "room_epoch_moved");
                                    registry.lost(code, Some(*epoch), "another node took the room over");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "room_epochs_unreadable"),
                    },
                }
            }
            changed = live.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = live.borrow_and_update().clone();
                let Some(registry) = registry.upgrade() else { return };
                for gone in known.difference(&now) {
                    for handle in registry.all() {
                        handle.deliver(RoomMsg::NodeGone { node: gone.clone() });
                    }
                    // Off the loop: a slow database must not hold up lease renewals.
                    let (registry, store, cluster, gone) =
                        (registry.clone(), store.clone(), cluster.clone(), gone.clone());
                    tokio::spawn(async move {
                        match store.rooms_owned_by(&gone).await {
                            Ok(codes) => {
                                for code in codes {
                                    if cluster.preferred(&code) == *cluster.node {
                                        let registry = registry.clone();
                                        tokio::spawn(async move {
                                            let _ = registry.take_over(&code, None).await;
                                        });
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "owned_rooms_unreadable"),
                        }
                    });
                }
                if now.difference(&known).next().is_some() {
                    let moving: Vec<String> = registry
                        .codes()
                        .into_iter()
                        .filter(|code| cluster.preferred(code) != *cluster.node)
                        .collect();
                    if !moving.is_empty() {
                        let registry = registry.clone();
                        tokio::spawn(async move {
                            registry.hand_over(&moving, Duration::from_secs(5)).await;
                        });
                    }
                }
                known = now;
            }
        }
    }
}

/// Run by an owner as its task ends: its room leaves the map and its code is retired
/// (a room that was closed, expired or crashed keeps its history under its code).
fn forget(rooms: &Weak<RwLock<Rooms>>, code: &str, exit: Exit) {
    let Some(rooms) = rooms.upgrade() else {
        return;
    };
    let mut rooms = write(&rooms);
    // Only the entry of the owner that ended: CloseRoom has removed it already, and
    // a handle that still has a live owner must stay.
    let ended = rooms
        .live
        .get(code)
        .is_some_and(|entry| entry.handle.is_gone());
    if ended {
        // A room that moved to another node lives on: its code is not retired here.
        rooms.take_out(code, exit == Exit::Ended);
    }
}

// A poisoned lock only means another thread panicked while holding it; the map
// itself is always left consistent (single insert/remove), so keep serving.
fn read(rooms: &RwLock<Rooms>) -> std::sync::RwLockReadGuard<'_, Rooms> {
    rooms.read().unwrap_or_else(|e| e.into_inner())
}

fn write(rooms: &RwLock<Rooms>) -> std::sync::RwLockWriteGuard<'_, Rooms> {
    rooms.write().unwrap_or_else(|e| e.into_inner())
}
