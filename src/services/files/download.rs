//! `get`: a file streamed from the offset the client asks, then the hash of the whole file.
//!
//! The service streams from the file it opened, so a file replaced during a download still
//! arrives whole, in its old version; one that shrinks ends the connection, since the promised
//! body can no longer be completed. Downloads are bounded per source and in all
//! ([`FileStore::download_slot`](super::FileStore::download_slot)): each holds a blocking
//! thread and its read-ahead for as long as its reader takes.

use std::io;
use std::os::unix::fs::MetadataExt;

use tokio::fs::File;

use super::error::{bad_request, io_error};
use super::{Files, inside};
use crate::disk::{DiskReader, hash_prefix};
use crate::metrics::{Transfer, metrics};
use crate::proto::files::{FileMessage, Get, GetData, GetEnd};
use crate::services::{ServiceError, Session};
use crate::wire::FrameError;

impl Files {
    /// Streams a file: its header, its bytes from `offset`, then the hash of the whole file.
    pub(super) async fn get(
        &self,
        id: Option<u64>,
        get: Get,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        let path = inside(&get.path)?;
        let _slot = self.store.download_slot(session.peer.source())?;
        let opened = path.clone();
        let (std_file, meta) = self
            .on_root(move |root| {
                let file = root.open_file(&opened).map_err(|e| io_error(&opened, e))?;
                let meta = file.metadata().map_err(|e| io_error(&opened, e))?;
                Ok((file, meta))
            })
            .await?;
        let size = meta.len();
        if get.offset > size {
            return Err(bad_request(format!(
                "offset {} is past the end of {path} ({size} bytes)",
                get.offset
            ))
            .into());
        }
        let mut file = File::from_std(std_file);
        // The hash covers the whole file, so a resumed download verifies the part it already has.
        let mut hasher = blake3::Hasher::new();
        hash_prefix(&mut file, get.offset, &mut hasher)
            .await
            .map_err(|e| io_error(&path, e))?;
        let header = GetData {
            size,
            offset: get.offset,
            mtime: Some(meta.mtime()),
            mode: Some(meta.mode() & 0o7777),
        };
        let mut writer = session.writer.lock().await;
        writer.queue_header(&header.to_header().with_id(id).with_body_len(size - get.offset))?;
        let sent = metrics().transfer_bytes(Transfer::Download);
        let mut disk = DiskReader::spawn(file.into_std().await, hasher, size - get.offset);
        while let Some(chunk) = disk.next().await {
            let chunk = chunk.map_err(|error| match error.kind() {
                // The file shrank under us: the promised body cannot be completed.
                io::ErrorKind::UnexpectedEof => io::Error::new(error.kind(), "file truncated while sent"),
                _ => error,
            });
            let chunk = chunk.map_err(FrameError::Io)?;
            writer.send_body(&chunk).await?;
            sent.inc_by(chunk.len() as u64);
            disk.recycle(chunk);
        }
        let hasher = disk.finish().await.map_err(FrameError::Io)?;
        let end = GetEnd {
            blake3: hasher.finalize().to_hex().to_string(),
        };
        writer.queue(end.to_header().with_id(id), b"")?;
        writer.flush().await?;
        metrics().transfer_completed(Transfer::Download);
        Ok(())
    }
}
