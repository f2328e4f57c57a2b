//! The contract of the unframed services (the standard time protocols, the course's UDP time
//! service, the classic services): what a service that speaks raw bytes over TCP, or answers
//! datagrams, implements, and the connection it is handed. The server's runtime runs them; this
//! is what it runs, so services need nothing from the runtime.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// What an unframed service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Over TCP.
    Tcp,
    /// Over UDP.
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// A service that talks raw bytes over a TCP connection, with no sockit framing or session.
#[async_trait]
pub(crate) trait StreamService: Send + Sync {
    /// Serves one connection; dropping `stream` closes it. The error, if the connection
    /// failed, is logged once by the runtime. It runs in the connection's span, which names
    /// the service and the peer, so its own log lines need not.
    async fn serve(&self, stream: ServiceStream, peer: SocketAddr) -> io::Result<()>;
}

/// How many connections a stream service serves at once, and for how long each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    /// Beyond this the service stops accepting and clients wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// A connection still open after this is closed, whatever it is doing: for one-shot
    /// services, so a client that never reads cannot hold a slot forever.
    pub(crate) max_duration: Option<Duration>,
    /// A read or a write that waits this long fails with `TimedOut`: for interactive
    /// services, where a connection may rightly last hours but a silent one should not.
    pub(crate) idle_timeout: Option<Duration>,
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
    pub(crate) fn interactive(idle: Duration) -> StreamLimits {
        StreamLimits {
            max_duration: None,
            idle_timeout: Some(idle),
            ..StreamLimits::default()
        }
    }
}

/// A service that answers datagrams.
#[async_trait]
pub(crate) trait DatagramService: Send + Sync {
    /// The reply datagrams for one request: none, one or several.
    async fn answer(&self, request: &[u8], from: SocketAddr) -> Vec<Bytes>;

    /// Whether datagrams from this source port deserve an answer. By default only ports from
    /// 1024 up, where clients' ephemeral ports are: a request "from" port 7, 13, 19 or 37 is
    /// most likely forged to start a loop with the classic service there.
    fn answers_port(&self, port: u16) -> bool {
        port >= 1024
    }

    /// Whether answering may take long (running a command): such answers run in tasks of
    /// their own, a bounded number at once, so one slow request never holds up the others.
    /// Quick answers are given in the receive loop.
    fn runs_long(&self) -> bool {
        false
    }
}

/// An accepted connection of a stream service, with its service's idle timeout: a read or
/// a write that waits longer fails with [`io::ErrorKind::TimedOut`]. The clock runs only while
/// waiting for the peer, so time the service spends working (running a command) never counts.
pub(crate) struct ServiceStream {
    inner: TcpStream,
    reading: IdleClock,
    writing: IdleClock,
    stopping: CancellationToken,
}

impl ServiceStream {
    /// `idle` is the service's idle timeout; `stopping` is the server's, cancelled when
    /// shutdown begins (see [`ServiceStream::read_request`]).
    pub(crate) fn new(
        inner: TcpStream,
        idle: Option<Duration>,
        stopping: CancellationToken,
    ) -> ServiceStream {
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
    pub(crate) async fn read_request(&mut self, buf: &mut impl BufMut) -> io::Result<usize> {
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
    pub(crate) async fn closed(&self) {
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
