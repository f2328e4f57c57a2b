//! The session layer: the shared secret, the handshake that proves it, and failure throttling.

// The handshake decodes what unauthenticated peers send: no panic on any of it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod handshake;
mod secret;
mod throttle;

pub use handshake::accept;
pub(crate) use handshake::{Attempt, accept_throttled, throttled_refusal};
pub use handshake::{AuthMode, HandshakeError, ServerInfo, SessionKeys, connect};
pub use secret::{SECRET_ENV, check_server_secret};
pub use secret::{Secret, SecretError, SecretSource, default_secret_path, resolve_secret};
pub(crate) use throttle::FailureThrottle;
