//! Serving datagrams: one receive loop per UDP socket, a service that answers each datagram,
//! and a per-source rate limit.
//!
//! UDP has no handshake, so a datagram's source address can be forged. A service that answers
//! anything could then be aimed at a third party (reflection), or at another such service to
//! make the two answer each other forever. Four defences: every reply datagram costs its
//! destination a token from a per-source bucket (`RateLimit`); datagrams from ports below
//! 1024, where servers rather than clients live, are ignored unless a service opts in;
//! datagrams from one of this server's own UDP service ports on a local address are never
//! answered (`OwnPorts`), so no two of its services can be set talking to each other; and
//! services answer with no more than the request needs (see each service).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, error_span, warn};

use super::accept::Shutdown;
use crate::metrics::{Datagram, metrics};
use crate::services::unframed::DatagramService;
use crate::source::source_key;

/// Replies per second each source may receive, once its burst is spent.
pub const REPLIES_PER_SECOND: f64 = 20.0;
/// Replies a quiet source may receive at once.
pub(crate) const REPLY_BURST: f64 = 40.0;
/// Sources tracked at once; see [`RateLimit`] for what happens beyond.
pub(crate) const MAX_TRACKED_SOURCES: usize = 8192;

/// Largest datagram read whole; anything longer is truncated by the kernel.
const RECEIVE_BUFFER: usize = 65_536;

/// Long answers in progress at once per service; datagrams beyond are dropped.
pub(crate) const MAX_LONG_ANSWERS: usize = 256;

/// The ports this server's UDP services are bound to. A datagram from one of them, on an
/// address of this machine, is a reply of (or forged to look like one of) our own services:
/// answering it could start two of them answering each other forever.
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnPorts(Arc<HashSet<u16>>);

impl OwnPorts {
    pub(crate) fn new(ports: impl IntoIterator<Item = u16>) -> OwnPorts {
        OwnPorts(Arc::new(ports.into_iter().collect()))
    }

    /// Whether `from` is one of this server's UDP services.
    pub(crate) fn sent(&self, from: SocketAddr) -> bool {
        self.0.contains(&from.port()) && is_local(from.ip())
    }
}

/// Whether `ip` is an address of this machine: loopback, or one a socket can be bound to
/// (the kernel knows its own addresses; this needs no list of interfaces). Only asked for
/// datagrams from one of our own ports, so the bind is rare.
fn is_local(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Per-source token buckets: [`REPLIES_PER_SECOND`] with bursts of [`REPLY_BURST`] by default.
///
/// IPv4 sources are counted per address, IPv6 sources per /64 (one host usually owns a whole
/// /64, so counting its addresses apart would hand it billions of buckets). The table holds at
/// most `max_sources` entries, so forged sources cannot exhaust memory: when it is full, the
/// entries whose buckets have refilled (as good as new) are swept away, at most once per
/// refill period; if none have, new sources are not answered until some do. Excess datagrams
/// are dropped silently: dropping is what stops reflection.
pub(crate) struct RateLimit {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    next_sweep: Instant,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit::new(REPLIES_PER_SECOND, REPLY_BURST, MAX_TRACKED_SOURCES)
    }
}

impl RateLimit {
    pub(crate) fn new(per_second: f64, burst: f64, max_sources: usize) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            max_sources,
            buckets: HashMap::new(),
            next_sweep: Instant::now(),
        }
    }

    /// Takes a token for one reply to `ip`; false if it has none left.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            bucket.refill(now, self.per_second, self.burst);
            return bucket.take();
        }
        if self.buckets.len() >= self.max_sources && !self.sweep(now) {
            return false;
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: self.burst - 1.0,
                updated: now,
            },
        );
        true
    }

    /// Sources currently tracked (the tests' view of the sweep).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets sources whose buckets are full again; true if that made room.
    fn sweep(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, per_second, burst);
            bucket.tokens < burst
        });
        self.next_sweep = now + Duration::from_secs_f64(1.0 / per_second);
        self.buckets.len() < self.max_sources
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.updated = now;
    }

    fn take(&mut self) -> bool {
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Answers datagrams on `socket` until shutdown begins. Errors are logged and the loop goes
/// on; nothing a peer sends can end it. Long answers run on the shutdown's task tracker, so
/// shutdown waits for them (and ends them at its deadline), each in a span naming its peer.
pub(super) async fn serve_datagrams(
    name: &'static str,
    socket: UdpSocket,
    service: Arc<dyn DatagramService>,
    limit: RateLimit,
    own_ports: OwnPorts,
    shutdown: Shutdown,
) {
    let replier = Arc::new(Replier {
        name,
        socket,
        service,
        limit: Mutex::new(limit),
    });
    let long_answers = Arc::new(Semaphore::new(MAX_LONG_ANSWERS));
    let mut buffer = vec![0; RECEIVE_BUFFER];
    loop {
        let received = tokio::select! {
            received = replier.socket.recv_from(&mut buffer) => received,
            () = shutdown.stopping.cancelled() => return,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(error) => {
                receive_failed(&error).await;
                continue;
            }
        };
        #[allow(
            clippy::indexing_slicing,
            reason = "recv_from returns at most the buffer's length"
        )]
        let datagram = &buffer[..len];
        if from.port() == 0 || !replier.service.answers_port(from.port()) || own_ports.sent(from) {
            debug!(%from, "ignored a datagram from a server port");
            metrics().datagram(name, Datagram::Ignored);
            continue;
        }
        if !replier.allow(from) {
            debug!(%from, "rate limited");
            metrics().datagram(name, Datagram::RateLimited);
            continue;
        }
        if !replier.service.runs_long() {
            replier.answer(datagram, from).await;
            continue;
        }
        let Ok(permit) = long_answers.clone().try_acquire_owned() else {
            warn!(%from, "{MAX_LONG_ANSWERS} requests in progress; dropped one");
            continue;
        };
        let request = Bytes::copy_from_slice(datagram);
        let (replier, abort) = (replier.clone(), shutdown.abort.clone());
        let answer = async move {
            tokio::select! {
                () = replier.answer(&request, from) => {}
                () = abort.cancelled() => {}
            }
            drop(permit);
        };
        shutdown
            .tasks
            .spawn(answer.instrument(error_span!("request", peer = %from)));
    }
}

