//! Opening a session: `hello`, mutual authentication, and (by default) encryption.
//!
//! Encrypted sessions run Noise `NNpsk0` with the pre-shared key derived from the secret: the
//! client's first message only decrypts for a server holding the key, the server's answer only
//! for a client holding it, and both sides' ephemeral keys make every session's keys fresh.
//!
//! `--plaintext` sessions run the course's HMAC challenge-response made sound: both sides send
//! a fresh 32-byte nonce, both prove the secret with HMAC-SHA256 over both nonces and their
//! role (the client first, then the server in `ready`), and proofs are compared in constant
//! time. Nothing is encrypted afterwards.
//!
//! docs/protocol.md walks through both exchanges byte by byte.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use snow::{Builder, HandshakeState};

use std::net::IpAddr;
use std::time::Duration;

use super::secret::Secret;
use super::throttle::FailureThrottle;
use crate::wire::{Connection, ErrorCode, FrameError, Header, Message, PROTOCOL_VERSION, RemoteError};

const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"sockit/1";
const NONCE_LEN: usize = 32;
/// A Noise handshake message here is at most an ephemeral key, a tag and a small payload.
const MAX_NOISE_MESSAGE: usize = 1024;

/// How a session authenticates: `hello`'s `auth` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Noise NNpsk0: authenticated and encrypted (the default).
    Noise,
    /// HMAC-SHA256 challenge-response, then plaintext frames (`--plaintext`).
    Hmac,
}

impl AuthMode {
    /// The mode `--plaintext` (or `plaintext = true`) asks for.
    pub fn from_plaintext(plaintext: bool) -> AuthMode {
        if plaintext {
            AuthMode::Hmac
        } else {
            AuthMode::Noise
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AuthMode::Noise => "noise",
            AuthMode::Hmac => "hmac",
        }
    }
}

/// What a session needs to know to authenticate: the secret and the mode to insist on.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    secret: Secret,
    psk: [u8; 32],
    mode: AuthMode,
}

impl SessionKeys {
    /// Derives the Noise key once, so each handshake only hashes the transcript.
    pub fn new(secret: Secret, mode: AuthMode) -> SessionKeys {
        let psk = secret.noise_psk();
        SessionKeys { secret, psk, mode }
    }

    /// A fresh Noise handshake for one side. The configuration is constant, so an error here
    /// is a bug in this build; it fails the handshake like any other.
    fn noise(&self, initiator: bool) -> Result<HandshakeState, HandshakeError> {
        let builder = Builder::new(NOISE_PARAMS.parse().map_err(noise_bug)?)
            .prologue(PROLOGUE)
            .and_then(|b| b.psk(0, &self.psk))
            .map_err(noise_bug)?;
        if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(noise_bug)
    }

    /// HMAC-SHA256 over the role and both nonces: a proof for one side of one session.
    fn proof(&self, role: &[u8], client_nonce: &[u8], server_nonce: &[u8]) -> Hmac<Sha256> {
        #[allow(
            clippy::expect_used,
            reason = "HMAC takes a key of any length, so this never fails"
        )]
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).expect("any key length");
        mac.update(b"sockit/1 ");
        mac.update(role);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac
    }
}

