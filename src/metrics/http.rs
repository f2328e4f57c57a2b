//! The `/metrics` endpoint: just enough HTTP/1.1 for Prometheus to scrape.
//!
//! One request per connection, answered and closed. The request head is bounded in size and
//! must arrive within 2 s, scrapers served at once are capped per source address and in all,
//! and nothing a peer sends can do more than get a 4xx: idle connections cannot lock scrapers
//! out, and the endpoint cannot slow the server, which runs on other tasks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::metrics;
use crate::source::{PerSource, SourceSlot};

/// Largest request head read; anything longer is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// The request head must arrive within this: a scraper sends it at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A scrape (reading the request, writing the answer) must finish within this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections answered at once; more are closed at once. Generous, because each costs only a
/// task and a descriptor for at most [`HEAD_TIMEOUT`] unless it is a real scrape: with four per
/// source, locking scrapers out takes 256 addresses, not a handful of idle connections.
const MAX_SCRAPERS: usize = 1024;
/// Connections answered at once from one source address (IPv6: /64); more are closed at once.
const MAX_SCRAPERS_PER_SOURCE: usize = 4;

/// The bounds every scrape shares: how many connections are answered at once, in all and per
/// source. The server accepts the endpoint's connections (with its own accept loop) and hands
/// each to [`Scrapers::serve`].
pub(crate) struct Scrapers {
    slots: Arc<Semaphore>,
    per_source: PerSource,
}

impl Default for Scrapers {
    fn default() -> Scrapers {
        Scrapers {
            slots: Arc::new(Semaphore::new(MAX_SCRAPERS)),
            per_source: PerSource::new(MAX_SCRAPERS_PER_SOURCE),
        }
    }
}

impl Scrapers {
    /// The scrape of one accepted connection, to run in a task of its own; it closes the
    /// connection at once if its source, or the endpoint, already has as many as allowed.
    pub(crate) fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static {
        let admitted = self.admit(peer);
        async move {
            let Some(slots) = admitted else {
                return;
            };
            if let Err(error) = tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream)).await {
                debug!(%error, "metrics: scrape timed out");
            }
            drop(slots);
        }
    }

    /// A slot of `peer`'s source and one of the endpoint's, if both have one free.
    fn admit(&self, peer: SocketAddr) -> Option<(SourceSlot, OwnedSemaphorePermit)> {
        let Some(source_slot) = self.per_source.try_acquire(peer.ip()) else {
            debug!("metrics: too many scrapers from this address; closed");
            return None;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            debug!("metrics: too many scrapers; closed");
            return None;
        };
        Some((source_slot, slot))
    }
}

async fn answer(mut stream: TcpStream) {
    let response = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => respond(&head),
        Ok(Ok(None)) => Response::error(431, "Request Header Fields Too Large"),
        Ok(Err(_)) => return,
        Err(_) => Response::error(408, "Request Timeout"),
    };
    let _ = stream.write_all(&response.into_bytes()).await;
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// Reads (and drops) what the peer still sends, briefly, before closing: closing with unread
/// input makes the kernel reset the connection, which can destroy the answer before the peer
/// reads it (a 431 to an oversized request, say).
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Reads up to the blank line ending the request head; `None` if it is longer than allowed.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            // The peer stopped sending: answer what arrived (likely a 400).
            return Ok(Some(head));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: &'static str,
    body: String,
    /// HEAD: the headers of a GET, no body.
    head_only: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: "",
            body: format!("{status} {reason}\n"),
            head_only: false,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra_headers
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head: the metrics for `GET /metrics`, a 4xx for anything else.
fn respond(head: &[u8]) -> Response {
    let Some((method, target)) = request_line(head) else {
        return Response::error(400, "Bad Request");
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Response::error(404, "Not Found");
    }
    if method != "GET" && method != "HEAD" {
        return Response {
            extra_headers: "Allow: GET, HEAD\r\n",
            ..Response::error(405, "Method Not Allowed")
        };
    }
    Response {
        status: 200,
        reason: "OK",
        content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        extra_headers: "",
        body: metrics().render(),
        head_only: method == "HEAD",
    }
}

/// The method and target of `METHOD TARGET HTTP/1.x`, if the first line is one.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && version.starts_with("HTTP/1.");
    valid.then_some((method, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_or_head_of_metrics_is_answered_with_metrics() {
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\n\n").status, 200);
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.head_only && head.status == 200);
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(respond(b"POST /metrics HTTP/1.1\r\n\r\n").status, 405);
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(respond(bad).status, 400, "{bad:?}");
        }
    }
}
