//! The rooms this node owns, by code.
//!
//! Only joins, room creation and closing touch this map; once a socket has joined it
//! holds its room's handle, so the message path never takes this lock. An owner that
//! ends for any reason (closed, expired, crashed) removes its own entry, so the map
//! never holds a handle to a room that is gone.

use crate::owner::{self, Provenance, RoomContext, RoomHandle};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};

#[derive(Default)]
struct Rooms {
    live: HashMap<String, Entry>,
    /// Codes of rooms that existed and were closed (here or, per the store, before
    /// a restart). A code is never reused: its versions and rows stay one history.
    retired: HashSet<String>,
    /// Live rooms created from a client seed (bounded by `max_seeded`).
    seeded: usize,
}

struct Entry {
    handle: RoomHandle,
    seeded: bool,
}

pub struct Registry {
    rooms: Arc<RwLock<Rooms>>,
    ctx: Arc<RoomContext>,
    max_seeded: usize,
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
            })),
            ctx,
            max_seeded,
        }
    }

    pub fn get(&self, code: &str) -> Option<RoomHandle> {
        read(&self.rooms).live.get(code).map(|e| e.handle.clone())
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
        let on_exit = {
            let rooms = Arc::downgrade(&self.rooms);
            let code = code.clone();
            move || forget(&rooms, &code)
        };
        let handle = owner::spawn(room, self.ctx.clone(), provenance, on_exit);
        rooms.retired.remove(&code);
        rooms.seeded += usize::from(seeded);
        rooms.live.insert(
            code,
            Entry {
                handle: handle.clone(),
                seeded,
            },
        );
        handle
    }

    /// Starts an owner for a new room. A taken or retired code is refused.
    pub fn create(&self, room: Room) -> Result<RoomHandle, Rejection> {
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

    /// The room with `code`, or one made by `seed` if there is none. The existing
    /// room always wins over the seed; a retired code is `room_not_found`, and past
    /// `max_seeded` live seeded rooms a new seed is `unavailable`.
    pub fn get_or_create(
        &self,
        code: &str,
        seed: impl FnOnce() -> Result<Room, Rejection>,
    ) -> Result<RoomHandle, Rejection> {
        if let Some(handle) = self.get(code) {
            return Ok(handle);
        }
        {
            let rooms = read(&self.rooms);
            if rooms.retired.contains(code) {
                return Err(Rejection::new(ErrorCode::RoomNotFound, "room was closed"));
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
            return Err(Rejection::new(ErrorCode::RoomNotFound, "room was closed"));
        }
        if rooms.seeded >= self.max_seeded {
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                "the server holds as many client-created rooms as it takes",
            ));
        }
        Ok(self.start(&mut rooms, room, Provenance::Seeded))
    }

    /// Forgets a room whose owner is closing it; its code is retired.
    pub fn remove(&self, code: &str) -> Option<RoomHandle> {
        let mut rooms = write(&self.rooms);
        let entry = rooms.live.remove(code)?;
        rooms.retired.insert(code.to_string());
        rooms.seeded -= usize::from(entry.seeded);
        Some(entry.handle)
    }

    pub fn len(&self) -> usize {
        read(&self.rooms).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn codes(&self) -> Vec<String> {
        read(&self.rooms).live.keys().cloned().collect()
    }

    /// Handles of every live room (for shutdown's final checkpoints).
    pub fn handles(&self) -> Vec<RoomHandle> {
        read(&self.rooms)
            .live
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }
}

/// Run by an owner as its task ends: its room leaves the map and its code is retired
/// (a room that was closed, expired or crashed keeps its history under its code).
fn forget(rooms: &Weak<RwLock<Rooms>>, code: &str) {
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
        if let Some(entry) = rooms.live.remove(code) {
            rooms.seeded -= usize::from(entry.seeded);
        }
        rooms.retired.insert(code.to_string());
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
