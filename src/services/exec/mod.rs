//! `exec`: run a command on the server and stream its output back.
//!
//! The course's remote shell, without its flaws: stdout and stderr both arrive, as separate
//! streams, byte for byte (never decoded), however long; the exit status or the killing signal
//! comes last; and a client that vanishes never leaves a process behind.
//!
//! ```text
//! client  {"cmd":"exec","id":1,"command":"ls -l; pwd","stdin":false}
//! server  {"cmd":"stdout","id":1,"body_len":N} + N bytes      (as produced, any number)
//! server  {"cmd":"stderr","id":1,"body_len":N} + N bytes
//! server  {"cmd":"exit","id":1,"code":0,"duration_ms":3.1}    (or "signal":15,"signal_name":"TERM")
//! client  {"cmd":"stdin","id":1,"body_len":N} + N bytes / {"cmd":"stdin","id":1,"eof":true}
//! client  {"cmd":"signal","id":1,"signal":"INT"}
//! ```
//!
//! Each command runs in its own process group. When it exits, times out, or its client goes
//! away, the whole group gets SIGTERM and, after a grace period, SIGKILL; the server is a child
//! subreaper, so every process of the group is reaped, not left as a zombie or an orphan. A
//! process that left its command's group (`setsid`) is stopped when it reaches the server as
//! an orphan, and reaped (see [`reaper`]).

use std::collections::{BTreeMap, HashMap};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, info};

use self::reaper::{Supervised, SupervisedGroup};
use self::spill::{SpillBudget, SpillBuffer};
use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::metrics::{ExecOutcome, Tracked, metrics};
use crate::wire::{ErrorCode, Header, RemoteError, SharedWriter};

pub mod reaper;
pub mod spill;

/// The largest stdin chunk a client may send in one frame.
pub const MAX_STDIN_CHUNK: u64 = 64 * 1024;
/// Output is read from the pipes in chunks of at most this size.
const OUTPUT_CHUNK: usize = 64 * 1024;

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        cmd: "exec",
        max_body: 0,
        body: BodyMode::Whole,
    },
    CommandSpec {
        cmd: "stdin",
        max_body: MAX_STDIN_CHUNK,
        body: BodyMode::Whole,
    },
    CommandSpec {
        cmd: "signal",
        max_body: 0,
        body: BodyMode::Whole,
    },
];

/// Exec settings, from the server configuration.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Off unless the operator asks (`--allow-exec`).
    pub enabled: bool,
    pub max_per_connection: usize,
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
pub struct Runner {
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
    pub fn new(config: ExecConfig) -> Runner {
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
    pub fn enabled(&self) -> bool {
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
    pub async fn run_collected(&self, line: &str, limits: CollectLimits) -> Result<Collected, RemoteError> {
        self.check_enabled()?;
        let permit = self.slot()?;
        let spec = ExecRequest {
            command: Some(line.to_owned()),
            ..ExecRequest::default()
        };
        let (child, group) = spawn(&spec, &self.supervised)?;
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
                ErrorCode::Other("exec_failed".into()),
                "the command's supervisor ended unexpectedly",
            )
        })
    }
}

/// Limits of a command whose output is gathered whole.
#[derive(Clone, Copy, Debug)]
pub struct CollectLimits {
    /// Bytes kept of each of stdout and stderr; a command that writes more is stopped.
    pub max_output: usize,
    /// Bytes of each stream kept in memory; the rest waits in a temporary file.
    pub in_memory: usize,
    pub timeout: Duration,
}

/// A command's gathered output and how it ended.
#[derive(Debug, Default)]
pub struct Collected {
    pub stdout: SpillBuffer,
    pub stderr: SpillBuffer,
    /// `None` when the command was stopped for writing too much.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    /// Output went past the limit: what is here is its beginning.
    pub truncated: bool,
    /// Why the output could not be stored (the temporary directory full, say), if it could
    /// not: the command was stopped and what is here is its beginning.
    pub not_stored: Option<String>,
}

/// The native `exec`, `stdin` and `signal` commands.
pub struct Exec {
    runner: Arc<Runner>,
}

impl Exec {
    pub fn new(runner: Arc<Runner>) -> Exec {
        Exec { runner }
    }
}

/// What the client asks to run: the fields of an `exec` request.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExecRequest {
    /// A command line for `sh -c`, as ssh runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The client will send `stdin` frames; otherwise stdin is empty.
    #[serde(default)]
    pub stdin: bool,
}

