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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::root::{FileRoot, RootPath};
use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::metrics::{Transfer, metrics};
use crate::wire::{ErrorCode, FrameError, Header, RemoteError};

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
    /// Most bytes the root may hold; uploads beyond it are refused up front.
    pub quota: Option<u64>,
}

impl Default for FilesConfig {
    fn default() -> FilesConfig {
        let data = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
        FilesConfig {
            root: data.join("sockit").join("files"),
            quota: None,
        }
    }
}

/// The file root with what every service writing into it must share: the quota, and the
/// paths with an upload in progress (a second upload to one path, by any protocol, waits its
/// turn instead of writing into the same partial file).
pub struct FileStore {
    root: FileRoot,
    quota: Option<u64>,
    uploading: Arc<Mutex<HashSet<RootPath>>>,
}

impl FileStore {
    pub fn open(config: &FilesConfig) -> io::Result<FileStore> {
        Ok(FileStore {
            root: FileRoot::open(&config.root)?,
            quota: config.quota,
            uploading: Arc::default(),
        })
    }

    pub fn root(&self) -> &FileRoot {
        &self.root
    }

    /// Reserves `path` for one upload until the claim is dropped; `busy` if another holds it.
    pub fn claim(&self, path: &RootPath) -> Result<Claim, RemoteError> {
        let mut set = self.uploading.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(path.clone()) {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("another upload to {path} is in progress"),
            ));
        }
        Ok(Claim {
            path: path.clone(),
            set: self.uploading.clone(),
        })
    }

    /// Refuses, before any byte is written, a size the disk or the quota cannot take.
    pub fn check_room(&self, path: &RootPath, size: u64) -> Result<(), RemoteError> {
        let free = self.root().free_space().map_err(|e| io_error(path, e))?;
        if size > free {
            return Err(remote(
                "no_space",
                format!("{path} needs {size} bytes; the server has {free} free"),
            ));
        }
        if let Some(quota) = self.quota {
            let used = self
                .root
                .usage(&RootPath::parse("").expect("root"))
                .map_err(|e| io_error(path, e))?;
            if used.saturating_add(size) > quota {
                return Err(remote(
                    "quota_exceeded",
                    format!("{path} ({size} bytes) would exceed the quota: {used} of {quota} bytes used"),
                ));
            }
        }
        Ok(())
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

    fn root(&self) -> &FileRoot {
        self.store.root()
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

/// Holds a path against concurrent uploads until dropped.
pub struct Claim {
    path: RootPath,
    set: Arc<Mutex<HashSet<RootPath>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.path);
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
                    let _ = self.root().remove_partial(&put.path);
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
                dirs.insert(super::root::parent_of(&put.path).to_owned());
            }),
        };
    }
    for dir in dirs {
        let _ = root.sync_dir(&dir);
    }
    outcomes
}

impl Files {
    async fn serve(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id();
        let reply = Header::new(request.header.cmd()).with_id(id);
        match request.header.cmd() {
            "ls" => {
                let path = self.path_of(&request)?;
                let entries = self.root().list(&path).map_err(|e| io_error(&path, e))?;
                let body = serde_json::to_vec(&entries).expect("entries serialize");
                Ok(session.writer.send(reply, &body).await?)
            }
            "stat" => {
                let path = self.path_of(&request)?;
                let entry = self.root().stat(&path).map_err(|e| io_error(&path, e))?;
                Ok(session
                    .writer
                    .send(Header::from_message("stat", &entry).with_id(id), b"")
                    .await?)
            }
            "mkdir" | "rm" => {
                let args: PathRequest = parse(&request)?;
                let path = checked(&args.path)?;
                let done = if request.header.cmd() == "mkdir" {
                    self.root().mkdir(&path, args.parents)
                } else {
                    self.root().remove(&path, args.recursive)
                };
                done.map_err(|e| io_error(&path, e))?;
                Ok(session.writer.send(reply, b"").await?)
            }
            "mv" => {
                let args: MoveRequest = parse(&request)?;
                let (from, to) = (checked(&args.from)?, checked(&args.to)?);
                self.root()
                    .rename(&from, &to, args.force)
                    .map_err(|e| io_error(&to, e))?;
                Ok(session.writer.send(reply, b"").await?)
            }
            "get" => self.get(request, session).await,
            "put" => self.put(request, session).await,
            "put_data" => self.put_data(request, session).await,
            _ => self.put_end(request, session).await,
        }
    }

    fn path_of(&self, request: &Request) -> Result<RootPath, ServiceError> {
        let args: PathRequest = parse(request)?;
        RootPath::parse(&args.path).map_err(bad_path)
    }

    /// Streams a file: its header, its bytes from `offset`, then the hash of the whole file.
    async fn get(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let args: PathRequest = parse(&request)?;
        let path = checked(&args.path)?;
        let std_file = self.root().open_file(&path).map_err(|e| io_error(&path, e))?;
        let meta = std_file.metadata().map_err(|e| io_error(&path, e))?;
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
        if !args.force && self.root().exists(&path) {
            return Err(remote(
                "exists",
                format!("{path} already exists (use --force to replace it)"),
            )
            .into());
        }
        let claim = self.store.claim(&path)?;
        self.store.check_room(&path, args.size)?;
        if let Some(expected) = &args.blake3 {
            return self.put_inline(id, claim, &args, expected, session).await;
        }
        let std_file = self.root().open_partial(&path).map_err(|e| io_error(&path, e))?;
        let mut upload = Upload {
            path,
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
        let path = claim.path.clone();
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

    /// Verifies a complete upload and moves it into place.
    async fn finish(&self, mut upload: Upload, expected: &str) -> Result<Header, ServiceError> {
        let path = upload.path.clone();
        if upload.written != upload.size {
            return Err(bad_request(format!(
                "{path}: {} of {} bytes received",
                upload.written, upload.size
            ))
            .into());
        }
        let actual = upload.hasher.finalize().to_hex();
        if actual.as_str() != expected {
            let _ = self.root().remove_partial(&path);
            return Err(remote(
                "hash_mismatch",
                format!("{path}: the data does not match its BLAKE3 hash; nothing was written"),
            )
            .into());
        }
        upload.file.flush().await.map_err(|e| io_error(&path, e))?;
        let file = upload.file.into_std().await;
        apply_metadata(&file, upload.mode, upload.mtime).map_err(|e| io_error(&path, e))?;
        self.root()
            .commit_partial(&path, &file, upload.force)
            .map_err(|e| io_error(&path, e))?;
        Ok(Header::new("put_ok")
            .with("size", upload.size)
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
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        hasher.update(&buf[..n]);
        remaining -= n as u64;
    }
    Ok(())
}

/// Sets mode and modification time (for `-p`).
pub fn apply_metadata(file: &std::fs::File, mode: Option<u32>, mtime: Option<i64>) -> io::Result<()> {
    if let Some(mode) = mode {
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode & 0o7777))?;
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
        _ if error.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            return remote("bad_path", format!("{path} leads outside the file root"));
        }
        _ if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => "bad_path",
        _ => "io",
    };
    remote(code, format!("{path}: {error}"))
}
