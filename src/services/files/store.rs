//! The file store: the root with what every service writing into it must share, whichever
//! protocol it speaks (the native `put` and the classic FTP homework both write here).
//!
//! One upload per path at a time, the quota with the space each running upload has reserved,
//! and bounds on open uploads and running downloads (per connection, per source address and in
//! all), so that no client can hold every file descriptor, blocking thread or byte of disk.
//! What an upload holds is a [`Claim`], given back when it is dropped, however the upload ends.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use super::error::io_error;
use super::root::FileRoot;
use crate::proto::files::EXISTS_NOTE;
use crate::proto::path::RootPath;
use crate::source::{PerSource, SourceSlot};
use crate::wire::{ErrorCode, RemoteError};

/// File service settings.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// The directory served; created if missing.
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
pub(crate) struct FileStore {
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
pub(crate) const MAX_DOWNLOADS_TOTAL: usize = 128;

/// A running download's place among the bounded ones, given back when dropped.
pub(crate) struct DownloadSlot {
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
    /// Uploads holding a partial file open, in all and by source (see [`crate::services::Peer::source`]).
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
    pub(crate) fn open(config: &FilesConfig) -> io::Result<FileStore> {
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
    pub(crate) fn download_slot(&self, source: Option<IpAddr>) -> Result<DownloadSlot, RemoteError> {
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

    pub(crate) fn root(&self) -> &FileRoot {
        &self.root
    }

    pub(crate) fn config(&self) -> &FilesConfig {
        &self.config
    }

    fn in_progress(&self) -> std::sync::MutexGuard<'_, InProgress> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` on the blocking pool: every filesystem call of the file services goes
    /// through here, so a slow disk or a FIFO never holds an async worker.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&FileStore) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .unwrap_or_else(|e| {
                Err(RemoteError::new(
                    ErrorCode::Io,
                    format!("file operation failed: {e}"),
                ))
            })
    }

    /// Claims `path` for one upload of `size` bytes and reserves them in the quota, until the
    /// claim is dropped. Refused (before any byte is written) if something is at `path` and
    /// not `replace`, if another upload holds the path (`busy`), or if the disk or the quota
    /// cannot take `size` more bytes. Blocking.
    pub(crate) fn reserve(&self, path: &RootPath, size: u64, replace: bool) -> Result<Claim, RemoteError> {
        if !replace && self.root.exists(path) {
            return Err(RemoteError::new(
                ErrorCode::Exists,
                format!("{path} already exists {EXISTS_NOTE}"),
            ));
        }
        let mut claim = self.claim(path)?;
        let free = self.root().free_space().map_err(|e| io_error(path, e))?;
        if size > free {
            return Err(RemoteError::new(
                ErrorCode::NoSpace,
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
            return Err(RemoteError::new(
                ErrorCode::QuotaExceeded,
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
    pub(crate) fn open_upload(
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
    pub(crate) fn expire_partials(&self) -> io::Result<u64> {
        let cutoff = SystemTime::now()
            .checked_sub(self.config.partial_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let in_use = |partial| self.in_progress().partials.contains(&partial);
        self.root.expire_partials(cutoff, &in_use)
    }

    /// Expires abandoned partial files now and then every quarter of their maximum age
    /// (between 100 ms and an hour), on the blocking pool, for as long as the store lives.
    /// Does nothing outside a Tokio runtime.
    pub(crate) fn start_expiry(self: &Arc<Self>) {
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

/// An upload's hold on its path, its reserved bytes, its partial file and its slot among the
/// server's open uploads; all released when dropped.
pub(crate) struct Claim {
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

    pub(crate) fn path(&self) -> &RootPath {
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