/// How a command ended: the fields of an `exit` frame.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ExitReport {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub signal_name: Option<String>,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitReport {
    /// The status a shell would report: the exit code, or 128 + the signal number.
    pub fn status(&self) -> u8 {
        match (self.code, self.signal) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128u8.saturating_add(signal as u8),
            (None, None) => 255,
        }
    }
}

/// The commands running on one connection, by request id.
#[derive(Default)]
struct Running {
    commands: HashMap<u64, Controls>,
}

/// How the connection reaches a running command. Dropping it (the connection closed) stops
/// the command.
struct Controls {
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    /// Stdin bytes the client may still send; the stdin pump gives back what it consumed.
    stdin_credit: Arc<AtomicU64>,
    signals: mpsc::Sender<Signal>,
}

/// Stdin flow control, as SSH's channel window: a client sends at most this many unacknowledged
/// bytes, and the server acknowledges (`stdin_ack`) what the command has consumed. So stdin
/// never blocks the connection, and a signal is never stuck behind input the command is not
/// reading.
pub const STDIN_WINDOW: u64 = 256 * 1024;

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
            "exec" => self.start(request, session),
            "stdin" => forward_stdin(request, session).await,
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
        let id = request.id().ok_or_else(|| bad_request("`exec` needs an `id`"))?;
        let spec: ExecRequest = request.header.parse().map_err(|e| bad_request(e.to_string()))?;
        let max_per_connection = self.runner.config.max_per_connection;
        let running = session.state::<Running>();
        running
            .commands
            .retain(|_, controls| !controls.signals.is_closed());
        if running.commands.contains_key(&id) {
            return Err(bad_request(format!("id {id} is already running a command")));
        }
        if running.commands.len() >= max_per_connection {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("{max_per_connection} commands already run on this connection (the limit)"),
            ));
        }
        let permit = self.runner.slot()?;
        let (mut child, group) = spawn(&spec, &self.runner.supervised)?;
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let (signal_tx, signal_rx) = mpsc::channel(8);
        let credit = Arc::new(AtomicU64::new(STDIN_WINDOW));
        if let Some(pipe) = child.stdin.take() {
            let pump = StdinPump {
                id,
                writer: session.writer.clone(),
                credit: credit.clone(),
            };
            tokio::spawn(pump.run(pipe, stdin_rx));
        }
        let controls = Controls {
            stdin: spec.stdin.then_some(stdin_tx),
            stdin_credit: credit,
            signals: signal_tx,
        };
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

fn bad_request(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::BadRequest, message)
}

/// Starts the process in a process group of its own, stdout and stderr piped, its group kept
/// out of the orphan sweeps until the returned guard drops.
fn spawn(
    spec: &ExecRequest,
    supervised: &Arc<Supervised>,
) -> Result<(Child, Option<SupervisedGroup>), RemoteError> {
    let argv = spec.argv.as_deref().map(<[String]>::split_first);
    let mut command = match (&spec.command, argv) {
        (Some(line), None) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(line);
            command
        }
        (None, Some(Some((program, args)))) => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
        _ => return Err(bad_request("give exactly one of `command` or a non-empty `argv`")),
    };
    if let Some(key) = spec.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(bad_request(format!("bad environment variable name {key:?}")));
    }
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
    supervised.spawn(&mut command).map_err(|e| {
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
        RemoteError::new(
            ErrorCode::Other("exec_failed".into()),
            format!("cannot run {what}{place}: {e}"),
        )
    })
}

/// Writes stdin chunks to the command and acknowledges each to the client; when the client
/// says EOF (or goes away) the pipe closes and the command reads end-of-file.
struct StdinPump {
    id: u64,
    writer: SharedWriter,
    credit: Arc<AtomicU64>,
}

impl StdinPump {
    async fn run(self, mut pipe: ChildStdin, mut chunks: mpsc::UnboundedReceiver<Bytes>) {
        while let Some(chunk) = chunks.recv().await {
            let consumed = pipe.write_all(&chunk).await.is_ok();
            // Acknowledge even input the command refused, so the client is never left waiting.
            self.credit.fetch_add(chunk.len() as u64, Ordering::AcqRel);
            let ack = Header::new("stdin_ack")
                .with_id(Some(self.id))
                .with("bytes", chunk.len());
            if self.writer.send(ack, b"").await.is_err() {
                break;
            }
            if !consumed {
                chunks.close();
            }
        }
    }
}

