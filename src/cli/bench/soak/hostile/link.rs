//! What every attack needs to reach the server: a connection from its own address, an
//! authenticated session on it, a chat login, a request and its answer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use sockit::ClientError;
use sockit::auth;
use sockit::proto::chat::Login;
use sockit::wire::{Connection, FrameReader, Header, Limits, Message, RemoteError};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::super::dial::{Reading, dial_from};
use super::attacker::Attacker;

/// Once the writing is done, replies are read until none came for this long.
const QUIET: Duration = Duration::from_secs(2);
/// Bounds one pipelined burst: a server that stops reading must not hold the attacker.
pub const BURST_WITHIN: Duration = Duration::from_secs(20);
/// Connecting plus the handshake, for an attacker's own session.
const SESSION_WITHIN: Duration = Duration::from_secs(10);

impl Attacker {
    /// A TCP connection to `to` from this attack's address for `lane`.
    pub async fn dial(&self, lane: usize, to: SocketAddr, reading: Reading) -> io::Result<TcpStream> {
        dial_from(self.source(lane), to, reading).await
    }

    /// An authenticated session with the main server; replies of any size are accepted.
    pub async fn session(&self, lane: usize, reading: Reading) -> Result<Connection, ClientError> {
        self.session_with(self.arena.server, lane, reading).await
    }

    pub async fn session_with(
        &self,
        server: SocketAddr,
        lane: usize,
        reading: Reading,
    ) -> Result<Connection, ClientError> {
        let open = async {
            let stream =
                self.dial(lane, server, reading)
                    .await
                    .map_err(|source| ClientError::Unreachable {
                        target: server.to_string(),
                        source,
                    })?;
            let limits = Limits::default()
                .with_max_header_len(64 << 20)
                .with_default_body_limit(u64::MAX);
            let mut conn = Connection::tcp(stream, limits);
            auth::connect(&mut conn, &self.arena.keys).await?;
            Ok(conn)
        };
        timeout(SESSION_WITHIN, open)
            .await
            .map_err(|_| ClientError::Timeout(server.to_string()))?
    }

    /// A session logged in to chat as `name`.
    pub async fn chat_member(
        &self,
        lane: usize,
        name: &str,
        reading: Reading,
    ) -> Result<Connection, ClientError> {
        let mut conn = self.session(lane, reading).await?;
        call(&mut conn, Login { name }.to_header()).await?;
        Ok(conn)
    }

    /// Counts `result` under `what: ok` or `what: ` and the kind of failure.
    pub fn count_outcome<T>(&self, what: &str, result: &Result<T, ClientError>) {
        let kind = match result {
            Ok(_) => "ok",
            Err(error) => failure_kind(error),
        };
        self.count(&format!("{what}: {kind}"));
    }
}

/// A short name for what went wrong, to count refusals by kind.
pub fn failure_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Remote(_) => "refused with an error",
        ClientError::Handshake(sockit::auth::HandshakeError::AuthFailed(_)) => "auth failed",
        ClientError::Handshake(sockit::auth::HandshakeError::Refused(_)) => "refused in the handshake",
        ClientError::Handshake(_) => "handshake broken",
        ClientError::Timeout(_) => "timed out",
        ClientError::Unreachable { .. } | ClientError::Refused(_) => "could not connect",
        _ => "connection lost",
    }
}

/// Sends one request (id 1) and reads one message back; an error frame is an error.
pub async fn call(conn: &mut Connection, header: Header) -> Result<Message, ClientError> {
    conn.send(header.with_id(Some(1)), b"").await?;
    let reply = conn.read_message().await?.ok_or(ClientError::Closed)?;
    match RemoteError::from_header(&reply.header) {
        Some(error) => Err(ClientError::Remote(error)),
        None => Ok(reply),
    }
}

/// Sends `requests` in order while reading whatever comes back, counting refusals; returns
/// whether the session outlived the burst (the server neither closed it nor broke it).
pub async fn burst(me: &Attacker, conn: Connection, requests: impl Iterator<Item = Header> + Send) -> bool {
    let Connection { reader, mut writer } = conn;
    let sent = async move {
        for (id, request) in requests.enumerate() {
            writer.send(request.with_id(Some(id as u64 + 2)), b"").await?;
        }
        Ok::<_, ClientError>(writer)
    };
    let (sent, read) = tokio::join!(timeout(BURST_WITHIN, sent), read_replies(me, reader));
    me.count(if matches!(sent, Ok(Ok(_))) {
        "bursts sent whole"
    } else {
        "bursts cut short"
    });
    read
}

/// Reads until the session ends or goes quiet; true if it went quiet (the session lives).
async fn read_replies(me: &Attacker, mut reader: FrameReader) -> bool {
    loop {
        match timeout(QUIET, reader.read_message()).await {
            Err(_) => return true,
            Ok(Ok(Some(message))) => match RemoteError::from_header(&message.header) {
                Some(error) => me.count(&format!("refused: {}", error.code.as_str())),
                None => me.count(&format!("replies: {}", message.header.cmd())),
            },
            Ok(Ok(None) | Err(_)) => return false,
        }
    }
}
