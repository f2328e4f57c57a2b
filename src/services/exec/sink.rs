//! Where a supervised command's output and end go: frames to a native client as they come
//! ([`Frames`]), or buffers handed over whole when it is done ([`Gather`], for the classic
//! remote shells, which must announce the size of a reply before sending it).
//!
//! One supervisor serves both, so a command is run, limited and cleaned up the same way
//! whoever asked for it.

use std::process::ExitStatus;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tracing::info;

use super::Collected;
use super::process::signal_name;
use crate::proto::exec::{ExitReport, STDIN_WINDOW, Started, Stream};
use crate::wire::SharedWriter;

/// What a supervisor tells about its command, in the order it happens.
#[async_trait]
pub(super) trait Sink: Send + 'static {
    /// The command started as `pid`; false if nobody is listening any more.
    async fn started(&mut self, pid: u32) -> bool;
    /// Output of `stream`; false stops the command (its client is gone, or its output is over
    /// a limit).
    async fn output(&mut self, stream: Stream, bytes: &[u8]) -> bool;
    /// The command exited, and its group was reaped.
    async fn exited(&mut self, status: ExitStatus, elapsed: Duration, timed_out: bool);
}

/// A native `exec`: each event is a frame to the client.
pub(super) struct Frames {
    pub(super) id: u64,
    pub(super) writer: SharedWriter,
}

#[async_trait]
impl Sink for Frames {
    async fn started(&mut self, pid: u32) -> bool {
        let started = Started {
            pid,
            stdin_window: STDIN_WINDOW,
        };
        self.writer.send(started.to_header(self.id), b"").await.is_ok()
    }

    async fn output(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        // One frame per read of the pipe, however large: the writer sends it in pieces.
        self.writer.send(stream.to_header(self.id), bytes).await.is_ok()
    }

    async fn exited(&mut self, status: ExitStatus, elapsed: Duration, timed_out: bool) {
        info!(id = self.id, status = %status, timed_out, "command finished");
        let exit = exit_report(status, elapsed, timed_out).to_header(self.id);
        let _ = self.writer.send(exit, b"").await;
    }
}

/// How the command ended, as the `exit` frame tells it: the duration in milliseconds to the
/// microsecond.
fn exit_report(status: ExitStatus, elapsed: Duration, timed_out: bool) -> ExitReport {
    use std::os::unix::process::ExitStatusExt;
    ExitReport {
        code: status.code(),
        signal: status.signal(),
        signal_name: status.signal().and_then(signal_name).map(str::to_owned),
        duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        timed_out,
    }
}

/// A command run to completion: its output gathered up to a limit, handed over through
/// `done` when the supervisor lets go of it (the command exited, or was stopped).
pub(super) struct Gather {
    pub(super) collected: Collected,
    pub(super) max_output: usize,
    pub(super) done: Option<oneshot::Sender<Collected>>,
}

#[async_trait]
impl Sink for Gather {
    async fn started(&mut self, _pid: u32) -> bool {
        true
    }

    async fn output(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        let kept = match stream {
            Stream::Stdout => &mut self.collected.stdout,
            Stream::Stderr => &mut self.collected.stderr,
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
