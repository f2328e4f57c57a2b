//! One task per running command: it relays the command's output to its [`Sink`], applies the
//! client's signals and the timeout, and stops and reaps the command's whole process group
//! however the command ends (it exits, times out, writes too much, or its client goes away).
//!
//! Everything that can happen to a command is raced in one `select!` of cancel-safe waits;
//! passing output on happens outside the race, so a frame is never cut in half.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bytes::BufMut;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::debug;

use super::ExecConfig;
use super::process::{reap_group, signal_group, spawn_kill_after};
use super::reaper::SupervisedGroup;
use super::sink::Sink;
use crate::metrics::{ExecOutcome, Tracked, metrics};
use crate::proto::exec::Stream;
use crate::services::Busy;

/// The first read of a pipe takes at most this much (a command that prints a line costs no
/// more than a small buffer)...
const MIN_OUTPUT_READ: usize = 64 * 1024;
/// ...and each read that fills its buffer doubles the next, up to this: a command that streams
/// is read a large piece at a time, one frame each, while its pipe (enlarged to the same size,
/// see `process::enlarge_pipe`) lets it run ahead of the supervisor by as much. A stream holds
/// at most this much in the supervisor's buffer.
pub(super) const MAX_OUTPUT_READ: usize = 1024 * 1024;
/// How many turns of the scheduler a short read may wait for more (each a few microseconds;
/// it stops at the first turn that finds the pipe empty).
const TOP_UP_TURNS: usize = 16;

/// Watches one running command: passes its output to its sink, applies signals and the
/// timeout, and cleans up its process group whatever happens.
pub(super) struct Supervisor<S> {
    sink: S,
    grace: Duration,
    timeout: Option<Duration>,
    group: Option<Pid>,
    timed_out: bool,
    _permit: OwnedSemaphorePermit,
    _busy: Option<Busy>,
    /// Counts the command in `sockit_exec_processes_running` until it is reaped.
    _running: Tracked,
    /// Keeps the orphan sweeps off the group while this supervisor looks after it.
    _group: Option<SupervisedGroup>,
}

/// One thing that happened to a running command.
enum Event {
    /// Output read from one of the command's pipes.
    Output(Stream, std::io::Result<usize>),
    Signal(Option<Signal>),
    Deadline,
    Exited(std::io::Result<ExitStatus>),
}

impl<S: Sink> Supervisor<S> {
    pub(super) fn new(
        sink: S,
        config: &ExecConfig,
        timeout: Option<Duration>,
        permit: OwnedSemaphorePermit,
        busy: Option<Busy>,
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

    pub(super) fn holding(mut self, group: Option<SupervisedGroup>) -> Supervisor<S> {
        self._group = group;
        self
    }

    /// Supervises `child` until it exits or is stopped. `signals` closing means nobody
    /// cares any more: the command is stopped.
    pub(super) async fn run(mut self, mut child: Child, mut signals: mpsc::Receiver<Signal>) {
        let started = Instant::now();
        self.group = child.id().and_then(|pid| Pid::from_raw(pid as i32));
        if !self.sink.started(child.id().unwrap_or(0)).await {
            return self.abandon(child).await;
        }
        let mut pipes = [
            Output::new(Stream::Stdout, child.stdout.take()),
            Output::new(Stream::Stderr, child.stderr.take()),
        ];
        let deadline = self.timeout.map(|timeout| started + timeout);
        let status = loop {
            let [stdout, stderr] = &mut pipes;
            let event = tokio::select! {
                n = stdout.read(), if stdout.open() => Event::Output(Stream::Stdout, n),
                n = stderr.read(), if stderr.open() => Event::Output(Stream::Stderr, n),
                signal = signals.recv() => Event::Signal(signal),
                () = sleep_until(deadline), if !self.timed_out => Event::Deadline,
                status = child.wait() => Event::Exited(status),
            };
            match event {
                Event::Output(stream, read) => {
                    if !self.relay(pipe(&mut pipes, stream), read, deadline).await {
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
        if !self.drain(&mut pipes).await {
            return self.abandon(child).await;
        }
        signal_group(self.group, Signal::KILL);
        reap_group(self.group, self.grace).await;
        metrics().exec_finished(outcome(status, self.timed_out));
        let timed_out = self.timed_out;
        self.sink.exited(status, started.elapsed(), timed_out).await;
    }

    /// The command is gone; its group's other processes get SIGTERM, and what they write
    /// within the grace period still counts. `false` once the sink wants the group stopped.
    async fn drain(&mut self, pipes: &mut [Output; 2]) -> bool {
        signal_group(self.group, Signal::TERM);
        let drain_until = Instant::now() + self.grace;
        while pipes.iter().any(Output::open) {
            let [stdout, stderr] = &mut *pipes;
            let (stream, read) = tokio::select! {
                n = stdout.read(), if stdout.open() => (Stream::Stdout, n),
                n = stderr.read(), if stderr.open() => (Stream::Stderr, n),
                () = sleep_until(Some(drain_until)) => break,
            };
            if !self.relay(pipe(pipes, stream), read, None).await {
                return false;
            }
        }
        true
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
        output.top_up().await;
        let send = self.sink.output(output.stream, &output.buf);
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The pipe of `stream` among `[stdout, stderr]`.
fn pipe(pipes: &mut [Output; 2], stream: Stream) -> &mut Output {
    let [stdout, stderr] = pipes;
    match stream {
        Stream::Stdout => stdout,
        Stream::Stderr => stderr,
    }
}

/// One output pipe of a command, relayed as frames of its stream.
struct Output {
    stream: Stream,
    pipe: Option<Box<dyn AsyncRead + Send + Unpin>>,
    buf: Vec<u8>,
    /// How much the next read may take: grows while reads fill it.
    read_size: usize,
}

impl Output {
    fn new(stream: Stream, pipe: Option<impl AsyncRead + Send + Unpin + 'static>) -> Output {
        Output {
            stream,
            pipe: pipe.map(|pipe| Box::new(pipe) as Box<dyn AsyncRead + Send + Unpin>),
            buf: Vec::new(),
            read_size: MIN_OUTPUT_READ,
        }
    }

    fn open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads what the command wrote next into `buf`, which then holds exactly that
    /// (cancel-safe: nothing is lost if not awaited). The buffer is reused and never
    /// zero-filled: `read_buf` reads into its spare capacity.
    async fn read(&mut self) -> std::io::Result<usize> {
        let Some(pipe) = &mut self.pipe else { return Ok(0) };
        self.buf.clear();
        self.buf.reserve_exact(self.read_size);
        let mut room = (&mut self.buf).limit(self.read_size);
        let n = pipe.read_buf(&mut room).await?;
        if n == self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_OUTPUT_READ);
        }
        Ok(n)
    }

    /// After a short read, lets the command write on for a few turns of the scheduler and
    /// takes what it wrote, without waiting for more: a command writing 4 KiB at a time
    /// otherwise costs a frame, a wake-up and a write to the socket per 4 KiB.
    async fn top_up(&mut self) {
        let Some(pipe) = &mut self.pipe else { return };
        for _ in 0..TOP_UP_TURNS {
            if self.buf.len() >= MIN_OUTPUT_READ || self.buf.len() >= self.read_size {
                return;
            }
            tokio::task::yield_now().await;
            let wanted = self.read_size - self.buf.len();
            let mut room = (&mut self.buf).limit(wanted);
            match tokio::time::timeout(Duration::ZERO, pipe.read_buf(&mut room)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }
}
