//! How a file-system failure is told to the client: the error code the protocol names for it
//! (docs/protocol.md, "Files"), and a message naming the path in the root, never the server's
//! own path to it.

use std::io;

use super::root::NotAFile;
use crate::proto::path::RootPath;
use crate::wire::{ErrorCode, RemoteError};

/// A file-system failure as the client should see it, naming the path.
pub(crate) fn io_error(path: &RootPath, error: io::Error) -> RemoteError {
    let code = match error.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::AlreadyExists => ErrorCode::Exists,
        io::ErrorKind::DirectoryNotEmpty => ErrorCode::NotEmpty,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::NoSpace,
        io::ErrorKind::IsADirectory => ErrorCode::IsDir,
        io::ErrorKind::NotADirectory => ErrorCode::BadPath,
        io::ErrorKind::PermissionDenied => ErrorCode::Permission,
        _ if error.get_ref().is_some_and(|inner| inner.is::<NotAFile>()) => ErrorCode::NotFile,
        _ if error.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            return RemoteError::new(ErrorCode::BadPath, format!("{path} leads outside the file root"));
        }
        _ if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => ErrorCode::BadPath,
        _ => ErrorCode::Io,
    };
    RemoteError::new(code, format!("{path}: {error}"))
}

pub(super) fn bad_request(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::BadRequest, message)
}

/// An upload whose data does not hash as the client said.
pub(super) fn hash_mismatch(path: &RootPath) -> RemoteError {
    RemoteError::new(
        ErrorCode::HashMismatch,
        format!("{path}: the data does not match its BLAKE3 hash; nothing was written"),
    )
}