/// A datagram service with its socket and rate limit.
struct Replier {
    name: &'static str,
    socket: UdpSocket,
    service: Arc<dyn DatagramService>,
    limit: Mutex<RateLimit>,
}

impl Replier {
    fn allow(&self, from: SocketAddr) -> bool {
        let mut limit = self.limit.lock().unwrap_or_else(|e| e.into_inner());
        limit.allow(from.ip(), Instant::now())
    }

    /// Sends the service's replies to one request; each one after the first costs a token.
    async fn answer(&self, request: &[u8], from: SocketAddr) {
        let replies = self.service.answer(request, from).await;
        let counted = if replies.is_empty() {
            Datagram::Ignored
        } else {
            Datagram::Answered
        };
        metrics().datagram(self.name, counted);
        for (index, reply) in replies.iter().enumerate() {
            if index > 0 && !self.allow(from) {
                break;
            }
            if let Err(error) = self.socket.send_to(reply, from).await {
                debug!(%from, %error, "reply not sent");
            }
        }
    }
}

/// Logs a failed receive. ICMP errors reported for earlier replies are routine; anything else
/// (out of memory, say) is warned about, with a pause so that a persistent failure cannot spin.
async fn receive_failed(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            debug!(%error, "receive failed");
        }
        _ => {
            warn!(%error, "receive failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_the_refill_rate() {
        let mut limit = RateLimit::new(20.0, 40.0, 100);
        let start = Instant::now();
        let allowed = (0..100).filter(|_| limit.allow(ip("10.0.0.1"), start)).count();
        assert_eq!(allowed, 40);
        assert!(!limit.allow(ip("10.0.0.1"), start + Duration::from_millis(10)));
        let later = start + Duration::from_millis(500);
        let allowed = (0..100).filter(|_| limit.allow(ip("10.0.0.1"), later)).count();
        assert_eq!(allowed, 10);
        assert!(limit.allow(ip("10.0.0.2"), later), "other sources are unaffected");
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let mut limit = RateLimit::new(1.0, 2.0, 100);
        let now = Instant::now();
        assert!(limit.allow(ip("2001:db8::1"), now));
        assert!(limit.allow(ip("2001:db8::ffff:2"), now));
        assert!(!limit.allow(ip("2001:db8::3"), now), "same /64");
        assert!(limit.allow(ip("2001:db8:0:1::1"), now), "another /64");
        assert!(limit.allow(ip("192.0.2.1"), now));
        assert!(limit.allow(ip("::ffff:192.0.2.1"), now));
        assert!(!limit.allow(ip("192.0.2.1"), now));
    }

    #[test]
    fn datagrams_from_our_own_ports_on_this_machine_are_ours() {
        let own = OwnPorts::new([9000, 9001]);
        let from = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(own.sent(from("127.0.0.1:9001")));
        assert!(own.sent(from("127.0.0.53:9000")), "all of 127/8 is this machine");
        assert!(own.sent(from("[::1]:9000")));
        assert!(own.sent(from("[::ffff:127.0.0.1]:9000")));
        assert!(own.sent(from("0.0.0.0:9000")));
        assert!(!own.sent(from("127.0.0.1:9002")), "not one of our ports");
        assert!(
            !own.sent(from("192.0.2.1:9001")),
            "TEST-NET-1 is nobody's address"
        );
        assert!(!own.sent(from("[2001:db8::1]:9001")));
        assert!(!OwnPorts::default().sent(from("127.0.0.1:9001")));
    }

    #[test]
    fn the_table_is_bounded_and_refilled_sources_make_room() {
        let mut limit = RateLimit::new(10.0, 5.0, 50);
        let start = Instant::now();
        for n in 0..200u32 {
            limit.allow(IpAddr::from(n.to_be_bytes()), start);
        }
        assert_eq!(limit.tracked(), 50);
        assert!(!limit.allow(ip("10.9.9.9"), start), "full of active sources");
        // Half a second later every bucket has refilled (5 tokens at 10/s): room again.
        let later = start + Duration::from_millis(500);
        assert!(limit.allow(ip("10.9.9.9"), later));
        assert_eq!(limit.tracked(), 1);
    }
}