async fn forward_stdin(request: Request, session: &mut Session) -> Result<(), RemoteError> {
    let Some(id) = request.id() else {
        return Err(bad_request("`stdin` needs the `id` of its command"));
    };
    let eof = request.header.fields().get("eof").and_then(|v| v.as_bool()) == Some(true);
    let Some(controls) = session.state::<Running>().commands.get_mut(&id) else {
        return Ok(()); // the command has already finished: its input no longer matters
    };
    let len = request.body.len() as u64;
    let credit = controls.stdin_credit.load(Ordering::Acquire);
    if len > credit {
        controls.stdin = None;
        return Err(bad_request(format!(
            "stdin for command {id} overruns its window ({len} bytes sent, room for {credit})"
        )));
    }
    if len > 0
        && let Some(stdin) = &controls.stdin
    {
        controls.stdin_credit.fetch_sub(len, Ordering::AcqRel);
        let _ = stdin.send(request.body);
    }
    if eof {
        controls.stdin = None;
    }
    Ok(())
}

async fn forward_signal(request: Request, session: &mut Session) -> Result<(), RemoteError> {
    let Some(id) = request.id() else {
        return Err(bad_request("`signal` needs the `id` of its command"));
    };
    let name = request.header.str("signal").unwrap_or("");
    let signal = parse_signal(name).ok_or_else(|| bad_request(format!("unknown signal {name:?}")))?;
    if let Some(controls) = session.state::<Running>().commands.get(&id) {
        // Never wait: if eight signals are already queued, one more changes nothing.
        let _ = controls.signals.try_send(signal);
    }
    Ok(())
}

/// `INT`, `SIGINT` or `2`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(number) = name.parse::<i32>() {
        return Signal::from_named_raw(number);
    }
    SIGNALS
        .iter()
        .find(|(known, _)| *known == name.trim_start_matches("SIG"))
        .map(|(_, signal)| *signal)
}

pub fn signal_name(number: i32) -> Option<&'static str> {
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

/// Where a supervised command's output and end go: frames to a native client, or buffers.
#[async_trait]
trait Sink: Send + 'static {
    /// The command started as `pid`; false if nobody is listening any more.
    async fn started(&mut self, pid: u32) -> bool;
    /// Output of `stream` (`stdout` or `stderr`); false stops the command (its client is
    /// gone, or its output is over a limit).
    async fn output(&mut self, stream: &'static str, bytes: &[u8]) -> bool;
    /// The command exited, and its group was reaped.
    async fn exited(&mut self, status: ExitStatus, elapsed: Duration, timed_out: bool);
}

/// A native `exec`: each event is a frame to the client.
struct Frames {
    id: u64,
    writer: SharedWriter,
}

#[async_trait]
impl Sink for Frames {
    async fn started(&mut self, pid: u32) -> bool {
        let started = Header::new("started")
            .with_id(Some(self.id))
            .with("pid", pid)
            .with("stdin_window", STDIN_WINDOW);
        self.writer.send(started, b"").await.is_ok()
    }

    async fn output(&mut self, stream: &'static str, bytes: &[u8]) -> bool {
        let header = Header::new(stream).with_id(Some(self.id));
        self.writer.send(header, bytes).await.is_ok()
    }

    async fn exited(&mut self, status: ExitStatus, elapsed: Duration, timed_out: bool) {
        info!(id = self.id, status = %status, timed_out, "command finished");
        let exit = exit_header(self.id, status, elapsed, timed_out);
        let _ = self.writer.send(exit, b"").await;
    }
}

/// A command run to completion: its output gathered up to a limit, handed over through
/// `done` when the supervisor lets go of it (the command exited, or was stopped).
struct Gather {
    collected: Collected,
    max_output: usize,
    done: Option<oneshot::Sender<Collected>>,
}

#[async_trait]
impl Sink for Gather {
    async fn started(&mut self, _pid: u32) -> bool {
        true
    }

    async fn output(&mut self, stream: &'static str, bytes: &[u8]) -> bool {
        let kept = match stream {
            "stdout" => &mut self.collected.stdout,
            _ => &mut self.collected.stderr,
        };
        let held = usize::try_from(kept.len()).unwrap_or(usize::MAX);
        let (fits, over) = bytes.split_at(bytes.len().min(self.max_output.saturating_sub(held)));
        if let Err(error) = kept.append(fits).await {
            self.collected.not_stored = Some(error.to_string());
            return false;
        }
        if !over.is_empty() {
            self.collected.truncated = true;
            return false;
        }
        true
    }

