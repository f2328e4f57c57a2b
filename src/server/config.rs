//! What a [`super::Server`] runs with: [`ServerConfig`], the settings resolved, and their
//! defaults. How each is set, by flag or config file: [`super::Settings`].

use std::net::SocketAddr;
use std::time::Duration;

use super::listener::ListenAddr;
use crate::auth::Secret;
use crate::proto::ports::{DEFAULT_PORT, DEFAULT_TIME_PORT};
use crate::services::ServicesConfig;
use crate::services::classic::ClassicConfig;
use crate::wire::DEFAULT_MAX_HEADER_LEN;

/// Everything a [`super::Server`] needs: the [`super::Settings`] resolved, each field the setting
/// of the same (or the nearest) name. [`ServerConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the framed protocol listens: TCP addresses and Unix sockets.
    pub listen: Vec<ListenAddr>,
    /// The shared secret clients must know.
    pub secret: Secret,
    /// HMAC-authenticated plaintext sessions instead of encrypted ones.
    pub plaintext: bool,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one source address (IPv6: /64) may have open at once, authenticated or
    /// not; more from it are refused at once, so one source cannot take every connection.
    pub max_connections_per_source: usize,
    /// Connections still in their handshake at once; the rest wait (within their deadline).
    pub max_handshakes: usize,
    /// Connections one source address (IPv6: /64) may have before their first request;
    /// more from it are refused at once, so one source cannot take every handshake slot.
    pub max_handshakes_per_source: usize,
    /// A connection must finish its handshake and send its first request within this.
    pub handshake_timeout: Duration,
    /// An authenticated connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// How long requests in flight may run after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
    /// Largest frame header accepted from a client, in bytes.
    pub max_header_len: usize,
    /// Back-off of a source after its first failed authentication (its attempts are refused
    /// meanwhile); doubles per recent failure, up to 5 s. At 100 ms, at most 10 guesses a second.
    pub auth_backoff: Duration,
    /// Settings of the native services (chat, exec, files).
    pub services: ServicesConfig,
    /// The course's UDP time service (a strftime format in, the time out).
    pub time_listen: Option<SocketAddr>,
    /// RFC 867 daytime, over TCP and UDP on this address.
    pub daytime_listen: Option<SocketAddr>,
    /// RFC 868 time, over TCP and UDP on this address.
    pub rfc868_listen: Option<SocketAddr>,
    /// SNTP (RFC 4330) server, over UDP.
    pub sntp_listen: Option<SocketAddr>,
    /// The course's own services on their course ports (`--classic`).
    pub classic: ClassicConfig,
    /// Prometheus metrics over HTTP at `/metrics` on this address.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// The defaults, as documented for each setting; only the secret has none.
    pub fn new(secret: Secret) -> ServerConfig {
        ServerConfig {
            listen: vec![ListenAddr::Tcp(([127, 0, 0, 1], DEFAULT_PORT).into())],
            secret,
            plaintext: false,
            max_connections: 16_384,
            max_connections_per_source: 1024,
            max_handshakes: 1024,
            max_handshakes_per_source: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(10),
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            auth_backoff: Duration::from_millis(100),
            services: ServicesConfig::default(),
            time_listen: Some(([127, 0, 0, 1], DEFAULT_TIME_PORT).into()),
            daytime_listen: None,
            rfc868_listen: None,
            sntp_listen: None,
            classic: ClassicConfig::default(),
            metrics_listen: None,
        }
    }
}
