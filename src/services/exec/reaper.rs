//! The server's children: the commands exec runs, and the orphans it inherits from them.
//!
//! With exec allowed the server is a child subreaper, so a process whose parent exits (a
//! command's `cmd &`, a double fork, a `setsid`) becomes the server's child rather than
//! init's. A command's own group is stopped and reaped by its supervisor; a process that
//! left its group (`setsid`, `setpgid`) escapes that, so it is handled here: on every SIGCHLD
//! and every [`SWEEP_INTERVAL`], the server lists its children, leaves alone the commands it
//! is supervising (and their groups), sends SIGKILL to every other live child (and to the
//! group it leads), and reaps every other zombie with `waitpid(pid, WNOHANG)`. It never waits
//! for "any child", so it never takes an exit status a supervisor is waiting for.
//!
//! A command is spawned under the same lock a sweep lists and decides under, so a sweep never
//! sees a command it has not yet been told about, nor signals a pid that has meanwhile been
//! reaped and reused.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

/// How often the children are looked at even without a SIGCHLD (a live orphan sends none
/// when it is reparented).
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The process groups of the commands being supervised (each command leads its own group,
/// so its group id is its pid).
#[derive(Default)]
pub(crate) struct Supervised {
    groups: Mutex<HashSet<i32>>,
}

/// Keeps a command's group out of the sweeps until it is dropped (its supervisor is done).
pub(crate) struct SupervisedGroup {
    supervised: Arc<Supervised>,
    group: i32,
}

impl Drop for SupervisedGroup {
    fn drop(&mut self) {
        self.supervised.lock().remove(&self.group);
    }
}

impl Supervised {
    fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `command` (which must start a process group of its own) and keeps its group
    /// out of the sweeps until the returned guard drops.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        command: &mut Command,
    ) -> io::Result<(Child, Option<SupervisedGroup>)> {
        let mut groups = self.lock();
        let child = command.spawn()?;
        let guard = child.id().and_then(|pid| i32::try_from(pid).ok()).map(|group| {
            groups.insert(group);
            SupervisedGroup {
                supervised: self.clone(),
                group,
            }
        });
        Ok((child, guard))
    }
}

/// Starts sweeping in the background (if called inside a tokio runtime; otherwise nothing
/// is spawned and orphans are left to whoever reaps them).
pub(crate) fn start(supervised: Arc<Supervised>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(watch(supervised));
}

async fn watch(supervised: Arc<Supervised>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(sigchld) => Some(sigchld),
        Err(error) => {
            warn!(%error, "cannot watch SIGCHLD; orphans of commands are swept every {SWEEP_INTERVAL:?}");
            None
        }
    };
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            Some(()) = async { sigchld.as_mut()?.recv().await } => {}
        }
        let supervised = supervised.clone();
        // Reading /proc is a blocking system call: not on an async worker.
        match tokio::task::spawn_blocking(move || sweep(&supervised)).await {
            Ok(swept) if swept != Swept::default() => debug!(?swept, "swept the server's children"),
            Ok(_) => {}
            Err(error) => warn!(%error, "sweeping the server's children failed"),
        }
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Live orphans sent SIGKILL.
    pub(crate) killed: usize,
    /// Zombies reaped.
    pub(crate) reaped: usize,
}

/// One pass over the server's children: kills live orphans, reaps dead ones, and leaves the
/// supervised groups alone.
pub(crate) fn sweep(supervised: &Supervised) -> Swept {
    let our_group = rustix::process::getpgrp();
    // Listed under the lock: no command starts meanwhile, and a pid read as an untracked
    // child stays ours until we reap it, so it cannot be reused by a stranger before the kill.
    let groups = supervised.lock();
    let children = children();
    let mut swept = Swept::default();
    for child in children {
        if groups.contains(&child.pid) || groups.contains(&child.group) {
            continue;
        }
        let Some(pid) = Pid::from_raw(child.pid) else {
            continue;
        };
        if child.is_zombie() {
            if let Ok(Some(_)) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                swept.reaped += 1;
            }
            continue;
        }
        info!(pid = child.pid, name = %child.name, "stopping a process that left its command's group");
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        if child.group == child.pid && pid != our_group {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        swept.killed += 1;
    }
    swept
}

/// A child process, as `/proc/PID/stat` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    pub(crate) name: String,
    pub(crate) state: char,
    pub(crate) parent: i32,
    pub(crate) group: i32,
}

impl ProcStat {
    /// Parses `PID (NAME) STATE PPID PGRP ...`; the name may hold spaces and parentheses,
    /// so the fields are found after its last `)`.
    pub(crate) fn parse(stat: &str) -> Option<ProcStat> {
        let (head, rest) = stat.rsplit_once(')')?;
        let (pid, name) = head.split_once(" (")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let parent = fields.next()?.parse().ok()?;
        let group = fields.next()?.parse().ok()?;
        Some(ProcStat {
            pid: pid.trim().parse().ok()?,
            name: name.to_owned(),
            state,
            parent,
            group,
        })
    }

    /// Exited, waiting to be reaped.
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This process's children: from each thread's `/proc/self/task/TID/children`, or, on
/// kernels without those files, by scanning every process's parent.
fn children() -> Vec<ProcStat> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let pids = listed_children().unwrap_or_else(every_pid);
    pids.into_iter()
        .filter_map(read_stat)
        .filter(|stat| stat.parent == me)
        .collect()
}

/// Pids in the `children` files of this process's threads; `None` if there are no such files.
fn listed_children() -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    let mut any = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(listed) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        any = true;
        pids.extend(
            listed
                .split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok()),
        );
    }
    any.then_some(pids)
}

fn every_pid() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_name() {
        let stat = "4242 (sle) (ep x) S 17 4240 4240 0 -1 4194304 97 0 0 0";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                pid: 4242,
                name: "sle) (ep x".into(),
                state: 'S',
                parent: 17,
                group: 4240,
            })
        );
        assert!(ProcStat::parse("12 (sh) Z 1 12 12").unwrap().is_zombie());
        assert_eq!(ProcStat::parse("12 (sh"), None);
        assert_eq!(ProcStat::parse(""), None);
    }

    #[test]
    fn a_spawned_process_is_listed_among_the_children() {
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = sleeper.id() as i32;
        let listed = children();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let found = listed.iter().find(|child| child.pid == pid);
        assert_eq!(
            found.map(|child| child.name.as_str()),
            Some("sleep"),
            "{listed:?}"
        );
    }
}