/// What the server said about itself once the session was up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServerInfo {
    /// The server's name and version, as `sockit/0.1.0`.
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub(crate) features: Vec<String>,
}

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not know the secret; the text says how it showed.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The client's address is under back-off after failed attempts; refused before any
    /// cryptography.
    #[error("too many failed authentications from this address; try again in {0:?}")]
    Throttled(Duration),
    /// One side refused the session for a reason the other is told.
    #[error("{0}")]
    Refused(RemoteError),
    /// The peer broke the handshake's sequence.
    #[error("protocol error during the handshake: {0}")]
    Protocol(String),
    /// The peer hung up before the session was up.
    #[error("connection closed during the handshake")]
    Closed,
    /// The frames themselves were unreadable.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl HandshakeError {
    /// The error frame the server sends before closing, if the peer can still be told.
    pub(crate) fn to_remote(&self) -> Option<RemoteError> {
        match self {
            HandshakeError::AuthFailed(_) => Some(RemoteError::new(
                ErrorCode::AuthFailed,
                "authentication failed: the client does not hold this server's secret",
            )),
            HandshakeError::Throttled(left) => Some(throttled_refusal(*left)),
            HandshakeError::Refused(error) => Some(error.clone()),
            HandshakeError::Protocol(why) => Some(RemoteError::new(ErrorCode::BadFrame, why.clone())),
            HandshakeError::Frame(error) => error.to_remote(),
            HandshakeError::Closed => None,
        }
    }

    pub(crate) fn is_auth_failure(&self) -> bool {
        matches!(self, HandshakeError::AuthFailed(_))
    }
}

/// What a client under back-off is told: `auth_throttled`, and how long is left.
pub(crate) fn throttled_refusal(left: Duration) -> RemoteError {
    RemoteError::new(
        ErrorCode::AuthThrottled,
        format!(
            "too many failed authentications from your address; try again in {} ms",
            left.as_millis().max(1)
        ),
    )
}

#[derive(Deserialize)]
struct Hello {
    version: u32,
    auth: AuthMode,
    #[serde(default)]
    nonce: Option<String>,
}

/// Who is trying to authenticate, and the throttle that may refuse them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt<'a> {
    pub(crate) throttle: &'a FailureThrottle,
    /// The client's address; `None` for Unix sockets.
    pub(crate) source: Option<IpAddr>,
}

impl Attempt<'_> {
    /// Runs `verify` (the cryptography that checks the client's secret) unless the source is
    /// under back-off, and puts it under back-off if the check fails. Nothing is awaited
    /// between the check and the record, so concurrent guesses cannot slip in between.
    fn guard<T>(self, verify: impl FnOnce() -> Result<T, HandshakeError>) -> Result<T, HandshakeError> {
        self.throttle
            .admit(self.source)
            .map_err(HandshakeError::Throttled)?;
        let outcome = verify();
        if matches!(outcome, Err(HandshakeError::AuthFailed(_))) {
            self.throttle.record_failure(self.source);
        }
        outcome
    }
}

/// The server's side of the handshake, without a failure throttle (for tests and embedding).
pub async fn accept(
    conn: &mut Connection,
    keys: &SessionKeys,
    features: &[&str],
) -> Result<(), HandshakeError> {
    let unthrottled = FailureThrottle::new(Duration::ZERO, Duration::ZERO);
    let attempt = Attempt {
        throttle: &unthrottled,
        source: None,
    };
    accept_throttled(conn, keys, features, attempt).await
}

/// The server's side of the handshake. On success the connection is ready for requests and
/// the client has been sent `ready` with the server's name and `features`. The secret is
/// checked only if `attempt`'s source is not under back-off.
pub(crate) async fn accept_throttled(
    conn: &mut Connection,
    keys: &SessionKeys,
    features: &[&str],
    attempt: Attempt<'_>,
) -> Result<(), HandshakeError> {
    let hello = expect_from_client(conn, "hello").await?;
    let request: Hello = hello.header.parse()?;
    if request.version != PROTOCOL_VERSION {
        return Err(refused(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                request.version
            ),
        ));
    }
    let server_proof = match (request.auth, keys.mode) {
        (AuthMode::Noise, AuthMode::Noise) => {
            attempt.guard(|| accept_noise(conn, keys, &hello.body))?;
            None
        }
        (AuthMode::Hmac, AuthMode::Hmac) => Some(accept_hmac(conn, keys, &request, attempt).await?),
        (AuthMode::Hmac, AuthMode::Noise) => {
            return Err(refused(
                ErrorCode::PlaintextRefused,
                "this server requires encrypted sessions",
            ));
        }
        (AuthMode::Noise, AuthMode::Hmac) => {
            return Err(refused(
                ErrorCode::EncryptionUnavailable,
                "this server runs plaintext sessions only",
            ));
        }
    };
    let mut ready = Header::new("ready")
        .with("server", concat!("sockit ", env!("CARGO_PKG_VERSION")))
        .with("features", features.to_vec());
    if let Some(proof) = server_proof {
        ready = ready.with("proof", proof);
    }
    conn.send(ready, b"").await?;
    Ok(())
}

