//! One connection's life: handshake, then requests one after another until the client leaves,
//! goes idle, breaks the protocol, or the server shuts down. It runs in the connection's span
//! (see `accept`), so its log lines name the peer without saying so each time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{Shared, Stream};
use crate::auth;
use crate::metrics::{Handshake, metrics};
use crate::source::SourceSlot;
use crate::stop;
use std::sync::Arc;

use crate::services::{BodyMode, Peer, Request, Service, ServiceError, Session};
use crate::wire::{
    Connection, ErrorCode, Frame, FrameError, FrameReader, FrameWriter, Header, RemoteError, SharedWriter,
};

use crate::services::PING;

/// How long a parting error frame may take to send before we just close.
const PARTING_GRACE: Duration = Duration::from_secs(1);

pub(super) async fn serve(stream: Stream, peer: Peer, shared: &Shared) {
    let limits = shared.handshake_limits.clone();
    let mut conn = match stream {
        Stream::Tcp(stream) => Connection::tcp(stream, limits),
        Stream::Unix(stream) => Connection::unix(stream, limits),
    };
    let counted = metrics();
    conn.count_bytes(
        counted.socket_bytes_received.clone(),
        counted.socket_bytes_sent.clone(),
    );
    // Held for the connection's whole life: one source cannot take every connection.
    let _connection_slot = match peer.ip().map(|ip| shared.connections_per_source.try_acquire(ip)) {
        Some(None) => {
            metrics().handshake(Handshake::Busy);
            let refusal = RemoteError::new(
                ErrorCode::Busy,
                "too many connections from your address; close some and try again",
            );
            debug!(%refusal, "connection refused before its handshake");
            part(&mut conn.writer, &refusal).await;
            return;
        }
        slot => slot,
    };
    let Some(first) = handshake(&mut conn, peer, shared).await else {
        return;
    };
    // The idle timer runs between requests; within one, a frame left half sent for as long
    // ends the session too.
    conn.reader.set_stall_timeout(Some(shared.config.idle_timeout));
    let mut session = Session::new(conn, peer);
    debug!("session open");
    match serve_requests(&mut session, first, shared).await {
        Ok(()) => {
            // Replies queued when the session was told to end still go out, briefly.
            let _ = timeout(PARTING_GRACE, session.writer.flush()).await;
            debug!("session closed");
        }
        Err(error) => {
            info!(%error, "closing connection");
            if let Some(remote) = error.to_remote() {
                part_shared(&session.writer, &remote).await;
            }
        }
    }
}

/// Runs everything before a session counts as authenticated under the handshake deadline,
/// and returns the client's first request. Failures are logged (in the connection's span,
/// which names the peer's address; never the secret) and answered at once.
async fn handshake(conn: &mut Connection, peer: Peer, shared: &Shared) -> Option<Header> {
    let _source_slot = match admit(peer, shared) {
        Ok(slot) => slot,
        Err((outcome, refusal)) => {
            metrics().handshake(outcome);
            debug!(%refusal, "connection refused before its handshake");
            part(&mut conn.writer, &refusal).await;
            return None;
        }
    };
    let deadline = shared.config.handshake_timeout;
    let attempt = tokio::select! {
        attempt = timeout(deadline, authenticate(conn, peer, shared)) => attempt,
        () = shared.stopping.cancelled() => return None,
    };
    let error = match attempt {
        Ok(Ok(first)) => {
            metrics().handshake(Handshake::Ok);
            return Some(first);
        }
        Ok(Err(error)) => error,
        Err(_) => {
            metrics().handshake(Handshake::Timeout);
            debug!("handshake not completed within {deadline:?}");
            let remote = RemoteError::new(
                ErrorCode::Timeout,
                format!("handshake (and first request) not completed within {deadline:?}"),
            );
            part(&mut conn.writer, &remote).await;
            return None;
        }
    };
    refuse(conn, &error).await;
    None
}

