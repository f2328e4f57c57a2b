//! Serving unframed TCP services (RFC 867 daytime, RFC 868 time, and later the course's
//! classic services): their own accept loop, connection cap, time limit and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::metrics;

/// A service that talks raw bytes over a TCP connection, with no sockit framing or session.
#[async_trait]
pub trait StreamService: Send + Sync {
    /// Serves one connection; dropping `stream` closes it.
    async fn serve(&self, stream: TcpStream, peer: SocketAddr);
}

/// How many connections a stream service serves at once, and for how long each.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Beyond this the service stops accepting and clients wait in the listen backlog.
    pub max_connections: usize,
    /// A connection still open after this is closed, so a client that never reads cannot
    /// hold a slot forever.
    pub max_duration: Duration,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_connections: 1024,
            max_duration: Duration::from_secs(30),
        }
    }
}

/// What ends a stream service: `stopping` stops accepting; `abort` closes connections that
/// outlive the shutdown deadline. Connection tasks run on `tasks`, so shutdown waits for them.
pub struct StreamShutdown {
    pub stopping: CancellationToken,
    pub abort: CancellationToken,
    pub tasks: TaskTracker,
}

/// Accepts connections on `listener` for `service` until shutdown begins.
pub async fn serve_streams(
    name: &'static str,
    listener: TcpListener,
    service: Arc<dyn StreamService>,
    limits: StreamLimits,
    shutdown: StreamShutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("semaphore never closed"),
            () = shutdown.stopping.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.stopping.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(service = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics().stream_connection(name);
        let service = service.clone();
        let abort = shutdown.abort.clone();
        shutdown.tasks.spawn(async move {
            tokio::select! {
                served = tokio::time::timeout(limits.max_duration, service.serve(stream, peer)) => {
                    if served.is_err() {
                        debug!(service = name, %peer, "closed after {:?}", limits.max_duration);
                    }
                }
                () = abort.cancelled() => {}
            }
            drop(slot);
        });
    }
}
