//! `exec`: run a command on the server and stream its output back.
//!
//! The course's remote shell, without its flaws: stdout and stderr both arrive, as separate
//! streams, byte for byte (never decoded), however long; the exit status or the killing signal
//! comes last; and a client that vanishes never leaves a process behind.
//!
//! The frames are in [`crate::proto::exec`]. Here: the service and the `Runner` that the
//! classic remote shells share with it (this file), the connection's handle on its commands
//! (`control.rs`), the supervisor that watches one command (`supervisor.rs`) and where its
//! output goes (`sink.rs`), the process-group system calls (`process.rs`), the orphan
//! `reaper`, and the `spill` buffers gathered output waits in.
//!
//! Each command runs in its own process group. When it exits, times out, or its client goes
//! away, the whole group gets SIGTERM and, after a grace period, SIGKILL; the server is a child
//! subreaper, so every process of the group is reaped, not left as a zombie or an orphan. A
//! process that left its command's group (`setsid`) is stopped when it reaches the server as
//! an orphan, and reaped (see `reaper`).

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, info};

use self::control::{Controls, Running, forward_signal, forward_stdin};
use self::reaper::Supervised;
use self::sink::{Frames, Gather};
use self::spill::{SpillBudget, SpillBuffer};
use self::supervisor::Supervisor;
use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::proto::exec::{EXEC, ExecRequest, MAX_STDIN_CHUNK, SIGNAL, STDIN};
use crate::wire::{ErrorCode, RemoteError};

mod control;
mod process;
pub(crate) mod reaper;
mod sink;
pub(crate) mod spill;
mod supervisor;

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        cmd: EXEC,
        max_body: 0,
        body: BodyMode::Whole,
    },
    CommandSpec {
        cmd: STDIN,
        max_body: MAX_STDIN_CHUNK,
        body: BodyMode::Whole,
    },
    CommandSpec {
        cmd: SIGNAL,
        max_body: 0,
        body: BodyMode::Whole,
    },
];

/// Exec settings, from the server configuration.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Off unless the operator asks (`--allow-exec`).
    pub enabled: bool,
    /// Commands one connection may run at once.
    pub max_per_connection: usize,
    /// Commands the server runs at once, every connection and protocol counted.
    pub max_total: usize,
    /// Between SIGTERM and SIGKILL when a command is stopped.
    pub grace: Duration,
}

impl Default for ExecConfig {
    fn default() -> ExecConfig {
        ExecConfig {
            enabled: false,
            max_per_connection: 8,
            max_total: 64,
            grace: Duration::from_secs(2),
        }
    }
}

/// Runs commands for every service allowed to (the native `exec` and the classic remote
/// shells): one pool of slots, so the server-wide limit counts every command, whoever asked.
pub(crate) struct Runner {
    config: ExecConfig,
    slots: Arc<Semaphore>,
    /// The groups of the commands running now, which the orphan sweeps leave alone.
    supervised: Arc<Supervised>,
    /// Disk all gathered output waiting for its clients may take.
    spill_budget: SpillBudget,
}

impl Runner {
    /// With exec enabled, makes this process a child subreaper and starts sweeping its
    /// orphans (so call it inside the runtime the server runs on).
    pub(crate) fn new(config: ExecConfig) -> Runner {
        let supervised = Arc::new(Supervised::default());
        if config.enabled {
            // Orphans of our commands are reparented to us, so we can stop and reap them.
            let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
            reaper::start(supervised.clone());
        }
        let slots = Arc::new(Semaphore::new(config.max_total));
        Runner {
            config,
            slots,
            supervised,
            spill_budget: SpillBudget::default(),
        }
    }

    /// Whether the operator allowed remote execution (`--allow-exec`).
    pub(crate) fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn check_enabled(&self) -> Result<(), RemoteError> {
        if self.config.enabled {
            return Ok(());
        }
        Err(RemoteError::new(
            ErrorCode::Disabled,
            "remote execution is disabled on this server (start it with --allow-exec)",
        ))
    }

