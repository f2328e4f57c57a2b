//! Adversaries straight at the server (no proxy): slowloris connections trickling a handshake
//! one byte at a time, a flood of connections opened and closed, and wrong-secret attempts while
//! a correct client logs in; with probes measuring what a normal client sees. Slowloris and the
//! guesser connect from loopback addresses of their own, as real attackers come from theirs: the
//! server's per-source limits (handshake slots, failure back-off) must stop them without
//! touching the probes on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngExt;
use sockit::auth::{self, AuthMode, HandshakeError, SessionKeys};
use sockit::wire::{Connection, ErrorCode, Limits};
use sockit::{Client, ClientConfig, ClientError, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::dial::{Reading, dial_from, wrong_secret};
use super::tally::Tally;
use crate::cli::bench::measure::new_histogram;

/// Where the wrong secrets come from: not 127.0.0.1, where the normal clients are.
const WRONG_SECRETS_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where slowloris connects from.
const SLOWLORIS_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Pause between two trickled bytes.
const TRICKLE_EVERY: Duration = Duration::from_millis(300);

/// The first bytes a real client sends: its hello frame, captured off an in-memory pipe.
async fn client_hello() -> Vec<u8> {
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let keys = SessionKeys::new(Secret::generate(), AuthMode::Noise);
    let talker = tokio::spawn(async move {
        let mut conn = Connection::from_io(ours, Limits::default());
        let _ = auth::connect(&mut conn, &keys).await;
    });
    let mut hello = vec![0; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), theirs.read(&mut hello))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    talker.abort();
    hello.truncate(n);
    hello
}

/// Keeps `count` connections open, each sending the hello one byte per [`TRICKLE_EVERY`] and
/// never its last byte; when the server reaps one, it is opened again.
pub async fn slowloris(server: SocketAddr, count: usize, until: Instant, tally: Arc<Tally>) {
    let hello = Arc::new(client_hello().await);
    let mut set = JoinSet::new();
    for n in 0..count {
        let (hello, tally) = (hello.clone(), tally.clone());
        set.spawn(async move {
            // Spread the opening over a second, as a real attacker ramps up.
            tokio::time::sleep(Duration::from_millis((n % 1000) as u64)).await;
            while Instant::now() < until {
                let Ok(mut stream) = dial_from(SLOWLORIS_FROM, server, Reading::Normally).await else {
                    tally.add("slowloris: connect failed", 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                tally.add("slowloris: connections opened", 1);
                for byte in hello.iter().take(hello.len().saturating_sub(1)) {
                    if Instant::now() >= until || stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tally.add("slowloris: bytes trickled", 1);
                    tokio::time::sleep(TRICKLE_EVERY).await;
                }
                // The whole hello but one byte is out: wait for the server to give up on us.
                let mut sink = [0; 256];
                let left = until.saturating_duration_since(Instant::now());
                if let Ok(Ok(_)) = tokio::time::timeout(left, stream.read(&mut sink)).await {
                    tally.add("slowloris: reaped by the server", 1);
                }
                // Refused at once (its address is at its handshake cap): do not spin.
                tokio::time::sleep(TRICKLE_EVERY).await;
            }
        });
    }
    set.join_all().await;
}

/// Opens and closes connections in tight loops; every fourth runs a whole handshake first.
pub async fn flood(server: String, config: ClientConfig, until: Instant, tally: Arc<Tally>) {
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let (server, config, tally) = (server.clone(), config.clone(), tally.clone());
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                if n % 4 == 0 {
                    match Client::connect(&server, &config).await {
                        Ok(client) => drop(client),
                        Err(_) => tally.add("flood: handshakes failed", 1),
                    }
                } else if TcpStream::connect(&server).await.is_err() {
                    tally.add("flood: connects failed", 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tally.add("flood: connections opened and closed", 1);
            }
        });
    }
    set.join_all().await;
}

