//! How a connection reaches the commands it started: their stdin, under the window the client
//! was given, and their signals.
//!
//! Input and signals go through channels to tasks beside the supervisor, never to the process
//! directly, so a handler never waits for a command that is not reading: the connection's
//! next frame (another command's output, a `signal`) is never stuck behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustix::process::Signal;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::bad_request;
use super::process::parse_signal;
use crate::proto::exec::{STDIN_WINDOW, SignalRequest, StdinAck, StdinRequest};
use crate::services::{Request, Session};
use crate::wire::{ErrorCode, RemoteError, SharedWriter};

/// The commands running on one connection, by request id.
#[derive(Default)]
pub(super) struct Running {
    pub(super) commands: HashMap<u64, Controls>,
}

impl Running {
    /// Room for command `id` on this connection: its id unused by a running command, and
    /// fewer than `max_per_connection` running (`busy` otherwise).
    pub(super) fn admit(&mut self, id: u64, max_per_connection: usize) -> Result<(), RemoteError> {
        self.commands.retain(|_, controls| !controls.signals.is_closed());
        if self.commands.contains_key(&id) {
            return Err(bad_request(format!("id {id} is already running a command")));
        }
        if self.commands.len() >= max_per_connection {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("{max_per_connection} commands already run on this connection (the limit)"),
            ));
        }
        Ok(())
    }
}

/// How the connection reaches a running command. Dropping it (the connection closed) stops
/// the command.
pub(super) struct Controls {
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    /// Stdin bytes the client may still send; the stdin pump gives back what it consumed.
    stdin_credit: Arc<AtomicU64>,
    signals: mpsc::Sender<Signal>,
}

impl Controls {
    /// The controls of command `id`, just spawned as `child`, and the signals its supervisor
    /// is to apply. With `stdin`, a pump feeds the command's stdin from the client's frames,
    /// starting with a window of [`STDIN_WINDOW`] bytes.
    pub(super) fn attach(
        id: u64,
        child: &mut Child,
        stdin: bool,
        writer: &SharedWriter,
    ) -> (Controls, mpsc::Receiver<Signal>) {
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let (signal_tx, signal_rx) = mpsc::channel(8);
        let credit = Arc::new(AtomicU64::new(STDIN_WINDOW));
        if let Some(pipe) = child.stdin.take() {
            let pump = StdinPump {
                id,
                writer: writer.clone(),
                credit: credit.clone(),
            };
            tokio::spawn(pump.run(pipe, stdin_rx));
        }
        let controls = Controls {
            stdin: stdin.then_some(stdin_tx),
            stdin_credit: credit,
            signals: signal_tx,
        };
        (controls, signal_rx)
    }
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
            let ack = StdinAck {
                bytes: chunk.len() as u64,
            };
            if self.writer.send(ack.to_header(self.id), b"").await.is_err() {
                break;
            }
            if !consumed {
                chunks.close();
            }
        }
    }
}

/// A `stdin` frame: its bytes to the command, within the window; `eof` closes its stdin.
pub(super) async fn forward_stdin(request: Request, session: &mut Session) -> Result<(), RemoteError> {
    let (id, StdinRequest { eof }) = StdinRequest::from_header(&request.header)?;
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

/// A `signal` frame: the signal to the command's process group, through its supervisor.
pub(super) async fn forward_signal(request: Request, session: &mut Session) -> Result<(), RemoteError> {
    let (id, SignalRequest { signal: name }) = SignalRequest::from_header(&request.header)?;
    let signal = parse_signal(&name).ok_or_else(|| bad_request(format!("unknown signal {name:?}")))?;
    if let Some(controls) = session.state::<Running>().commands.get(&id) {
        // Never wait: if eight signals are already queued, one more changes nothing.
        let _ = controls.signals.try_send(signal);
    }
    Ok(())
}
