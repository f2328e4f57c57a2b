//! The wire layer: frames, their codec, encrypted records and the connection that carries them.
//!
//! docs/protocol.md specifies the bytes; this module is the reference implementation.

// The wire layer decodes what unauthenticated peers send: no panic on any of it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod codec;
mod connection;
mod error;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod header;
pub mod record;

pub use codec::{DEFAULT_MAX_BODY, DEFAULT_MAX_HEADER_LEN, Frame, FrameCodec, Limits, encode_header};
pub(crate) use connection::SharedWriter;
pub use connection::{Connection, FrameReader, FrameWriter, Message};
pub use error::{ErrorCode, FrameError, RemoteError};
pub use header::Header;

/// The protocol version this build speaks, sent in `hello`.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
