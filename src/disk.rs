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

/// Bytes read or hashed at a time: large enough for BLAKE3's widest SIMD (16 KiB)
/// many times over and for few system calls; no larger than the connection writer's
/// high-water mark, so a chunk sent goes out through buffers that keep their size (a 256 KiB
/// chunk grew the encrypted buffer past the size the writer keeps, to be mapped and dropped
/// again for every chunk).
const CHUNK: usize = 128 * 1024;
/// Chunks read ahead of the connection.
const QUEUED: usize = 8;

/// Reads and hashes a transfer's data on a thread of its own, a few chunks ahead of the
/// connection's thread that encrypts and sends them: the client's uploads and the server's
/// downloads. A file that ends early gives an `UnexpectedEof` error.
///
/// The buffers go round: the connection hands each back ([`DiskReader::recycle`]) once sent,
/// and the thread reads into it again, so a transfer allocates (and zero-fills) its buffers
/// once rather than a fresh mapping per chunk. At most `QUEUED + 2` buffers of [`CHUNK`]
/// bytes exist per transfer (the queue, the one being read, the one being sent): 1.25 MiB.
pub(crate) struct DiskReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    done: tokio::task::JoinHandle<blake3::Hasher>,
}

impl DiskReader {
    /// Reads `len` bytes of `file` from its current offset, each fed to `hasher`.
    pub(crate) fn spawn(mut file: std::fs::File, mut hasher: blake3::Hasher, len: u64) -> DiskReader {
        let (sender, chunks) = mpsc::channel(QUEUED);
        let (spent, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        let done = tokio::task::spawn_blocking(move || {
            let mut remaining = len;
            while remaining > 0 {
                let want = remaining.min(CHUNK as u64) as usize;
                // A returned buffer is already CHUNK bytes long: nothing is zeroed again.
                let mut chunk = returned.try_recv().unwrap_or_default();
                chunk.resize(CHUNK, 0);
                chunk.truncate(want);
                let read = std::io::Read::read_exact(&mut file, &mut chunk).map(|()| {
                    hasher.update(&chunk);
                    chunk
                });
                let failed = read.is_err();
                if sender.blocking_send(read).is_err() || failed {
                    break;
                }
                remaining -= want as u64;
            }
            hasher
        });
        DiskReader { chunks, spent, done }
    }

    /// The next chunk; `None` once every byte has come (or after an error).
    pub(crate) async fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// Gives a chunk from [`DiskReader::next`] back, once its bytes are sent, to be read into
    /// again.
    pub(crate) fn recycle(&self, chunk: Vec<u8>) {
        let _ = self.spent.send(chunk);
    }

    /// The hash of everything read, once `next` has returned `None`.
    pub(crate) async fn finish(self) -> io::Result<blake3::Hasher> {
        self.done.await.map_err(io::Error::other)
    }
}

/// Writes and hashes a transfer's data on a thread of its own, so the disk and the hash work
/// while the connection's thread decrypts the next chunks (instead of one hop to the blocking
/// pool per chunk): the server's uploads and the client's downloads.
///
/// The decrypted pieces are handed over as they came, not copied into buffers that go round
/// as the reader's are: while a connection maps a fresh read buffer per read anyway, the copy
/// cost more server time than it saved (measured on a 1 GiB upload).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Pieces of every awkward size (empty, one byte, across and beyond a chunk) arrive on
    /// disk whole and in order, hashed as one.
    #[tokio::test]
    async fn the_writer_writes_and_hashes_pieces_of_any_size_in_order() {
        let data = pattern(5 * CHUNK + 12_345);
        let sizes = [0, 1, CHUNK - 1, 2, CHUNK, CHUNK + 1, 3 * CHUNK];
        let file = tempfile::tempfile().unwrap();
        let disk = DiskWriter::spawn(file, blake3::Hasher::new());
        let (mut rest, mut turn) = (&data[..], 0);
        while !rest.is_empty() {
            let (piece, later) = rest.split_at(sizes[turn % sizes.len()].min(rest.len()));
            assert!(disk.write(Bytes::copy_from_slice(piece)).await);
            (rest, turn) = (later, turn + 1);
        }
        let (mut file, hasher) = disk.finish().await.unwrap();
        assert_eq!(hasher.finalize(), blake3::hash(&data));
        let mut written = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_end(&mut file, &mut written).unwrap();
        assert!(written == data, "{} bytes written, differently", written.len());
    }

    /// Chunks handed back are read into again, and what comes out is still the file, from
    /// its offset, with a short last chunk; a file shorter than promised is an error.
    #[tokio::test]
    async fn the_reader_reads_into_recycled_buffers_exactly() {
        let data = pattern(3 * CHUNK + 777);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        std::io::Seek::seek(&mut file, io::SeekFrom::Start(5)).unwrap();
        let mut disk = DiskReader::spawn(file, blake3::Hasher::new(), data.len() as u64 - 5);
        let mut read = Vec::new();
        while let Some(chunk) = disk.next().await {
            let chunk = chunk.unwrap();
            read.extend_from_slice(&chunk);
            disk.recycle(chunk);
        }
        assert!(read[..] == data[5..], "{} bytes read, differently", read.len());
        assert_eq!(disk.finish().await.unwrap().finalize(), blake3::hash(&data[5..]));

        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data[..CHUNK + 1]).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let mut disk = DiskReader::spawn(file, blake3::Hasher::new(), data.len() as u64);
        let first = disk.next().await.unwrap().unwrap();
        disk.recycle(first);
        let error = disk.next().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
