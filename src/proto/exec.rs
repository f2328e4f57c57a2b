//! The exec service's requests, replies and events (docs/protocol.md, "`exec`, `stdin`,
//! `signal`").
//!
//! ```text
//! client  {"cmd":"exec","id":1,"command":"ls -l; pwd","stdin":true}     ExecRequest
//! server  {"cmd":"started","id":1,"pid":4242,"stdin_window":2097152}    Started
//! server  {"cmd":"stdout","id":1,"body_len":N} + N bytes                Stream (any number)
//! server  {"cmd":"stderr","id":1,"body_len":N} + N bytes
//! client  {"cmd":"stdin","id":1,"body_len":N} + N bytes                 StdinRequest
//! server  {"cmd":"stdin_ack","id":1,"bytes":N}                          StdinAck
//! client  {"cmd":"stdin","id":1,"eof":true}
//! client  {"cmd":"signal","id":1,"signal":"INT"}                        SignalRequest
//! server  {"cmd":"exit","id":1,"code":0,"duration_ms":3.2}              ExitReport (always last)
//! ```
//!
//! Every frame after `exec` carries the `id` of the `exec` request, so several commands can
//! run on one connection. The client encodes each request with `to_header` and the service
//! decodes it with `from_header`; the replies go the other way.

// This decodes what any peer sends: no panic on any of it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{ErrorCode, FrameError, Header, RemoteError};

/// Starts a command.
pub const EXEC: &str = "exec";
/// Feeds a running command's stdin, or closes it.
pub const STDIN: &str = "stdin";
/// Sends a running command's process group a signal.
pub const SIGNAL: &str = "signal";
/// A chunk of the command's standard output.
pub const STDOUT: &str = "stdout";
/// A chunk of the command's standard error.
pub const STDERR: &str = "stderr";
/// The command is running: its pid and the client's stdin window.
pub const STARTED: &str = "started";
/// The server's acknowledgement of stdin bytes the command consumed.
pub const STDIN_ACK: &str = "stdin_ack";
/// How the command ended; the last frame of a command.
pub const EXIT: &str = "exit";

/// The largest stdin chunk a client may send in one frame.
pub const MAX_STDIN_CHUNK: u64 = 64 * 1024;

/// Stdin flow control, as SSH's channel window: a client sends at most this many unacknowledged
/// bytes, and the server acknowledges (`stdin_ack`) what the command has consumed. So stdin
/// never blocks the connection, and a signal is never stuck behind input the command is not
/// reading.
///
/// Its size is the bandwidth-delay product it is to cover: input flows at most one window per
/// round trip, so 256 KiB held a 50 ms path to 5 MB/s. 2 MiB (OpenSSH's session window)
/// covers 1 Gbit/s up to 16 ms and 100 Mbit/s up to 160 ms. It is also what a command that
/// does not read its input lets its client queue on the server: 2 MiB per command, 16 MiB per
/// connection, 128 MiB for the 64 commands a server runs at once by default.
pub const STDIN_WINDOW: u64 = 2 * 1024 * 1024;

/// A request the exec service cannot act on; it is answered with `bad_request`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// An `exec` without the `id` its output frames are to carry.
    #[error("`exec` needs an `id`")]
    ExecWithoutId,
    /// A `stdin` or `signal` frame that does not say which command it is for.
    #[error("`{0}` needs the `id` of its command")]
    NoCommandId(&'static str),
    /// A field of the wrong type; the message is the decoder's.
    #[error("{0}")]
    Fields(String),
    /// Neither `command` nor a non-empty `argv`, or both.
    #[error("give exactly one of `command` or a non-empty `argv`")]
    NoProgram,
    /// An `env` name the system cannot set: empty, or holding `=` or NUL.
    #[error("bad environment variable name {0:?}")]
    EnvironmentName(String),
}

