//! One connection's life: handshake, then requests one after another until the client leaves,
//! goes idle, breaks the protocol, or the server shuts down.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{Shared, Stream};
use crate::auth;
use crate::metrics::{Handshake, metrics};
use std::sync::Arc;

use crate::services::{BodyMode, Peer, Request, Service, ServiceError, Session};
use crate::wire::{
    Connection, ErrorCode, Frame, FrameError, FrameReader, FrameWriter, Header, RemoteError, SharedWriter,
};

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
    if !handshake(&mut conn, peer, shared).await {
        return;
    }
    conn.set_limits(shared.limits.clone());
    let mut session = Session::new(conn, peer);
    debug!(%peer, "session open");
    match serve_requests(&mut session, shared).await {
        Ok(()) => debug!(%peer, "session closed"),
        Err(error) => {
            info!(%peer, %error, "closing connection");
            if let Some(remote) = error.to_remote() {
                part_shared(&session.writer, &remote).await;
            }
        }
    }
}

/// Runs the handshake under its deadline. Failures are logged with the peer's address (never
/// the secret) and answered, after a growing delay when the secret was wrong.
async fn handshake(conn: &mut Connection, peer: Peer, shared: &Shared) -> bool {
    let deadline = shared.config.handshake_timeout;
    let attempt = timeout(deadline, async {
        let _slot = shared.handshakes.acquire().await.expect("semaphore never closed");
        auth::accept(conn, &shared.keys, shared.registry.features()).await
    });
    let error = match attempt.await {
        Ok(Ok(())) => {
            metrics().handshake(Handshake::Ok);
            return true;
        }
        Ok(Err(error)) => error,
        Err(_) => {
            metrics().handshake(Handshake::Timeout);
            debug!(%peer, "handshake not completed within {deadline:?}");
            let remote = RemoteError::new(
                ErrorCode::Timeout,
                format!("handshake not completed within {deadline:?}"),
            );
            part(&mut conn.writer, &remote).await;
            return false;
        }
    };
    metrics().handshake(match error {
        auth::HandshakeError::AuthFailed(_) => Handshake::AuthFailed,
        auth::HandshakeError::Closed => Handshake::Closed,
        _ => Handshake::Refused,
    });
    if error.is_auth_failure() {
        let delay = shared.throttle.record_failure(peer.ip());
        warn!(%peer, delay_ms = delay.as_millis() as u64, "authentication failed");
        tokio::time::sleep(delay).await;
    } else {
        debug!(%peer, %error, "handshake refused");
    }
    if let Some(remote) = error.to_remote() {
        part(&mut conn.writer, &remote).await;
    }
    false
}

async fn serve_requests(session: &mut Session, shared: &Shared) -> Result<(), FrameError> {
    let peer = session.peer;
    let idle = shared.config.idle_timeout;
    // One timer for the session, re-armed only when it fires early: a busy session pays no
    // timer bookkeeping per request.
    let mut last_request = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_service: Option<Arc<dyn Service>> = None;
    let closer = session.closer();
    loop {
        let frame = tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return Ok(()),
            () = closer.cancelled() => return Ok(()),
            () = &mut idle_timer => {
                if session.is_busy() {
                    last_request = Instant::now();
                }
                if last_request.elapsed() < idle {
                    idle_timer.as_mut().reset((last_request + idle).into());
                    continue;
                }
                debug!(%peer, "idle for {idle:?}");
                let remote = RemoteError::new(ErrorCode::Timeout, format!("idle for {idle:?}"));
                part_shared(&session.writer, &remote).await;
                return Ok(());
            }
            frame = session.reader.read_frame() => frame?,
        };
        let header = match frame {
            None => return Ok(()),
            Some(Frame::Header(header)) => header,
            Some(Frame::Body(_)) => return Err(FrameError::BadHeader("stray body bytes".into())),
        };
        tokio::select! {
            dispatched = dispatch(header, session, shared, &mut last_service) => dispatched?,
            () = closer.cancelled() => return Ok(()),
        }
        last_request = Instant::now();
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
        && !found.is_some_and(|(service, _)| Arc::ptr_eq(service, &previous))
        && let Err(ServiceError::Connection(error)) = previous.flush(session).await
    {
        return Err(error);
    }
    let Some((service, spec)) = found else {
        skip_body(&mut session.reader).await?;
        let offered = shared.registry.features().join(", ");
        let error = RemoteError::new(
            ErrorCode::UnknownCmd,
            format!(
                "unknown command `{}` (this server offers: {offered})",
                crate::services::root::escape_at_most(header.cmd(), 64)
            ),
        );
        return send_error(&session.writer, id, &error).await;
    };
    let body = match spec.body {
        BodyMode::Whole => session.reader.read_whole_body().await?,
        BodyMode::Stream => Bytes::new(),
    };
    *last_service = Some(service.clone());
    metrics().request(service.name(), spec.cmd);
    match service.handle(Request { header, body }, session).await {
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

/// Answers a request with an error frame.
async fn send_error(writer: &SharedWriter, id: Option<u64>, error: &RemoteError) -> Result<(), FrameError> {
    metrics().error_sent(&error.code);
    writer.send_error(id, error).await
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
