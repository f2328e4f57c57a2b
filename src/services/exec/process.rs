//! The operating system's side of a command: starting it in a process group of its own,
//! signalling that group, and reaping what is left of it.
//!
//! Kept apart from the supervisor so that the system calls, and their "already gone" errors
//! that are the normal case at the end of a command, are in one place.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::process::{Child, Command};

use super::reaper::{Supervised, SupervisedGroup};
use super::supervisor::MAX_OUTPUT_READ;
use crate::proto::exec::{ExecRequest, Program};
use crate::wire::{ErrorCode, RemoteError};

/// Starts the process in a process group of its own, stdout and stderr piped, its group kept
/// out of the orphan sweeps until the returned guard drops.
pub(super) fn spawn(
    spec: &ExecRequest,
    supervised: &Arc<Supervised>,
) -> Result<(Child, Option<SupervisedGroup>), RemoteError> {
    let mut command = match spec.program()? {
        Program::Shell(line) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(line);
            command
        }
        Program::Argv { program, args } => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    };
    spec.check_env()?;
    // Like ssh: in the home directory unless asked otherwise.
    if let Some(dir) = spec
        .cwd
        .clone()
        .map(std::path::PathBuf::from)
        .or_else(dirs::home_dir)
    {
        command.current_dir(dir);
    }
    command
        .envs(&spec.env)
        .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let (child, group) = supervised.spawn(&mut command).map_err(|e| {
        let what = spec
            .argv
            .as_ref()
            .and_then(|argv| argv.first())
            .map_or("sh", String::as_str);
        let place = spec
            .cwd
            .as_deref()
            .map(|cwd| format!(" in {cwd}"))
            .unwrap_or_default();
        RemoteError::new(ErrorCode::ExecFailed, format!("cannot run {what}{place}: {e}"))
    })?;
    if let Some(stdout) = &child.stdout {
        enlarge_pipe(stdout);
    }
    Ok((child, group))
}

/// Gives a command's stdout pipe room for one full read of the supervisor
/// ([`MAX_OUTPUT_READ`]) instead of the kernel's 64 KiB, so a command that streams writes on
/// while the supervisor encrypts and sends what it read last, and both sides make a tenth of
/// the system calls and context switches. The pipe's memory is the kernel's, charged to the
/// server's user and bounded by `fs.pipe-max-size` and `fs.pipe-user-pages-soft`: past
/// those the kernel refuses and the pipe keeps its size, which only costs speed. stderr keeps
/// the default, as it rarely carries much.
fn enlarge_pipe(pipe: &impl AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(pipe, MAX_OUTPUT_READ);
}

/// SIGKILL for the group once `grace` has passed, in the background.
pub(super) fn spawn_kill_after(group: Option<Pid>, grace: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        signal_group(group, Signal::KILL);
    });
}

pub(super) fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the normal case at the end.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Reaps the group's processes that were reparented to us (we are a subreaper), until none
/// is left or `limit` passes.
pub(super) async fn reap_group(group: Option<Pid>, limit: Duration) {
    let Some(group) = group else { return };
    let deadline = Instant::now() + limit;
    loop {
        match rustix::process::waitpgid(group, WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => return, // ECHILD: nothing of the group is left
        }
    }
}

/// `INT`, `SIGINT` or `2`.
pub(crate) fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(number) = name.parse::<i32>() {
        return Signal::from_named_raw(number);
    }
    SIGNALS
        .iter()
        .find(|(known, _)| *known == name.trim_start_matches("SIG"))
        .map(|(_, signal)| *signal)
}

pub(crate) fn signal_name(number: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(_, signal)| signal.as_raw() == number)
        .map(|(name, _)| *name)
}

const SIGNALS: [(&str, Signal); 13] = [
    ("HUP", Signal::HUP),
    ("INT", Signal::INT),
    ("QUIT", Signal::QUIT),
    ("ABRT", Signal::ABORT),
    ("KILL", Signal::KILL),
    ("USR1", Signal::USR1),
    ("SEGV", Signal::SEGV),
    ("USR2", Signal::USR2),
    ("PIPE", Signal::PIPE),
    ("ALRM", Signal::ALARM),
    ("TERM", Signal::TERM),
    ("CONT", Signal::CONT),
    ("STOP", Signal::STOP),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_prefix_or_number() {
        assert_eq!(parse_signal("INT"), Some(Signal::INT));
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::TERM));
        assert_eq!(parse_signal("9"), Some(Signal::KILL));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(signal_name(15), Some("TERM"));
    }
}
