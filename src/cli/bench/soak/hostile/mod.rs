//! The hostile phase: the attacks of issue 12, each a small function bounded in count and time,
//! run beside the normal mixed load in its last stretch.
//!
//! Every attack comes from loopback addresses of its own (127.0.N.x, N = 10 + its number), never
//! from 127.0.0.1, where the normal clients and the probes live: a per-address throttle may
//! refuse an attacker by design, but never a bystander. Each attack counts what it tried and
//! what the server did in a tally of its own, printed per attack in the report; the verdict
//! holds the server to what normal clients see, its memory, and staying up.

mod attacker;
mod bystander;
mod chat;
mod files;
mod link;
mod net;
mod unauth;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use sockit::ClientConfig;
use tokio::task::JoinSet;

use super::abuse::{self, on_own_thread};
use super::tally::Tally;
use crate::cli::bench::measure::{latencies, new_histogram, resident_kib};
pub use attacker::{Arena, QuotaServer};
use attacker::{Attacker, Held};

/// The server's resident memory must stay under this through the whole hostile phase.
pub const RSS_BOUND_KIB: u64 = 256 * 1024;
/// How often the server's memory is sampled during the phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One attack of the hostile phase, named as in issue 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    H1,
    H2,
    H3,
    M1,
    M2,
    M4,
    M5,
    M6,
    L2,
    L6,
    L7,
    L8,
}

impl Attack {
    pub const ALL: [Attack; 12] = [
        Attack::H1,
        Attack::H2,
        Attack::H3,
        Attack::M1,
        Attack::M2,
        Attack::M4,
        Attack::M5,
        Attack::M6,
        Attack::L2,
        Attack::L6,
        Attack::L7,
        Attack::L8,
    ];

    fn title(self) -> &'static str {
        match self {
            Attack::H1 => "unique error codes instead of hello",
            Attack::H2 => "non-reading chat members and a poster",
            Attack::H3 => "pipelined join, 4 KiB says and leave, never reading",
            Attack::M1 => "pipelined puts on one connection",
            Attack::M2 => "abandoned and concurrent uploads under a quota",
            Attack::M4 => "rooms filled with history",
            Attack::M5 => "many rooms, then chat_rooms; long names in lobby",
            Attack::M6 => "idle unauthenticated connections from one address",
            Attack::L2 => "wrong-secret guessing from one address",
            Attack::L6 => "UDP literal time text and amplification",
            Attack::L7 => "ls of a huge directory",
            Attack::L8 => "idle connections to the metrics endpoint",
        }
    }

    /// Whether the attack starts halfway through the phase rather than at its start: the
    /// slot, guessing and scraper floods, so that they neither starve the others of handshake
    /// slots or the metrics endpoint nor hide which attack did what.
    fn second_wave(self) -> bool {
        matches!(self, Attack::M6 | Attack::L2 | Attack::L8)
    }

    /// The third octet of this attack's source addresses.
    fn octet(self) -> u8 {
        let index = Attack::ALL.iter().position(|&a| a == self).unwrap_or(0);
        10 + index as u8
    }

    /// Runs the attack; `Some(false)` when it got something the server must not give.
    fn run(self, arena: Arc<Arena>, tally: Arc<Tally>) -> BoxFuture<'static, Held> {
        let attacker = Attacker {
            octet: self.octet(),
            arena,
            tally,
        };
        match self {
            Attack::H1 => Box::pin(unauth::error_codes(attacker)),
            Attack::H2 => Box::pin(chat::silent_members(attacker)),
            Attack::H3 => Box::pin(chat::pipelined_says(attacker)),
            Attack::M1 => Box::pin(files::pipelined_puts(attacker)),
            Attack::M2 => Box::pin(files::quota(attacker)),
            Attack::M4 => Box::pin(chat::history(attacker)),
            Attack::M5 => Box::pin(chat::big_replies(attacker)),
            Attack::M6 => Box::pin(unauth::idle_handshakes(attacker)),
            Attack::L2 => Box::pin(unauth::guessing(attacker)),
            Attack::L6 => Box::pin(net::udp(attacker)),
            Attack::L7 => Box::pin(files::big_listing(attacker)),
            Attack::L8 => Box::pin(net::metrics_idle(attacker)),
        }
    }
}

