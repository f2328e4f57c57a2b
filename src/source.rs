//! Source addresses as the per-source limits count them (the UDP rate limit, handshake slots,
//! the failure back-off, metrics scrapes), and a counter of what each holds.
//!
//! A source is an IPv4 address, or an IPv6 /64: one host is usually given a whole /64, so
//! counting single IPv6 addresses would let it act as 2^64 sources. IPv4-mapped IPv6
//! addresses count as the IPv4 address they carry.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// The source `ip` belongs to: itself for IPv4, its /64 for IPv6.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// How many of something (connections in their handshake, metrics scrapes) each source holds
/// at once, refusing past `max`. Sources holding nothing are forgotten, so the map never holds
/// more entries than there are slots taken.
#[derive(Debug)]
pub(crate) struct PerSource {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One slot of a source, given back when dropped.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl PerSource {
    pub(crate) fn new(max: usize) -> PerSource {
        PerSource {
            max,
            held: Arc::default(),
        }
    }

    /// A slot for `ip`'s source, or `None` if that source already holds `max`.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = source_key(ip);
        let mut held = lock(&self.held);
        let count = held.entry(source).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            held: self.held.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// The map, even if a thread panicked holding it: every update leaves it consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(source_key(mapped), IpAddr::from([127, 0, 0, 2]));
    }

    #[test]
    fn slots_are_capped_per_source_and_given_back_on_drop() {
        let slots = PerSource::new(2);
        let a = IpAddr::from([127, 0, 0, 2]);
        let first = slots.try_acquire(a).unwrap();
        let second = slots.try_acquire(a).unwrap();
        assert!(slots.try_acquire(a).is_none());
        assert!(slots.try_acquire(IpAddr::from([127, 0, 0, 1])).is_some());
        drop(first);
        assert!(slots.try_acquire(a).is_some());
        drop(second);
    }
}
