//! Serving unframed TCP services (RFC 867 daytime, RFC 868 time, the course's classic
//! services): their own accept loop, connection cap, time limits and shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::metrics;
use crate::services::unframed::{ServiceStream, StreamLimits, StreamService};

/// What ends a service: `stopping` stops accepting (and ends connections waiting for their
/// next request); `abort` ends whatever outlives the shutdown deadline. Connection tasks run
/// on `tasks`, so shutdown waits for them.
#[derive(Clone)]
pub struct ServiceShutdown {
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
    shutdown: ServiceShutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // `slots` is never closed; were it closed, no slot could be had again: stop as at shutdown.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => return,
            },
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
        let stream = ServiceStream::new(stream, limits.idle_timeout, shutdown.stopping.clone());
        shutdown.tasks.spawn(async move {
            let served = tokio::select! {
                served = within(limits.max_duration, service.serve(stream, peer)) => served,
                () = abort.cancelled() => Err(io::Error::other("the server stopped")),
            };
            drop(slot);
            match served {
                Ok(()) => debug!(service = name, %peer, "connection ended"),
                Err(error) => debug!(service = name, %peer, %error, "connection ended"),
            }
        });
    }
}

/// Runs `work`, for at most `limit` when there is one.
async fn within(limit: Option<Duration>, work: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("closed after {limit:?}"),
            ))
        }),
        None => work.await,
    }
}