/// Refuses at once, before reading anything, a source that already holds its most
/// connections in the handshake or is under back-off after failed authentications.
fn admit(peer: Peer, shared: &Shared) -> Result<Option<SourceSlot>, (Handshake, RemoteError)> {
    let Some(ip) = peer.ip() else {
        // Unix sockets: local users, already vetted by the socket's permissions.
        return Ok(None);
    };
    if let Err(left) = shared.throttle.admit(Some(ip)) {
        return Err((Handshake::Throttled, auth::throttled_refusal(left)));
    }
    let busy = || {
        RemoteError::new(
            ErrorCode::Busy,
            "too many connections from your address are still in their handshake; try again later",
        )
    };
    let slot = shared
        .handshakes_per_source
        .try_acquire(ip)
        .ok_or_else(|| (Handshake::Busy, busy()))?;
    Ok(Some(slot))
}

/// The handshake proper, in one of the server's handshake slots, then the client's first
/// request. Only that request proves the client holds the session keys (its first encrypted
/// record decrypted): a replayed `hello` is answered, but never gets past this point.
async fn authenticate(
    conn: &mut Connection,
    peer: Peer,
    shared: &Shared,
) -> Result<Header, auth::HandshakeError> {
    let Ok(_slot) = shared.handshakes.acquire().await else {
        return Err(auth::HandshakeError::Closed);
    };
    let attempt = auth::Attempt {
        throttle: &shared.throttle,
        source: peer.ip(),
    };
    auth::accept_throttled(conn, &shared.keys, shared.registry.features(), attempt).await?;
    conn.set_limits(shared.limits.clone());
    match conn.read_frame().await? {
        Some(Frame::Header(first)) => Ok(first),
        Some(Frame::Body(_)) => Err(FrameError::BadHeader("stray body bytes".into()).into()),
        None => Err(auth::HandshakeError::Closed),
    }
}

/// Counts and answers a failed handshake.
async fn refuse(conn: &mut Connection, error: &auth::HandshakeError) {
    metrics().handshake(match error {
        auth::HandshakeError::AuthFailed(_) => Handshake::AuthFailed,
        auth::HandshakeError::Throttled(_) => Handshake::Throttled,
        auth::HandshakeError::Closed => Handshake::Closed,
        _ => Handshake::Refused,
    });
    if error.is_auth_failure() {
        warn!("authentication failed");
    } else {
        debug!(%error, "handshake refused");
    }
    if let Some(remote) = error.to_remote() {
        part(&mut conn.writer, &remote).await;
    }
}

/// Serves `first` (read during the handshake), then every request after it.
///
/// The whole request path runs in this one task: a request is read, handled and answered
/// here, and replies to requests that arrived together go out together, in one write, once
/// no further request is waiting in what was read.
async fn serve_requests(session: &mut Session, first: Header, shared: &Shared) -> Result<(), FrameError> {
    let idle = shared.config.idle_timeout;
    // One timer for the session, re-armed only when it fires early: a busy session pays no
    // timer bookkeeping per request.
    let mut last_request = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // Made once for the session, and polled without the tokens' locks (see `stop`): a fresh
    // wait per request would take them several times a request.
    let closer = session.closer();
    let closed = stop::cancelled(&closer);
    let stopping = stop::cancelled(&shared.stopping);
    tokio::pin!(closed, stopping);
    let mut last_service: Option<Arc<dyn Service>> = None;
    let mut read_ahead = Some(first);
    loop {
        if let Some(header) = read_ahead.take() {
            tokio::select! {
                biased;
                () = &mut closed => return Ok(()),
                dispatched = dispatch(header, session, shared, &mut last_service) => dispatched?,
            }
            last_request = Instant::now();
        }
        let frame = match session.reader.buffered_frame()? {
            Some(frame) if !shared.stopping.is_cancelled() => Some(frame),
            _ => {
                session.writer.flush().await?;
                tokio::select! {
                    biased;
                    () = &mut stopping => return Ok(()),
                    () = &mut closed => return Ok(()),
                    () = &mut idle_timer => {
                        if session.is_busy() {
                            last_request = Instant::now();
                        }
                        if last_request.elapsed() < idle {
                            idle_timer.as_mut().reset((last_request + idle).into());
                            continue;
                        }
                        debug!("idle for {idle:?}");
                        let remote = RemoteError::new(ErrorCode::Timeout, format!("idle for {idle:?}"));
                        part_shared(&session.writer, &remote).await;
                        return Ok(());
                    }
                    frame = session.reader.read_frame() => frame?,
                }
            }
        };
        read_ahead = match frame {
            None => return Ok(()),
            Some(Frame::Header(header)) => Some(header),
            Some(Frame::Body(_)) => return Err(FrameError::BadHeader("stray body bytes".into())),
        };
    }
}

