//! Bodies stream: gigabytes pass in both directions at once over an encrypted session while
//! the process's peak memory stays flat. (Its own test binary, so the peak is this test's.)
//!
//! `SOCKIT_STREAM_GIB=10 cargo test --release --test streaming` runs the 10 GiB version.

use sha2::{Digest, Sha256};
use sockit::Secret;
use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::wire::{Connection, FrameReader, FrameWriter, Header, Limits};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;
const MEMORY_BOUND_MIB: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_bodies_stream_both_ways_in_constant_memory() {
    let gib: u64 = std::env::var("SOCKIT_STREAM_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let size = gib << 30;
    let limits = Limits::default().with_body_limit("blob", u64::MAX);
    let keys = SessionKeys::new(Secret::generate(), AuthMode::Noise);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peak_before = peak_rss_mib();

    let (server_keys, server_limits) = (keys.clone(), limits.clone());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Connection::tcp(stream, server_limits);
        auth::accept(&mut conn, &server_keys, &[]).await.unwrap();
        exchange(&mut conn, size).await
    });
    let mut conn = Connection::tcp(TcpStream::connect(addr).await.unwrap(), limits);
    auth::connect(&mut conn, &keys).await.unwrap();
    assert!(conn.is_encrypted());
    let (client_sent, client_received) = exchange(&mut conn, size).await;
    let (server_sent, server_received) = server.await.unwrap();

    assert_eq!(
        client_sent, server_received,
        "client-to-server body arrived intact"
    );
    assert_eq!(
        server_sent, client_received,
        "server-to-client body arrived intact"
    );
    let growth = peak_rss_mib().saturating_sub(peak_before);
    assert!(
        growth < MEMORY_BOUND_MIB,
        "peak memory grew {growth} MiB streaming {gib} GiB each way"
    );
}

/// Sends a `size`-byte body while receiving one; returns the hashes of both.
async fn exchange(conn: &mut Connection, size: u64) -> ([u8; 32], [u8; 32]) {
    let Connection { reader, writer } = conn;
    tokio::join!(send_blob(writer, size), receive_blob(reader, size))
}

async fn send_blob(writer: &mut FrameWriter, size: u64) -> [u8; 32] {
    writer
        .queue_header(&Header::new("blob").with_body_len(size))
        .unwrap();
    let mut chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(CHUNK as u64) as usize;
        // Number each chunk so a reordering or repeat would change the hash.
        chunk[..8].copy_from_slice(&sent.to_le_bytes());
        hash.update(&chunk[..n]);
        writer.send_body(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    writer.flush().await.unwrap();
    hash.finalize().into()
}

async fn receive_blob(reader: &mut FrameReader, size: u64) -> [u8; 32] {
    let header = match reader.read_frame().await.unwrap() {
        Some(sockit::wire::Frame::Header(header)) => header,
        other => panic!("expected a header, got {other:?}"),
    };
    assert_eq!((header.cmd(), header.body_len()), ("blob", size));
    let mut hash = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = reader.read_body_chunk().await.unwrap() {
        hash.update(&chunk);
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
    hash.finalize().into()
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}