/// Echo round trips on one established session, one every 10 ms, until `until`.
pub async fn echo_probe(
    server: String,
    config: ClientConfig,
    until: Instant,
    tally: Arc<Tally>,
) -> Histogram<u64> {
    let mut latencies = new_histogram();
    let mut client = match Client::connect(&server, &config).await {
        Ok(client) => client,
        Err(error) => {
            tally.fail(&format!("echo probe: cannot connect: {error}"));
            return latencies;
        }
    };
    while Instant::now() < until {
        let begin = Instant::now();
        match client.echo("probe").await {
            Ok(reply) if reply == "PROBE" => {
                let _ = latencies.record(begin.elapsed().as_nanos() as u64);
            }
            Ok(other) => tally.fail(&format!("echo probe: answered {other:?}")),
            Err(error) => {
                tally.fail(&format!("echo probe: {error}"));
                return latencies;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

/// What came of the wrong-secret attempts.
pub struct AuthAbuse {
    pub attempts: u64,
    pub elapsed: Duration,
    /// Wrong secrets the server checked (answered `auth_failed`): the guesses that counted.
    pub checked: u64,
    /// Attempts refused at once, unchecked: the address was under back-off or at its cap.
    pub refused: u64,
    /// Attempts that got no answer in time.
    pub held_back: u64,
    /// Fresh sessions (handshake + echo) a correct client on another address opened meanwhile.
    pub correct: Histogram<u64>,
}

/// `attempts` wrong-secret handshakes from [`WRONG_SECRETS_FROM`], `parallel` at a time, each
/// waiting `patience` for the refusal; meanwhile a correct client from 127.0.0.1 opens a fresh
/// session every 100 ms and echoes once. The attacker has an address of its own: a server may
/// refuse an address that keeps failing at once, by design, but not its neighbours.
pub async fn wrong_secrets(
    server: SocketAddr,
    config: ClientConfig,
    attempts: u64,
    parallel: u64,
    patience: Duration,
    tally: Arc<Tally>,
) -> AuthAbuse {
    let begin = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = on_own_thread(correct_client(
        server.to_string(),
        config,
        done.clone(),
        tally.clone(),
    ));
    let mut set = JoinSet::new();
    for lane in 0..parallel {
        let share = attempts / parallel + u64::from(lane < attempts % parallel);
        set.spawn(async move {
            let mut counts = [0u64; 3];
            for _ in 0..share {
                match wrong_secret(WRONG_SECRETS_FROM, server, patience).await {
                    Err(ClientError::Handshake(HandshakeError::AuthFailed(_))) => counts[0] += 1,
                    Err(ClientError::Handshake(HandshakeError::Refused(error)))
                        if matches!(error.code, ErrorCode::AuthThrottled | ErrorCode::Busy) =>
                    {
                        counts[1] += 1
                    }
                    Err(ClientError::Timeout(_)) => counts[2] += 1,
                    // Anything else (reset, closed) is none of these; the report shows the gap.
                    _ => {}
                }
            }
            counts
        });
    }
    let mut totals = [0u64; 3];
    for counts in set.join_all().await {
        totals.iter_mut().zip(counts).for_each(|(total, n)| *total += n);
    }
    let [checked, refused, held_back] = totals;
    let elapsed = begin.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    let correct = probe.await.unwrap_or_else(|_| new_histogram());
    AuthAbuse {
        attempts,
        elapsed,
        checked,
        refused,
        held_back,
        correct,
    }
}

/// Fresh sessions (connect, handshake, echo) from 127.0.0.1, 50–150 ms apart, until `done`.
pub async fn correct_client(
    server: String,
    config: ClientConfig,
    done: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
) -> Histogram<u64> {
    let mut latencies = new_histogram();
    while !done.load(std::sync::atomic::Ordering::Acquire) {
        let begin = Instant::now();
        let outcome = async {
            let mut client = Client::connect(&server, &config).await?;
            client.echo("still welcome").await
        };
        match outcome.await {
            Ok(reply) if reply == "STILL WELCOME" => {
                let _ = latencies.record(begin.elapsed().as_nanos() as u64);
            }
            Ok(other) => tally.fail(&format!("fresh session from 127.0.0.1: echo {other:?}")),
            Err(error) => tally.fail(&format!("fresh session from 127.0.0.1: {error}")),
        }
        let pause = rand::rng().random_range(50..150);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    latencies
}

/// Runs a normal client's probe on a thread and runtime of its own, as a separate `sockit echo`
/// process would be: its latencies then measure the server's answer, not how long the probe
/// waited behind the soak's own thousands of generator tasks on the shared runtime.
pub fn on_own_thread(
    probe: impl std::future::Future<Output = Histogram<u64>> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<Histogram<u64>> {
    let (report, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            let _ = report.send(runtime.block_on(probe));
        }
    });
    answer
}
