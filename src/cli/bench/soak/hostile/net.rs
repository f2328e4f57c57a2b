//! Attacks on the unframed endpoints: the UDP time and echo services as reflectors and as a
//! loop (L6), and the metrics endpoint held by idle connections (L8).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::super::dial::Reading;
use super::attacker::{Attacker, Held};

/// How long a UDP request or a scrape waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// Idle connections held open against the metrics endpoint (it serves 32 at once today).
const METRICS_IDLERS: usize = 64;
const SCRAPES: usize = 10;

/// L6: what the UDP services send back for what: literal text to the time service, the
/// most expanding strftime conversion, and text that grows when upper-cased to the echo;
/// then, with the privilege to forge a source address, one datagram that would set the
/// time service and the echo answering each other.
pub async fn udp(me: Attacker) -> Held {
    let (time, echo) = (me.arena.time_udp, me.arena.udp_echo);
    let literal = b"hostile literal text";
    if let Some(reply) = ask_udp(&me, time, literal).await {
        me.count(if reply == literal {
            "time: literal text came back unchanged"
        } else {
            "time: literal text changed or refused"
        });
    }
    ratio(&me, "time", time, "%c".repeat(100).as_bytes()).await;
    if let Some(echo) = echo {
        ratio(&me, "udp echo", echo, "\u{390}".repeat(500).as_bytes()).await;
        return ping_pong(&me, time, echo).await;
    }
    None
}

/// Sends `request` from this attack's address and returns the answer, if any came.
async fn ask_udp(me: &Attacker, to: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    me.count("attempts: datagrams");
    let socket = UdpSocket::bind(SocketAddr::new(me.source(0).into(), 0))
        .await
        .ok()?;
    socket.send_to(request, to).await.ok()?;
    let mut answer = vec![0; 65_536];
    match timeout(ANSWER_WITHIN, socket.recv(&mut answer)).await {
        Ok(Ok(n)) => {
            answer.truncate(n);
            Some(answer)
        }
        _ => {
            me.count("datagrams unanswered");
            None
        }
    }
}

/// Records how many times its request's size the answer to `request` was (x100).
async fn ratio(me: &Attacker, service: &str, to: SocketAddr, request: &[u8]) {
    if let Some(answer) = ask_udp(me, to, request).await {
        let times_100 = answer.len() as u64 * 100 / request.len().max(1) as u64;
        me.add(&format!("{service}: reply/request size x100"), times_100);
    }
}

/// Forges one datagram from the echo's port to the time service's and counts the echo's
/// answers in the next 2 s (only this attack uses the echo): more than none means the two
/// services answered each other. Held if they did not.
async fn ping_pong(me: &Attacker, time: SocketAddr, echo: SocketAddr) -> Held {
    let (SocketAddr::V4(time), SocketAddr::V4(echo)) = (time, echo) else {
        return None;
    };
    let metrics = me.arena.metrics?;
    let before = echo_datagrams(metrics).await;
    if let Err(error) = send_forged(echo, time, b"ping").await {
        me.count(&format!("ping-pong: not attempted ({})", error.kind()));
        return None;
    }
    me.count("ping-pong: forged datagrams sent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (Some(before), Some(after)) = (before, echo_datagrams(metrics).await) else {
        me.count("ping-pong: metrics unreadable");
        return None;
    };
    let looped = after.saturating_sub(before);
    me.add("ping-pong: echo datagrams the forged one set off", looped);
    Some(looped == 0)
}

/// Sends `payload` to `to` in a UDP datagram whose source is `from`: a raw socket, so it
/// needs CAP_NET_RAW (the kernel fills in the IP checksum; UDP's is optional over IPv4).
async fn send_forged(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> std::io::Result<()> {
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&(28 + payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    tokio::task::spawn_blocking(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        raw.send_to(&packet, &SocketAddr::V4(to).into()).map(drop)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The classic UDP echo's datagram count, from the metrics endpoint.
async fn echo_datagrams(metrics: SocketAddr) -> Option<u64> {
    metric_sum(metrics, "sockit_datagrams_total{", "udp-echo").await
}

/// The sum of the samples of the metrics endpoint whose series start with `series` and hold
/// `holding`: what the server itself counted.
pub(super) async fn metric_sum(metrics: SocketAddr, series: &str, holding: &str) -> Option<u64> {
    let text = scrape(metrics).await.ok()?;
    let counts = text
        .lines()
        .filter(|line| line.starts_with(series) && line.contains(holding))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok());
    Some(counts.sum::<f64>() as u64)
}

/// One GET of /metrics from 127.0.0.1, as a monitoring system would, within 3 s.
async fn scrape(metrics: SocketAddr) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(metrics).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text)
    };
    timeout(ANSWER_WITHIN, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// L8: idle connections to the metrics endpoint that never send a request, while a normal
/// scraper asks every 500 ms. Held if every scrape was answered.
pub async fn metrics_idle(me: Attacker) -> Held {
    let metrics = me.arena.metrics?;
    let mut idlers = Vec::new();
    for lane in 0..METRICS_IDLERS {
        me.count("attempts: idle connections");
        match me.dial(lane, metrics, Reading::Normally).await {
            Ok(stream) => idlers.push(stream),
            Err(_) => me.count("idle connection refused"),
        }
    }
    let mut all_answered = true;
    for _ in 0..SCRAPES {
        let answered = scrape(metrics).await.is_ok_and(|text| text.contains("sockit_"));
        me.count(if answered {
            "scrapes answered"
        } else {
            "scrapes not answered within 3 s"
        });
        all_answered &= answered;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(idlers);
    Some(all_answered)
}
