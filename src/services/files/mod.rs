//! File transfer: `put`, `get`, `ls`, `stat`, `mkdir`, `rm`, `mv` inside the file root.
//!
//! The course's FTP homework, made safe and resumable. Every transfer is checked end to end
//! with BLAKE3, computed while the bytes stream (never a second pass before the first byte
//! moves); an upload only appears under its name once complete, fsynced and verified.
//!
//! ```text
//! small file, one round trip (pipelined for trees):
//! client  {"cmd":"put","id":1,"path":"a.txt","size":3,"blake3":H,"body_len":3} + 3 bytes
//! server  {"cmd":"put_ok","id":1,"size":3,"blake3":H}
//! large file, resumable:
//! client  {"cmd":"put","id":2,"path":"big","size":S,"resume":true}
//! server  {"cmd":"put_ready","id":2,"offset":K,"prefix_blake3":h}     K bytes already here
//! client  {"cmd":"put_data","id":2,"offset":K,"body_len":S-K} + bytes   (offset 0 restarts)
//! client  {"cmd":"put_end","id":2,"blake3":H}
//! server  {"cmd":"put_ok","id":2,"size":S,"blake3":H}
//! download (offset K to resume):
//! client  {"cmd":"get","id":3,"path":"big","offset":K}
//! server  {"cmd":"get_data","id":3,"size":S,"offset":K,"mtime":T,"mode":M,"body_len":S-K} + bytes
//! server  {"cmd":"get_end","id":3,"blake3":H}                            hash of the whole file
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{info, warn};

use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::metrics::{Transfer, metrics};
use crate::source::{PerSource, SourceSlot};
use crate::wire::{ErrorCode, FrameError, Header, RemoteError};
use root::{FileRoot, NotAFile, RootPath};

pub mod root;
pub mod tree;

/// Files up to this size travel inline in their `put` frame.
pub const INLINE_MAX: u64 = 1024 * 1024;
const CHUNK: usize = 256 * 1024;

const fn spec(cmd: &'static str, max_body: u64, body: BodyMode) -> CommandSpec {
    CommandSpec { cmd, max_body, body }
}

const COMMANDS: &[CommandSpec] = &[
    spec("ls", 0, BodyMode::Whole),
    spec("stat", 0, BodyMode::Whole),
    spec("mkdir", 0, BodyMode::Whole),
    spec("rm", 0, BodyMode::Whole),
    spec("mv", 0, BodyMode::Whole),
    spec("get", 0, BodyMode::Whole),
    spec("put", INLINE_MAX, BodyMode::Stream),
    spec("put_data", u64::MAX, BodyMode::Stream),
    spec("put_end", 0, BodyMode::Whole),
];

/// File service settings.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    pub root: PathBuf,
    /// Most bytes the root may hold, partial uploads included; uploads beyond it are refused
    /// up front.
    pub quota: Option<u64>,
    /// Streamed uploads (each holding a file open) one connection may have at once.
    pub max_uploads_per_connection: usize,
    /// Streamed uploads open at once from one source address (IPv6: one /64), every
    /// connection and protocol counted.
    pub max_uploads_per_source: usize,
    /// Streamed uploads open at once on the whole server, every protocol counted.
    pub max_uploads_total: usize,
    /// The partial file of an upload nobody has written to for this long is removed.
    pub partial_max_age: Duration,
}

