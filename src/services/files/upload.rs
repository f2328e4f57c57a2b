//! Streamed uploads: `put` (answered `put_ready`), `put_data` frames, `put_end` (answered
//! `put_ok`).
//!
//! A streamed upload writes into its partial file as the data arrives, hashing it on the way,
//! and resumes: `put_ready` offers the bytes a partial already holds, with their hash re-read
//! from disk, and the client continues after them or starts over. The upload is this
//! connection's until its `put_end` (kept by request id in [`Session::state`]); a connection
//! that ends leaves the partial, ready to resume. Small files sent inline take `batch.rs`.

use std::collections::HashMap;
use std::io;

use tokio::fs::File;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::error::{bad_request, hash_mismatch, io_error};
use super::{Claim, Files, inside};
use crate::disk::{DiskWriter, apply_metadata, hash_prefix};
use crate::metrics::{Transfer, metrics};
use crate::proto::files::{FileMessage, Put, PutData, PutEnd, PutOk, PutReady};
use crate::proto::path::RootPath;
use crate::services::{ServiceError, Session};
use crate::wire::{ErrorCode, Header, RemoteError};

/// An upload between its `put` and its `put_end`.
struct Upload {
    path: RootPath,
    file: File,
    hasher: blake3::Hasher,
    written: u64,
    size: u64,
    force: bool,
    mode: Option<u32>,
    mtime: Option<i64>,
    _claim: Claim,
}

/// This connection's uploads in progress, by request id. Dropped with the connection: the
/// partial files stay, ready to resume.
#[derive(Default)]
struct Uploads(HashMap<u64, Upload>);

impl Files {
    /// Starts an upload: refused up front if it cannot complete (see [`super::FileStore::reserve`]);
    /// an inline one goes to its batch, a streamed one opens its partial and says where to go on.
    pub(super) async fn put(&self, id: u64, mut put: Put, session: &mut Session) -> Result<(), ServiceError> {
        let path = inside(&put.path)?;
        if put.blake3.is_none() {
            self.check_connection_bound(session)?;
        }
        let (size, force, source) = (put.size, put.force, session.peer.source());
        let claim = self
            .store
            .blocking(move |store| store.reserve(&path, size, force))
            .await?;
        if let Some(expected) = put.blake3.take() {
            return self.put_inline(id, claim, &put, &expected, session).await;
        }
        let (claim, std_file) = self
            .store
            .blocking(move |store| {
                let mut claim = claim;
                let file = store.open_upload(&mut claim, source)?;
                Ok((claim, file))
            })
            .await?;
        let mut upload = Upload {
            path: claim.path().clone(),
            file: File::from_std(std_file),
            hasher: blake3::Hasher::new(),
            written: 0,
            size: put.size,
            force: put.force,
            mode: put.mode,
            mtime: put.mtime,
            _claim: claim,
        };
        resume_or_restart(&mut upload, put.resume).await?;
        let ready = PutReady {
            offset: upload.written,
            prefix_blake3: upload.hasher.finalize().to_hex().to_string(),
        };
        session.state::<Uploads>().0.insert(id, upload);
        Ok(session
            .writer
            .send(ready.to_header().with_id(Some(id)), b"")
            .await?)
    }

