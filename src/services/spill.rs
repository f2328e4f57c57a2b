//! Output gathered whole before it is sent (the classic remote shell must announce its size
//! first): kept in memory up to a threshold, and beyond it in an anonymous temporary file, so a
//! client that never reads holds disk space, not the server's memory.

use std::io::{self, SeekFrom};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Bytes in memory up to `in_memory`, the rest in a temporary file that has no name (it is
/// gone when this is dropped, whatever happens to the server).
#[derive(Debug, Default)]
pub struct SpillBuffer {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    in_memory: usize,
}

impl SpillBuffer {
    /// Keeps at most `in_memory` bytes in memory.
    pub fn new(in_memory: usize) -> SpillBuffer {
        SpillBuffer {
            in_memory,
            ..SpillBuffer::default()
        }
    }

    /// All the bytes, in memory (for short texts made by the server itself).
    pub fn from_bytes(bytes: Vec<u8>) -> SpillBuffer {
        SpillBuffer {
            len: bytes.len() as u64,
            in_memory: bytes.len(),
            memory: bytes,
            file: None,
        }
    }

    /// Bytes held, in memory and on disk.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some of the bytes are in the temporary file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes held in memory.
    pub fn in_memory(&self) -> usize {
        self.memory.len()
    }

    /// Adds `bytes` at the end: to memory while they fit, then (and from then on) to the file.
    pub async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= self.in_memory {
            self.memory.extend_from_slice(bytes);
        } else {
            self.spill_file().await?.write_all(bytes).await?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    async fn spill_file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            // Opening a file is a blocking system call: not on an async worker.
            let file = tokio::task::spawn_blocking(tempfile::tempfile)
                .await
                .map_err(io::Error::other)??;
            self.file = Some(File::from_std(file));
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the spill file was just opened"))
    }

    /// Writes every byte, in order, to `out`.
    pub async fn write_to<W: AsyncWrite + Unpin + ?Sized>(self, out: &mut W) -> io::Result<()> {
        out.write_all(&self.memory).await?;
        if let Some(mut file) = self.file {
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
            tokio::io::copy(&mut file, out).await?;
        }
        Ok(())
    }

    /// The first `max` bytes, in memory.
    pub async fn first(self, max: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.memory;
        bytes.truncate(max);
        if let Some(mut file) = self.file
            && bytes.len() < max
        {
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
            let wanted = (max - bytes.len()) as u64;
            file.take(wanted).read_to_end(&mut bytes).await?;
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_past_the_threshold_go_to_a_file_and_come_back_in_order() {
        let mut buffer = SpillBuffer::new(1000);
        let chunk: Vec<u8> = (0..=255).collect();
        for _ in 0..3 {
            buffer.append(&chunk).await.unwrap();
        }
        assert!(!buffer.is_spilled(), "768 bytes fit in memory");
        for _ in 0..397 {
            buffer.append(&chunk).await.unwrap();
        }
        assert!(buffer.is_spilled());
        assert_eq!(buffer.in_memory(), 768, "memory stops growing at the threshold");
        assert_eq!(buffer.len(), 400 * 256);
        let mut out = Vec::new();
        buffer.write_to(&mut out).await.unwrap();
        assert_eq!(out, chunk.repeat(400));
    }

    #[tokio::test]
    async fn first_bytes_and_short_texts() {
        let mut buffer = SpillBuffer::new(4);
        buffer.append(b"abc").await.unwrap();
        buffer.append(b"defgh").await.unwrap();
        assert!(buffer.is_spilled());
        assert_eq!(buffer.first(5).await.unwrap(), b"abcde");
        let text = SpillBuffer::from_bytes(b"note".to_vec());
        assert_eq!((text.len(), text.is_spilled()), (4, false));
        assert_eq!(text.first(100).await.unwrap(), b"note");
        assert!(SpillBuffer::new(0).is_empty());
    }
}
