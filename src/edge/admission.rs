//! Bounds on what one source address, or everyone together, may hold open or do:
//! TCP connections on the players' port, client-seeded rooms created per minute, and
//! failed attempts at the broadcast hook's secret.
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

/// The key per-address bounds count under: the address itself for IPv4, its /64
/// for IPv6 (one subscriber gets a whole /64, so a finer key would let one client
/// take as many places as it has addresses).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
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
        let ip = address_key(ip);
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

/// Events one source address may cause per minute (a fixed one-minute window):
/// rooms seeded, failed broadcast-hook secrets.
pub struct AddressLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl AddressLimiter {
    pub fn new(per_minute: u32) -> AddressLimiter {
        AddressLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has spent this minute's budget (without counting anything).
    pub fn is_spent(&self, ip: IpAddr, now: Instant) -> bool {
        lock(&self.windows)
            .get(&address_key(ip))
            .is_some_and(|(start, count)| {
                now.saturating_duration_since(*start) < WINDOW && *count >= self.per_minute
            })
    }

    /// Counts one event from `ip` at `now`; false if its budget for this minute is
    /// spent.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = address_key(ip);
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
    fn an_ipv6_64_counts_as_one_address() {
        let limits = ConnectionLimits::new(10, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        let _a = limits.admit(a).expect("first of the /64");
        assert_eq!(limits.admit(b).err(), Some(Refusal::PerAddress));
        assert!(limits.admit(c).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("mapped");
        let _m = limits.admit(mapped).expect("mapped v4");
        assert_eq!(limits.admit(A).err(), Some(Refusal::PerAddress));
    }

    #[test]
    fn events_per_minute_per_address() {
        let limiter = AddressLimiter::new(2);
        let t0 = Instant::now();
        assert!(limiter.allow(A, t0));
        assert!(limiter.allow(A, t0));
        assert!(!limiter.allow(A, t0));
        assert!(limiter.allow(B, t0));
        assert!(limiter.allow(A, t0 + WINDOW));
    }
}