    /// A slot of the server-wide pool, or `busy`.
    fn slot(&self) -> Result<OwnedSemaphorePermit, RemoteError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            RemoteError::new(
                ErrorCode::Busy,
                format!(
                    "the server already runs {} commands (the limit)",
                    self.config.max_total
                ),
            )
        })
    }

    /// Runs `line` with `sh -c` as an `exec` request with no stdin would run (own process
    /// group, in the home directory, the group stopped and reaped at the end), and gathers its
    /// output. Past `limits.timeout` the command is stopped; past `limits.max_output` bytes on
    /// either stream it is stopped and the output cut. If this future is dropped (its client
    /// went away) the command's group is stopped and reaped all the same.
    pub(crate) async fn run_collected(
        &self,
        line: &str,
        limits: CollectLimits,
    ) -> Result<Collected, RemoteError> {
        self.check_enabled()?;
        let permit = self.slot()?;
        let spec = ExecRequest {
            command: Some(line.to_owned()),
            ..ExecRequest::default()
        };
        let (child, group) = process::spawn(&spec, &self.supervised)?;
        let (done, collected) = oneshot::channel();
        // Dropping the sender (with this future) tells the supervisor nobody is waiting.
        let (_signals, signal_rx) = mpsc::channel(1);
        let gather = Gather {
            collected: Collected {
                stdout: SpillBuffer::new(limits.in_memory, self.spill_budget.clone()),
                stderr: SpillBuffer::new(limits.in_memory, self.spill_budget.clone()),
                ..Collected::default()
            },
            max_output: limits.max_output,
            done: Some(done),
        };
        let supervisor = Supervisor::new(gather, &self.config, Some(limits.timeout), permit, None);
        let supervisor = supervisor.holding(group);
        tokio::spawn(supervisor.run(child, signal_rx));
        collected.await.map_err(|_| {
            RemoteError::new(
                ErrorCode::ExecFailed,
                "the command's supervisor ended unexpectedly",
            )
        })
    }
}

/// Limits of a command whose output is gathered whole.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CollectLimits {
    /// Bytes kept of each of stdout and stderr; a command that writes more is stopped.
    pub(crate) max_output: usize,
    /// Bytes of each stream kept in memory; the rest waits in a temporary file.
    pub(crate) in_memory: usize,
    pub(crate) timeout: Duration,
}

/// A command's gathered output and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) stdout: SpillBuffer,
    pub(crate) stderr: SpillBuffer,
    /// `None` when the command was stopped for writing too much.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) timed_out: bool,
    /// Output went past the limit: what is here is its beginning.
    pub(crate) truncated: bool,
    /// Why the output could not be stored (the temporary directory full, say), if it could
    /// not: the command was stopped and what is here is its beginning.
    pub(crate) not_stored: Option<String>,
}

/// The native `exec`, `stdin` and `signal` commands.
pub(crate) struct Exec {
    runner: Arc<Runner>,
}

impl Exec {
    pub(crate) fn new(runner: Arc<Runner>) -> Exec {
        Exec { runner }
    }
}

#[async_trait]
impl Service for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn commands(&self) -> &[CommandSpec] {
        COMMANDS
    }

    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id();
        match request.header.cmd() {
            EXEC => self.start(request, session),
            STDIN => forward_stdin(request, session).await,
            _ => forward_signal(request, session).await,
        }
        .map_err(|error| {
            debug!(peer = %session.peer, ?id, %error, "exec refused");
            ServiceError::Reply(error)
        })
    }
}

impl Exec {
    fn start(&self, request: Request, session: &mut Session) -> Result<(), RemoteError> {
        self.runner.check_enabled()?;
        let (id, spec) = ExecRequest::from_header(&request.header)?;
        session
            .state::<Running>()
            .admit(id, self.runner.config.max_per_connection)?;
        let permit = self.runner.slot()?;
        let (mut child, group) = process::spawn(&spec, &self.runner.supervised)?;
        let (controls, signal_rx) = Controls::attach(id, &mut child, spec.stdin, &session.writer);
        session.state::<Running>().commands.insert(id, controls);
        let frames = Frames {
            id,
            writer: session.writer.clone(),
        };
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        let supervisor = Supervisor::new(frames, &self.runner.config, timeout, permit, Some(session.busy()))
            .holding(group);
        let pid = child.id().unwrap_or(0);
        info!(peer = %session.peer, id, pid, "command started");
        debug!(peer = %session.peer, id, pid, command = ?spec.command, argv = ?spec.argv, "command line");
        tokio::spawn(supervisor.run(child, signal_rx));
        Ok(())
    }
}

/// A request that cannot be honoured as it stands (`bad_request`); the connection goes on.
fn bad_request(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::BadRequest, message)
}
