//! Serving the stream services (RFC 867 daytime, RFC 868 time, the course's classic TCP
//! services): the accept loop with each service's connection cap, its time limits, and the
//! one log line that says how each connection ended.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use super::accept::{AcceptLoop, Shutdown, Slots};
use crate::metrics::metrics;
use crate::services::unframed::{ServiceStream, StreamLimits, StreamService};

/// Accepts connections on `listener` for `service` until shutdown begins.
pub(super) async fn serve_streams(
    name: &'static str,
    listener: TcpListener,
    service: Arc<dyn StreamService>,
    limits: StreamLimits,
    shutdown: Shutdown,
) {
    let stopping = shutdown.stopping.clone();
    let accept = AcceptLoop {
        listener,
        service: Some(name),
        slots: Slots::new(Arc::new(Semaphore::new(limits.max_connections))),
        shutdown,
    };
    accept
        .run(|stream, peer| {
            metrics().stream_connection(name);
            let service = service.clone();
            let stream = ServiceStream::new(stream, limits.idle_timeout, stopping.clone());
            async move {
                match within(limits.max_duration, service.serve(stream, peer)).await {
                    Ok(()) => debug!("connection ended"),
                    Err(error) => debug!(%error, "connection ended"),
                }
            }
        })
        .await;
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
