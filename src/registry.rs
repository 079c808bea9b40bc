//! The rooms this node owns, by code.
//!
//! Only joins, room creation and closing touch this map; once a socket has joined it
//! holds its room's handle, so the message path never takes this lock.

use crate::owner::{self, RoomContext, RoomHandle};
use crate::protocol::{ErrorCode, Rejection};
use crate::room::Room;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub struct Registry {
    rooms: RwLock<HashMap<String, RoomHandle>>,
    ctx: Arc<RoomContext>,
}

impl Registry {
    pub fn new(ctx: Arc<RoomContext>) -> Registry {
        Registry {
            rooms: RwLock::new(HashMap::new()),
            ctx,
        }
    }

    pub fn get(&self, code: &str) -> Option<RoomHandle> {
        self.read().get(code).cloned()
    }

    /// Starts an owner for a new room. A taken code is refused.
    pub fn create(&self, room: Room) -> Result<RoomHandle, Rejection> {
        let mut rooms = self.write();
        if rooms.contains_key(room.code()) {
            return Err(Rejection::new(
                ErrorCode::InvalidPayload,
                format!("room {} already exists", room.code()),
            ));
        }
        let code = room.code().to_string();
        let handle = owner::spawn(room, self.ctx.clone());
        rooms.insert(code, handle.clone());
        Ok(handle)
    }

    /// The room with `code`, or one made by `seed` if there is none. The existing
    /// room always wins over the seed.
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
        if let Some(handle) = rooms.get(code) {
            return Ok(handle.clone());
        }
        let handle = owner::spawn(room, self.ctx.clone());
        rooms.insert(code.to_string(), handle.clone());
        Ok(handle)
    }

    /// Forgets a room (after its owner closed it).
    pub fn remove(&self, code: &str) -> Option<RoomHandle> {
        self.write().remove(code)
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn codes(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    // A poisoned lock only means another thread panicked while holding it; the map
    // itself is always left consistent (single insert/remove), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, RoomHandle>> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, RoomHandle>> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }
}
