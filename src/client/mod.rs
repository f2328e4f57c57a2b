//! The client library: connect to a sockit server, authenticate, and call its services.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sockit::{Client, ClientConfig, Secret, Server, ServerConfig};
//!
//! let secret = Secret::generate();
//! let files = tempfile::tempdir()?;
//! let mut config = ServerConfig::new(secret.clone());
//! config.listen = vec!["127.0.0.1:0".parse()?];
//! config.services.files.root = files.path().to_owned();
//! config.time_listen = None; // the UDP time service; its default port 9000 may be taken
//! let server = Server::bind(config).await?;
//! let addr = server.local_addrs()[0].to_string();
//! tokio::spawn(server.run(std::future::pending()));
//!
//! let mut client = Client::connect(&addr, &ClientConfig::new(secret)).await?;
//! assert_eq!(client.echo("hello, sockit").await?, "HELLO, SOCKIT");
//! # Ok(())
//! # }
//! ```

mod chat;
mod exec;
mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod target;
mod time;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

pub use chat::{ChatFeed, ChatIncoming, ChatSender, ChatSession};
pub use exec::{CommandInput, CommandOutput, ExecEvent, RemoteCommand};
pub use files::{TransferOptions, Transferred, partial_path, safe_local_name};
pub use target::Target;
pub use time::{ServerTime, ask_datagram};

use crate::auth::{self, AuthMode, HandshakeError, Secret, ServerInfo, SessionKeys};
use crate::wire::{Connection, ErrorCode, FrameError, Header, Limits, Message, RemoteError};

/// How a client connects and authenticates.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Must match the server's.
    pub secret: Secret,
    /// HMAC-authenticated plaintext session; the server must run plaintext sessions too.
    pub plaintext: bool,
    /// Limit on connecting plus the handshake.
    pub connect_timeout: Duration,
    /// Size limits on what the server sends; bodies are unbounded by default, since the
    /// client asked for them.
    pub limits: Limits,
}

impl ClientConfig {
    /// An encrypted session, 10 s to connect, no limit on the bodies of answers.
    pub fn new(secret: Secret) -> ClientConfig {
        ClientConfig {
            secret,
            plaintext: false,
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default().with_default_body_limit(u64::MAX),
        }
    }
}

/// Why a client call failed. `Display` names the cause; which fix to suggest is the caller's
/// to say (the `sockit` command names its flags), so each cause a fix exists for is a variant.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum ClientError {
    #[error("{0}")]
    BadTarget(String),
    #[error("cannot resolve {target}: {source}")]
    Resolve { target: String, source: io::Error },
    #[error("connection refused by {0}")]
    Refused(String),
    #[error("cannot reach {target}: {source}")]
    Unreachable { target: String, source: io::Error },
    #[error("no answer from {0} within the connect timeout")]
    Timeout(String),
    /// A UDP service sent nothing back.
    #[error("no answer from {target} after {tries} tries ({why})")]
    NoAnswer { target: String, tries: u32, why: String },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("server error: {0}")]
    Remote(#[from] RemoteError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection lost: {0}")]
    Connection(#[from] FrameError),
    #[error("the server closed the connection")]
    Closed,
    /// A problem on this machine (a local file), not the server's.
    #[error("{0}")]
    Local(String),
    /// A download would replace this local file; [`TransferOptions::force`] allows it.
    #[error("{} exists", .0.display())]
    LocalExists(std::path::PathBuf),
}

/// An authenticated session with a server, confirmed with a `ping` as it opens. Requests run
/// one at a time, in order.
pub struct Client {
    conn: Connection,
    info: ServerInfo,
    next_id: u64,
}

impl Client {
    /// Connects to `target` (`HOST[:PORT]`, `[V6]:PORT` or a Unix socket path) and runs the
    /// handshake, all within `config.connect_timeout`.
    pub async fn connect(target: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let target: Target = target.parse().map_err(ClientError::BadTarget)?;
        let name = target.to_string();
        timeout(config.connect_timeout, Client::open(&target, config))
            .await
            .map_err(|_| ClientError::Timeout(name))?
    }

    async fn open(target: &Target, config: &ClientConfig) -> Result<Client, ClientError> {
        let mut conn = match target {
            Target::Tcp { .. } => Connection::tcp(dial_tcp(target).await?, config.limits.clone()),
            Target::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| connect_error(target, e))?;
                Connection::unix(stream, config.limits.clone())
            }
        };
        let keys = SessionKeys::new(config.secret.clone(), AuthMode::from_plaintext(config.plaintext));
        let info = auth::connect(&mut conn, &keys).await?;
        let mut client = Client {
            conn,
            info,
            next_id: 1,
        };
        client.confirm().await?;
        Ok(client)
    }

    /// Confirms the session at once. The server counts a session as authenticated only once
    /// its first request has arrived and closes it at the handshake timeout otherwise, so a
    /// session opened to be used later (a shell at its prompt, a spare connection) must not be
    /// left unconfirmed. A `ping` without an id is answered by nothing, so confirming costs no
    /// round trip; a server that does not announce `ping` predates the rule and needs nothing.
    async fn confirm(&mut self) -> Result<(), ClientError> {
        if self.info.features.iter().any(|feature| feature == "ping") {
            self.conn.send(Header::new("ping"), b"").await?;
        }
        Ok(())
    }

    /// What the server said about itself during the handshake.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// The underlying connection, for streaming requests the helpers here do not cover.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a request and reads its reply whole; an `error` reply becomes [`ClientError::Remote`].
    pub async fn call(&mut self, header: Header, body: &[u8]) -> Result<Message, ClientError> {
        let id = self.next_id();
        self.conn.send(header.with_id(Some(id)), body).await?;
        let reply = self.conn.read_message().await?.ok_or(ClientError::Closed)?;
        if let Some(error) = RemoteError::from_header(&reply.header) {
            return Err(ClientError::Remote(error));
        }
        if reply.header.id() != Some(id) {
            return Err(ClientError::Protocol(format!(
                "reply `{}` carries id {:?}, expected {id}",
                reply.header.cmd(),
                reply.header.id()
            )));
        }
        Ok(reply)
    }

    /// [`Client::call`], asked again for up to 3 s while the server answers `busy`: a limit
    /// that frees up by itself, such as an upload's path still claimed by a connection the
    /// server has not yet seen close (the client that was just killed and is now resuming).
    pub async fn call_when_free(&mut self, header: Header, body: &[u8]) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match self.call(header.clone(), body).await {
                Err(ClientError::Remote(error))
                    if error.code == ErrorCode::Busy && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => return result,
            }
        }
    }

    /// Asks nothing of any service: the cheapest request there is, answered by the session
    /// itself. [`Client::connect`] sends one to confirm every session it opens.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.call(Header::new("ping"), b"").await.map(drop)
    }

    /// The echo service: `text` comes back upper-cased.
    pub async fn echo(&mut self, text: impl AsRef<[u8]>) -> Result<Bytes, ClientError> {
        Ok(self.call(Header::new("echo"), text.as_ref()).await?.body)
    }
}

async fn dial_tcp(target: &Target) -> Result<TcpStream, ClientError> {
    let addrs = target.resolve().await.map_err(|source| ClientError::Resolve {
        target: target.to_string(),
        source,
    })?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| connect_error(target, e))?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    Err(connect_error(target, error))
}

fn connect_error(target: &Target, error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
            ClientError::Refused(target.to_string())
        }
        _ => ClientError::Unreachable {
            target: target.to_string(),
            source: error,
        },
    }
}
