//! What the benchmarks measure with: latency histograms, and a process's CPU time and
//! resident memory read from /proc. The soak suite measures with them too.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

/// A histogram of latencies in nanoseconds, from 1 ns to a minute, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Nanoseconds as microseconds, to one decimal.
pub fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 100.0).round() / 10.0
}

/// Resident memory of a local process, from /proc.
pub fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}

/// This process's CPU time (user + system), to report the load generator's own cost.
pub struct CpuClock {
    cpu: Duration,
    wall: Instant,
}

impl CpuClock {
    pub fn now() -> CpuClock {
        CpuClock {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    pub fn percent_since(&self) -> f64 {
        let cpu = process_cpu().saturating_sub(self.cpu).as_secs_f64();
        100.0 * cpu / self.wall.elapsed().as_secs_f64()
    }
}

/// CPU time (user + system) of a local process, all its threads included, from /proc, in
/// clock ticks of 10 ms.
pub fn process_cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // utime and stime: the 12th and 13th fields after the parenthesised command name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

fn process_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// `p50 .. us, p99 .. us, max .. us` of round trips recorded in nanoseconds.
pub fn latencies(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {} us, p99 {} us, max {} us",
        micros(histogram.value_at_quantile(0.5)),
        micros(histogram.value_at_quantile(0.99)),
        micros(histogram.max())
    )
}
