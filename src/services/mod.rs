//! Services and the registry that routes each `cmd` to one of them.
//!
//! A native service is one file: it declares the commands it answers (with the largest body
//! each may carry) and handles a request on the connection it arrived on. The unframed services
//! (the time protocols, the classic services) implement the contract in [`unframed`] instead.
//! Adding a service means writing that file and adding one line to the catalog
//! (`Registry::native` and its neighbours), which lists every service the server runs.

// Services answer whatever a client sends: a panic here would drop the client's session or,
// under a held lock, break the service for everyone. So no unwrap, expect or indexing.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::metrics::metrics;
use crate::source::source_key;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::wire::{
    Connection, ErrorCode, FrameError, FrameReader, Header, Limits, RemoteError, SharedWriter,
};

pub(crate) mod catalog;
pub mod chat;
pub mod classic;
pub(crate) mod clock;
pub(crate) mod echo;
pub mod exec;
pub mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod time;
pub mod unframed;

/// How a command's body reaches its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyMode {
    /// Gathered in memory (bounded by `max_body`) and passed in [`Request::body`].
    Whole,
    /// Left on the connection for the handler to read chunk by chunk.
    Stream,
}

/// One command a service answers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommandSpec {
    pub(crate) cmd: &'static str,
    pub(crate) max_body: u64,
    pub(crate) body: BodyMode,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl Peer {
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Unix => None,
        }
    }

    /// Who this peer counts as for per-source bounds (see [`crate::source::source_key`]); Unix-socket peers
    /// count together.
    pub(crate) fn source(&self) -> Option<IpAddr> {
        self.ip().map(source_key)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("unix socket peer"),
        }
    }
}

/// A request as a handler sees it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) header: Header,
    /// The whole body for [`BodyMode::Whole`] commands; empty for streamed ones.
    pub(crate) body: Bytes,
}

/// An authenticated connection as services see it.
///
/// The reader is the handler's while it runs (to read a streamed body); the writer can be
/// cloned into tasks that outlive the handler, such as a running command or a chat
/// subscription. Per-connection service state lives in [`Session::state`] and is dropped, with
/// whatever it owns, when the connection ends.
pub(crate) struct Session {
    pub(crate) reader: FrameReader,
    pub(crate) writer: SharedWriter,
    pub(crate) peer: Peer,
    state: HashMap<TypeId, Box<dyn Any + Send>>,
    busy: Busy,
    closer: CancellationToken,
}

/// Held by work that runs on behalf of a session (a running command): while any is held, the
/// session is not idle, however long the client stays silent.
#[derive(Clone, Default)]
pub(crate) struct Busy(Arc<()>);

impl Session {
    pub(crate) fn new(conn: Connection, peer: Peer) -> Session {
        let (reader, writer) = conn.into_shared();
        Session {
            reader,
            writer,
            peer,
            state: HashMap::new(),
            busy: Busy::default(),
            closer: CancellationToken::new(),
        }
    }

    /// A token that keeps the session from being reaped as idle while it is held.
    pub(crate) fn busy(&self) -> Busy {
        self.busy.clone()
    }

    /// Cancelling this token ends the session, whatever it is doing: for work running beside
    /// the handlers (a chat client's event feed) that finds the connection unusable.
    pub(crate) fn closer(&self) -> CancellationToken {
        self.closer.clone()
    }

    pub(crate) fn is_busy(&self) -> bool {
        Arc::strong_count(&self.busy.0) > 1
    }

    /// This connection's state of type `T`, created on first use.
    #[allow(
        clippy::expect_used,
        reason = "entries are keyed by `TypeId::of::<T>()`, so the one found holds a `T`"
    )]
    pub(crate) fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.state
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("state is stored under its own type")
    }
}

impl Request {
    pub(crate) fn id(&self) -> Option<u64> {
        self.header.id()
    }
}

/// How a handler fails.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// The request failed; the client is told and the connection carries on.
    #[error(transparent)]
    Reply(#[from] RemoteError),
    /// The connection itself failed and is closed.
    #[error(transparent)]
    Connection(FrameError),
}

/// A reply too large to send was never written, so it fails only its request: the client is
/// told and the session goes on. Every other frame error ends the connection.
impl From<FrameError> for ServiceError {
    fn from(error: FrameError) -> ServiceError {
        match error.is_unsent().then(|| error.to_remote()).flatten() {
            Some(remote) => ServiceError::Reply(remote),
            None => ServiceError::Connection(error),
        }
    }
}