    async fn exited(&mut self, status: ExitStatus, _elapsed: Duration, timed_out: bool) {
        self.collected.status = Some(status);
        self.collected.timed_out = timed_out;
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.collected));
        }
    }
}

/// Watches one running command: passes its output to its sink, applies signals and the
/// timeout, and cleans up its process group whatever happens.
struct Supervisor<S> {
    sink: S,
    grace: Duration,
    timeout: Option<Duration>,
    group: Option<Pid>,
    timed_out: bool,
    _permit: OwnedSemaphorePermit,
    _busy: Option<super::Busy>,
    /// Counts the command in `sockit_exec_processes_running` until it is reaped.
    _running: Tracked,
    /// Keeps the orphan sweeps off the group while this supervisor looks after it.
    _group: Option<SupervisedGroup>,
}

/// One thing that happened to a running command.
enum Event {
    /// Output read from one of the command's pipes.
    Output(Pipe, std::io::Result<usize>),
    Signal(Option<Signal>),
    Deadline,
    Exited(std::io::Result<ExitStatus>),
}

/// Which of a command's two output pipes a read came from.
#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

impl Pipe {
    /// This pipe's output among `[stdout, stderr]`.
    fn of(self, pipes: &mut [Output; 2]) -> &mut Output {
        let [stdout, stderr] = pipes;
        match self {
            Pipe::Stdout => stdout,
            Pipe::Stderr => stderr,
        }
    }
}

impl<S: Sink> Supervisor<S> {
    fn new(
        sink: S,
        config: &ExecConfig,
        timeout: Option<Duration>,
        permit: OwnedSemaphorePermit,
        busy: Option<super::Busy>,
    ) -> Supervisor<S> {
        Supervisor {
            sink,
            grace: config.grace,
            timeout,
            group: None,
            timed_out: false,
            _permit: permit,
            _busy: busy,
            _running: Tracked::new(&metrics().exec_running),
            _group: None,
        }
    }

    fn holding(mut self, group: Option<SupervisedGroup>) -> Supervisor<S> {
        self._group = group;
        self
    }

    /// Supervises `child` until it exits or is stopped. `signals` closing means nobody
    /// cares any more: the command is stopped.
    async fn run(mut self, mut child: Child, mut signals: mpsc::Receiver<Signal>) {
        let started = Instant::now();
        self.group = child.id().and_then(|pid| Pid::from_raw(pid as i32));
        if !self.sink.started(child.id().unwrap_or(0)).await {
            return self.abandon(child).await;
        }
        let mut pipes = [
            Output::new("stdout", child.stdout.take()),
            Output::new("stderr", child.stderr.take()),
        ];
        let deadline = self.timeout.map(|timeout| started + timeout);
        // Only cancel-safe waits race here; passing output on happens outside the race, so a
        // frame is never cut in half.
        let status = loop {
            let [stdout, stderr] = &mut pipes;
            let event = tokio::select! {
                n = stdout.read(), if stdout.open() => Event::Output(Pipe::Stdout, n),
                n = stderr.read(), if stderr.open() => Event::Output(Pipe::Stderr, n),
                signal = signals.recv() => Event::Signal(signal),
                () = sleep_until(deadline), if !self.timed_out => Event::Deadline,
                status = child.wait() => Event::Exited(status),
            };
            match event {
                Event::Output(pipe, read) => {
                    if !self.relay(pipe.of(&mut pipes), read, deadline).await {
                        return self.abandon(child).await;
                    }
                }
                Event::Signal(Some(signal)) => signal_group(self.group, signal),
                Event::Signal(None) => return self.abandon(child).await,
                Event::Deadline => self.time_out(),
                Event::Exited(Ok(status)) => break status,
                Event::Exited(Err(_)) => return self.abandon(child).await,
            }
        };
        // The command is gone; its group's other processes get SIGTERM, and what they wrote
        // before it still counts.
        signal_group(self.group, Signal::TERM);
        let drain_until = Instant::now() + self.grace;
        while pipes.iter().any(Output::open) {
            let [stdout, stderr] = &mut pipes;
            let (pipe, read) = tokio::select! {
                n = stdout.read(), if stdout.open() => (Pipe::Stdout, n),
                n = stderr.read(), if stderr.open() => (Pipe::Stderr, n),
                () = sleep_until(Some(drain_until)) => break,
            };
            if !self.relay(pipe.of(&mut pipes), read, None).await {
                return self.abandon(child).await;
            }
        }
        signal_group(self.group, Signal::KILL);
        reap_group(self.group, self.grace).await;
        metrics().exec_finished(outcome(status, self.timed_out));
        let timed_out = self.timed_out;
        self.sink.exited(status, started.elapsed(), timed_out).await;
    }

