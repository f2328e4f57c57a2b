//! The accept loop, once for every listener the server runs (the native protocol, the stream
//! services, `/metrics`): take a connection slot, accept, back off when accepting fails, and
//! serve each connection in a task of its own, in a span naming its peer (and its service).

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error_span, warn};

use super::listener::{Listener, Stream};
use crate::services::Peer;

/// How long to wait after a failed accept (usually: out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What ends a listener and the work it started: `stopping` stops accepting (and ends
/// connections waiting for their next request); `abort` ends whatever outlives the shutdown
/// deadline. Connection tasks run on `tasks`, so shutdown waits for them.
#[derive(Clone)]
pub(crate) struct Shutdown {
    pub(crate) stopping: CancellationToken,
    pub(crate) abort: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// How many connections of a listener (or of several sharing the slots) are served at once.
/// Beyond that the loop stops accepting, and clients wait in the kernel's backlog, which costs
/// the server nothing.
pub(crate) struct Slots {
    free: Arc<Semaphore>,
    /// Counted each time the loop has to wait for a slot.
    full: Option<Counter>,
}

impl Slots {
    pub(crate) fn new(free: Arc<Semaphore>) -> Slots {
        Slots { free, full: None }
    }

    /// As many as anyone could open: for a listener whose handler bounds its own connections.
    pub(crate) fn unbounded() -> Slots {
        Slots::new(Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)))
    }

    /// Counts into `full` each time every slot is taken.
    pub(crate) fn counting_full(self, full: Counter) -> Slots {
        Slots {
            full: Some(full),
            ..self
        }
    }

    /// A free slot, waiting for one if need be; `None` once shutdown begins.
    async fn take(&self, stopping: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        if let Some(full) = &self.full {
            full.inc();
        }
        // The semaphore is never closed; were it closed, no connection could be served
        // again, so the listener stops as it does at shutdown.
        tokio::select! {
            slot = self.free.clone().acquire_owned() => slot.ok(),
            () = stopping.cancelled() => None,
        }
    }
}

/// A listening socket the loop accepts from.
pub(crate) trait Accept: Send + Sync + 'static {
    type Connection: Send + 'static;
    type Peer: Display + Send + 'static;

    fn next(&self) -> impl Future<Output = io::Result<(Self::Connection, Self::Peer)>> + Send;
}

impl Accept for Listener {
    type Connection = Stream;
    type Peer = Peer;

    fn next(&self) -> impl Future<Output = io::Result<(Stream, Peer)>> + Send {
        self.accept()
    }
}

impl Accept for TcpListener {
    type Connection = TcpStream;
    type Peer = SocketAddr;

    fn next(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }
}

/// One listener and how its connections are served.
pub(crate) struct AcceptLoop<L> {
    pub(crate) listener: L,
    /// Named on each connection's span and on accept errors; `None` for the native protocol,
    /// whose sessions reach every native service.
    pub(crate) service: Option<&'static str>,
    pub(crate) slots: Slots,
    pub(crate) shutdown: Shutdown,
}

impl<L: Accept> AcceptLoop<L> {
    /// Accepts until shutdown begins. `serve` is called in the connection's span as soon as a
    /// connection is accepted (what it does at once, such as counting, happens in order) and
    /// the work it returns runs on the shutdown's tasks, in that span, holding the
    /// connection's slot, until it ends or the shutdown deadline passes.
    pub(crate) async fn run<F, Work>(self, mut serve: F)
    where
        F: FnMut(L::Connection, L::Peer) -> Work,
        Work: Future<Output = ()> + Send + 'static,
    {
        let stopping = &self.shutdown.stopping;
        loop {
            let Some(slot) = self.slots.take(stopping).await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = self.listener.next() => accepted,
                () = stopping.cancelled() => return,
            };
            let (connection, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(service = self.service, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // At error level so that it is on whenever any event is: a warning logged with
            // the log filtered to warnings still names its peer.
            let span = error_span!("connection", service = self.service, %peer);
            let work = span.in_scope(|| serve(connection, peer));
            let abort = self.shutdown.abort.clone();
            let connection = async move {
                tokio::select! {
                    () = work => {}
                    () = crate::stop::cancelled(&abort) => {}
                }
                drop(slot);
            };
            self.shutdown.tasks.spawn(connection.instrument(span));
        }
    }
}
