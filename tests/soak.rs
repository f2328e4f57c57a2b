//! The short soak: `sockit bench soak` for 60 s against the real server, in CI. It starts its
//! own server and fault proxy; the verdict covers data integrity, the server staying up, its
//! descriptors and memory after the load, exec leftovers, and wrong-secret throttling. The
//! latency bound is left to the full run (`--p99-bound off`): CI machines are shared.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::SOCKIT;

/// The `  NAME: NUMBER` lines of the report.
fn counts(report: &str) -> BTreeMap<String, u64> {
    report
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().rsplit_once(": ")?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_minute_of_mixed_load_faults_and_abuse_ends_in_a_pass() {
    let output = Command::new(SOCKIT)
        .args([
            "bench",
            "soak",
            "--duration",
            "60s",
            "--clients",
            "120",
            "--p99-bound",
            "off",
        ])
        .env_remove("SOCKIT_SECRET")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}\n{stderr}");
    assert!(report.contains("verdict: PASS"), "{report}");
    let counts = counts(&report);
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    for name in [
        "done: echo",
        "done: exec",
        "done: exec with stdin",
        "done: exec abandoned while running",
        "done: chat lines said and heard back",
        "done: time (native)",
        "done: time (UDP)",
        "faults: cut mid-stream",
        "faults: stall",
        "faults: re-fragmented chunk",
        "faults: sockit put killed with SIGKILL",
        "files: verified byte-exact",
        "files: transfers resumed",
        "slowloris: reaped by the server",
        "flood: connections opened and closed",
    ] {
        assert!(count(name) > 0, "no `{name}` in the report:\n{report}");
    }
    assert_eq!(count("failures") + count("data lost"), 0, "{report}");
    assert_eq!(count("server restarts needed"), 0, "{report}");
    assert_eq!(count("processes left behind by exec"), 0, "{report}");
}
