//! The session layer: the shared secret, the handshake that proves it, and failure throttling.

// The handshake decodes what unauthenticated peers send: no panic on any of it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod handshake;
mod secret;
mod throttle;

pub use handshake::{
    Attempt, AuthMode, HandshakeError, ServerInfo, SessionKeys, accept, accept_throttled, connect,
    throttled_refusal,
};
pub use secret::{
    MIN_SERVER_SECRET_LEN, SECRET_ENV, Secret, SecretError, SecretSource, check_server_secret,
    default_secret_path, resolve_secret,
};
pub use throttle::FailureThrottle;
