//! The course's remote shells: over TCP on 8082 (its final, struct + JSON design) and over
//! UDP on 9003. Both run commands through the native exec runner, so they need
//! `--allow-exec` and share its limits and its cleanup.
//!
//! **8082, TCP.** The course's server reads a command with `conn.recv(1024)`, runs it with
//! `subprocess.Popen(cmd, shell=True)`, and answers `struct.pack('i', len(header))`, the JSON
//! header `{"data_size": N}` (the other version of the page calls it `msg_length`), then N
//! bytes: stderr if there was any, else stdout, so half of `ls; lllll; pwd` is lost. It
//! serves one client at a time, its commands have no time limit, and a command reading stdin
//! waits forever on a pipe nobody writes. Here: each read of the connection is one command
//! (up to 64 KiB, never cut at 1024); the reply's header carries both names,
//! `{"data_size": N, "msg_length": N}`, and the N bytes are stdout followed by stderr, nothing
//! lost; a command with no output gets `data_size` 0 and no bytes, which the course's client
//! (`while recv_size < data_len`) prints as an empty line. Commands run in their own process
//! group, in the home directory, with stdin empty, for at most [`COMMAND_TIMEOUT`], their
//! output capped at [`TCP_MAX_OUTPUT`] per stream (a command that writes more is stopped and
//! its output cut); a note on stderr says when either happened. The reply's size comes
//! first, so the output is gathered whole before it is sent: [`TCP_IN_MEMORY`] bytes of each
//! stream in memory, the rest in an anonymous temporary file (gone when the reply is sent or
//! the client leaves), so clients that never read cost disk space, not memory; and at most
//! [`DEFAULT_SPILL_BUDGET`](crate::services::exec::spill::DEFAULT_SPILL_BUDGET) of it, all clients
//! together (past it a command is stopped and its output cut, with a note). A client that
//! closes while its command runs has the command stopped. Many clients at once.
//!
//! **9003, UDP.** The course's server takes a datagram as a command and answers two
//! datagrams, `sendto(stderr)` then `sendto(stdout)`, blocking every other client while a
//! command runs. Here the same two datagrams, each cut to 65507 bytes (the most a datagram
//! holds), commands run concurrently, and sources other than loopback are refused (logged, no
//! reply) unless `--classic-exec-any-source`: a UDP source address can be forged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::{MAX_DATAGRAM, READ_CHUNK, header_bytes, is_loopback, shown};
use crate::services::exec::spill::SpillBuffer;
use crate::services::exec::{CollectLimits, Collected, Runner};
use crate::services::unframed::{DatagramService, ServiceStream, StreamService};

/// How long a classic command may run before it is stopped.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of stdout, and of stderr, kept for a TCP reply.
pub(crate) const TCP_MAX_OUTPUT: usize = 8 * 1024 * 1024;
/// Bytes of stdout, and of stderr, of a TCP reply held in memory; the rest is spilled to a
/// temporary file.
pub(crate) const TCP_IN_MEMORY: usize = 64 * 1024;

/// The header of a TCP reply, in both spellings the course uses.
#[derive(Serialize)]
pub(crate) struct ExecReplyHeader {
    pub(crate) data_size: usize,
    pub(crate) msg_length: usize,
}

/// The course's remote shell over TCP (8082).
pub(crate) struct TcpExec {
    runner: Arc<Runner>,
}

impl TcpExec {
    pub(crate) fn new(runner: Arc<Runner>) -> TcpExec {
        TcpExec { runner }
    }

    async fn serve_commands(&self, stream: &mut ServiceStream) -> std::io::Result<()> {
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buffer.clear();
            if stream.read_request(&mut buffer).await? == 0 {
                return Ok(());
            }
            let limits = CollectLimits {
                max_output: TCP_MAX_OUTPUT,
                in_memory: TCP_IN_MEMORY,
                timeout: COMMAND_TIMEOUT,
            };
            let run = run(&self.runner, &buffer, limits);
            let collected = tokio::select! {
                collected = run => collected,
                () = stream.closed() => {
                    info!("client left; its command was stopped");
                    return Ok(());
                }
            };
            send_reply(stream, collected).await?;
        }
    }
}

