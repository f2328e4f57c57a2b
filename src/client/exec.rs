//! Running commands on a server: the client side of the `exec` service.
//!
//! [`Client::exec`] starts a command and returns a [`RemoteCommand`]; its output half reads
//! what the command prints and how it ends, its input half feeds stdin and forwards signals.
//! The halves work concurrently, so a command that reads and writes a lot (`cat`) never
//! deadlocks against its client.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{Client, ClientError};
use crate::proto::exec::{
    ExecRequest, ExitReport, MAX_STDIN_CHUNK, Reply, STDERR, STDOUT, SignalRequest, Started, StdinRequest,
    Stream,
};
use crate::wire::{Frame, FrameReader, FrameWriter, RemoteError};

/// Something a running command did.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecEvent {
    /// Bytes the command wrote to its stdout: a piece of an output frame, handed on as it
    /// is decrypted (pieces come in order, never copied into one buffer per frame).
    Stdout(Bytes),
    /// Bytes the command wrote to its stderr, likewise.
    Stderr(Bytes),
    /// How it ended; nothing follows.
    Exit(ExitReport),
}

/// A command running on the server, on this client's connection.
pub struct RemoteCommand<'a> {
    /// Its output and its end.
    pub output: CommandOutput<'a>,
    /// Its stdin and signals; a separate half so both can be driven at once.
    pub input: CommandInput<'a>,
}

/// Reads a command's output and its end.
pub struct CommandOutput<'a> {
    id: u64,
    reader: &'a mut FrameReader,
    /// Stdin bytes the server has room for, given back as it acknowledges them.
    credit: Arc<Semaphore>,
    /// The stream whose frame's body is being read, between its header and its last piece.
    in_body: Option<Stream>,
}

/// Feeds a command's stdin and sends it signals.
pub struct CommandInput<'a> {
    id: u64,
    writer: &'a mut FrameWriter,
    credit: Arc<Semaphore>,
}

impl Client {
    /// Starts a command; returns once the server has started it (or refused).
    pub async fn exec(&mut self, request: &ExecRequest) -> Result<RemoteCommand<'_>, ClientError> {
        let id = self.next_id();
        self.conn.send(request.to_header(id), b"").await?;
        let started = self.conn.read_message().await?.ok_or(ClientError::Closed)?;
        if let Some(error) = RemoteError::from_header(&started.header) {
            return Err(ClientError::Remote(error));
        }
        let window = match Started::from_header(&started.header) {
            Some(reply) if started.header.id() == Some(id) => reply.stdin_window as usize,
            _ => {
                return Err(ClientError::Protocol(format!(
                    "expected `started` for command {id}, got `{}`",
                    started.header.cmd()
                )));
            }
        };
        let credit = Arc::new(Semaphore::new(window.min(Semaphore::MAX_PERMITS)));
        let conn = &mut self.conn;
        Ok(RemoteCommand {
            output: CommandOutput {
                id,
                reader: &mut conn.reader,
                credit: credit.clone(),
                in_body: None,
            },
            input: CommandInput {
                id,
                writer: &mut conn.writer,
                credit,
            },
        })
    }

    /// Runs a command with no stdin and collects everything it prints.
    pub async fn exec_output(
        &mut self,
        request: &ExecRequest,
    ) -> Result<(Vec<u8>, Vec<u8>, ExitReport), ClientError> {
        let mut command = self.exec(request).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match command.output.next_event().await? {
                ExecEvent::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                ExecEvent::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                ExecEvent::Exit(report) => return Ok((stdout, stderr, report)),
            }
        }
    }
}

impl CommandOutput<'_> {
    /// The next output chunk or the exit report. After `Exit`, the connection is free for the
    /// next request.
    pub async fn next_event(&mut self) -> Result<ExecEvent, ClientError> {
        let event = self.read_event().await;
        if !matches!(event, Ok(ExecEvent::Stdout(_) | ExecEvent::Stderr(_))) {
            // No window opens after this: a writer waiting for one gets `Closed` now rather
            // than waiting forever on a connection that is gone.
            self.credit.close();
        }
        event
    }

    async fn read_event(&mut self) -> Result<ExecEvent, ClientError> {
        loop {
            if let Some(stream) = self.in_body {
                match self.reader.read_body_chunk().await? {
                    Some(piece) => return Ok(output_event(stream, piece)),
                    None => self.in_body = None,
                }
            }
            let header = match self.reader.read_frame().await?.ok_or(ClientError::Closed)? {
                Frame::Header(header) => header,
                Frame::Body(_) => return Err(ClientError::Protocol("body bytes without a header".into())),
            };
            let output = [STDOUT, STDERR].contains(&header.cmd());
            if !output {
                // Only output is read a piece at a time; any other body is read past whole,
                // as `read_message` would, so the connection stays in step.
                self.reader.read_whole_body().await?;
            }
            if let Some(error) = RemoteError::from_header(&header) {
                return Err(ClientError::Remote(error));
            }
            if header.id() != Some(self.id) {
                return Err(ClientError::Protocol(format!(
                    "`{}` for another request",
                    header.cmd()
                )));
            }
            match Reply::from_header(&header)? {
                Some(Reply::Output(stream)) => self.in_body = Some(stream),
                Some(Reply::Exit(report)) => return Ok(ExecEvent::Exit(report)),
                Some(Reply::StdinAck(ack)) => {
                    let bytes = ack.bytes as usize;
                    self.credit
                        .add_permits(bytes.min(Semaphore::MAX_PERMITS - self.credit.available_permits()));
                }
                None => {
                    let other = header.cmd();
                    return Err(ClientError::Protocol(format!("unexpected `{other}` from exec")));
                }
            }
        }
    }
}

fn output_event(stream: Stream, bytes: Bytes) -> ExecEvent {
    match stream {
        Stream::Stdout => ExecEvent::Stdout(bytes),
        Stream::Stderr => ExecEvent::Stderr(bytes),
    }
}

impl CommandInput<'_> {
    /// Sends stdin, waiting for the server's window when the command reads slowly.
    pub async fn write_stdin(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let wanted = data.len().min(MAX_STDIN_CHUNK as usize);
            // Wait for room for one byte, then take what else is free, up to `wanted`.
            self.credit
                .acquire()
                .await
                .map_err(|_| ClientError::Closed)?
                .forget();
            let extra = (wanted - 1).min(self.credit.available_permits()) as u32;
            if let Ok(permits) = self.credit.try_acquire_many(extra) {
                permits.forget();
            }
            let (chunk, rest) = data.split_at(1 + extra as usize);
            let header = StdinRequest::DATA.to_header(self.id);
            self.writer.send(header, chunk).await?;
            data = rest;
        }
        Ok(())
    }

    /// Ends the command's stdin, as a pipe closing does.
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        let header = StdinRequest::EOF.to_header(self.id);
        Ok(self.writer.send(header, b"").await?)
    }

    /// Sends a signal (`INT`, `TERM`, `KILL`, ...) to the command's process group.
    pub async fn signal(&mut self, name: &str) -> Result<(), ClientError> {
        let header = SignalRequest::new(name).to_header(self.id);
        Ok(self.writer.send(header, b"").await?)
    }
}