impl ServiceError {
    pub(crate) fn bad_request(message: impl Into<String>) -> ServiceError {
        ServiceError::Reply(RemoteError::new(ErrorCode::BadRequest, message))
    }
}

#[async_trait]
pub(crate) trait Service: Send + Sync {
    /// The name announced in the session's `features`.
    fn name(&self) -> &'static str;
    fn commands(&self) -> &[CommandSpec];
    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError>;

    /// Finishes work a handler deferred in order to batch it (the file service commits small
    /// files in groups), so that answers keep request order. Called before a request for
    /// another service is dispatched.
    async fn flush(&self, _session: &mut Session) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Routes commands to services.
#[derive(Clone)]
pub(crate) struct Registry {
    by_cmd: HashMap<&'static str, Route>,
    names: Vec<&'static str>,
}

/// Where one command goes, and the counter of its requests (kept here so that counting a
/// request is one atomic add, not a lookup of its labels).
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) service: Arc<dyn Service>,
    pub(crate) spec: CommandSpec,
    pub(crate) requests: Counter,
}

/// Every session answers [`PING`], whatever services it routes to, so every registry announces it.
impl Default for Registry {
    fn default() -> Registry {
        Registry {
            by_cmd: HashMap::new(),
            names: vec![PING],
        }
    }
}

/// Settings of the native services.
#[derive(Clone, Debug, Default)]
pub struct ServicesConfig {
    /// Chat settings.
    pub chat: chat::ChatConfig,
    /// Exec settings.
    pub exec: exec::ExecConfig,
    /// File service settings.
    pub files: files::FilesConfig,
}

/// What the native and the classic services share, made once per server: the exec runner
/// (its slots count every command on the server) and the file store (one upload per path at
/// a time, whichever protocol writes it).
#[derive(Clone)]
pub(crate) struct Backends {
    pub(crate) chat: chat::ChatConfig,
    pub(crate) exec: Arc<exec::Runner>,
    pub(crate) files: Arc<files::FileStore>,
}

impl Backends {
    /// Fails if the file root cannot be created.
    pub(crate) fn new(config: &ServicesConfig) -> std::io::Result<Backends> {
        let files = files::FileStore::open(&config.files).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("file root {}: {e}", config.files.root.display()),
            )
        })?;
        let files = Arc::new(files);
        files.start_expiry();
        Ok(Backends {
            chat: config.chat,
            exec: Arc::new(exec::Runner::new(config.exec.clone())),
            files,
        })
    }
}

/// Answered by the session itself, whatever services the server runs: the cheapest first
/// request, for a client that has nothing to ask yet but must confirm its session. Announced in
/// `features` so that clients know they may send it without waiting for an answer.
pub(crate) const PING: &str = "ping";

impl Registry {
    /// Adds a service. Two services claiming one command is a programming error.
    pub(crate) fn register(&mut self, service: impl Service + 'static) -> &mut Registry {
        let service: Arc<dyn Service> = Arc::new(service);
        for spec in service.commands() {
            let route = Route {
                service: service.clone(),
                spec: *spec,
                requests: metrics().request_counter(service.name(), spec.cmd),
            };
            let previous = self.by_cmd.insert(spec.cmd, route);
            assert!(previous.is_none(), "command `{}` registered twice", spec.cmd);
        }
        self.names.push(service.name());
        self
    }

    pub(crate) fn lookup(&self, cmd: &str) -> Option<&Route> {
        self.by_cmd.get(cmd)
    }

    /// `base` with each command's body limit added.
    pub(crate) fn limits(&self, base: Limits) -> Limits {
        self.by_cmd.values().fold(base, |limits, route| {
            limits.with_body_limit(route.spec.cmd, route.spec.max_body)
        })
    }

    pub(crate) fn features(&self) -> &[&'static str] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply too large to send fails only its request (a handler's `?` makes it an error
    /// frame); every other frame error ends the session.
    #[test]
    fn only_unsent_replies_fail_just_their_request() {
        let unsent = FrameError::TooLargeToSend { len: 300, max: 256 };
        let ServiceError::Reply(refusal) = ServiceError::from(unsent) else {
            panic!("an unsent answer must not end the session");
        };
        assert_eq!(refusal.code, ErrorCode::HeaderTooLarge);
        let broken = FrameError::HeaderTooLarge {
            len: 1 << 20,
            max: 65536,
        };
        assert!(matches!(ServiceError::from(broken), ServiceError::Connection(_)));
    }
}
