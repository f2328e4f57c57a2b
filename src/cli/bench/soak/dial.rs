//! Connections from a loopback address of the caller's choosing, and handshakes with a wrong
//! secret: what the abuse phase and the hostile attacks both make, each from addresses of its
//! own so that the server's per-source limits meet them and never the normal clients.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::wire::{Connection, Limits};
use sockit::{ClientError, Secret};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// The receive buffer of a connection that never reads: small, so the server's side fills fast.
const SMALL_WINDOW: u32 = 4096;
/// How an attacker's connection reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Normally,
    /// Never reads: a 4 KiB receive buffer, so the server's side backs up quickly.
    Never,
}

/// A TCP connection to `to` from `source` (any 127/8 address works on Linux without setup).
pub async fn dial_from(source: Ipv4Addr, to: SocketAddr, reading: Reading) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    if reading == Reading::Never {
        socket.set_recv_buffer_size(SMALL_WINDOW)?;
    }
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One handshake from `source` with a secret that is not the server's, given up after
/// `patience`: `AuthFailed` when refused as wrong, `Timeout` when nothing came back in time.
pub async fn wrong_secret(
    source: Ipv4Addr,
    server: SocketAddr,
    patience: Duration,
) -> Result<(), ClientError> {
    let keys = SessionKeys::new(Secret::generate(), AuthMode::Noise);
    let attempt = async {
        let stream = dial_from(source, server, Reading::Normally)
            .await
            .map_err(|source| ClientError::Unreachable {
                target: server.to_string(),
                source,
            })?;
        let mut conn = Connection::tcp(stream, Limits::default());
        auth::connect(&mut conn, &keys).await?;
        Ok(())
    };
    timeout(patience, attempt)
        .await
        .map_err(|_| ClientError::Timeout(server.to_string()))?
}
