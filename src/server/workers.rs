//! Threads that each run a single-threaded runtime, for the native protocol's connections.
//!
//! tokio's multi-thread scheduler wakes an idle sibling thread to steal work whenever one
//! thread has more than one task ready, which with many busy connections is every few
//! requests: a futex wake, and on a virtual machine a halted CPU woken, as costly as the
//! request itself. A connection needs no second thread (its requests are served in order in
//! its own task), so connections are placed at accept time on the runtime with the fewest, and
//! stay there, as thread-per-core servers do. Measured in BENCHMARKS.md ("Echo").

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// Threads for blocking work (file system calls) over all workers, as a multi-thread
/// runtime has by default.
const BLOCKING_THREADS: usize = 512;

/// The worker runtimes. Dropping this stops them (after the server has finished its
/// connections: the server's shutdown waits for them first).
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

/// A connection's place on a worker, counted until it is dropped.
pub(crate) struct Placed(Arc<AtomicUsize>);

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one), each with its own runtime.
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads((BLOCKING_THREADS / count).max(1))
                .thread_name(format!("sockit-worker-{index}-blocking"))
                .build()?;
            workers.push(Worker {
                handle: runtime.handle().clone(),
                connections: Arc::default(),
            });
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sockit-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            workers,
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// The runtime with the fewest connections, and the connection's place on it.
    pub(crate) fn place(&self) -> Option<(&Handle, Placed)> {
        let worker = self
            .workers
            .iter()
            .min_by_key(|worker| worker.connections.load(Ordering::Relaxed))?;
        worker.connections.fetch_add(1, Ordering::Relaxed);
        Some((&worker.handle, Placed(worker.connections.clone())))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        let threads = match self.threads.get_mut() {
            Ok(threads) => std::mem::take(threads),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each connection goes to the runtime with the fewest, and counts there until it ends.
    #[test]
    fn connections_go_to_the_least_busy_runtime() {
        let workers = Workers::start(2).unwrap();
        let (first, a) = workers.place().unwrap();
        let (second, b) = workers.place().unwrap();
        assert_ne!(first.id(), second.id());
        drop(a);
        let (third, _c) = workers.place().unwrap();
        assert_eq!(third.id(), first.id());
        drop(b);
        let ran = std::sync::mpsc::channel();
        let sender = ran.0;
        third.spawn(async move { sender.send(std::thread::current().name().map(str::to_owned)) });
        let name = ran.1.recv().unwrap().unwrap();
        assert!(name.starts_with("sockit-worker-"), "{name}");
    }
}
