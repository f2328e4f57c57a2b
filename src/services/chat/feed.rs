//! The feed: one task per logged-in client that writes its queue to the connection.
//!
//! The hub only ever puts events into a bounded queue, never on a socket, so that a client that
//! stops reading blocks nobody but itself. This task is the other end: it alone waits on the
//! client's connection, and when the hub gives up on the client (the kick) it says why, if the
//! stream allows, and ends the session.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::chat::ChatEvent;
use crate::wire::{FrameError, Header, SharedWriter};

/// An event as queued: one allocation however many members it goes to.
pub(crate) type Event = Arc<Header>;

/// Writes a client's queued events to its connection until the queue closes or the hub drops
/// the client; then ends the whole session.
pub(super) async fn forward(
    mut queue: mpsc::Receiver<Event>,
    writer: SharedWriter,
    kick: CancellationToken,
    close_session: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = queue.recv() => event,
            () = kick.cancelled() => {
                // Between frames: the stream is intact, so the client can be told why.
                let notice = ChatEvent::Dropped {
                    reason: "too slow: you fell too far behind".into(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(notice.to_header(None), &[]))
                    .await;
                break;
            }
        };
        let Some(event) = event else { return };
        tokio::select! {
            sent = send_event(&writer, &event) => if let Err(error) = sent {
                tracing::debug!(%error, "chat feed ended");
                break;
            },
            // Mid-frame: nothing more can be sent on this stream.
            () = kick.cancelled() => break,
        }
    }
    close_session.cancel();
}

/// Sends one event. One too large to send fails only itself: the request it answers gets an
/// error instead, and the feed goes on.
async fn send_event(writer: &SharedWriter, event: &Header) -> Result<(), FrameError> {
    match writer.send_header(event).await {
        Err(error) if error.is_unsent() => match error.to_remote() {
            Some(remote) => writer.send_error(event.id(), &remote).await,
            None => Err(error),
        },
        sent => sent,
    }
}
