//! The files service: `ls`, `stat`, `mkdir`, `rm`, `mv`, `put`, `get` inside the file root.
//!
//! The course's FTP homework, made safe and resumable. Every transfer is checked end to end
//! with BLAKE3, computed while the bytes stream (never a second pass before the first byte
//! moves); an upload only appears under its name once complete, fsynced and verified. The
//! messages, and the exchanges they make, are in [`crate::proto::files`].
//!
//! This file reads each request once ([`FileRequest`]) and answers the directory commands;
//! the rest is one file per concern:
//! - `upload.rs`: streamed uploads (`put`, `put_data`, `put_end`), resumable;
//! - `batch.rs`: small files sent inline, committed in groups with one sync;
//! - `download.rs`: `get`;
//! - `store.rs`: what every service writing into the root shares (the quota, one upload per
//!   path, the bounds on uploads and downloads);
//! - `root.rs`, `partial.rs`, `tree.rs`: the sandboxed root, its partial files, and the walk
//!   over a tree of any depth;
//! - `error.rs`: file-system failures as the protocol's error codes.

use std::sync::Arc;

use async_trait::async_trait;

use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::proto::files::{
    FileMessage, FileRequest, Get, INLINE_MAX, LIST_PAGE, List, ListPage, Mkdir, Move, Put, PutData, PutEnd,
    Remove, Stat,
};
use crate::proto::path::RootPath;
use crate::wire::{ErrorCode, Header, RemoteError};

mod batch;
mod download;
mod error;
mod partial;
mod root;
mod store;
mod tree;
mod upload;

pub(crate) use error::io_error;
pub(crate) use root::FileRoot;
pub(crate) use store::{Claim, FileStore};
pub use store::{FilesConfig, MAX_DOWNLOADS_PER_SOURCE};

const fn spec(cmd: &'static str, max_body: u64, body: BodyMode) -> CommandSpec {
    CommandSpec { cmd, max_body, body }
}

const COMMANDS: &[CommandSpec] = &[
    spec(List::CMD, 0, BodyMode::Whole),
    spec(Stat::CMD, 0, BodyMode::Whole),
    spec(Mkdir::CMD, 0, BodyMode::Whole),
    spec(Remove::CMD, 0, BodyMode::Whole),
    spec(Move::CMD, 0, BodyMode::Whole),
    spec(Get::CMD, 0, BodyMode::Whole),
    spec(Put::CMD, INLINE_MAX, BodyMode::Stream),
    spec(PutData::CMD, u64::MAX, BodyMode::Stream),
    spec(PutEnd::CMD, 0, BodyMode::Whole),
];

/// The native file commands.
pub(crate) struct Files {
    store: Arc<FileStore>,
}

impl Files {
    pub(crate) fn new(store: Arc<FileStore>) -> Files {
        Files { store }
    }
}

#[async_trait]
impl Service for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn commands(&self) -> &[CommandSpec] {
        COMMANDS
    }

    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        if !Put::is_inline(&request.header) {
            self.flush(session).await?;
        }
        let result = self.serve(request, session).await;
        if result.is_err() {
            // Answers go out in request order: settle earlier puts before this error.
            self.flush(session).await?;
        }
        result
    }

    /// Commits the small files written since the last flush (see `batch.rs`).
    async fn flush(&self, session: &mut Session) -> Result<(), ServiceError> {
        self.commit_inline(session).await
    }
}

impl Files {
    async fn serve(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id();
        match FileRequest::from_header(&request.header).map_err(RemoteError::from)? {
            FileRequest::List(list) => self.list(id, list, session).await,
            FileRequest::Stat(stat) => {
                let path = anywhere(&stat.path)?;
                let entry = self
                    .on_root(move |root| root.stat(&path).map_err(|e| io_error(&path, e)))
                    .await?;
                Ok(session.writer.reply(entry.to_header().with_id(id), b"").await?)
            }
            FileRequest::Mkdir(Mkdir { path, parents }) => {
                let path = inside(&path)?;
                self.on_root(move |root| root.mkdir(&path, parents).map_err(|e| io_error(&path, e)))
                    .await?;
                self.acknowledge(Mkdir::CMD, id, session).await
            }
            FileRequest::Remove(Remove { path, recursive }) => {
                let path = inside(&path)?;
                self.on_root(move |root| root.remove(&path, recursive).map_err(|e| io_error(&path, e)))
                    .await?;
                self.acknowledge(Remove::CMD, id, session).await
            }
            FileRequest::Move(Move { from, to, force }) => {
                let (from, to) = (inside(&from)?, inside(&to)?);
                self.on_root(move |root| root.rename(&from, &to, force).map_err(|e| io_error(&to, e)))
                    .await?;
                self.acknowledge(Move::CMD, id, session).await
            }
            FileRequest::Get(get) => self.get(id, get, session).await,
            FileRequest::Put { id, put } => self.put(id, put, session).await,
            FileRequest::PutData { id, data } => self.put_data(id, data, session).await,
            FileRequest::PutEnd { id, end } => self.put_end(id, end, session).await,
        }
    }

    /// Runs `work` on the file root, on the blocking pool.
    async fn on_root<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FileRoot) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        self.store.blocking(move |store| work(store.root())).await
    }

    /// The empty reply that says a command was done.
    async fn acknowledge(
        &self,
        cmd: &str,
        id: Option<u64>,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        Ok(session.writer.reply(Header::new(cmd).with_id(id), b"").await?)
    }

    /// One page of a directory listing, in the body; `more` (with `next`, the cursor for the
    /// following page's `after`) when the directory holds more.
    async fn list(&self, id: Option<u64>, list: List, session: &mut Session) -> Result<(), ServiceError> {
        let path = anywhere(&list.path)?;
        let limit = list.limit.unwrap_or(LIST_PAGE).clamp(1, LIST_PAGE);
        let (entries, more) = self
            .on_root(move |root| {
                root.list(&path, &list.after, limit)
                    .map_err(|e| io_error(&path, e))
            })
            .await?;
        let (reply, body) = ListPage::new(entries, more)
            .to_message()
            .map_err(|e| RemoteError::new(ErrorCode::Io, e.to_string()))?;
        Ok(session.writer.reply(reply.with_id(id), &body).await?)
    }
}

/// A path the request names, which may be the root itself (`ls`, `stat`); `bad_path` if the
/// text is refused.
fn anywhere(text: &str) -> Result<RootPath, RemoteError> {
    Ok(RootPath::parse(text)?)
}

/// A path the request acts on, inside the root and never the root itself.
fn inside(text: &str) -> Result<RootPath, RemoteError> {
    Ok(RootPath::parse_inside(text)?)
}
