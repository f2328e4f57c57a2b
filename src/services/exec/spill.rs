//! Output gathered whole before it is sent (the classic remote shell must announce its size
//! first): kept in memory up to a threshold, and beyond it in an anonymous temporary file, so a
//! client that never reads holds disk space, not the server's memory; and the disk space all
//! the files of a server hold together is bounded by a [`SpillBudget`].

use std::io::{self, SeekFrom};
use std::sync::Arc;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes in temporary files a server holds at most, all buffers together, by default.
pub(crate) const DEFAULT_SPILL_BUDGET: usize = 256 * 1024 * 1024;

/// The bytes all the spill files of a server may hold together.
#[derive(Clone, Debug)]
pub(crate) struct SpillBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl SpillBudget {
    pub(crate) fn new(total: usize) -> SpillBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        SpillBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Room for `len` more bytes, or an error saying the budget is spent.
    fn take(&self, len: usize) -> io::Result<OwnedSemaphorePermit> {
        let spent = || {
            io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} MiB of output already wait for their clients, the server's limit",
                    self.total / (1024 * 1024)
                ),
            )
        };
        let len = u32::try_from(len).map_err(|_| spent())?;
        self.bytes
            .clone()
            .try_acquire_many_owned(len)
            .map_err(|_| spent())
    }
}

impl Default for SpillBudget {
    fn default() -> SpillBudget {
        SpillBudget::new(DEFAULT_SPILL_BUDGET)
    }
}

/// Bytes in memory up to `in_memory`, the rest in a temporary file that has no name (it is
/// gone when this is dropped, whatever happens to the server), within a [`SpillBudget`].
#[derive(Debug, Default)]
pub(crate) struct SpillBuffer {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    in_memory: usize,
    budget: Option<SpillBudget>,
    /// The budget this buffer's file holds, given back when it is dropped.
    spilled: Option<OwnedSemaphorePermit>,
}

impl SpillBuffer {
    /// Keeps at most `in_memory` bytes in memory, and the rest in a file within `budget`.
    pub(crate) fn new(in_memory: usize, budget: SpillBudget) -> SpillBuffer {
        SpillBuffer {
            in_memory,
            budget: Some(budget),
            ..SpillBuffer::default()
        }
    }

    /// All the bytes, in memory (for short texts made by the server itself).
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> SpillBuffer {
        SpillBuffer {
            len: bytes.len() as u64,
            in_memory: bytes.len(),
            memory: bytes,
            ..SpillBuffer::default()
        }
    }

    /// Bytes held, in memory and on disk.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some of the bytes are in the temporary file.
    #[cfg(test)]
    pub(crate) fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes held in memory.
    #[cfg(test)]
    pub(crate) fn in_memory(&self) -> usize {
        self.memory.len()
    }

    /// Adds `bytes` at the end: to memory while they fit, then (and from then on) to the file.
    pub(crate) async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= self.in_memory {
            self.memory.extend_from_slice(bytes);
        } else {
            self.reserve(bytes.len())?;
            self.spill_file().await?.write_all(bytes).await?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Takes `len` bytes of the budget (a buffer without one may not spill at all).
    fn reserve(&mut self, len: usize) -> io::Result<()> {
        let Some(budget) = &self.budget else {
            return Err(io::Error::other("this output may not spill to a file"));
        };
        let permit = budget.take(len)?;
        match &mut self.spilled {
            Some(spilled) => spilled.merge(permit),
            None => self.spilled = Some(permit),
        }
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
    pub(crate) async fn write_to<W: AsyncWrite + Unpin + ?Sized>(self, out: &mut W) -> io::Result<()> {
        out.write_all(&self.memory).await?;
        if let Some(mut file) = self.file {
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
            tokio::io::copy(&mut file, out).await?;
        }
        Ok(())
    }

    /// The first `max` bytes, in memory.
    pub(crate) async fn first(self, max: usize) -> io::Result<Vec<u8>> {
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
        let mut buffer = SpillBuffer::new(1000, SpillBudget::default());
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
        let mut buffer = SpillBuffer::new(4, SpillBudget::default());
        buffer.append(b"abc").await.unwrap();
        buffer.append(b"defgh").await.unwrap();
        assert!(buffer.is_spilled());
        assert_eq!(buffer.first(5).await.unwrap(), b"abcde");
        let text = SpillBuffer::from_bytes(b"note".to_vec());
        assert_eq!((text.len(), text.is_spilled()), (4, false));
        assert_eq!(text.first(100).await.unwrap(), b"note");
        assert!(SpillBuffer::new(0, SpillBudget::default()).is_empty());
        let mut fixed = SpillBuffer::from_bytes(b"note".to_vec());
        assert!(fixed.append(b"more").await.is_err(), "no budget, no file");
    }

    #[tokio::test]
    async fn all_the_files_together_stay_within_the_budget() {
        let budget = SpillBudget::new(1000);
        let mut first = SpillBuffer::new(10, budget.clone());
        first.append(&[1; 10]).await.unwrap();
        first.append(&[2; 600]).await.unwrap();
        let mut second = SpillBuffer::new(10, budget.clone());
        second.append(&[3; 10]).await.unwrap();
        second.append(&[4; 300]).await.unwrap();
        let error = second.append(&[5; 200]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(second.len(), 310, "what did not fit was not kept");
        drop(first);
        second.append(&[5; 200]).await.unwrap();
        let mut out = Vec::new();
        second.write_to(&mut out).await.unwrap();
        assert_eq!(out, [vec![3; 10], vec![4; 300], vec![5; 200]].concat());
    }
}
