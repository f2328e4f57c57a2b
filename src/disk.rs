//! The disk side of a transfer, the same for the client and the server: reading a file ahead
//! of the connection while hashing it, writing and hashing what arrives, hashing the part a
//! resumed transfer already has, and setting the metadata `-p` carries.
//!
//! It lives beside the protocol rather than in either side because both need the very same
//! pipes (an upload is read by the client as a download is by the server), and the client never
//! imports the services. It is not part of [`crate::proto`]: it does I/O.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io;

use bytes::Bytes;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use crate::proto::files::PRESERVED_MODE_BITS;

/// Bytes read or hashed at a time.
const CHUNK: usize = 256 * 1024;

/// Reads and hashes a transfer's data on a thread of its own, a few chunks ahead of the
/// connection's thread that encrypts and sends them: the client's uploads and the server's
/// downloads. A file that ends early gives an `UnexpectedEof` error.
pub(crate) struct DiskReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    done: tokio::task::JoinHandle<blake3::Hasher>,
}

impl DiskReader {
    /// Reads `len` bytes of `file` from its current offset, each fed to `hasher`.
    pub(crate) fn spawn(mut file: std::fs::File, mut hasher: blake3::Hasher, len: u64) -> DiskReader {
        let (sender, chunks) = mpsc::channel(8);
        let done = tokio::task::spawn_blocking(move || {
            let mut remaining = len;
            while remaining > 0 {
                let chunk_len = remaining.min(CHUNK as u64);
                let mut chunk = vec![0u8; chunk_len as usize];
                let read = std::io::Read::read_exact(&mut file, &mut chunk).map(|()| {
                    hasher.update(&chunk);
                    chunk
                });
                let failed = read.is_err();
                if sender.blocking_send(read).is_err() || failed {
                    break;
                }
                remaining -= chunk_len;
            }
            hasher
        });
        DiskReader { chunks, done }
    }

    /// The next chunk; `None` once every byte has come (or after an error).
    pub(crate) async fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// The hash of everything read, once `next` has returned `None`.
    pub(crate) async fn finish(self) -> io::Result<blake3::Hasher> {
        self.done.await.map_err(io::Error::other)
    }
}

/// Writes and hashes a transfer's data on a thread of its own, so the disk and the hash work
/// while the connection's thread decrypts the next chunks (instead of one hop to the blocking
/// pool per chunk): the server's uploads and the client's downloads.
pub(crate) struct DiskWriter {
    chunks: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<std::io::Result<(std::fs::File, blake3::Hasher)>>,
}

impl DiskWriter {
    pub(crate) fn spawn(mut file: std::fs::File, mut hasher: blake3::Hasher) -> DiskWriter {
        let (chunks, mut queue) = mpsc::channel::<Bytes>(16);
        let done = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = queue.blocking_recv() {
                std::io::Write::write_all(&mut file, &chunk)?;
                hasher.update(&chunk);
            }
            Ok((file, hasher))
        });
        DiskWriter { chunks, done }
    }

    /// Queues a chunk; `false` if the writer has stopped (its error comes from `finish`).
    pub(crate) async fn write(&self, chunk: Bytes) -> bool {
        self.chunks.send(chunk).await.is_ok()
    }

    pub(crate) async fn finish(self) -> std::io::Result<(std::fs::File, blake3::Hasher)> {
        drop(self.chunks);
        self.done.await.map_err(std::io::Error::other)?
    }
}

/// Feeds the first `len` bytes of `file` to `hasher`.
pub(crate) async fn hash_prefix(file: &mut File, len: u64, hasher: &mut blake3::Hasher) -> io::Result<()> {
    file.seek(io::SeekFrom::Start(0)).await?;
    let mut remaining = len;
    let mut buf = vec![0u8; CHUNK];
    while remaining > 0 {
        let want = remaining.min(CHUNK as u64) as usize;
        let window = buf.get_mut(..want).unwrap_or_default();
        let n = file.read(window).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        hasher.update(window.get(..n).unwrap_or_default());
        remaining -= n as u64;
    }
    Ok(())
}

/// Sets mode (permissions only, see [`PRESERVED_MODE_BITS`]) and modification time (for `-p`).
pub(crate) fn apply_metadata(file: &std::fs::File, mode: Option<u32>, mtime: Option<i64>) -> io::Result<()> {
    if let Some(mode) = mode {
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode & PRESERVED_MODE_BITS))?;
    }
    if let Some(mtime) = mtime {
        let time = rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        };
        rustix::fs::futimens(file, &times)?;
    }
    Ok(())
}
