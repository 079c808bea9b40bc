//! Bounds on what one source address, or everyone together, may hold open: TCP
//! connections on the players' port, and client-seeded rooms created per minute.
//!
//! Counts are taken when a connection is accepted and given back when its guard is
//! dropped, so a connection that upgrades to a WebSocket keeps its place for the
//! socket's whole life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a counter update; a panic cannot leave one
    // half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_CONNECTIONS` connections are open.
    Full,
    /// The source address has `MAX_CONNECTIONS_PER_IP` open.
    PerAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "server at connection capacity",
            Refusal::PerAddress => "too many connections from this address",
        }
    }
}

/// Open connections on the players' port, in all and per source address.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place; dropping it gives the place back.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut per_ip = lock(&self.per_ip);
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::Full);
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.limits.per_ip);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Rooms one source address may seed per minute (a fixed one-minute window).
pub struct SeedLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl SeedLimiter {
    pub fn new(per_minute: u32) -> SeedLimiter {
        SeedLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one seed from `ip` at `now`; false if its budget for this minute is
    /// spent.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut windows = lock(&self.windows);
        // Forget finished windows now and then, so the map stays as small as the
        // set of addresses that seeded in the last minute.
        if windows.len() > 1024 {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
        }
        let (start, count) = windows.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        if *count >= self.per_minute {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn caps_per_address_and_in_all_and_gives_places_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(A).expect("first");
        let _a2 = limits.admit(A).expect("second");
        assert_eq!(limits.admit(A).err(), Some(Refusal::PerAddress));
        let _b1 = limits.admit(B).expect("other address");
        assert_eq!(limits.admit(B).err(), Some(Refusal::Full));
        drop(a1);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(B).is_ok());
    }

    #[test]
    fn seeds_per_minute_per_address() {
        let limiter = SeedLimiter::new(2);
        let t0 = Instant::now();
        assert!(limiter.allow(A, t0));
        assert!(limiter.allow(A, t0));
        assert!(!limiter.allow(A, t0));
        assert!(limiter.allow(B, t0));
        assert!(limiter.allow(A, t0 + WINDOW));
    }
}
