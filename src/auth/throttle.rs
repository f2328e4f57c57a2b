//! Holding back online guessing of the secret, per source address.
//!
//! Every failed authentication puts its source (an IPv4 address, or an IPv6 /64) under
//! back-off for a time that doubles with each recent failure from it: `base` after the first,
//! at most `max`. While a source is under back-off its further attempts are refused at once,
//! before any cryptography, with `auth_throttled`: a wrong guess is answered at once too, so
//! neither an answer nor its timing tells a guesser anything but "wait". With the default
//! base of 100 ms one source gets at most 10 guesses a second, and fewer as failures add up.
//! Other sources are never affected; a client holding the secret on the guesser's own address
//! is refused until the back-off ends (it is told how long).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::source::source_key;

/// How long a failure is remembered.
const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked sources, forgotten ones are swept.
const SWEEP_AT: usize = 4096;
/// Sources tracked at most: about 5 MB. Past it (after a sweep), only sources under back-off
/// now are kept; a wide attack loses the back-off history of its quiet sources.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
pub(crate) struct FailureThrottle {
    base: Duration,
    max: Duration,
    recent: Mutex<HashMap<Option<IpAddr>, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// Attempts before this are refused.
    until: Instant,
}

impl Default for FailureThrottle {
    fn default() -> FailureThrottle {
        FailureThrottle::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl FailureThrottle {
    pub(crate) fn new(base: Duration, max: Duration) -> FailureThrottle {
        FailureThrottle {
            base,
            max,
            recent: Mutex::default(),
        }
    }

    /// Whether `addr`'s source (`None`: Unix sockets, one source) may attempt to authenticate
    /// now; if it is under back-off, how long is left.
    pub(crate) fn admit(&self, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        match self.lock().get(&addr.map(source_key)) {
            Some(failures) if failures.until > now => Err(failures.until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure from `addr`'s source and returns the back-off it is now under:
    /// `base`, doubling per recent failure, at most `max`.
    pub(crate) fn record_failure(&self, addr: Option<IpAddr>) -> Duration {
        let now = Instant::now();
        let mut recent = self.lock();
        make_room(&mut recent, now);
        let entry = recent.entry(addr.map(source_key)).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if now.duration_since(entry.last) >= WINDOW {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let doublings = (entry.count - 1).min(16);
        let backoff = self.base.saturating_mul(1 << doublings).min(self.max);
        entry.until = now + backoff;
        backoff
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Option<IpAddr>, Failures>> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the map within [`MAX_TRACKED`]: forgets failures older than the window, then, if it
/// is still full, every source not under back-off now.
fn make_room(recent: &mut HashMap<Option<IpAddr>, Failures>, now: Instant) {
    if recent.len() >= SWEEP_AT {
        recent.retain(|_, failures| now.duration_since(failures.last) < WINDOW);
    }
    if recent.len() >= MAX_TRACKED {
        recent.retain(|_, failures| failures.until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap_and_is_per_source() {
        let throttle = FailureThrottle::new(Duration::from_millis(10), Duration::from_millis(70));
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let backoffs: Vec<u128> = (0..5).map(|_| throttle.record_failure(a).as_millis()).collect();
        assert_eq!(backoffs, [10, 20, 40, 70, 70]);
        assert_eq!(
            throttle
                .record_failure(Some(IpAddr::from([10, 0, 0, 2])))
                .as_millis(),
            10
        );
    }

    #[test]
    fn a_source_under_backoff_is_refused_and_others_are_not() {
        let throttle = FailureThrottle::new(Duration::from_secs(60), Duration::from_secs(60));
        let guesser: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(throttle.admit(Some(guesser)), Ok(()));
        throttle.record_failure(Some(guesser));
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(throttle.admit(Some(same_64)).is_err());
        assert_eq!(throttle.admit(Some("2001:db8:0:1::1".parse().unwrap())), Ok(()));
        assert_eq!(throttle.admit(Some(IpAddr::from([127, 0, 0, 2]))), Ok(()));
        assert_eq!(throttle.admit(None), Ok(()));
    }

    #[test]
    fn the_backoff_ends() {
        let throttle = FailureThrottle::new(Duration::from_millis(1), Duration::from_millis(1));
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        throttle.record_failure(a);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(throttle.admit(a), Ok(()));
    }
}