impl From<BadRequest> for RemoteError {
    fn from(error: BadRequest) -> RemoteError {
        RemoteError::new(ErrorCode::BadRequest, error.to_string())
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
    /// The directory to run in; the server user's home directory if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the server's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Past this the command's group is stopped and `exit` says `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The client will send `stdin` frames; otherwise stdin is empty.
    #[serde(default)]
    pub stdin: bool,
}

/// What an [`ExecRequest`] runs: a line for `sh -c`, or a program and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program<'a> {
    /// `command`: a line for `sh -c`.
    Shell(&'a str),
    /// `argv`: a program and its arguments, no shell.
    Argv {
        /// Looked up on the server's `PATH` unless it holds a `/`.
        program: &'a str,
        /// Passed to the program as they are.
        args: &'a [String],
    },
}

impl ExecRequest {
    /// The `exec` frame starting this command as request `id`.
    pub fn to_header(&self, id: u64) -> Header {
        Header::from_message(EXEC, self).with_id(Some(id))
    }

    /// The request's id and fields. Whether it names something to run is checked by
    /// [`ExecRequest::program`] when it is about to run, so that a server that refuses it
    /// anyway (`busy`) says so first.
    pub fn from_header(header: &Header) -> Result<(u64, ExecRequest), BadRequest> {
        let id = header.id().ok_or(BadRequest::ExecWithoutId)?;
        let request = header
            .parse()
            .map_err(|error: FrameError| BadRequest::Fields(error.to_string()))?;
        Ok((id, request))
    }

    /// What to run: exactly one of `command` or a non-empty `argv`.
    pub fn program(&self) -> Result<Program<'_>, BadRequest> {
        let argv = self.argv.as_deref().map(<[String]>::split_first);
        match (&self.command, argv) {
            (Some(line), None) => Ok(Program::Shell(line)),
            (None, Some(Some((program, args)))) => Ok(Program::Argv { program, args }),
            _ => Err(BadRequest::NoProgram),
        }
    }

    /// Refuses an environment variable name the system could not set (empty, or holding `=`
    /// or NUL).
    pub fn check_env(&self) -> Result<(), BadRequest> {
        match self.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            Some(key) => Err(BadRequest::EnvironmentName(key.clone())),
            None => Ok(()),
        }
    }
}

/// A `stdin` frame: its body (up to [`MAX_STDIN_CHUNK`] bytes, within the window) is input
/// for the command; `eof` closes the command's stdin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StdinRequest {
    /// The last frame of the command's input: its stdin closes after this frame's bytes.
    pub eof: bool,
}

impl StdinRequest {
    /// The header of a chunk of input.
    pub const DATA: StdinRequest = StdinRequest { eof: false };
    /// The header that closes the command's stdin.
    pub const EOF: StdinRequest = StdinRequest { eof: true };

    /// The frame for the command started as request `id`; the body goes with it.
    pub fn to_header(&self, id: u64) -> Header {
        let header = Header::new(STDIN).with_id(Some(id));
        if self.eof {
            header.with("eof", true)
        } else {
            header
        }
    }

    /// The id of the command the input is for, and whether it ends the input (only `true`
    /// does; any other value is input).
    pub fn from_header(header: &Header) -> Result<(u64, StdinRequest), BadRequest> {
        let id = header.id().ok_or(BadRequest::NoCommandId(STDIN))?;
        let eof = header.fields().get("eof").and_then(|v| v.as_bool()) == Some(true);
        Ok((id, StdinRequest { eof }))
    }
}

/// A `signal` frame: a signal for the command's process group, by name (`INT`, `SIGINT`) or
/// number (`2`); the service decides which names it knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignalRequest {
    /// `INT`, `SIGINT` or `2`.
    pub signal: String,
}

impl SignalRequest {
    /// A request for the signal called `signal`.
    pub fn new(signal: impl Into<String>) -> SignalRequest {
        SignalRequest {
            signal: signal.into(),
        }
    }

    /// The frame for the command started as request `id`.
    pub fn to_header(&self, id: u64) -> Header {
        Header::new(SIGNAL)
            .with_id(Some(id))
            .with("signal", self.signal.as_str())
    }

    /// The id of the command and the signal's name (empty when missing, which no signal is
    /// called).
    pub fn from_header(header: &Header) -> Result<(u64, SignalRequest), BadRequest> {
        let id = header.id().ok_or(BadRequest::NoCommandId(SIGNAL))?;
        let signal = header.str("signal").unwrap_or("");
        Ok((id, SignalRequest::new(signal)))
    }
}