/// The course's reply: the header with the size, then stdout and stderr.
async fn send_reply(stream: &mut ServiceStream, collected: Collected) -> std::io::Result<()> {
    let size = collected.stdout.len() + collected.stderr.len();
    // Both streams are capped at TCP_MAX_OUTPUT, so the size always fits.
    let size = usize::try_from(size).map_err(std::io::Error::other)?;
    let header = ExecReplyHeader {
        data_size: size,
        msg_length: size,
    };
    stream.write_all(&header_bytes(&header)?).await?;
    collected.stdout.write_to(stream).await?;
    collected.stderr.write_to(stream).await
}

#[async_trait]
impl StreamService for TcpExec {
    async fn serve(&self, mut stream: ServiceStream, _peer: SocketAddr) -> std::io::Result<()> {
        self.serve_commands(&mut stream).await
    }
}

/// The course's remote shell over UDP (9003).
pub(crate) struct UdpExec {
    runner: Arc<Runner>,
    any_source: bool,
}

impl UdpExec {
    pub(crate) fn new(runner: Arc<Runner>, any_source: bool) -> UdpExec {
        UdpExec { runner, any_source }
    }
}

#[async_trait]
impl DatagramService for UdpExec {
    async fn answer(&self, request: &[u8], from: SocketAddr) -> Vec<Bytes> {
        if !self.any_source && !is_loopback(from.ip()) {
            warn!("refused a command from beyond this machine (allow with --classic-exec-any-source)");
            return Vec::new();
        }
        let limits = CollectLimits {
            max_output: MAX_DATAGRAM,
            // Never spilled: the output is capped at a datagram, and the notes fit beside it.
            in_memory: 2 * MAX_DATAGRAM,
            timeout: COMMAND_TIMEOUT,
        };
        let collected = run(&self.runner, request, limits).await;
        let (stderr, stdout) = tokio::join!(
            collected.stderr.first(MAX_DATAGRAM),
            collected.stdout.first(MAX_DATAGRAM)
        );
        [stderr, stdout]
            .into_iter()
            .map(|datagram| Bytes::from(datagram.unwrap_or_default()))
            .collect()
    }

    fn runs_long(&self) -> bool {
        true
    }
}

/// Runs one command line for a classic client. Whatever goes wrong (exec disabled, the
/// server busy, a command that is not UTF-8) becomes a `sockit: ...` line on stderr, which is
/// what the course's clients can show; so do a timeout and a cut. Logged in the caller's span,
/// which names the service and the peer.
async fn run(runner: &Runner, command: &[u8], limits: CollectLimits) -> Collected {
    let Ok(line) = std::str::from_utf8(command) else {
        warn!(command = %shown(command), "refused a command that is not UTF-8");
        return failed("the command is not UTF-8 text");
    };
    info!(command = %shown(command), "running");
    let mut collected = match runner.run_collected(line, limits).await {
        Ok(collected) => collected,
        Err(error) => {
            warn!("command refused: {}", error.message);
            return failed(&error.message);
        }
    };
    debug!(status = ?collected.status, timed_out = collected.timed_out, truncated = collected.truncated, "command ended");
    for note in notes(&collected, limits) {
        if let Err(error) = collected.stderr.append(note.as_bytes()).await {
            warn!(%error, "a note for the client was not stored");
        }
    }
    collected
}

/// What the client is told on stderr about how its command ended, if it did not end alone.
fn notes(collected: &Collected, limits: CollectLimits) -> Vec<String> {
    let mut notes = Vec::new();
    if collected.timed_out {
        notes.push(format!(
            "sockit: the command ran past {:?} and was stopped\n",
            limits.timeout
        ));
    }
    if collected.truncated {
        notes.push(format!(
            "sockit: the command wrote more than {} bytes to one stream; it was stopped and its output cut\n",
            limits.max_output
        ));
    }
    if let Some(error) = &collected.not_stored {
        notes.push(format!(
            "sockit: the server could not store the command's output ({error}); it was stopped and its output cut\n"
        ));
    }
    notes
}

fn failed(message: &str) -> Collected {
    Collected {
        stderr: SpillBuffer::from_bytes(format!("sockit: {message}\n").into_bytes()),
        ..Collected::default()
    }
}
