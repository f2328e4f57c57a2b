//! The fault proxy: a loopback TCP relay in front of the server that, chosen at random per
//! connection, passes bytes through cleanly, delays every chunk, re-fragments chunks into
//! 1-byte writes, stalls once for a while, or cuts the connection after a random byte count
//! (almost always mid-frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::tally::Tally;

/// What the proxy does to one connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Clean,
    /// Each chunk waits this long before it is passed on.
    Delay(Duration),
    /// Small chunks go out one byte per write, larger ones in 512-byte pieces.
    Fragment,
    /// After this many bytes (both directions together), nothing moves for the duration.
    Stall(i64, Duration),
    /// After this many bytes (both directions together), both sides are closed.
    Cut(i64),
}

impl Fault {
    fn pick() -> Fault {
        let mut rng = rand::rng();
        match rng.random_range(0..100) {
            0..45 => Fault::Clean,
            45..60 => Fault::Delay(Duration::from_millis(rng.random_range(1..20))),
            60..72 => Fault::Fragment,
            72..85 => Fault::Stall(
                rng.random_range(0..256 * 1024),
                Duration::from_millis(rng.random_range(200..2000)),
            ),
            _ => Fault::Cut(rng.random_range(1..4 * 1024 * 1024)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Clean => "clean",
            Fault::Delay(_) => "delay",
            Fault::Fragment => "fragment",
            Fault::Stall(..) => "stall",
            Fault::Cut(_) => "cut",
        }
    }
}

/// Starts the proxy in front of `server`; returns the address clients should dial.
pub async fn start(server: SocketAddr, tally: Arc<Tally>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let tally = tally.clone();
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(server).await else {
                    tally.add("proxy: upstream connect failed", 1);
                    return;
                };
                relay(client, upstream, Fault::pick(), &tally).await;
            });
        }
    });
    Ok(addr)
}

/// Relays both directions until both have ended, or the fault cuts them.
async fn relay(client: TcpStream, upstream: TcpStream, fault: Fault, tally: &Tally) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tally.add(&format!("proxy connections: {}", fault.name()), 1);
    let budget = Arc::new(AtomicI64::new(match fault {
        Fault::Stall(at, _) | Fault::Cut(at) => at,
        _ => i64::MAX,
    }));
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(client_read, upstream_write, fault, &budget, tally);
    let down = pump(upstream_read, client_write, fault, &budget, tally);
    // A cut ends both directions at once: dropping the halves closes the sockets mid-frame.
    if tokio::try_join!(up, down).is_err() {
        tally.add("faults: cut mid-stream", 1);
    }
}

/// The fault fired: the connection is to be cut.
struct Cut;

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    fault: Fault,
    budget: &AtomicI64,
    tally: &Tally,
) -> Result<(), Cut> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
        };
        let left = budget.fetch_sub(n as i64, Ordering::AcqRel);
        let mut chunk = &buffer[..n];
        let crossed = left > 0 && left <= n as i64;
        match fault {
            Fault::Cut(_) if left <= n as i64 => {
                if left > 0 {
                    let _ = to.write_all(&chunk[..left as usize]).await;
                }
                return Err(Cut);
            }
            Fault::Stall(_, pause) if crossed => {
                tally.add("faults: stall", 1);
                tokio::time::sleep(pause).await;
            }
            Fault::Delay(pause) => {
                tally.add("faults: delayed chunk", 1);
                tokio::time::sleep(pause).await;
            }
            Fault::Fragment => {
                let piece = if n <= 2048 { 1 } else { 512 };
                tally.add("faults: re-fragmented chunk", 1);
                while !chunk.is_empty() {
                    let (now, rest) = chunk.split_at(piece.min(chunk.len()));
                    if to.write_all(now).await.is_err() {
                        return Ok(());
                    }
                    chunk = rest;
                }
                continue;
            }
            _ => {}
        }
        if to.write_all(chunk).await.is_err() {
            return Ok(());
        }
    }
}