/// The `started` reply: the command runs as `pid`, and the client may send `stdin_window`
/// bytes of stdin before the first `stdin_ack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The command's process id, which is also its process group's.
    pub pid: u32,
    /// Stdin bytes the client may send before an acknowledgement ([`STDIN_WINDOW`]).
    pub stdin_window: u64,
}

impl Started {
    /// The reply to the `exec` request `id`.
    pub fn to_header(&self, id: u64) -> Header {
        Header::new(STARTED)
            .with_id(Some(id))
            .with("pid", self.pid)
            .with("stdin_window", self.stdin_window)
    }

    /// `None` if the frame is not `started`; a missing field reads as 0.
    pub fn from_header(header: &Header) -> Option<Started> {
        (header.cmd() == STARTED).then(|| Started {
            pid: header
                .u64("pid")
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
            stdin_window: header.u64("stdin_window").unwrap_or(0),
        })
    }
}

/// Which of a command's output streams a chunk of output belongs to; the frame's `cmd` is its
/// name and its body the bytes, never decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output, in `stdout` frames.
    Stdout,
    /// The command's standard error, in `stderr` frames.
    Stderr,
}

impl Stream {
    /// The frames' `cmd`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => STDOUT,
            Stream::Stderr => STDERR,
        }
    }

    /// The header of a chunk of this stream; the bytes are its body.
    pub fn to_header(self, id: u64) -> Header {
        Header::new(self.name()).with_id(Some(id))
    }
}

/// The `stdin_ack` reply: the command consumed `bytes` more of its input, so the client's
/// window opens by as much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StdinAck {
    /// How many bytes the command consumed since the last acknowledgement.
    pub bytes: u64,
}

impl StdinAck {
    /// The acknowledgement for the command started as request `id`.
    pub fn to_header(&self, id: u64) -> Header {
        Header::new(STDIN_ACK).with_id(Some(id)).with("bytes", self.bytes)
    }
}

/// How a command ended: the fields of an `exit` frame.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ExitReport {
    /// The exit code, if the command exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed the command, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// That signal's name (`TERM`), if the server knows it.
    #[serde(default)]
    pub signal_name: Option<String>,
    /// From start to exit, in milliseconds.
    #[serde(default)]
    pub duration_ms: f64,
    /// The command's `timeout_ms` stopped it.
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

    /// The `exit` frame: absent fields are left out, and `timed_out` is sent only when true.
    pub fn to_header(&self, id: u64) -> Header {
        let mut header = Header::new(EXIT)
            .with_id(Some(id))
            .with("duration_ms", self.duration_ms);
        if let Some(code) = self.code {
            header = header.with("code", code);
        }
        if let Some(signal) = self.signal {
            header = header.with("signal", signal);
        }
        if let Some(name) = &self.signal_name {
            header = header.with("signal_name", name.as_str());
        }
        if self.timed_out {
            header = header.with("timed_out", true);
        }
        header
    }
}

/// What the server sends about a running command once it has started, as the client reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A chunk of output; the bytes are the frame's body.
    Output(Stream),
    /// The command consumed some of its input.
    StdinAck(StdinAck),
    /// The command ended: the last frame about it.
    Exit(ExitReport),
}