/// Routes one request to its service. Request-level failures are answered with an error frame
/// and the session goes on; only connection failures end it.
async fn dispatch(
    header: Header,
    session: &mut Session,
    shared: &Shared,
    last_service: &mut Option<Arc<dyn Service>>,
) -> Result<(), FrameError> {
    let id = header.id();
    let found = shared.registry.lookup(header.cmd());
    if let Some(previous) = last_service.take()
        && !found.is_some_and(|route| Arc::ptr_eq(&route.service, &previous))
        && let Err(ServiceError::Connection(error)) = previous.flush(session).await
    {
        return Err(error);
    }
    if header.cmd() == PING {
        skip_body(&mut session.reader).await?;
        metrics().request("session", PING);
        // Without an id it is a confirmation, which nobody waits for: no answer.
        return match id {
            Some(id) => {
                session
                    .writer
                    .reply(Header::new("pong").with_id(Some(id)), b"")
                    .await
            }
            None => Ok(()),
        };
    }
    let Some(route) = found else {
        skip_body(&mut session.reader).await?;
        let offered = shared.registry.features().join(", ");
        let error = RemoteError::new(
            ErrorCode::UnknownCmd,
            format!(
                "unknown command `{}` (this server offers: {offered})",
                crate::text::escape_at_most(header.cmd(), 64)
            ),
        );
        return send_error(&session.writer, id, &error).await;
    };
    let body = match route.spec.body {
        BodyMode::Whole => session.reader.read_whole_body().await?,
        BodyMode::Stream => Bytes::new(),
    };
    *last_service = Some(route.service.clone());
    route.requests.inc();
    match route.service.handle(Request { header, body }, session).await {
        Ok(()) => skip_body(&mut session.reader).await,
        Err(ServiceError::Reply(error)) => {
            skip_body(&mut session.reader).await?;
            send_error(&session.writer, id, &error).await
        }
        Err(ServiceError::Connection(error)) => Err(error),
    }
}

/// Discards what is left of the current body, so the next read starts at a header.
async fn skip_body(reader: &mut FrameReader) -> Result<(), FrameError> {
    while reader.read_body_chunk().await?.is_some() {}
    Ok(())
}

/// Answers a request with an error frame, which goes out with the session's next flush.
async fn send_error(writer: &SharedWriter, id: Option<u64>, error: &RemoteError) -> Result<(), FrameError> {
    metrics().error_sent(&error.code);
    writer.reply_error(id, error).await
}

/// Sends a last error frame if the peer is still reading; never waits long.
async fn part(writer: &mut FrameWriter, error: &RemoteError) {
    metrics().error_sent(&error.code);
    let _ = timeout(PARTING_GRACE, writer.send_error(None, error)).await;
}

/// [`part`] for a session, whose writer other tasks may be holding.
async fn part_shared(writer: &SharedWriter, error: &RemoteError) {
    metrics().error_sent(&error.code);
    let _ = timeout(PARTING_GRACE, writer.send_error(None, error)).await;
}