    /// Passes on what was read; `false` once the sink wants the command stopped. Passing on
    /// may wait for the client, so a slow reader slows the command (its pipe fills) and
    /// memory stays at one chunk; the deadline is still enforced while it waits.
    async fn relay(
        &mut self,
        output: &mut Output,
        read: std::io::Result<usize>,
        deadline: Option<Instant>,
    ) -> bool {
        if matches!(read, Ok(0) | Err(_)) {
            output.pipe = None;
            return true;
        }
        let send = self.sink.output(output.name, &output.buf);
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => return sent,
                () = sleep_until(deadline), if !self.timed_out => {
                    self.timed_out = true;
                    signal_group(self.group, Signal::TERM);
                    spawn_kill_after(self.group, self.grace);
                }
            }
        }
    }

    fn time_out(&mut self) {
        self.timed_out = true;
        signal_group(self.group, Signal::TERM);
        spawn_kill_after(self.group, self.grace);
    }

    /// The client is gone (or the output too large): stop the whole group and reap it;
    /// nobody is left to tell.
    async fn abandon(self, mut child: Child) {
        debug!(group = ?self.group, "stopping a command nobody waits for");
        metrics().exec_finished(ExecOutcome::Abandoned);
        signal_group(self.group, Signal::TERM);
        spawn_kill_after(self.group, self.grace);
        let _ = child.wait().await;
        reap_group(self.group, self.grace * 2).await;
    }
}

/// How a command that exited counts in `sockit_exec_commands_total`.
fn outcome(status: ExitStatus, timed_out: bool) -> ExecOutcome {
    if timed_out {
        return ExecOutcome::TimedOut;
    }
    match status.code() {
        Some(0) => ExecOutcome::Success,
        Some(_) => ExecOutcome::Failure,
        None => ExecOutcome::Signaled,
    }
}

/// SIGKILL for the group once `grace` has passed, in the background.
fn spawn_kill_after(group: Option<Pid>, grace: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        signal_group(group, Signal::KILL);
    });
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the normal case at the end.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Reaps the group's processes that were reparented to us (we are a subreaper), until none
/// is left or `limit` passes.
async fn reap_group(group: Option<Pid>, limit: Duration) {
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

fn exit_header(id: u64, status: ExitStatus, elapsed: Duration, timed_out: bool) -> Header {
    use std::os::unix::process::ExitStatusExt;
    let mut header = Header::new("exit")
        .with_id(Some(id))
        .with("duration_ms", (elapsed.as_secs_f64() * 1e6).round() / 1e3);
    if let Some(code) = status.code() {
        header = header.with("code", code);
    }
    if let Some(signal) = status.signal() {
        header = header.with("signal", signal);
        if let Some(name) = signal_name(signal) {
            header = header.with("signal_name", name);
        }
    }
    if timed_out {
        header = header.with("timed_out", true);
    }
    header
}

/// One output pipe of a command, relayed as frames of its stream name.
struct Output {
    name: &'static str,
    pipe: Option<Box<dyn AsyncRead + Send + Unpin>>,
    buf: Vec<u8>,
}

impl Output {
    fn new(name: &'static str, pipe: Option<impl AsyncRead + Send + Unpin + 'static>) -> Output {
        Output {
            name,
            pipe: pipe.map(|pipe| Box::new(pipe) as Box<dyn AsyncRead + Send + Unpin>),
            buf: Vec::new(),
        }
    }

    fn open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads what the command wrote next into `buf`, which then holds exactly that
    /// (cancel-safe: nothing is lost if not awaited).
    async fn read(&mut self) -> std::io::Result<usize> {
        let Some(pipe) = &mut self.pipe else { return Ok(0) };
        self.buf.clear();
        self.buf.reserve(OUTPUT_CHUNK);
        pipe.read_buf(&mut self.buf).await
    }
}

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
