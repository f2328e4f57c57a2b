//! The course's upper-case echo servers: over TCP on 8081, over UDP on 9001, and behind the
//! HMAC challenge on 9999.
//!
//! **8081, TCP.** The course's server (`phone.bind(('127.0.0.1',8081))`) has a connection
//! loop and a communication loop: `data=conn.recv(1024)`, `conn.send(data.upper())`. It serves
//! one client at a time, spins forever when a client leaves (it never checks for an empty
//! `recv`), and its `bytes.upper()` knows only ASCII. Here: any number of clients at once, a
//! client that closes ends only its own connection, a silent one is closed after the idle
//! timeout, and upper-casing is the native echo's (Unicode for UTF-8 text, ASCII for
//! anything else).
//!
//! **9001, UDP.** `msg,addr=recvfrom(1024)`, `sendto(msg.upper(),addr)`: the same, datagram
//! by datagram, with the per-source rate limit of every sockit UDP service; a reply is never
//! longer than its request (a character whose upper case is longer, such as `ΐ`, is sent back
//! as it came), so a forged source gets no more bytes than the forger sent.
//!
//! **9999, TCP, HMAC.** The course's `conn_auth`: send `os.urandom(32)`, read the client's
//! `hmac.new(secret_key, msg, 'md5').digest()` (16 bytes), compare with
//! `hmac.compare_digest`, close on a mismatch, then upper echo. The course's `recv(16)` may
//! return part of the digest, and a client that never answers holds its (only) server
//! forever; here the 16 bytes are read whole within the handshake timeout, the comparison is
//! constant-time, and every refusal is logged with the peer's address. Failures share the
//! native handshake's back-off per source address: a source under back-off is closed at once,
//! before its challenge, so guessing here is no faster than on the native port. The key is the
//! server's secret as text (see [`HmacEcho`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::READ_CHUNK;
use crate::auth::{FailureThrottle, Secret};
use crate::services::echo::{upper, upper_no_longer};
use crate::services::unframed::{DatagramService, ServiceStream, StreamService};

/// Why 9999 refused a client: a checked wrong answer, or anything else (no answer, a source
/// under back-off), which only a debug log records.
enum Refusal {
    WrongAnswer(String),
    Other(String),
}

/// The course's TCP upper echo (8081).
pub(crate) struct UpperEcho;

#[async_trait]
impl StreamService for UpperEcho {
    async fn serve(&self, mut stream: ServiceStream, _peer: SocketAddr) -> std::io::Result<()> {
        echo_upper(&mut stream).await
    }
}

/// Sends each chunk back upper-cased until the client closes.
async fn echo_upper(stream: &mut ServiceStream) -> std::io::Result<()> {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buffer.clear();
        if stream.read_request(&mut buffer).await? == 0 {
            return Ok(());
        }
        stream.write_all(&upper(&buffer)).await?;
    }
}

/// The course's UDP upper echo (9001).
pub(crate) struct UdpUpperEcho;

#[async_trait]
impl DatagramService for UdpUpperEcho {
    async fn answer(&self, request: &[u8], _from: SocketAddr) -> Vec<Bytes> {
        vec![Bytes::from(upper_no_longer(request))]
    }
}

/// Bytes of the challenge, as the course's `os.urandom(32)`.
pub(crate) const CHALLENGE_LEN: usize = 32;
/// Bytes of the answer: an HMAC-MD5 digest.
pub(crate) const DIGEST_LEN: usize = 16;

/// The course's HMAC-authenticated upper echo (9999).
///
/// The key is the secret exactly as the native protocol reads it: the secret file's (or
/// `SOCKIT_SECRET`'s) text with surrounding whitespace removed, as UTF-8 bytes. For a secret
/// made by `sockit keygen` that is its 64 hex characters, so a course client's
/// `secret_key=open(path,'rb').read().strip()` is the same key.
pub(crate) struct HmacEcho {
    secret: Secret,
    /// How long the client has to answer the challenge.
    answer_timeout: Duration,
    /// The server's failed-authentication back-off, shared with the native handshake.
    throttle: Arc<FailureThrottle>,
}

impl HmacEcho {
    pub(crate) fn new(secret: Secret, answer_timeout: Duration, throttle: Arc<FailureThrottle>) -> HmacEcho {
        HmacEcho {
            secret,
            answer_timeout,
            throttle,
        }
    }

    /// The digest a client holding the secret answers to `challenge`.
    pub(crate) fn expected(&self, challenge: &[u8]) -> Hmac<Md5> {
        #[allow(
            clippy::expect_used,
            reason = "HMAC takes a key of any length, so this never fails"
        )]
        let mut mac = Hmac::<Md5>::new_from_slice(self.secret.as_bytes()).expect("any key length");
        mac.update(challenge);
        mac
    }

    /// Sends a challenge and checks the answer; the reason when the client fails. A source
    /// that came under back-off meanwhile is refused before its answer is checked.
    async fn authenticate(&self, stream: &mut ServiceStream, peer: SocketAddr) -> Result<(), Refusal> {
        let challenge: [u8; CHALLENGE_LEN] = rand::random();
        stream
            .write_all(&challenge)
            .await
            .map_err(|e| Refusal::Other(format!("challenge not sent: {e}")))?;
        let mut answer = [0u8; DIGEST_LEN];
        match tokio::time::timeout(self.answer_timeout, stream.read_exact(&mut answer)).await {
            Err(_) => {
                return Err(Refusal::Other(format!(
                    "no answer within {:?}",
                    self.answer_timeout
                )));
            }
            Ok(Err(error)) => return Err(Refusal::Other(format!("no complete answer: {error}"))),
            Ok(Ok(_)) => {}
        }
        self.admit(peer).map_err(Refusal::Other)?;
        self.expected(&challenge).verify_slice(&answer).map_err(|_| {
            let backoff = self.throttle.record_failure(Some(peer.ip()));
            Refusal::WrongAnswer(format!(
                "wrong answer (another key, or not the course's HMAC-MD5); address under back-off for {backoff:?}"
            ))
        })
    }

    fn admit(&self, peer: SocketAddr) -> Result<(), String> {
        self.throttle.admit(Some(peer.ip())).map_err(|left| {
            format!("recent failed authentications from this address; answer not checked ({left:?} left)")
        })
    }
}

#[async_trait]
impl StreamService for HmacEcho {
    async fn serve(&self, mut stream: ServiceStream, peer: SocketAddr) -> std::io::Result<()> {
        if let Err(left) = self.throttle.admit(Some(peer.ip())) {
            // Quietly: a guesser hammering away must not flood the log.
            debug!("address under back-off ({left:?} left); closed at once");
            return Ok(());
        }
        match self.authenticate(&mut stream, peer).await {
            Ok(()) => {}
            // A wrong answer is worth a warning (and the back-off keeps them rare); anything a
            // stranger can make by connecting and leaving is not, or it could flood the log.
            Err(Refusal::WrongAnswer(reason)) => {
                warn!("authentication refused: {reason}; connection closed");
                return Ok(());
            }
            Err(Refusal::Other(reason)) => {
                debug!("authentication refused: {reason}; connection closed");
                return Ok(());
            }
        }
        info!("client authenticated");
        echo_upper(&mut stream).await
    }
}
