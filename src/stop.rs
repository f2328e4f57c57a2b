//! Waiting for a [`CancellationToken`] from a task that wakes often.
//!
//! `token.cancelled()` takes the token's locks every time it is polled, and a connection's
//! task polls its waits on each wakeup, once or twice per request. For the server's shutdown
//! token, shared by every connection, those are locks every worker thread takes for every
//! request. [`cancelled`] waits for the same thing but touches the token only when the token
//! itself has woken the task (or on the first poll): other wakeups cost two atomic operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Resolves once `token` is cancelled, like `token.cancelled()`, with cheap polls.
pub(crate) fn cancelled(token: &CancellationToken) -> Cancelled<'_> {
    Cancelled {
        wait: Box::pin(token.cancelled()),
        relay: Arc::new(Relay::default()),
        task: None,
        registered: false,
    }
}

/// See [`cancelled`].
pub(crate) struct Cancelled<'a> {
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    relay: Arc<Relay>,
    /// The task waker last given to the relay, to give it again only when it changes.
    task: Option<Waker>,
    /// Whether `wait` holds the relay's waker in the token's list.
    registered: bool,
}

/// The waker the token holds: it notes that the token woke us, then wakes the task.
#[derive(Default)]
struct Relay {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check, so a wake between the two is not lost.
        if !self.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            self.relay.task.register(cx.waker());
            self.task = Some(cx.waker().clone());
        }
        if self.registered
            && !(self.relay.woken.load(Ordering::Acquire) && self.relay.woken.swap(false, Ordering::AcqRel))
        {
            return Poll::Pending;
        }
        let waker = Waker::from(self.relay.clone());
        let polled = self.wait.as_mut().poll(&mut Context::from_waker(&waker));
        self.registered = polled.is_pending();
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves when cancelled, from a task that other things wake in between.
    #[tokio::test]
    async fn resolves_on_cancel_after_unrelated_wakeups() {
        let token = CancellationToken::new();
        let (nudge, mut nudged) = tokio::sync::mpsc::unbounded_channel::<()>();
        let waiter = tokio::spawn({
            let token = token.clone();
            async move {
                let stop = cancelled(&token);
                tokio::pin!(stop);
                let mut wakeups = 0;
                loop {
                    tokio::select! {
                        biased;
                        () = &mut stop => return wakeups,
                        Some(()) = nudged.recv() => wakeups += 1,
                    }
                }
            }
        });
        for _ in 0..100 {
            nudge.send(()).unwrap();
            tokio::task::yield_now().await;
        }
        token.cancel();
        // A lost wakeup would hang here: the bound turns that into a failure.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), waiter).await;
        let wakeups = waited.expect("the cancellation woke the waiter").unwrap();
        assert!(wakeups <= 100, "{wakeups}");
    }

    #[tokio::test]
    async fn resolves_at_once_when_already_cancelled() {
        let token = CancellationToken::new();
        token.cancel();
        cancelled(&token).await;
    }
}
