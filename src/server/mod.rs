//! The server runtime: listeners, the accept loop, connection limits and graceful shutdown.
//!
//! Each connection runs in its own task (`session`), accepted by the one accept loop
//! (`accept`) every listener uses. A semaphore caps how many are served at once; beyond it
//! the server stops accepting and clients wait in the kernel's backlog, which costs the server
//! nothing. Shutdown is two-stage: first stop accepting and let every connection finish the
//! request it is serving, then, past the deadline, drop the rest.
//!
//! Beside the native protocol the server runs the unframed services the services' catalog
//! lists (the course's UDP time service, the standard time protocols, the classic services) on
//! their own sockets (`endpoints`, [`udp`], `stream`), with the same shutdown; the
//! `/metrics` endpoint too. The runtime names no service itself: it runs what the catalog lists.

// The server runs every client's session: a panic on a path a client drives must not exist.
// So no unwrap, expect or indexing here; a true exception is allowed where it stands, with why.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod accept;
mod config;
mod endpoints;
mod listener;
mod session;
mod settings;
mod stream;
pub mod udp;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::ServerConfig;
pub use endpoints::ServiceAddr;
pub use listener::ListenAddr;
pub(crate) use listener::{Listener, Stream};
pub use settings::{ServiceListen, Settings, parse_duration};

use self::accept::{AcceptLoop, Shutdown, Slots};
use self::endpoints::Endpoint;
use crate::auth::{AuthMode, FailureThrottle, SessionKeys};
use crate::metrics::http::Scrapers;
use crate::metrics::{Tracked, metrics};
use crate::services::{Backends, Registry};
use crate::source::PerSource;
use crate::wire::Limits;

/// The longest back-off repeated authentication failures earn (unless `auth_backoff` is longer).
const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(5);

/// What every connection task shares.
struct Shared {
    config: ServerConfig,
    keys: SessionKeys,
    registry: Registry,
    /// Limits once authenticated: per-command body limits from the registry.
    limits: Limits,
    /// Limits before authentication: small, so strangers cannot make us allocate.
    handshake_limits: Limits,
    handshakes: Semaphore,
    /// Connections each source address (IPv6: /64) has open.
    connections_per_source: PerSource,
    /// Connections each source address (IPv6: /64) has before its first request.
    handshakes_per_source: PerSource,
    /// Shared with the classic HMAC echo (9999): one back-off per source for both.
    throttle: Arc<FailureThrottle>,
    /// Cancelled when shutdown begins: stop accepting, finish requests in flight.
    stopping: CancellationToken,
}

/// A bound, not yet running server.
pub struct Server {
    listeners: Vec<Listener>,
    endpoints: Vec<Endpoint>,
    /// Where `/metrics` is served, if anywhere.
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds every listen address of `config`, serving the native services.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        let backends = Backends::new(&config.services)?;
        info!("file root {}", config.services.files.root.display());
        let registry = Registry::native(&backends);
        Server::bind_with(config, registry, backends).await
    }

    /// Binds every listen address of `config`, serving `registry`'s services natively and the
    /// unframed services `config` turns on (the classic ones through `backends`).
    pub(crate) async fn bind_with(
        config: ServerConfig,
        registry: Registry,
        backends: Backends,
    ) -> io::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = Listener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            info!("listening on {}", listener.local_addr()?);
            listeners.push(listener);
        }
        let throttle = Arc::new(FailureThrottle::new(
            config.auth_backoff,
            config.auth_backoff.max(MAX_AUTH_BACKOFF),
        ));
        let endpoints = endpoints::bind_all(&config, &backends, &throttle)?;
        let metrics = bind_metrics(config.metrics_listen)?;
        let base = Limits::default().with_max_header_len(config.max_header_len);
        let shared = Shared {
            keys: SessionKeys::new(config.secret.clone(), AuthMode::from_plaintext(config.plaintext)),
            limits: registry.limits(base),
            handshake_limits: Limits::default()
                .with_max_header_len(4096)
                .with_default_body_limit(1024),
            handshakes: Semaphore::new(config.max_handshakes),
            connections_per_source: PerSource::new(config.max_connections_per_source),
            handshakes_per_source: PerSource::new(config.max_handshakes_per_source),
            throttle,
            registry,
            stopping: CancellationToken::new(),
            config,
        };
        Ok(Server {
            listeners,
            endpoints,
            metrics,
            shared: Arc::new(shared),
        })
    }

    /// The addresses actually bound (ports chosen for port 0 filled in).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect()
    }

    /// Where the unframed services (time, daytime, rfc868, sntp, the classic services) were
    /// bound.
    pub fn service_addrs(&self) -> Vec<ServiceAddr> {
        self.endpoints
            .iter()
            .filter_map(|endpoint| endpoint.addr().ok())
            .collect()
    }

    /// Where `/metrics` is served (with the port chosen for port 0), if anywhere.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let max_connections = self.shared.config.max_connections;
        metrics()
            .connections_limit
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        let stop = Shutdown {
            stopping: self.shared.stopping.clone(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let tasks = &stop.tasks;
        if let Some(listener) = self.metrics {
            tasks.spawn(serve_metrics(listener, stop.clone()));
        }
        // One cap for every native listener.
        let connections = Arc::new(Semaphore::new(max_connections));
        for listener in self.listeners {
            let native = serve_native(listener, self.shared.clone(), connections.clone(), stop.clone());
            tasks.spawn(native);
        }
        let own_ports = endpoints::own_ports(&self.endpoints);
        for endpoint in self.endpoints {
            endpoint.spawn(&stop, &own_ports);
        }
        shutdown.await;
        let deadline = self.shared.config.shutdown_timeout;
        info!("shutting down: no new connections, {deadline:?} for requests in flight");
        stop.stopping.cancel();
        tasks.close();
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            warn!(
                "{} connections still busy after {deadline:?}; closing them",
                tasks.len()
            );
            stop.abort.cancel();
            tasks.wait().await;
        }
        info!("shut down");
    }
}

/// Serves the native protocol on `listener`, a session per connection, at most as many at
/// once as `connections` has slots.
async fn serve_native(listener: Listener, shared: Arc<Shared>, connections: Arc<Semaphore>, stop: Shutdown) {
    let full = metrics().connections_limit_reached.clone();
    let accept = AcceptLoop {
        listener,
        service: None,
        slots: Slots::new(connections).counting_full(full),
        shutdown: stop,
    };
    accept
        .run(|stream, peer| {
            metrics().connections_accepted.inc();
            let open = Tracked::new(&metrics().connections_open);
            let shared = shared.clone();
            async move {
                let _open = open;
                session::serve(stream, peer, &shared).await;
            }
        })
        .await;
}

/// Serves `/metrics` on `listener`, each scrape bounded by the endpoint itself. A scrape has
/// nothing worth finishing once shutdown begins, so it ends then.
async fn serve_metrics(listener: TcpListener, stop: Shutdown) {
    let scrapers = Scrapers::default();
    let accept = AcceptLoop {
        listener,
        service: Some("metrics"),
        slots: Slots::unbounded(),
        shutdown: Shutdown {
            abort: stop.stopping.clone(),
            ..stop
        },
    };
    accept.run(|stream, peer| scrapers.serve(stream, peer)).await;
}

/// Binds the `/metrics` endpoint, if `--metrics` asked for one.
fn bind_metrics(addr: Option<std::net::SocketAddr>) -> io::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = listener::bind_tcp(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics: cannot listen on {addr}: {e}")))?;
    // Never "listening on": scripts and tests read that for the native address.
    info!("metrics on http://{}/metrics", listener.local_addr()?);
    Ok(Some(listener))
}