impl Default for FilesConfig {
    fn default() -> FilesConfig {
        let data = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
        FilesConfig {
            root: data.join("sockit").join("files"),
            quota: None,
            max_uploads_per_connection: 16,
            max_uploads_per_source: 64,
            max_uploads_total: 1024,
            partial_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// The file root with what every service writing into it must share: the quota with the
/// space each running upload has reserved, the paths with an upload in progress (a second
/// upload to one path, by any protocol, is refused instead of writing into the same partial
/// file), and the count of open uploads.
pub struct FileStore {
    root: FileRoot,
    config: FilesConfig,
    uploads: Arc<Mutex<InProgress>>,
    /// Held from measuring the root to recording a reservation, so that two uploads can never
    /// both be granted the same free bytes of the quota.
    quota_gate: Mutex<()>,
    /// Downloads running now, by source and in all: each holds a blocking thread and its
    /// read-ahead for as long as its reader takes.
    downloads_by_source: PerSource,
    downloads: Arc<Semaphore>,
}

/// Downloads one source (IPv4 address, IPv6 /64) may run at once.
pub const MAX_DOWNLOADS_PER_SOURCE: usize = 32;
/// Downloads the server runs at once.
pub const MAX_DOWNLOADS_TOTAL: usize = 128;

/// A running download's place among the bounded ones, given back when dropped.
pub struct DownloadSlot {
    _source: Option<SourceSlot>,
    _total: OwnedSemaphorePermit,
}

/// The uploads running now, whoever runs them.
#[derive(Default)]
struct InProgress {
    paths: HashSet<RootPath>,
    /// Bytes of the quota promised to running uploads (their declared sizes).
    reserved: u64,
    /// The running uploads' partial files (device, inode): counted by their reservation, never
    /// expired.
    partials: HashSet<(u64, u64)>,
    /// Uploads holding a partial file open, in all and by source (see [`super::Peer::source`]).
    open: usize,
    open_by_source: HashMap<Option<IpAddr>, usize>,
}

impl InProgress {
    /// Takes a slot among the open uploads for `source`; `busy` at either bound.
    fn open_slot(&mut self, source: Option<IpAddr>, config: &FilesConfig) -> Result<(), RemoteError> {
        let from_source = self.open_by_source.get(&source).copied().unwrap_or(0);
        let full = if self.open >= config.max_uploads_total {
            format!("the server has {} uploads in progress", config.max_uploads_total)
        } else if from_source >= config.max_uploads_per_source {
            format!(
                "your address has {} uploads in progress",
                config.max_uploads_per_source
            )
        } else {
            self.open += 1;
            self.open_by_source.insert(source, from_source + 1);
            return Ok(());
        };
        Err(RemoteError::new(
            ErrorCode::Busy,
            format!("{full}; try again later"),
        ))
    }

    fn close_slot(&mut self, source: Option<IpAddr>) {
        self.open = self.open.saturating_sub(1);
        if let Some(count) = self.open_by_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.open_by_source.remove(&source);
            }
        }
    }
}

impl FileStore {
    pub fn open(config: &FilesConfig) -> io::Result<FileStore> {
        Ok(FileStore {
            root: FileRoot::open(&config.root)?,
            config: config.clone(),
            uploads: Arc::default(),
            quota_gate: Mutex::new(()),
            downloads_by_source: PerSource::new(MAX_DOWNLOADS_PER_SOURCE),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS_TOTAL)),
        })
    }

    /// A place for one more download from `source` (`None`: a Unix-socket peer, counted in
    /// all only); `busy` at either bound.
    pub fn download_slot(&self, source: Option<IpAddr>) -> Result<DownloadSlot, RemoteError> {
        let busy = |what: String| RemoteError::new(ErrorCode::Busy, format!("{what}; try again later"));
        let by_source = match source {
            Some(ip) => Some(self.downloads_by_source.try_acquire(ip).ok_or_else(|| {
                busy(format!(
                    "your address has {MAX_DOWNLOADS_PER_SOURCE} downloads running"
                ))
            })?),
            None => None,
        };
        let total = self
            .downloads
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy(format!("the server has {MAX_DOWNLOADS_TOTAL} downloads running")))?;
        Ok(DownloadSlot {
            _source: by_source,
            _total: total,
        })
    }

    pub fn root(&self) -> &FileRoot {
        &self.root
    }

    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    fn in_progress(&self) -> std::sync::MutexGuard<'_, InProgress> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` on the blocking pool: every filesystem call of the file services goes
    /// through here, so a slow disk or a FIFO never holds an async worker.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&FileStore) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .unwrap_or_else(|e| Err(remote("io", format!("file operation failed: {e}"))))
    }

    /// Claims `path` for one upload of `size` bytes and reserves them in the quota, until the
    /// claim is dropped. Refused (before any byte is written) if something is at `path` and
    /// not `replace`, if another upload holds the path (`busy`), or if the disk or the quota
    /// cannot take `size` more bytes. Blocking.
    pub fn reserve(&self, path: &RootPath, size: u64, replace: bool) -> Result<Claim, RemoteError> {
        if !replace && self.root.exists(path) {
            return Err(remote(
                "exists",
                format!("{path} already exists (use --force to replace it)"),
            ));
        }
        let mut claim = self.claim(path)?;
        let free = self.root().free_space().map_err(|e| io_error(path, e))?;
        if size > free {
            return Err(remote(
                "no_space",
                format!("{path} needs {size} bytes; the server has {free} free"),
            ));
        }
        let Some(quota) = self.config.quota else {
            claim.reserve(size);
            return Ok(claim);
        };
        let _gate = self.quota_gate.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.quota_used(path).map_err(|e| io_error(path, e))?;
        if used.saturating_add(size) > quota {
            return Err(remote(
                "quota_exceeded",
                format!(
                    "{path} ({size} bytes) would exceed the quota: {used} of {quota} bytes used or reserved"
                ),
            ));
        }
        claim.reserve(size);
        Ok(claim)
    }

    /// Bytes of the quota taken: every file and partial file in the root, except the partials
    /// of running uploads (and of `path`, which the new upload replaces), which count by the
    /// size they reserved.
    fn quota_used(&self, path: &RootPath) -> io::Result<u64> {
        let (mut skip, reserved) = {
            let running = self.in_progress();
            (running.partials.clone(), running.reserved)
        };
        if let Ok(own) = self.root.partial_identity(path) {
            skip.insert(own);
        }
        Ok(self.root.usage(&skip)?.saturating_add(reserved))
    }

    /// Marks `path` as being uploaded; `busy` if another upload holds it.
    fn claim(&self, path: &RootPath) -> Result<Claim, RemoteError> {
        if !self.in_progress().paths.insert(path.clone()) {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("another upload to {path} is in progress"),
            ));
        }
        Ok(Claim {
            path: path.clone(),
            reserved: 0,
            partial: None,
            slot: None,
            uploads: self.uploads.clone(),
        })
    }

    /// Opens the partial file of a claimed upload (kept, for resuming, if present), within the
    /// bounds on open uploads from one source and on the server (`busy` at a bound). Blocking.
    pub fn open_upload(
        &self,
        claim: &mut Claim,
        source: Option<IpAddr>,
    ) -> Result<std::fs::File, RemoteError> {
        self.in_progress().open_slot(source, &self.config)?;
        claim.slot = Some(source);
        let path = claim.path.clone();
        let file = self.root.open_partial(&path).map_err(|e| io_error(&path, e))?;
        let stat = rustix::fs::fstat(&file).map_err(|e| io_error(&path, e.into()))?;
        let identity = (stat.st_dev, stat.st_ino);
        self.in_progress().partials.insert(identity);
        claim.partial = Some(identity);
        Ok(file)
    }

    /// Removes the partial files of abandoned uploads (not written for `partial_max_age`).
    /// Blocking.
    pub fn expire_partials(&self) -> io::Result<u64> {
        let cutoff = SystemTime::now()
            .checked_sub(self.config.partial_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let in_use = |partial| self.in_progress().partials.contains(&partial);
        self.root.expire_partials(cutoff, &in_use)
    }

    /// Expires abandoned partial files now and then every quarter of their maximum age
    /// (between 100 ms and an hour), on the blocking pool, for as long as the store lives.
    /// Does nothing outside a Tokio runtime.
    pub fn start_expiry(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period =
            (self.config.partial_max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
        let store = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(live) = store.upgrade() else { return };
                match tokio::task::spawn_blocking(move || live.expire_partials()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(removed)) => info!(removed, "expired abandoned partial uploads"),
                    Ok(Err(error)) => warn!(%error, "expiring partial uploads"),
                    Err(error) => warn!(%error, "expiring partial uploads"),
                }
                tokio::time::sleep(period).await;
            }
        });
    }
}

