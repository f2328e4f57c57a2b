//! Asking for the time: the native `time` command on a session, or the course's UDP time
//! service with retries ([`ask_datagram`] works for any request-reply UDP service).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::{Client, ClientError, Target};
use crate::proto::time::{TimeReply, TimeRequest};

/// The server's answer to a native `time` request: its local time in the format asked for,
/// and the same moment as milliseconds since 1970 (UTC).
pub type ServerTime = TimeReply;

impl Client {
    /// The native time service: the server's local time in the strftime `format` (`None` for
    /// the course's `%Y-%m-%d %X`). A bad format is a [`ClientError::Remote`] `bad_request`.
    pub async fn time(&mut self, format: Option<&str>) -> Result<ServerTime, ClientError> {
        let request = TimeRequest {
            format: format.map(str::to_owned),
        };
        let reply = self.call(request.to_header(), &[]).await?;
        TimeReply::from_header(&reply.header).map_err(ClientError::Protocol)
    }
}

/// Sends `request` to a UDP service at `target` and returns the first datagram that comes
/// back. Datagrams get lost, so the request is sent again after each `per_try` without an
/// answer, `tries` times in all (to each address the name resolves to, in turn).
pub async fn ask_datagram(
    target: &Target,
    request: &[u8],
    per_try: Duration,
    tries: u32,
) -> Result<Bytes, ClientError> {
    if let Target::Unix(_) = target {
        return Err(ClientError::BadTarget(format!(
            "`{target}` is a Unix socket path; UDP services need HOST[:PORT]"
        )));
    }
    let name = target.to_string();
    let addrs = target.resolve().await.map_err(|source| ClientError::Resolve {
        target: name.clone(),
        source,
    })?;
    let mut sockets = Vec::new();
    let mut last_error = None;
    for addr in addrs {
        match connected_socket(addr).await {
            Ok(socket) => sockets.push(socket),
            Err(error) => last_error = Some(error),
        }
    }
    if sockets.is_empty() {
        let source = last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses"));
        return Err(ClientError::Unreachable { target: name, source });
    }
    let mut refused = false;
    for _ in 0..tries {
        for socket in &sockets {
            match ask_once(socket, request, per_try).await {
                Ok(reply) => return Ok(reply),
                Err(error) => refused |= error.kind() == io::ErrorKind::ConnectionRefused,
            }
        }
    }
    Err(ClientError::NoAnswer {
        target: name,
        tries,
        why: if refused {
            "port unreachable: nothing listens there".to_owned()
        } else {
            format!("waited {per_try:?} each")
        },
    })
}

/// A socket that sends only to `addr` and, being connected, hears only from it (and learns
/// from ICMP when nothing listens there).
async fn connected_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

async fn ask_once(socket: &UdpSocket, request: &[u8], per_try: Duration) -> io::Result<Bytes> {
    socket.send(request).await?;
    let mut buffer = vec![0; 65_536];
    match timeout(per_try, socket.recv(&mut buffer)).await {
        Ok(received) => {
            buffer.truncate(received?);
            Ok(buffer.into())
        }
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}