/// Reads the client's Noise message, queues the answer, and switches to encrypted records.
fn accept_noise(conn: &mut Connection, keys: &SessionKeys, message: &[u8]) -> Result<(), HandshakeError> {
    let mut noise = keys.noise(false)?;
    let mut payload = [0u8; MAX_NOISE_MESSAGE];
    noise.read_message(message, &mut payload).map_err(|_| {
        HandshakeError::AuthFailed("the client's handshake did not decrypt with our key".into())
    })?;
    let reply = write_noise_message(&mut noise)?;
    conn.writer.queue(hello_header(AuthMode::Noise), &reply)?;
    conn.encrypt(noise).map_err(noise_bug)?;
    Ok(())
}

/// Challenges the client, checks its proof, and returns the server's own proof (sent in
/// `ready`). The client proves first, so a stranger never obtains a MAC made with the secret.
async fn accept_hmac(
    conn: &mut Connection,
    keys: &SessionKeys,
    hello: &Hello,
    attempt: Attempt<'_>,
) -> Result<String, HandshakeError> {
    let client_nonce = decode_nonce(hello.nonce.as_deref())?;
    let server_nonce: [u8; NONCE_LEN] = rand::random();
    let challenge = hello_header(AuthMode::Hmac).with("nonce", hex::encode(server_nonce));
    conn.send(challenge, b"").await?;

    let auth = expect_from_client(conn, "auth").await?;
    attempt.guard(|| {
        let client_proof = decode_proof(auth.header.str("proof"))?;
        keys.proof(b"client", &client_nonce, &server_nonce)
            .verify_slice(&client_proof)
            .map_err(|_| HandshakeError::AuthFailed("the client's proof does not match our secret".into()))
    })?;
    let proof = keys.proof(b"server", &client_nonce, &server_nonce).finalize();
    Ok(hex::encode(proof.into_bytes()))
}

/// The client's side of the handshake.
pub async fn connect(conn: &mut Connection, keys: &SessionKeys) -> Result<ServerInfo, HandshakeError> {
    let expected_proof = match keys.mode {
        AuthMode::Noise => connect_noise(conn, keys).await.map(|()| None)?,
        AuthMode::Hmac => Some(connect_hmac(conn, keys).await?),
    };
    let ready = expect(conn, "ready").await?;
    if let Some(expected) = expected_proof {
        expected
            .verify_slice(&decode_proof(ready.header.str("proof"))?)
            .map_err(|_| {
                HandshakeError::AuthFailed("the server could not prove it holds our secret".into())
            })?;
    }
    Ok(ready.header.parse()?)
}

async fn connect_noise(conn: &mut Connection, keys: &SessionKeys) -> Result<(), HandshakeError> {
    let mut noise = keys.noise(true)?;
    let message = write_noise_message(&mut noise)?;
    conn.send(hello_header(AuthMode::Noise), &message).await?;

    let answer = expect_server_hello(conn).await?;
    let mut payload = [0u8; MAX_NOISE_MESSAGE];
    noise
        .read_message(&answer.body, &mut payload)
        .map_err(|_| HandshakeError::AuthFailed("the server could not prove it holds our secret".into()))?;
    conn.encrypt(noise).map_err(noise_bug)?;
    Ok(())
}