    /// `busy` when this connection already has as many streamed uploads open as it may.
    fn check_connection_bound(&self, session: &mut Session) -> Result<(), RemoteError> {
        let max = self.store.config().max_uploads_per_connection;
        if session.state::<Uploads>().0.len() >= max {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("this connection has {max} uploads in progress; finish one first"),
            ));
        }
        Ok(())
    }

    pub(super) async fn put_data(
        &self,
        id: u64,
        data: PutData,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        let mut upload = session
            .state::<Uploads>()
            .0
            .remove(&id)
            .ok_or_else(|| bad_request(format!("no upload {id} in progress (send `put` first)")))?;
        if data.offset == 0 && upload.written > 0 {
            // The client's copy differs from the partial here: start over.
            restart(&mut upload).await?;
        } else if data.offset != upload.written {
            return Err(bad_request(format!(
                "data at offset {}, expected {}",
                data.offset, upload.written
            ))
            .into());
        }
        receive_body(&mut upload, session).await?;
        session.state::<Uploads>().0.insert(id, upload);
        Ok(())
    }

    pub(super) async fn put_end(
        &self,
        id: u64,
        end: PutEnd,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        let upload = session
            .state::<Uploads>()
            .0
            .remove(&id)
            .ok_or_else(|| bad_request(format!("no upload {id} in progress")))?;
        let report = self.finish(upload, &end.blake3).await?;
        metrics().transfer_completed(Transfer::Upload);
        Ok(session.writer.send(report.with_id(Some(id)), b"").await?)
    }

    /// Verifies a complete upload and moves it into place (on the blocking pool: it fsyncs).
    async fn finish(&self, upload: Upload, expected: &str) -> Result<Header, ServiceError> {
        let Upload {
            path,
            mut file,
            hasher,
            written,
            size,
            force,
            mode,
            mtime,
            _claim,
        } = upload;
        if written != size {
            return Err(bad_request(format!("{path}: {written} of {size} bytes received")).into());
        }
        let actual = hasher.finalize().to_hex();
        if actual.as_str() != expected {
            let refusal = hash_mismatch(&path);
            let _ = self
                .on_root(move |root| {
                    let _ = root.remove_partial(&path);
                    Ok(())
                })
                .await;
            return Err(refusal.into());
        }
        file.flush().await.map_err(|e| io_error(&path, e))?;
        let file = file.into_std().await;
        self.on_root(move |root| {
            apply_metadata(&file, mode, mtime)
                .and_then(|()| root.commit_partial(&path, &file, force))
                .map_err(|e| io_error(&path, e))
        })
        .await?;
        let done = PutOk {
            size,
            blake3: actual.to_string(),
        };
        Ok(done.to_header())
    }
}

/// With `resume`, keeps what the partial file already holds (if no larger than the upload),
/// re-read and hashed for the client to check against its own copy; otherwise empties it.
async fn resume_or_restart(upload: &mut Upload, resume: bool) -> Result<(), RemoteError> {
    let partial = upload
        .file
        .metadata()
        .await
        .map_err(|e| io_error(&upload.path, e))?
        .len();
    if resume && partial <= upload.size {
        hash_prefix(&mut upload.file, partial, &mut upload.hasher)
            .await
            .map_err(|e| io_error(&upload.path, e))?;
        upload.written = partial;
        return Ok(());
    }
    upload
        .file
        .set_len(0)
        .await
        .map_err(|e| io_error(&upload.path, e))
}

/// Empties an upload's partial file and forgets what was written.
async fn restart(upload: &mut Upload) -> Result<(), RemoteError> {
    let path = &upload.path;
    upload.file.set_len(0).await.map_err(|e| io_error(path, e))?;
    upload
        .file
        .seek(io::SeekFrom::Start(0))
        .await
        .map_err(|e| io_error(path, e))?;
    upload.hasher = blake3::Hasher::new();
    upload.written = 0;
    Ok(())
}

/// Appends the current frame's body to an upload, written and hashed by a [`DiskWriter`]
/// on a second handle to the partial file (same offset). A failed write (a full disk) is
/// reported; the rest of the body is skipped by the dispatcher.
async fn receive_body(upload: &mut Upload, session: &mut Session) -> Result<(), ServiceError> {
    let path = upload.path.clone();
    let handle = upload.file.try_clone().await.map_err(|e| io_error(&path, e))?;
    let disk = DiskWriter::spawn(handle.into_std().await, std::mem::take(&mut upload.hasher));
    let received = metrics().transfer_bytes(Transfer::Upload);
    let mut outcome = Ok(());
    while let Some(chunk) = session.reader.read_body_chunk().await? {
        let len = chunk.len() as u64;
        if upload.written + len > upload.size {
            outcome =
                Err(bad_request(format!("{path}: more than the declared {} bytes", upload.size)).into());
            break;
        }
        if !disk.write(chunk).await {
            break;
        }
        upload.written += len;
        received.inc_by(len);
    }
    let (_, hasher) = disk.finish().await.map_err(|e| io_error(&path, e))?;
    upload.hasher = hasher;
    outcome
}