/// Which attacks to run: `all`, `none`, or a comma-separated list such as `H1,M6,L2`.
pub fn parse_attacks(text: &str) -> Result<Vec<Attack>, String> {
    match text {
        "all" => return Ok(Attack::ALL.to_vec()),
        "none" => return Ok(Vec::new()),
        _ => {}
    }
    text.split(',')
        .map(|name| {
            Attack::ALL
                .into_iter()
                .find(|attack| format!("{attack:?}").eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("unknown attack `{name}`: use all, none or ids such as H1,M6,L2"))
        })
        .collect()
}

/// What one attack reports.
pub struct Finding {
    pub attack: Attack,
    pub counts: BTreeMap<String, u64>,
    pub held: Held,
    pub server_up_after: bool,
    pub took: Duration,
}

/// What the hostile phase reports.
pub struct HostileReport {
    pub findings: Vec<Finding>,
    pub rss_peak_kib: u64,
    pub fds_peak: u64,
    /// Echo round trips on one established session from 127.0.0.1.
    pub probe: Histogram<u64>,
    /// Fresh sessions (connect, handshake, echo) from 127.0.0.1.
    pub fresh: Histogram<u64>,
}

/// Runs `attacks` until `arena.until` (the second wave from halfway), with a normal client's
/// probes and a bystander beside them.
pub async fn run(arena: Arena, attacks: &[Attack], config: ClientConfig, tally: Arc<Tally>) -> HostileReport {
    let arena = Arc::new(arena);
    let target = arena.server.to_string();
    let probe = on_own_thread(abuse::echo_probe(
        target.clone(),
        config.clone(),
        arena.until,
        tally.clone(),
    ));
    let done = Arc::new(AtomicBool::new(false));
    let fresh = on_own_thread(abuse::correct_client(
        target,
        config.clone(),
        done.clone(),
        tally.clone(),
    ));
    let sampler = tokio::spawn(sample_peaks(arena.pid, done.clone()));
    let bystander = tokio::spawn({
        let (server, arena) = (arena.server.to_string(), arena.clone());
        async move { bystander::rounds(server, config, &arena.scratch, arena.until, tally).await }
    });
    let second_wave = Instant::now() + arena.until.saturating_duration_since(Instant::now()) / 2;
    let mut running = JoinSet::new();
    for &attack in attacks {
        let start = if attack.second_wave() {
            second_wave
        } else {
            Instant::now()
        };
        running.spawn(attack_from(attack, arena.clone(), start));
    }
    let mut findings = on_attackers_cores(running.join_all()).await.unwrap_or_default();
    findings.sort_by_key(|finding| finding.attack);
    tokio::time::sleep(arena.until.saturating_duration_since(Instant::now())).await;
    done.store(true, Ordering::Release);
    let (rss_peak_kib, fds_peak) = sampler.await.unwrap_or((0, 0));
    let _ = bystander.await;
    HostileReport {
        findings,
        rss_peak_kib,
        fds_peak,
        probe: probe.await.unwrap_or_else(|_| new_histogram()),
        fresh: fresh.await.unwrap_or_else(|_| new_histogram()),
    }
}

/// How much lower than the server's the attackers' scheduling priority is (a nice value).
const ATTACKERS_NICE: i32 = 10;

/// Runs the attacks on a runtime of their own whose threads yield the CPU to the server and to
/// the normal clients (nice [`ATTACKERS_NICE`]). Attackers bring their own machines: on the
/// soak's one machine, their generators would otherwise take the server's cores, and the phase
/// would measure how the server shares two cores with twelve load generators rather than how it
/// serves normal clients while attacked. What the attacks send, and so every bound they test, is
/// unchanged; only how fast the generators themselves run.
fn on_attackers_cores<T: Send + 'static>(
    attacks: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (report, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(|| {
                // On Linux a thread's nice value is its own, and threads it starts inherit it.
                let _ = rustix::process::setpriority_process(None, ATTACKERS_NICE);
            })
            .enable_all()
            .build();
        if let Ok(runtime) = runtime {
            let _ = rustix::process::setpriority_process(None, ATTACKERS_NICE);
            let _ = report.send(runtime.block_on(attacks));
        }
    });
    answer
}

