//! Slowing down repeated authentication failures from one address.
//!
//! A failed handshake is answered only after a delay that doubles with each recent failure from
//! the same address, so guessing secrets online is slow. Successful handshakes are never
//! delayed, so a correct client on the same address is not punished for someone else's guesses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failure is remembered.
const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked addresses, forgotten entries are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug)]
pub struct FailureThrottle {
    base: Duration,
    max: Duration,
    recent: Mutex<HashMap<Option<IpAddr>, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Default for FailureThrottle {
    fn default() -> FailureThrottle {
        FailureThrottle::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

impl FailureThrottle {
    pub fn new(base: Duration, max: Duration) -> FailureThrottle {
        FailureThrottle {
            base,
            max,
            recent: Mutex::default(),
        }
    }

    /// Records a failure from `addr` (`None` for Unix sockets) and returns how long to wait
    /// before answering it: `base`, doubling per recent failure, at most `max`.
    pub fn record_failure(&self, addr: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() >= SWEEP_AT {
            recent.retain(|_, failures| now.duration_since(failures.last) < WINDOW);
        }
        let entry = recent.entry(addr).or_insert(Failures { count: 0, last: now });
        if now.duration_since(entry.last) >= WINDOW {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let doublings = (entry.count - 1).min(16);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_failure_up_to_the_cap_and_is_per_address() {
        let throttle = FailureThrottle::new(Duration::from_millis(10), Duration::from_millis(70));
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let delays: Vec<u128> = (0..5).map(|_| throttle.record_failure(a).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 70, 70]);
        assert_eq!(
            throttle
                .record_failure(Some(IpAddr::from([10, 0, 0, 2])))
                .as_millis(),
            10
        );
    }
}