/// The native file commands.
pub struct Files {
    store: Arc<FileStore>,
}

impl Files {
    pub fn new(store: Arc<FileStore>) -> Files {
        Files { store }
    }
}

#[derive(Deserialize)]
struct PathRequest {
    path: String,
    #[serde(default)]
    parents: bool,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    offset: u64,
}

/// Entries in one `ls` reply, at most: a directory of any size is listed a page at a time.
pub const LIST_PAGE: usize = 1000;

#[derive(Deserialize)]
struct ListRequest {
    path: String,
    /// The page starts after this name (the previous page's `next`).
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct MoveRequest {
    from: String,
    to: String,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
struct PutRequest {
    path: String,
    size: u64,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    resume: bool,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    mtime: Option<i64>,
    /// Present on inline puts (the body is the whole file): the hash of the whole file.
    #[serde(default)]
    blake3: Option<String>,
}

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

/// A commit group closes at this many files or bytes, or when the client pauses.
const GROUP_FILES: usize = 1024;
const GROUP_BYTES: usize = 8 * 1024 * 1024;

impl PendingPuts {
    fn is_full(&self) -> bool {
        self.0.len() >= GROUP_FILES || self.0.iter().map(|put| put.data.len()).sum::<usize>() >= GROUP_BYTES
    }
}

fn write_partial(root: &FileRoot, put: &PendingPut) -> io::Result<()> {
    let mut file = root.open_partial(&put.path)?;
    file.set_len(0)?;
    std::io::Write::write_all(&mut file, &put.data)?;
    apply_metadata(&file, put.mode, put.mtime)
}

/// An upload's hold on its path, its reserved bytes, its partial file and its slot among the
/// server's open uploads; all released when dropped.
pub struct Claim {
    path: RootPath,
    reserved: u64,
    partial: Option<(u64, u64)>,
    /// The source whose open-upload slot this upload holds, once it holds one.
    slot: Option<Option<IpAddr>>,
    uploads: Arc<Mutex<InProgress>>,
}

impl Claim {
    fn reserve(&mut self, size: u64) {
        let mut running = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        running.reserved = running.reserved.saturating_add(size);
        self.reserved = size;
    }

    pub fn path(&self) -> &RootPath {
        &self.path
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut running = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        running.paths.remove(&self.path);
        running.reserved = running.reserved.saturating_sub(self.reserved);
        if let Some(partial) = &self.partial {
            running.partials.remove(partial);
        }
        if let Some(source) = self.slot {
            running.close_slot(source);
        }
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
        let batched = request.header.cmd() == "put" && request.header.fields().contains_key("blake3");
        if !batched {
            self.flush(session).await?;
        }
        let result = self.serve(request, session).await;
        if result.is_err() {
            // Answers go out in request order: settle earlier puts before this error.
            self.flush(session).await?;
        }
        result
    }

    /// Commits the small files written since the last flush with one filesystem sync, and
    /// answers them, in order.
    async fn flush(&self, session: &mut Session) -> Result<(), ServiceError> {
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
                    Header::new("put_ok")
                        .with("size", put.data.len() as u64)
                        .with("blake3", put.blake3.as_str())
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
                dirs.insert(root::parent_of(&put.path).to_owned());
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

impl Files {
    async fn serve(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id();
        let reply = Header::new(request.header.cmd()).with_id(id);
        match request.header.cmd() {
            "ls" => self.list(request, session).await,
            "stat" => {
                let path = self.path_of(&request)?;
                let entry = self
                    .on_root(move |root| root.stat(&path).map_err(|e| io_error(&path, e)))
                    .await?;
                Ok(session
                    .writer
                    .send(Header::from_message("stat", &entry).with_id(id), b"")
                    .await?)
            }
            "mkdir" | "rm" => {
                let args: PathRequest = parse(&request)?;
                let path = checked(&args.path)?;
                let mkdir = request.header.cmd() == "mkdir";
                self.on_root(move |root| {
                    let done = match mkdir {
                        true => root.mkdir(&path, args.parents),
                        false => root.remove(&path, args.recursive),
                    };
                    done.map_err(|e| io_error(&path, e))
                })
                .await?;
                Ok(session.writer.send(reply, b"").await?)
            }
            "mv" => {
                let args: MoveRequest = parse(&request)?;
                let (from, to) = (checked(&args.from)?, checked(&args.to)?);
                self.on_root(move |root| root.rename(&from, &to, args.force).map_err(|e| io_error(&to, e)))
                    .await?;
                Ok(session.writer.send(reply, b"").await?)
            }
            "get" => self.get(request, session).await,
            "put" => self.put(request, session).await,
            "put_data" => self.put_data(request, session).await,
            _ => self.put_end(request, session).await,
        }
    }

    /// Runs `work` on the file root, on the blocking pool.
    async fn on_root<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FileRoot) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        self.store.blocking(move |store| work(store.root())).await
    }

    fn path_of(&self, request: &Request) -> Result<RootPath, ServiceError> {
        let args: PathRequest = parse(request)?;
        RootPath::parse(&args.path).map_err(bad_path)
    }

    /// One page of a directory listing, in the body; `more` (with `next`, the cursor for the
    /// following page's `after`) when the directory holds more.
    async fn list(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let args: ListRequest = parse(&request)?;
        let path = RootPath::parse(&args.path).map_err(bad_path)?;
        let limit = args.limit.unwrap_or(LIST_PAGE).clamp(1, LIST_PAGE);
        let (entries, more) = self
            .on_root(move |root| {
                root.list(&path, &args.after, limit)
                    .map_err(|e| io_error(&path, e))
            })
            .await?;
        let body = serde_json::to_vec(&entries).map_err(|e| remote("io", e.to_string()))?;
        let mut reply = Header::new("ls").with_id(request.id()).with("more", more);
        if let Some(last) = entries.last().filter(|_| more) {
            reply = reply.with("next", last.name.as_str());
        }
        Ok(session.writer.send(reply, &body).await?)
    }

    /// Streams a file: its header, its bytes from `offset`, then the hash of the whole file.
    async fn get(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let args: PathRequest = parse(&request)?;
        let path = checked(&args.path)?;
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
        if args.offset > size {
            return Err(bad_request(format!(
                "offset {} is past the end of {path} ({size} bytes)",
                args.offset
            ))
            .into());
        }
        let mut file = File::from_std(std_file);
        // The hash covers the whole file, so a resumed download verifies the part it already has.
        let mut hasher = blake3::Hasher::new();
        hash_prefix(&mut file, args.offset, &mut hasher)
            .await
            .map_err(|e| io_error(&path, e))?;
        let header = Header::new("get_data")
            .with_id(request.id())
            .with("size", size)
            .with("offset", args.offset)
            .with("mtime", std::os::unix::fs::MetadataExt::mtime(&meta))
            .with("mode", std::os::unix::fs::MetadataExt::mode(&meta) & 0o7777)
            .with_body_len(size - args.offset);
        let mut writer = session.writer.lock().await;
        writer.queue_header(&header)?;
        let sent = metrics().transfer_bytes(Transfer::Download);
        let mut disk = DiskReader::spawn(file.into_std().await, hasher, size - args.offset);
        while let Some(chunk) = disk.next().await {
            let chunk = chunk.map_err(|error| match error.kind() {
                // The file shrank under us: the promised body cannot be completed.
                io::ErrorKind::UnexpectedEof => io::Error::new(error.kind(), "file truncated while sent"),
                _ => error,
            });
            let chunk = chunk.map_err(FrameError::Io)?;
            writer.send_body(&chunk).await?;
            sent.inc_by(chunk.len() as u64);
        }
        let hasher = disk.finish().await.map_err(FrameError::Io)?;
        let end = Header::new("get_end")
            .with_id(request.id())
            .with("blake3", hasher.finalize().to_hex().as_str());
        writer.queue(end, b"")?;
        writer.flush().await?;
        metrics().transfer_completed(Transfer::Download);
        Ok(())
    }

    async fn put(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id().ok_or_else(|| bad_request("`put` needs an `id`"))?;
        let args: PutRequest = parse(&request)?;
        let path = checked(&args.path)?;
        if args.blake3.is_none() {
            self.check_connection_bound(session)?;
        }
        let (size, force, source) = (args.size, args.force, session.peer.source());
        let claim = self
            .store
            .blocking(move |store| store.reserve(&path, size, force))
            .await?;
        if let Some(expected) = &args.blake3 {
            return self.put_inline(id, claim, &args, expected, session).await;
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
            size: args.size,
            force: args.force,
            mode: args.mode,
            mtime: args.mtime,
            _claim: claim,
        };
        let partial = upload
            .file
            .metadata()
            .await
            .map_err(|e| io_error(&upload.path, e))?
            .len();
        if args.resume && partial <= args.size {
            // Re-read what is already here: the client checks it against its own copy.
            hash_prefix(&mut upload.file, partial, &mut upload.hasher)
                .await
                .map_err(|e| io_error(&upload.path, e))?;
            upload.written = partial;
        } else {
            upload
                .file
                .set_len(0)
                .await
                .map_err(|e| io_error(&upload.path, e))?;
        }
        let ready = Header::new("put_ready")
            .with_id(Some(id))
            .with("offset", upload.written)
            .with("prefix_blake3", upload.hasher.finalize().to_hex().as_str());
        session.state::<Uploads>().0.insert(id, upload);
        Ok(session.writer.send(ready, b"").await?)
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

    /// A small file whose body is in the `put` frame: checked in memory, then written and
    /// committed with the others of its group in one trip to a blocking thread by
    /// [`Files::flush`] (the group closes when full or when no further request is waiting).
    async fn put_inline(
        &self,
        id: u64,
        claim: Claim,
        args: &PutRequest,
        expected: &str,
        session: &mut Session,
    ) -> Result<(), ServiceError> {
        let path = claim.path().clone();
        let data = session.reader.read_whole_body().await?;
        if data.len() as u64 != args.size {
            return Err(bad_request(format!(
                "{path}: {} bytes sent, {} declared",
                data.len(),
                args.size
            ))
            .into());
        }
        let actual = blake3::hash(&data).to_hex();
        if actual.as_str() != expected {
            return Err(remote(
                "hash_mismatch",
                format!("{path}: the data does not match its BLAKE3 hash; nothing was written"),
            )
            .into());
        }
        metrics()
            .transfer_bytes(Transfer::Upload)
            .inc_by(data.len() as u64);
        let pending = session.state::<PendingPuts>();
        pending.0.push(PendingPut {
            id,
            data,
            mode: args.mode,
            mtime: args.mtime,
            blake3: actual.to_string(),
            force: args.force,
            path,
            _claim: claim,
        });
        if pending.is_full() || !session.reader.has_buffered_input() {
            self.flush(session).await?;
        }
        Ok(())
    }

    async fn put_data(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id().unwrap_or(0);
        let offset = request.header.u64("offset").unwrap_or(0);
        let mut upload = session
            .state::<Uploads>()
            .0
            .remove(&id)
            .ok_or_else(|| bad_request(format!("no upload {id} in progress (send `put` first)")))?;
        if offset == 0 && upload.written > 0 {
            // The client's copy differs from the partial here: start over.
            upload
                .file
                .set_len(0)
                .await
                .map_err(|e| io_error(&upload.path, e))?;
            upload
                .file
                .seek(io::SeekFrom::Start(0))
                .await
                .map_err(|e| io_error(&upload.path, e))?;
            upload.hasher = blake3::Hasher::new();
            upload.written = 0;
        } else if offset != upload.written {
            return Err(bad_request(format!("data at offset {offset}, expected {}", upload.written)).into());
        }
        receive_body(&mut upload, session).await?;
        session.state::<Uploads>().0.insert(id, upload);
        Ok(())
    }

    async fn put_end(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id().unwrap_or(0);
        let upload = session
            .state::<Uploads>()
            .0
            .remove(&id)
            .ok_or_else(|| bad_request(format!("no upload {id} in progress")))?;
        let expected = request.header.str("blake3").unwrap_or_default().to_owned();
        let report = self.finish(upload, &expected).await?;
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
            let message = format!("{path}: the data does not match its BLAKE3 hash; nothing was written");
            let _ = self
                .on_root(move |root| {
                    let _ = root.remove_partial(&path);
                    Ok(())
                })
                .await;
            return Err(remote("hash_mismatch", message).into());
        }
        file.flush().await.map_err(|e| io_error(&path, e))?;
        let file = file.into_std().await;
        self.on_root(move |root| {
            apply_metadata(&file, mode, mtime)
                .and_then(|()| root.commit_partial(&path, &file, force))
                .map_err(|e| io_error(&path, e))
        })
        .await?;
        Ok(Header::new("put_ok")
            .with("size", size)
            .with("blake3", actual.as_str()))
    }
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

/// Reads and hashes a transfer's data on a thread of its own, a few chunks ahead of the
/// connection's thread that encrypts and sends them: the client's uploads and the server's
/// downloads. A file that ends early gives an `UnexpectedEof` error.
pub struct DiskReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    done: tokio::task::JoinHandle<blake3::Hasher>,
}

impl DiskReader {
    /// Reads `len` bytes of `file` from its current offset, each fed to `hasher`.
    pub fn spawn(mut file: std::fs::File, mut hasher: blake3::Hasher, len: u64) -> DiskReader {
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
    pub async fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// The hash of everything read, once `next` has returned `None`.
    pub async fn finish(self) -> io::Result<blake3::Hasher> {
        self.done.await.map_err(io::Error::other)
    }
}

/// Writes and hashes a transfer's data on a thread of its own, so the disk and the hash work
/// while the connection's thread decrypts the next chunks (instead of one hop to the blocking
/// pool per chunk): the server's uploads and the client's downloads.
pub struct DiskWriter {
    chunks: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<std::io::Result<(std::fs::File, blake3::Hasher)>>,
}

impl DiskWriter {
    pub fn spawn(mut file: std::fs::File, mut hasher: blake3::Hasher) -> DiskWriter {
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
    pub async fn write(&self, chunk: Bytes) -> bool {
        self.chunks.send(chunk).await.is_ok()
    }

    pub async fn finish(self) -> std::io::Result<(std::fs::File, blake3::Hasher)> {
        drop(self.chunks);
        self.done.await.map_err(std::io::Error::other)?
    }
}

/// Feeds the first `len` bytes of `file` to `hasher`.
pub async fn hash_prefix(file: &mut File, len: u64, hasher: &mut blake3::Hasher) -> io::Result<()> {
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

/// The mode bits `-p` carries across, either way: permissions only. A setuid, setgid or
/// sticky bit is never set from the other side's word.
pub const PRESERVED_MODE_BITS: u32 = 0o777;

/// Sets mode (permissions only, see [`PRESERVED_MODE_BITS`]) and modification time (for `-p`).
pub fn apply_metadata(file: &std::fs::File, mode: Option<u32>, mtime: Option<i64>) -> io::Result<()> {
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

fn parse<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, ServiceError> {
    request
        .header
        .parse()
        .map_err(|e| bad_request(e.to_string()).into())
}

fn checked(text: &str) -> Result<RootPath, ServiceError> {
    let path = RootPath::parse(text).map_err(bad_path)?;
    if path.is_root() {
        return Err(bad_path(
            "this needs a path inside the root, not the root itself".into(),
        ));
    }
    Ok(path)
}

fn bad_path(message: String) -> ServiceError {
    remote("bad_path", message).into()
}

fn bad_request(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::BadRequest, message)
}

fn remote(code: &'static str, message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorCode::Other(code.into()), message)
}

/// A file-system failure as the client should see it, naming the path.
pub fn io_error(path: &RootPath, error: io::Error) -> RemoteError {
    let code = match error.kind() {
        io::ErrorKind::NotFound => "not_found",
        io::ErrorKind::AlreadyExists => "exists",
        io::ErrorKind::DirectoryNotEmpty => "not_empty",
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "no_space",
        io::ErrorKind::IsADirectory => "is_dir",
        io::ErrorKind::NotADirectory => "bad_path",
        io::ErrorKind::PermissionDenied => "permission",
        _ if error.get_ref().is_some_and(|inner| inner.is::<NotAFile>()) => "not_file",
        _ if error.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            return remote("bad_path", format!("{path} leads outside the file root"));
        }
        _ if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => "bad_path",
        _ => "io",
    };
    remote(code, format!("{path}: {error}"))
}
