//! The rooms this node owns, by code.
//!
//! Only joins, room creation and closing touch this map; once a socket has joined it
//! holds its room's handle, so the message path never takes this lock.

use crate::owner::{self, RoomContext, RoomHandle};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct Rooms {
    live: HashMap<String, RoomHandle>,
    /// Codes of rooms that existed and were closed (here or, per the store, before
    /// a restart). A code is never reused: its versions and rows stay one history.
    retired: HashSet<String>,
}

pub struct Registry {
    rooms: RwLock<Rooms>,
    ctx: Arc<RoomContext>,
}

impl Registry {
    /// A registry that will never hand out `retired` codes.
    pub fn new(ctx: Arc<RoomContext>, retired: impl IntoIterator<Item = String>) -> Registry {
        Registry {
            rooms: RwLock::new(Rooms {
                live: HashMap::new(),
                retired: retired.into_iter().collect(),
            }),
            ctx,
        }
    }

    pub fn get(&self, code: &str) -> Option<RoomHandle> {
        self.read().live.get(code).cloned()
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

    /// Starts an owner for a new room. A taken or retired code is refused.
    pub fn create(&self, room: Room) -> Result<RoomHandle, Rejection> {
        let mut rooms = self.write();
        if let Some(why) = Self::taken(&rooms, room.code()) {
            return Err(why);
        }
        let code = room.code().to_string();
        let handle = owner::spawn(room, self.ctx.clone(), false);
        rooms.live.insert(code, handle.clone());
        Ok(handle)
    }

    /// Starts an owner for a room loaded from the store (already saved as it is).
    pub fn restore(&self, room: Room) -> RoomHandle {
        let code = room.code().to_string();
        let handle = owner::spawn(room, self.ctx.clone(), true);
        let mut rooms = self.write();
        rooms.retired.remove(&code);
        rooms.live.insert(code, handle.clone());
        handle
    }

    /// The room with `code`, or one made by `seed` if there is none. The existing
    /// room always wins over the seed; a retired code is `room_not_found`.
    pub fn get_or_create(
        &self,
        code: &str,
        seed: impl FnOnce() -> Result<Room, Rejection>,
    ) -> Result<RoomHandle, Rejection> {
        if let Some(handle) = self.get(code) {
            return Ok(handle);
        }
        let room = seed()?;
        let mut rooms = self.write();
        if let Some(handle) = rooms.live.get(code) {
            return Ok(handle.clone());
        }
        if rooms.retired.contains(code) {
            return Err(Rejection::new(ErrorCode::RoomNotFound, "room was closed"));
        }
        let handle = owner::spawn(room, self.ctx.clone(), false);
        rooms.live.insert(code.to_string(), handle.clone());
        Ok(handle)
    }

    /// Forgets a room (after its owner closed it); its code is retired.
    pub fn remove(&self, code: &str) -> Option<RoomHandle> {
        let mut rooms = self.write();
        rooms.retired.insert(code.to_string());
        rooms.live.remove(code)
    }

    pub fn len(&self) -> usize {
        self.read().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn codes(&self) -> Vec<String> {
        self.read().live.keys().cloned().collect()
    }

    /// Handles of every live room (for shutdown's final checkpoints).
    pub fn handles(&self) -> Vec<RoomHandle> {
        self.read().live.values().cloned().collect()
    }

    // A poisoned lock only means another thread panicked while holding it; the map
    // itself is always left consistent (single insert/remove), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rooms> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rooms> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }
}
