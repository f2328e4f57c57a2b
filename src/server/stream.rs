//! Serving unframed TCP services (RFC 867 daytime, RFC 868 time, the course's classic
//! services): their own accept loop, connection cap, time limits and shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::metrics;

/// A service that talks raw bytes over a TCP connection, with no sockit framing or session.
#[async_trait]
pub trait StreamService: Send + Sync {
    /// Serves one connection; dropping `stream` closes it. The error, if the connection
    /// failed, is logged once by the accept loop with the service's name and the peer.
    async fn serve(&self, stream: ServiceStream, peer: SocketAddr) -> io::Result<()>;
}

/// How many connections a stream service serves at once, and for how long each.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Beyond this the service stops accepting and clients wait in the listen backlog.
    pub max_connections: usize,
    /// A connection still open after this is closed, whatever it is doing: for one-shot
    /// services, so a client that never reads cannot hold a slot forever.
    pub max_duration: Option<Duration>,
    /// A read or a write that waits this long fails with `TimedOut`: for interactive
    /// services, where a connection may rightly last hours but a silent one should not.
    pub idle_timeout: Option<Duration>,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_connections: 1024,
            max_duration: Some(Duration::from_secs(30)),
            idle_timeout: None,
        }
    }
}

impl StreamLimits {
    /// For a conversation: no total duration, but at most `idle` waiting for the peer.
    pub fn interactive(idle: Duration) -> StreamLimits {
        StreamLimits {
            max_duration: None,
            idle_timeout: Some(idle),
            ..StreamLimits::default()
        }
    }
}

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

/// An accepted connection of a stream service, with its service's idle timeout: a read or
/// a write that waits longer fails with [`io::ErrorKind::TimedOut`]. The clock runs only while
/// waiting for the peer, so time the service spends working (running a command) never counts.
pub struct ServiceStream {
    inner: TcpStream,
    reading: IdleClock,
    writing: IdleClock,
    stopping: CancellationToken,
}

impl ServiceStream {
    pub fn new(inner: TcpStream, idle: Option<Duration>, stopping: CancellationToken) -> ServiceStream {
        ServiceStream {
            inner,
            reading: IdleClock::new(idle),
            writing: IdleClock::new(idle),
            stopping,
        }
    }

    /// Reads the start of the client's next request. Like `read`, but once the server is
    /// shutting down it returns `Ok(0)` (as if the client had closed): a connection waiting
    /// between requests has nothing in flight, so shutdown need not wait for it.
    /// The bytes are appended to `buf` (a `BytesMut`, or a `&mut [u8]` that advances past them).
    pub async fn read_request(&mut self, buf: &mut impl BufMut) -> io::Result<usize> {
        let stopping = self.stopping.clone();
        tokio::select! {
            read = self.read_buf(buf) => read,
            () = stopping.cancelled() => Ok(0),
        }
    }

    /// Completes when the client has closed its side of the connection (or it failed), and
    /// never while the client may still be waiting for an answer. Data the client sent ahead
    /// stays unread; once some is waiting, the client's intent cannot be told and this never
    /// completes.
    pub async fn closed(&self) {
        let mut probe = [0u8; 1];
        match self.inner.peek(&mut probe).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }
}

impl AsyncRead for ServiceStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.reading.watch(polled, cx)
    }
}

impl AsyncWrite for ServiceStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.writing.watch(polled, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Times one direction of a connection: started when an operation first has to wait, stopped
/// when it completes.
struct IdleClock {
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl IdleClock {
    fn new(idle: Option<Duration>) -> IdleClock {
        IdleClock {
            idle,
            timer: None,
            waiting: false,
        }
    }

    /// Passes a finished operation through; fails a pending one that has waited too long.
    fn watch<T>(&mut self, polled: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(idle) = self.idle else { return polled };
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        let deadline = Instant::now() + idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = false;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer was silent for {idle:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
