//! The soak's report: what the run saw, the bounds it is held to, and the verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::abuse;
use super::hostile::{self, HostileReport};
use super::server::Footprint;
use super::workload;
use crate::cli::bench::measure::latencies;

/// After the load stops, the server's descriptors must come back to within this many of the
/// count at the start (listeners, log, the runtime's own), once connections have closed.
pub const FD_SLACK: u64 = 16;
/// After the load stops, the server's resident memory may exceed the start by at most this
/// much. glibc keeps freed transfer buffers in its per-thread arenas (about 110 MiB after a
/// minute, 45 MiB with `MALLOC_MMAP_THRESHOLD_=65536`); a leak of even 1% of the tens of
/// gigabytes a full run moves does not fit.
const RSS_SLACK_KIB: u64 = 192 * 1024;

/// What a soak run saw, printed with its verdict.
pub struct Report {
    pub elapsed: Duration,
    pub counts: BTreeMap<String, u64>,
    pub failures: Vec<String>,
    pub alive: bool,
    pub at_start: Footprint,
    pub peak: Footprint,
    pub at_end: Footprint,
    pub leftovers: Vec<String>,
    pub probe: Histogram<u64>,
    pub auth: Option<abuse::AuthAbuse>,
    pub p99_bound: Option<Duration>,
    pub hostile_p99_bound: Option<Duration>,
    pub hostile: Option<HostileReport>,
    pub hostile_expected: bool,
    /// Whether the quota attack's own server stayed up, when it ran.
    pub quota_alive: Option<bool>,
}

impl Report {
    /// What the server's RSS may be once the load has stopped: the start plus
    /// [`RSS_SLACK_KIB`], or, after a hostile phase, the phase's own bound: glibc keeps the
    /// pages freed after the phase's peak in its arenas, so the end reflects that peak, and
    /// a leak still shows as growth past it.
    fn rss_bound_kib(&self) -> u64 {
        let bound = self.at_start.rss_kib + RSS_SLACK_KIB;
        match self.hostile {
            Some(_) => bound.max(hostile::RSS_BOUND_KIB),
            None => bound,
        }
    }

    /// Prints the numbers and the verdict; true on PASS.
    pub fn print(&self) -> bool {
        println!("soak: ran {}", humantime(self.elapsed));
        for (key, value) in &self.counts {
            println!("  {key}: {value}");
        }
        let count = |key: &str| self.counts.get(key).copied().unwrap_or(0);
        let total = |prefix: &str| -> u64 {
            self.counts
                .iter()
                .filter(|(key, _)| key.starts_with(prefix))
                .map(|(_, n)| n)
                .sum()
        };
        let (faults, requests) = (total("faults: "), total("done: "));
        println!("  requests done (all services): {requests}");
        println!("  faults injected (all kinds): {faults}");
        println!(
            "  server RSS: {} KiB at start, {} KiB peak, {} KiB at end (bound: {} KiB)",
            self.at_start.rss_kib,
            self.peak.rss_kib,
            self.at_end.rss_kib,
            self.rss_bound_kib()
        );
        println!(
            "  server open fds: {} at start, {} peak, {} at end (bound: start + {FD_SLACK})",
            self.at_start.fds, self.peak.fds, self.at_end.fds
        );
        println!("  server restarts needed: {}", u8::from(!self.alive));
        println!("  processes left behind by exec: {}", self.leftovers.len());
        for process in &self.leftovers {
            println!("    {process}");
        }
        let p99 = Duration::from_nanos(self.probe.value_at_quantile(0.99));
        println!(
            "  echo probe under slowloris + flood: {} round trips, {}",
            self.probe.len(),
            latencies(&self.probe)
        );
        let auth_ok = match &self.auth {
            Some(auth) => {
                let seconds = auth.elapsed.as_secs_f64();
                println!(
                    "  wrong secrets: {} attempts in {seconds:.1} s ({:.0}/s), {} checked ({:.1}/s), {} refused at once, {} unanswered within 500 ms",
                    auth.attempts,
                    auth.attempts as f64 / seconds,
                    auth.checked,
                    auth.checked as f64 / seconds,
                    auth.refused,
                    auth.held_back
                );
                println!(
                    "  correct client meanwhile: {} fresh sessions, {}",
                    auth.correct.len(),
                    latencies(&auth.correct)
                );
                // Throttled: at most 10 guesses a second are checked (one more for the race of
                // two workers), the rest refused at once, hardly any left hanging.
                auth.checked as f64 <= 10.0 * seconds + 2.0
                    && auth.held_back * 100 <= auth.attempts
                    && !auth.correct.is_empty()
            }
            None => {
                println!("  wrong secrets: did not finish in time");
                false
            }
        };
        // Each cut the proxy made breaks at most one session; any other break is the server's
        // doing.
        let interruptions: u64 = self
            .counts
            .iter()
            .filter(|(key, _)| key.starts_with("interrupted: ") && !key.contains(workload::BUSY))
            .map(|(_, n)| n)
            .sum();
        let cuts = count("faults: cut mid-stream");
        println!("  sessions broken: {interruptions}, cuts made by the proxy: {cuts}");
        let mut verdict: Vec<(String, bool)> = [
            (
                "every broken session explained by a cut",
                interruptions <= count("proxy connections: cut"),
            ),
            ("no failures", count("failures") == 0),
            ("no data lost", count("data lost") == 0),
            ("files verified", count("files: verified byte-exact") > 0),
            ("server stayed up", self.alive),
            (
                "fds back within bound",
                self.at_end.fds <= self.at_start.fds + FD_SLACK,
            ),
            ("RSS within bound", self.at_end.rss_kib <= self.rss_bound_kib()),
            ("no exec leftovers", self.leftovers.is_empty()),
            ("wrong secrets throttled, correct client served", auth_ok),
            ("echo probe ran", !self.probe.is_empty()),
        ]
        .map(|(name, ok)| (name.to_owned(), ok))
        .to_vec();
        if let Some(bound) = self.p99_bound {
            verdict.push(("echo p99 within bound".to_owned(), p99 <= bound));
        }
        match &self.hostile {
            Some(hostile) => verdict.extend(hostile.print(self.hostile_p99_bound)),
            None if self.hostile_expected => verdict.push(("hostile phase finished".to_owned(), false)),
            None => {}
        }
        if let Some(up) = self.quota_alive {
            verdict.push(("quota server stayed up".to_owned(), up));
        }
        for failure in &self.failures {
            println!("  failure: {failure}");
        }
        let failed: Vec<&str> = verdict
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name.as_str())
            .collect();
        if failed.is_empty() {
            println!("verdict: PASS");
        } else {
            println!("verdict: FAIL ({})", failed.join("; "));
        }
        failed.is_empty()
    }
}

pub fn humantime(duration: Duration) -> String {
    format!("{:.0} s", duration.as_secs_f64())
}
