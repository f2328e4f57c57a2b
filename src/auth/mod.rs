//! The session layer: the shared secret, the handshake that proves it, and failure throttling.

mod handshake;
mod secret;
mod throttle;

pub use handshake::{AuthMode, HandshakeError, ServerInfo, SessionKeys, accept, connect};
pub use secret::{SECRET_ENV, Secret, SecretError, SecretSource, default_secret_path, resolve_secret};
pub use throttle::FailureThrottle;