/// Answers the server's challenge; returns the proof the server must show in `ready`.
async fn connect_hmac(conn: &mut Connection, keys: &SessionKeys) -> Result<Hmac<Sha256>, HandshakeError> {
    let client_nonce: [u8; NONCE_LEN] = rand::random();
    let hello = hello_header(AuthMode::Hmac).with("nonce", hex::encode(client_nonce));
    conn.send(hello, b"").await?;

    let challenge: Hello = expect_server_hello(conn).await?.header.parse()?;
    let server_nonce = decode_nonce(challenge.nonce.as_deref())?;
    let proof = keys.proof(b"client", &client_nonce, &server_nonce).finalize();
    let auth = Header::new("auth").with("proof", hex::encode(proof.into_bytes()));
    conn.send(auth, b"").await?;
    Ok(keys.proof(b"server", &client_nonce, &server_nonce))
}

fn hello_header(mode: AuthMode) -> Header {
    Header::new("hello")
        .with("version", PROTOCOL_VERSION)
        .with("auth", mode.as_str())
}

/// Reads the server's `hello`, turning an error frame into the matching handshake error.
async fn expect_server_hello(conn: &mut Connection) -> Result<Message, HandshakeError> {
    let answer = expect(conn, "hello").await?;
    let version = answer.header.u64("version");
    if version != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(HandshakeError::Refused(RemoteError::new(
            ErrorCode::VersionMismatch,
            format!("server speaks protocol version {version:?}, this client speaks {PROTOCOL_VERSION}"),
        )));
    }
    Ok(answer)
}

/// The server's [`expect`]: an `error` frame from a client that has not authenticated is just
/// a wrong message. Its code and text are never echoed, logged or counted: they are a
/// stranger's, and unbounded in variety.
async fn expect_from_client(conn: &mut Connection, cmd: &str) -> Result<Message, HandshakeError> {
    let message = conn.read_message().await?.ok_or(HandshakeError::Closed)?;
    if message.header.cmd() != cmd {
        return Err(HandshakeError::Protocol(format!(
            "expected `{cmd}`, got `{}`",
            crate::text::escape_at_most(message.header.cmd(), 32)
        )));
    }
    Ok(message)
}

/// The client's reading of the server's next message, which must be `cmd`; an `error` frame
/// becomes the error it names.
async fn expect(conn: &mut Connection, cmd: &str) -> Result<Message, HandshakeError> {
    let message = conn.read_message().await?.ok_or(HandshakeError::Closed)?;
    if let Some(error) = RemoteError::from_header(&message.header) {
        return Err(match error.code {
            ErrorCode::AuthFailed => HandshakeError::AuthFailed("the server rejected our secret".into()),
            _ => HandshakeError::Refused(error),
        });
    }
    if message.header.cmd() != cmd {
        return Err(HandshakeError::Protocol(format!(
            "expected `{cmd}`, got `{}`",
            message.header.cmd()
        )));
    }
    Ok(message)
}

fn refused(code: ErrorCode, message: impl Into<String>) -> HandshakeError {
    HandshakeError::Refused(RemoteError::new(code, message))
}

fn decode_nonce(nonce: Option<&str>) -> Result<[u8; NONCE_LEN], HandshakeError> {
    nonce
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| HandshakeError::Protocol(format!("`nonce` must be {NONCE_LEN} bytes in hex")))
}

fn decode_proof(proof: Option<&str>) -> Result<Vec<u8>, HandshakeError> {
    proof
        .and_then(|hex_text| hex::decode(hex_text).ok())
        .ok_or_else(|| HandshakeError::AuthFailed("the proof is missing or not hex".into()))
}

/// This side's next handshake message (with no payload), exactly as long as Noise wrote it.
fn write_noise_message(noise: &mut HandshakeState) -> Result<Vec<u8>, HandshakeError> {
    let mut message = vec![0u8; MAX_NOISE_MESSAGE];
    let len = noise.write_message(&[], &mut message).map_err(noise_bug)?;
    message.truncate(len);
    Ok(message)
}

fn noise_bug(error: snow::Error) -> HandshakeError {
    HandshakeError::Protocol(format!("noise: {error}"))
}
