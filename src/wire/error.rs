//! What can go wrong on the wire, and the error message peers send each other.

use std::borrow::Cow;
use std::fmt;
use std::io;

use super::header::Header;

/// The `code` of an error frame: every code of docs/protocol.md, the services' included, is a
/// variant, so programs match on variants rather than compare strings. A code this build does
/// not define is kept in [`ErrorCode::Other`]: one read from a peer (a newer one, or a
/// stranger's invention), which is owned text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The bytes did not form a frame: bad length, bad JSON, missing `cmd`.
    BadFrame,
    /// A header longer than the server accepts.
    HeaderTooLarge,
    /// A body longer than its `cmd` may carry.
    BodyTooLarge,
    /// No service answers this `cmd`.
    UnknownCmd,
    /// A request's fields were missing or of the wrong type.
    BadRequest,
    /// The client speaks a protocol version the server does not.
    VersionMismatch,
    /// The client asked for a plaintext session and the server requires encryption.
    PlaintextRefused,
    /// The client asked for an encrypted session and the server runs with `--plaintext`.
    EncryptionUnavailable,
    /// The client does not know the secret.
    AuthFailed,
    /// Recent failed authentications from the client's address: it must wait before trying again.
    AuthThrottled,
    /// A server limit (connections, handshakes, commands) is reached; try again later.
    Busy,
    /// Something took longer than the server allows.
    Timeout,
    /// The service is disabled on this server (for example exec without `--allow-exec`).
    Disabled,
    /// A fault on the server's side; the message says what, never a secret.
    Internal,
    // The services' own codes (docs/protocol.md section 3), one block per service.
    // The files service's codes.
    /// A path the file root refuses: absolute, climbing out with `..`, a reserved name, or leading outside through a symlink.
    BadPath,
    /// Nothing by that name (a file, a directory; chat's rooms too).
    NotFound,
    /// Something is already at the target and the request did not ask to replace it.
    Exists,
    /// A directory to remove holds entries and the request was not recursive.
    NotEmpty,
    /// A file operation named a directory.
    IsDir,
    /// A `get` of a FIFO, a socket or a device: only regular files are served.
    NotFile,
    /// The server's disk cannot take the upload.
    NoSpace,
    /// The upload would take the file root past its quota.
    QuotaExceeded,
    /// An upload's data does not match its BLAKE3 hash; nothing was written.
    HashMismatch,
    /// The server's file system denied the operation.
    Permission,
    /// Any other failure of the server's file system.
    Io,
    // The chat service's codes.
    /// `chat_login`: someone online already has the nickname.
    NameTaken,
    /// A chat request before `chat_login`.
    NotLoggedIn,
    /// `chat_leave` or `chat_say` for a room the client is not in.
    NotInRoom,
    /// A chat request that reached the server after it dropped the client as too slow.
    Dropped,
    // The exec service's codes.
    /// A command could not be run: its program or directory does not exist (or, for the
    /// classic remote shells, its supervisor ended unexpectedly).
    ExecFailed,
    /// A code read from a peer is `Cow::Owned`; `Cow::Borrowed` is for a code compiled into
    /// this program that has no variant yet (an extension's), which metrics may count.
    Other(Cow<'static, str>),
}

impl ErrorCode {
    /// The code as it travels on the wire, as `not_found`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(code) => code,
            known => known.static_name().unwrap_or("other"),
        }
    }

    /// The name of a code this program chose, defined here or by a service; `None` for a code
    /// read from a peer. Metrics label errors with it (and `other` for `None`), so the label
    /// values are the names compiled into the server, whatever peers send.
    pub(crate) fn static_name(&self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UnknownCmd => "unknown_cmd",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::PlaintextRefused => "plaintext_refused",
            ErrorCode::EncryptionUnavailable => "encryption_unavailable",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::AuthThrottled => "auth_throttled",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Disabled => "disabled",
            ErrorCode::Internal => "internal",
            // The files service's codes.
            ErrorCode::BadPath => "bad_path",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::IsDir => "is_dir",
            ErrorCode::NotFile => "not_file",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::Permission => "permission",
            ErrorCode::Io => "io",
            // The chat service's codes.
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::Dropped => "dropped",
            // The exec service's codes.
            ErrorCode::ExecFailed => "exec_failed",
            ErrorCode::Other(Cow::Borrowed(name)) => name,
            ErrorCode::Other(Cow::Owned(_)) => return None,
        })
    }

    /// Reads a code from the wire; one this build does not define is kept as [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        const KNOWN: &[ErrorCode] = &[
            ErrorCode::BadFrame,
            ErrorCode::HeaderTooLarge,
            ErrorCode::BodyTooLarge,
            ErrorCode::UnknownCmd,
            ErrorCode::BadRequest,
            ErrorCode::VersionMismatch,
            ErrorCode::PlaintextRefused,
            ErrorCode::EncryptionUnavailable,
            ErrorCode::AuthFailed,
            ErrorCode::AuthThrottled,
            ErrorCode::Busy,
            ErrorCode::Timeout,
            ErrorCode::Disabled,
            ErrorCode::Internal,
            // The files service's codes.
            ErrorCode::BadPath,
            ErrorCode::NotFound,
            ErrorCode::Exists,
            ErrorCode::NotEmpty,
            ErrorCode::IsDir,
            ErrorCode::NotFile,
            ErrorCode::NoSpace,
            ErrorCode::QuotaExceeded,
            ErrorCode::HashMismatch,
            ErrorCode::Permission,
            ErrorCode::Io,
            // The chat service's codes.
            ErrorCode::NameTaken,
            ErrorCode::NotLoggedIn,
            ErrorCode::NotInRoom,
            ErrorCode::Dropped,
            // The exec service's codes.
            ErrorCode::ExecFailed,
        ];
        KNOWN
            .iter()
            .find(|known| known.as_str() == code)
            .cloned()
            .unwrap_or_else(|| ErrorCode::Other(Cow::Owned(code.to_owned())))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of an error's message [`RemoteError::shortened`] keeps: a few escaped characters