/// Runs one attack from `start` with a tally of its own; notes whether the server outlived it.
async fn attack_from(attack: Attack, arena: Arc<Arena>, start: Instant) -> Finding {
    tokio::time::sleep_until(start.into()).await;
    let begin = Instant::now();
    let tally = Arc::new(Tally::default());
    let held = attack.run(arena.clone(), tally.clone()).await;
    Finding {
        attack,
        counts: tally.snapshot(),
        held,
        server_up_after: running_process(arena.pid),
        took: begin.elapsed(),
    }
}

/// The server's peak resident memory and open descriptors until `done`.
async fn sample_peaks(pid: u32, done: Arc<AtomicBool>) -> (u64, u64) {
    let (mut rss, mut fds) = (0, 0);
    while !done.load(Ordering::Acquire) {
        rss = rss.max(resident_kib(pid).unwrap_or(0));
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64);
        fds = fds.max(open);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    (rss, fds)
}

/// Whether `pid` is a live process (a dead child stays a zombie until the soak reaps it).
pub fn running_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

impl HostileReport {
    /// Prints one block per attack and returns the verdict lines of the phase.
    pub fn print(&self, p99_bound: Option<Duration>) -> Vec<(String, bool)> {
        println!(
            "  hostile phase: {} attacks beside the mixed load",
            self.findings.len()
        );
        for finding in &self.findings {
            finding.print();
        }
        println!(
            "  hostile: server RSS peak {} KiB (bound {} KiB), open fds peak {}",
            self.rss_peak_kib, RSS_BOUND_KIB, self.fds_peak
        );
        println!(
            "  hostile: echo probe {} round trips, {}; fresh sessions {}, {}",
            self.probe.len(),
            latencies(&self.probe),
            self.fresh.len(),
            latencies(&self.fresh)
        );
        self.verdict(p99_bound)
    }

    /// The phase's verdict lines; the latency ones only with a `--hostile-p99-bound` (not
    /// `off`).
    fn verdict(&self, p99_bound: Option<Duration>) -> Vec<(String, bool)> {
        let mut lines = vec![
            (
                "hostile: RSS under 256 MiB".to_owned(),
                self.rss_peak_kib <= RSS_BOUND_KIB,
            ),
            ("hostile: echo probe ran".to_owned(), !self.probe.is_empty()),
            ("hostile: fresh sessions ran".to_owned(), !self.fresh.is_empty()),
        ];
        if let Some(bound) = p99_bound {
            let p99 = self.probe.value_at_quantile(0.99);
            lines.push((
                "hostile: echo p99 within bound".to_owned(),
                p99 <= bound.as_nanos() as u64,
            ));
            lines.push((
                "hostile: fresh sessions answered within bound".to_owned(),
                self.fresh.max() <= bound.as_nanos() as u64,
            ));
        }
        for finding in &self.findings {
            let id = format!("{:?}", finding.attack);
            lines.push((format!("{id}: server up after it"), finding.server_up_after));
            if let Some(held) = finding.held {
                lines.push((format!("{id}: held"), held));
            }
        }
        lines
    }
}

impl Finding {
    fn print(&self) {
        let held = match self.held {
            Some(true) => ", held",
            Some(false) => ", NOT held",
            None => "",
        };
        let up = if self.server_up_after { "up" } else { "DOWN" };
        println!(
            "  {:?} {} ({:.1} s; server {up} after it{held}):",
            self.attack,
            self.attack.title(),
            self.took.as_secs_f64()
        );
        for (key, value) in &self.counts {
            println!("    {:?} {key}: {value}", self.attack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_by_id_in_any_case_and_unknown_ones_are_named() {
        assert_eq!(parse_attacks("all").unwrap(), Attack::ALL.to_vec());
        assert!(parse_attacks("none").unwrap().is_empty());
        assert_eq!(parse_attacks("h1, M6").unwrap(), vec![Attack::H1, Attack::M6]);
        let error = parse_attacks("H1,M3").unwrap_err();
        assert!(error.contains("`M3`"), "{error}");
    }

    #[test]
    fn every_attack_has_its_own_source_octet_off_the_normal_clients() {
        let octets: std::collections::BTreeSet<u8> = Attack::ALL.iter().map(|a| a.octet()).collect();
        assert_eq!(octets.len(), Attack::ALL.len());
        assert!(octets.iter().all(|&octet| octet >= 10));
    }
}
