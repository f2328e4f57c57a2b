//! Small files sent inline (`put` with `blake3` and the whole file as its body): checked in
//! memory, then written and committed in groups.
//!
//! A tree of small files would otherwise cost a round trip and two fsyncs per file. Clients
//! pipeline inline puts, so the service writes each group's files to their partials, syncs the
//! filesystem once, renames them all and syncs each directory touched once, then answers them
//! in request order. A group closes when full or when no further request is waiting.

use std::collections::HashSet;
use std::io;

use bytes::Bytes;

use super::error::{bad_request, hash_mismatch, io_error};
use super::root::FileRoot;
use super::{Claim, Files};
use crate::disk::apply_metadata;
use crate::metrics::{Transfer, metrics};
use crate::proto::files::{FileMessage, Put, PutOk};
use crate::proto::path::RootPath;
use crate::services::{ServiceError, Session};
use crate::wire::FrameError;

/// A commit group closes at this many files or bytes, or when the client pauses.
const GROUP_FILES: usize = 1024;
const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Small files written and waiting for their batch's commit, in request order.
#[derive(Default)]
struct PendingPuts(Vec<PendingPut>);

struct PendingPut {
    id: u64,
    path: RootPath,
    data: Bytes,
    mode: Option<u32>,
    mtime: Option<i64>,
    blake3: String,
    force: bool,
    _claim: Claim,
}

impl PendingPuts {
    fn is_full(&self) -> bool {
        self.0.len() >= GROUP_FILES || self.0.iter().map(|put| put.data.len()).sum::<usize>() >= GROUP_BYTES
    }
}

impl Files {
    /// A small file whose body is in the `put` frame: checked in memory, then written and
    /// committed with the others of its group in one trip to a blocking thread by
    /// [`Files::commit_inline`].
    pub(super) async fn put_inline(
        &self,
        id: u64,
        claim: Claim,
        put: &Put,
        expected: &str,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        let path = claim.path().clone();
        let data = session.reader.read_whole_body().await?;
        if data.len() as u64 != put.size {
            return Err(bad_request(format!(
                "{path}: {} bytes sent, {} declared",
                data.len(),
                put.size
            ))
            .into());
        }
        let actual = blake3::hash(&data).to_hex();
        if actual.as_str() != expected {
            return Err(hash_mismatch(&path).into());
        }
        metrics()
            .transfer_bytes(Transfer::Upload)
            .inc_by(data.len() as u64);
        let pending = session.state::<PendingPuts>();
        pending.0.push(PendingPut {
            id,
            data,
            mode: put.mode,
            mtime: put.mtime,
            blake3: actual.to_string(),
            force: put.force,
            path,
            _claim: claim,
        });
        if pending.is_full() || !session.reader.has_buffered_input() {
            self.commit_inline(session).await?;
        }
        Ok(())
    }

    /// Commits the small files written since the last commit with one filesystem sync, and
    /// answers them, in order.
    pub(super) async fn commit_inline(&self, session: &mut Session) -> Result<(), ServiceError> {
        let pending = std::mem::take(&mut session.state::<PendingPuts>().0);
        if pending.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let (pending, outcomes) = tokio::task::spawn_blocking(move || {
            let outcomes = commit_all(store.root(), &pending);
            (pending, outcomes)
        })
        .await
        .map_err(|e| FrameError::Io(io::Error::other(e)))?;
        let mut writer = session.writer.lock().await;
        for (put, outcome) in pending.into_iter().zip(outcomes) {
            let header = match outcome {
                Ok(()) => {
                    metrics().transfer_completed(Transfer::Upload);
                    let done = PutOk {
                        size: put.data.len() as u64,
                        blake3: put.blake3,
                    };
                    done.to_header()
                }
                Err(error) => {
                    let error = io_error(&put.path, error);
                    metrics().error_sent(&error.code);
                    error.to_header(None)
                }
            };
            writer.queue(header.with_id(Some(put.id)), b"")?;
        }
        Ok(writer.flush().await?)
    }
}

/// Writes every file of the group to its partial, then one sync for all the data, then the
/// renames, then one sync per directory touched.
fn commit_all(root: &FileRoot, group: &[PendingPut]) -> Vec<io::Result<()>> {
    let mut outcomes: Vec<io::Result<()>> = group.iter().map(|put| write_partial(root, put)).collect();
    let synced = root.sync_filesystem();
    let mut dirs = HashSet::new();
    for (put, outcome) in group.iter().zip(outcomes.iter_mut()) {
        if outcome.is_err() {
            continue;
        }
        *outcome = match &synced {
            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            Ok(()) => root.rename_partial(&put.path, put.force).map(|()| {
                dirs.insert(put.path.parent().to_owned());
            }),
        };
    }
    for dir in dirs {
        let _ = root.sync_dir(&dir);
    }
    for (put, outcome) in group.iter().zip(&outcomes) {
        if outcome.is_err() {
            let _ = root.remove_partial(&put.path);
        }
    }
    outcomes
}

fn write_partial(root: &FileRoot, put: &PendingPut) -> io::Result<()> {
    let mut file = root.open_partial(&put.path)?;
    file.set_len(0)?;
    std::io::Write::write_all(&mut file, &put.data)?;
    apply_metadata(&file, put.mode, put.mtime)
}
