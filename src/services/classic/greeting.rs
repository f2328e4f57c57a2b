//! The course's threaded greeting server (9998).
//!
//! The course's program (`tcplink`) sends `Welcome!` on connect, then answers each message
//! `NAME` with `Hello, NAME!` until the client sends `exit` or closes; one thread per client.
//! It sleeps a second before every answer, decodes NAME as UTF-8 (a thread dies on anything
//! else), and waits forever on a silent client. Here: a task per client and no sleep; NAME's
//! bytes are sent back as they came, whatever they are; a line ending after NAME (`nc`, telnet)
//! is kept after the `!` rather than inside the greeting, so `exit` typed in a terminal ends
//! the conversation too; a silent client is closed after the idle timeout.

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::READ_CHUNK;
use crate::services::unframed::{ServiceStream, StreamService};

pub(crate) const WELCOME: &[u8] = b"Welcome!";

pub(crate) struct Greeting;

#[async_trait]
impl StreamService for Greeting {
    async fn serve(&self, mut stream: ServiceStream, _peer: SocketAddr) -> std::io::Result<()> {
        converse(&mut stream).await
    }
}

async fn converse(stream: &mut ServiceStream) -> std::io::Result<()> {
    stream.write_all(WELCOME).await?;
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buffer.clear();
        stream.read_request(&mut buffer).await?;
        let Some(reply) = greet(&buffer) else {
            return stream.shutdown().await;
        };
        stream.write_all(&reply).await?;
    }
}

/// The answer to one message: `Hello, NAME!`, or `None` to end (`exit`, or the client closed).
pub(crate) fn greet(message: &[u8]) -> Option<Vec<u8>> {
    let (name, ending) = split_line_ending(message);
    if message.is_empty() || name == b"exit" {
        return None;
    }
    Some([b"Hello, ", name, b"!", ending].concat())
}

/// `alice\r\n` → (`alice`, `\r\n`).
fn split_line_ending(message: &[u8]) -> (&[u8], &[u8]) {
    let body = message
        .strip_suffix(b"\r\n")
        .or_else(|| message.strip_suffix(b"\n"))
        .unwrap_or(message);
    message.split_at(body.len())
}

#[cfg(test)]
mod tests {
    use super::greet;

    #[test]
    fn greets_until_exit_keeping_bytes_and_line_endings() {
        assert_eq!(greet(b"alice").unwrap(), b"Hello, alice!");
        assert_eq!(greet(b"bob\r\n").unwrap(), b"Hello, bob!\r\n");
        assert_eq!(greet("李雷\n".as_bytes()).unwrap(), "Hello, 李雷!\n".as_bytes());
        assert_eq!(greet(b"\xff\xfe").unwrap(), b"Hello, \xff\xfe!");
        assert_eq!(greet(b"exit"), None);
        assert_eq!(greet(b"exit\n"), None);
        assert_eq!(greet(b""), None);
        assert_eq!(greet(b"exits").unwrap(), b"Hello, exits!");
    }
}
