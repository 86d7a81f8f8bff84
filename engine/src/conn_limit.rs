//! Connection limits per source IP and in total.
//!
//! A connection takes a [`ConnPermit`] when it is accepted, before any
//! handshake work, and holds it until its socket is gone: the permit travels
//! with the socket to its home shard and lives in its `Conn`. Dropping the
//! permit (wherever that happens: handshake failure, auth timeout, a lost
//! hand-off, the connection's end) gives the slot back, so no path can leak
//! a count.
//!
//! Pending handshakes count: a slowloris from one address is capped by the
//! per-IP limit like established connections are.
//!
//! One address may be exempt from the per-IP count (still counted in the
//! total): the in-process WSS relay's, whose connections all come from it;
//! the relay applies the per-IP limit to each client's real address with
//! a limiter of its own.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;

/// Counts connections; shared by every shard.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
    /// Counted in the total only.
    exempt: Option<IpAddr>,
    total: AtomicUsize,
    /// Source address → connections from it (entries with 0 are removed, so
    /// the map is bounded by the connections themselves).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_conns` connections are open.
    #[error("too many connections")]
    Total,
    /// `max_conns_per_ip` connections from this address are open.
    #[error("too many connections from this address")]
    PerIp,
}

impl ConnLimiter {
    /// Limits of at least 1 each (0 is taken as 1: a limit of nothing would
    /// make the server unusable, and config validation refuses it anyway).
    /// `exempt`: an address counted in the total only.
    pub fn new(max_total: usize, max_per_ip: usize, exempt: Option<IpAddr>) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            exempt: exempt.map(canonical),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or why not.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let ip = canonical(ip);
        // Total first, lock-free: a flood past the total never takes the lock.
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        if self.exempt == Some(ip) {
            // `release` finds no map entry for it and gives back the total.
            return Ok(ConnPermit(Box::new((self.clone(), ip))));
        }
        let mut map = match self.per_ip.lock() {
            Ok(m) => m,
            // A poisoned lock means a panic elsewhere; the counts are still
            // plain integers, so go on with them.
            Err(p) => p.into_inner(),
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(map);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerIp);
        }
        *n += 1;
        Ok(ConnPermit(Box::new((self.clone(), ip))))
    }

    /// Open connections (including pending handshakes).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn release(&self, ip: IpAddr) {
        let mut map = match self.per_ip.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
        drop(map);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IPv4 client on a dual-stack listener shows up as `::ffff:a.b.c.d`;
/// count it under its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One counted connection; dropping it gives the slot back. Boxed so it
/// costs a connection one pointer (the `Conn` memory budget).
#[derive(Debug)]
pub struct ConnPermit(Box<(Arc<ConnLimiter>, IpAddr)>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let (limiter, ip) = &*self.0;
        limiter.release(*ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_and_total_limits() {
        let l = ConnLimiter::new(5, 2, None);
        let a1 = l.try_acquire(ip("127.0.0.2")).unwrap();
        let _a2 = l.try_acquire(ip("127.0.0.2")).unwrap();
        assert_eq!(l.try_acquire(ip("127.0.0.2")).unwrap_err(), Refused::PerIp);
        // The mapped form is the same address.
        assert_eq!(
            l.try_acquire(ip("::ffff:127.0.0.2")).unwrap_err(),
            Refused::PerIp
        );
        let _b1 = l.try_acquire(ip("127.0.0.3")).unwrap();
        let _b2 = l.try_acquire(ip("127.0.0.3")).unwrap();
        let _c1 = l.try_acquire(ip("127.0.0.4")).unwrap();
        assert_eq!(l.total(), 5);
        assert_eq!(l.try_acquire(ip("127.0.0.5")).unwrap_err(), Refused::Total);
        assert_eq!(l.total(), 5, "a refusal takes nothing");
        drop(a1);
        assert_eq!(l.total(), 4);
        let _a3 = l.try_acquire(ip("127.0.0.2")).unwrap();
    }

    #[test]
    fn the_exempt_address_counts_in_the_total_only() {
        let l = ConnLimiter::new(4, 1, Some(ip("127.0.0.1")));
        let relayed: Vec<_> = (0..3)
            .map(|_| l.try_acquire(ip("127.0.0.1")).unwrap())
            .collect();
        // The mapped form is exempt too.
        let mapped = l.try_acquire(ip("::ffff:127.0.0.1")).unwrap();
        assert_eq!(l.total(), 4);
        assert!(l.per_ip.lock().unwrap().is_empty());
        assert_eq!(l.try_acquire(ip("127.0.0.1")).unwrap_err(), Refused::Total);
        drop(relayed);
        drop(mapped);
        assert_eq!(l.total(), 0);
        // Any other address still has the per-IP limit.
        let _b = l.try_acquire(ip("127.0.0.2")).unwrap();
        assert_eq!(l.try_acquire(ip("127.0.0.2")).unwrap_err(), Refused::PerIp);
    }

    #[test]
    fn released_addresses_leave_the_map() {
        let l = ConnLimiter::new(100, 100, None);
        let permits: Vec<_> = (1..=50)
            .map(|i| l.try_acquire(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(l.per_ip.lock().unwrap().len(), 50);
        drop(permits);
        assert_eq!(l.total(), 0);
        assert!(l.per_ip.lock().unwrap().is_empty());
    }
}