impl Reply {
    /// `Ok(None)` for a frame that is none of these (an error, or `started`, say).
    pub fn from_header(header: &Header) -> Result<Option<Reply>, FrameError> {
        Ok(Some(match header.cmd() {
            STDOUT => Reply::Output(Stream::Stdout),
            STDERR => Reply::Output(Stream::Stderr),
            STDIN_ACK => Reply::StdinAck(StdinAck {
                bytes: header.u64("bytes").unwrap_or(0),
            }),
            EXIT => Reply::Exit(header.parse()?),
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::json;

    #[test]
    fn requests_are_the_bytes_docs_protocol_shows_and_read_back() {
        let request = ExecRequest {
            command: Some("ls -l; pwd".into()),
            stdin: true,
            ..ExecRequest::default()
        };
        let header = request.to_header(1);
        assert_eq!(
            json(&header),
            r#"{"cmd":"exec","id":1,"command":"ls -l; pwd","stdin":true}"#
        );
        let (id, read) = ExecRequest::from_header(&header).unwrap();
        assert_eq!((id, read.program()), (1, Ok(Program::Shell("ls -l; pwd"))));
        assert_eq!(
            json(&StdinRequest::EOF.to_header(1)),
            r#"{"cmd":"stdin","id":1,"eof":true}"#
        );
        assert_eq!(
            json(&StdinRequest::DATA.to_header(1)),
            r#"{"cmd":"stdin","id":1}"#
        );
        assert_eq!(
            StdinRequest::from_header(&StdinRequest::EOF.to_header(4)),
            Ok((4, StdinRequest::EOF))
        );
        let signal = SignalRequest::new("INT").to_header(1);
        assert_eq!(json(&signal), r#"{"cmd":"signal","id":1,"signal":"INT"}"#);
        assert_eq!(
            SignalRequest::from_header(&signal),
            Ok((1, SignalRequest::new("INT")))
        );
    }

    #[test]
    fn requests_without_an_id_or_a_program_are_bad() {
        assert_eq!(
            ExecRequest::from_header(&Header::new(EXEC)).unwrap_err(),
            BadRequest::ExecWithoutId
        );
        assert_eq!(
            SignalRequest::from_header(&Header::new(SIGNAL))
                .unwrap_err()
                .to_string(),
            "`signal` needs the `id` of its command"
        );
        let wrong = Header::new(EXEC).with_id(Some(1)).with("stdin", "yes");
        assert!(matches!(
            ExecRequest::from_header(&wrong),
            Err(BadRequest::Fields(_))
        ));
        let both = ExecRequest {
            command: Some("true".into()),
            argv: Some(vec!["true".into()]),
            ..ExecRequest::default()
        };
        assert_eq!(both.program(), Err(BadRequest::NoProgram));
        let empty = ExecRequest {
            argv: Some(vec![]),
            ..ExecRequest::default()
        };
        assert_eq!(empty.program(), Err(BadRequest::NoProgram));
        let env = ExecRequest {
            env: [("A=B".to_owned(), "c".to_owned())].into(),
            ..ExecRequest::default()
        };
        assert_eq!(env.check_env(), Err(BadRequest::EnvironmentName("A=B".into())));
    }

    #[test]
    fn a_bad_request_is_answered_as_such_and_exec_failed_is_a_known_code() {
        let error = RemoteError::from(BadRequest::NoProgram);
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert_eq!(ErrorCode::parse("exec_failed"), ErrorCode::ExecFailed);
        assert_eq!(ErrorCode::ExecFailed.static_name(), Some("exec_failed"));
    }

    #[test]
    fn replies_are_the_bytes_docs_protocol_shows_and_read_back() {
        let started = Started {
            pid: 4242,
            stdin_window: STDIN_WINDOW,
        };
        assert_eq!(
            json(&started.to_header(1)),
            r#"{"cmd":"started","id":1,"pid":4242,"stdin_window":2097152}"#
        );
        assert_eq!(Started::from_header(&started.to_header(1)), Some(started));
        assert_eq!(Started::from_header(&Header::new(EXIT)), None);
        let ack = StdinAck { bytes: 7 }.to_header(1);
        assert_eq!(json(&ack), r#"{"cmd":"stdin_ack","id":1,"bytes":7}"#);
        assert_eq!(
            Reply::from_header(&ack).unwrap(),
            Some(Reply::StdinAck(StdinAck { bytes: 7 }))
        );
        assert_eq!(json(&Stream::Stderr.to_header(1)), r#"{"cmd":"stderr","id":1}"#);
        let killed = ExitReport {
            signal: Some(15),
            signal_name: Some("TERM".into()),
            duration_ms: 3.2,
            timed_out: true,
            ..ExitReport::default()
        };
        let exit = killed.to_header(1);
        assert_eq!(
            json(&exit),
            r#"{"cmd":"exit","id":1,"duration_ms":3.2,"signal":15,"signal_name":"TERM","timed_out":true}"#
        );
        assert_eq!(Reply::from_header(&exit).unwrap(), Some(Reply::Exit(killed)));
        let exited = ExitReport {
            code: Some(0),
            duration_ms: 3.2,
            ..ExitReport::default()
        };
        assert_eq!(
            json(&exited.to_header(1)),
            r#"{"cmd":"exit","id":1,"code":0,"duration_ms":3.2}"#
        );
        assert_eq!(Reply::from_header(&Header::new(STARTED)).unwrap(), None);
    }
}
