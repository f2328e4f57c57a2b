//! What an attack works with: the arena it aims at (the servers, their addresses, the scale of
//! the run) and the attacker handle every attack function is given, with its source addresses
//! and its tally.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sockit::auth::SessionKeys;
use tokio::task::JoinSet;

use super::super::tally::Tally;

/// Whether an attack got what the server must not give: `None` when it only reports figures.
pub type Held = Option<bool>;

/// What every attack may aim at.
pub struct Arena {
    pub server: SocketAddr,
    pub keys: SessionKeys,
    pub pid: u32,
    pub until: Instant,
    /// The main server's file root, for attacks that lay out files before asking for them.
    pub root: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub time_udp: SocketAddr,
    pub udp_echo: Option<SocketAddr>,
    /// A second server with a small `--quota`, for the quota attack.
    pub quota: Option<QuotaServer>,
    /// Counts are the full run's times this (0.1 in CI).
    pub scale: f64,
    /// Local files of the bystander's round-trips.
    pub scratch: PathBuf,
}

/// The small-quota server M2 aims at: its own process and root, so the normal load's uploads
/// never compete with the attacker for the same quota.
pub struct QuotaServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub quota: u64,
}

impl Arena {
    /// `full` scaled for this run, at least 1.
    pub fn scaled(&self, full: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(1)
    }

    pub fn time_left(&self) -> bool {
        Instant::now() < self.until
    }
}

/// One attack at work: where it aims, its addresses, and its tally.
pub struct Attacker {
    /// The third octet of the attack's source addresses.
    pub octet: u8,
    pub arena: Arc<Arena>,
    pub tally: Arc<Tally>,
}

impl Attacker {
    /// The source address of `lane`: 127.0.N.(1 + lane % 250).
    pub fn source(&self, lane: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.octet, 1 + (lane % 250) as u8)
    }

    pub fn count(&self, key: &str) {
        self.tally.add(key, 1);
    }

    pub fn add(&self, key: &str, n: u64) {
        self.tally.add(key, n);
    }

    /// The sum of this attack's counts whose names start with `prefix`.
    pub fn tally_total(&self, prefix: &str) -> u64 {
        let counts = self.tally.snapshot();
        counts
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    fn clone_handle(&self) -> Attacker {
        Attacker {
            octet: self.octet,
            arena: self.arena.clone(),
            tally: self.tally.clone(),
        }
    }

    /// Runs `attempt(lane, n)` for n in 0..count over `parallel` lanes, until the phase ends.
    pub async fn in_lanes<F, Fut>(&self, parallel: usize, count: usize, attempt: F)
    where
        F: Fn(Attacker, usize, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let next = Arc::new(AtomicU64::new(0));
        let mut lanes = JoinSet::new();
        for lane in 0..parallel.min(count) {
            let (me, next, attempt) = (self.clone_handle(), next.clone(), attempt.clone());
            lanes.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= count || !me.arena.time_left() {
                        break;
                    }
                    attempt(me.clone_handle(), lane, n).await;
                }
            });
        }
        lanes.join_all().await;
    }
}