/// fit any header limit a server can be given.
const SHORTENED_CHARS: usize = 64;

/// An error as carried by an `error` frame: `{"cmd":"error","code":...,"message":...}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RemoteError {
    /// What kind of error, for programs to match on.
    pub code: ErrorCode,
    /// The sentence for a person.
    pub message: String,
}

impl RemoteError {
    /// An error to send, with its code and sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }

    /// The same error with its message cut to its first `SHORTENED_CHARS` characters, for
    /// when the whole one is too large to send.
    pub(crate) fn shortened(&self) -> RemoteError {
        let mut message: String = self.message.chars().take(SHORTENED_CHARS).collect();
        message.push_str(" [...]");
        RemoteError::new(self.code.clone(), message)
    }

    /// The error frame answering the request with `id`.
    pub fn to_header(&self, id: Option<u64>) -> Header {
        Header::new("error")
            .with_id(id)
            .with("code", self.code.as_str())
            .with("message", self.message.as_str())
    }

    /// Reads an `error` frame's header; `None` if the header is not an error.
    pub fn from_header(header: &Header) -> Option<RemoteError> {
        (header.cmd() == "error").then(|| RemoteError {
            code: ErrorCode::parse(header.str("code").unwrap_or("internal")),
            message: header.str("message").unwrap_or("").to_owned(),
        })
    }
}

/// A reason the byte stream cannot be read as frames. Every variant but `Io` is the peer's
/// fault, and the peer is told which before the connection closes.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum FrameError {
    #[error("header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge { len: u64, max: usize },
    /// A header we were about to send is over the limit. Nothing of it was written, so the
    /// stream is intact: this fails one message, never the connection.
    #[error("a message with a header of {len} bytes cannot be sent (the limit is {max}); nothing was sent")]
    TooLargeToSend { len: u64, max: usize },
    #[error("`{cmd}` body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge { cmd: String, len: u64, max: u64 },
    #[error("malformed header: {0}")]
    BadHeader(String),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The peer sent part of a frame and then nothing for this long.
    #[error("nothing more of a frame arrived for {0:?}")]
    Stalled(std::time::Duration),
    #[error(transparent)]
    BadRecord(#[from] super::record::BadRecord),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FrameError {
    /// The error frame to send the peer, or `None` when the peer cannot be told (I/O failed).
    pub(crate) fn to_remote(&self) -> Option<RemoteError> {
        let code = match self {
            FrameError::HeaderTooLarge { .. } | FrameError::TooLargeToSend { .. } => {
                ErrorCode::HeaderTooLarge
            }
            FrameError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            FrameError::Stalled(_) => ErrorCode::Timeout,
            FrameError::BadHeader(_) => ErrorCode::BadFrame,
            FrameError::Truncated | FrameError::BadRecord(_) | FrameError::Io(_) => return None,
        };
        Some(RemoteError::new(code, self.to_string()))
    }

    /// Whether the connection is still usable after this error: only a message that was
    /// never sent leaves it so.
    pub(crate) fn is_unsent(&self) -> bool {
        matches!(self, FrameError::TooLargeToSend { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for code in ["bad_frame", "auth_failed", "busy", "something_new"] {
            assert_eq!(ErrorCode::parse(code).as_str(), code);
        }
        for code in ["not_found", "name_taken", "exec_failed"] {
            assert_ne!(
                ErrorCode::parse(code),
                ErrorCode::Other(code.into()),
                "{code} has a variant"
            );
        }
        assert_eq!(ErrorCode::parse("x"), ErrorCode::Other("x".into()));
        assert_eq!(ErrorCode::parse("x").static_name(), None);
        assert_eq!(
            ErrorCode::Other("a_service_code".into()).static_name(),
            Some("a_service_code")
        );
        assert_eq!(ErrorCode::AuthThrottled.static_name(), Some("auth_throttled"));
    }

    #[test]
    fn error_frames_round_trip() {
        let error = RemoteError::new(ErrorCode::Busy, "too many connections");
        let header = error.to_header(Some(3));
        assert_eq!(header.id(), Some(3));
        assert_eq!(RemoteError::from_header(&header), Some(error));
        assert_eq!(RemoteError::from_header(&Header::new("echo")), None);
    }
}
