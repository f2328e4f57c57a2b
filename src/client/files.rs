//! File transfer, client side: the counterpart of `services/files/`, speaking the messages of
//! [`crate::proto::files`].
//!
//! Uploads and downloads resume by default: an interrupted transfer leaves a partial file
//! (`.NAME.sockit-part`) on the receiving side, and the next attempt continues after the part
//! whose hash both sides agree on. Every transfer ends with a BLAKE3 check of the whole file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Semaphore, mpsc};

use super::{Client, ClientError};
use crate::disk::{DiskReader, DiskWriter, apply_metadata, hash_prefix};
use crate::proto::files::{
    BadRequest, Entry, FileMessage, Get, GetData, GetEnd, INLINE_MAX, List, ListPage, Mkdir, Move,
    PRESERVED_MODE_BITS, Put, PutData, PutEnd, PutOk, PutReady, Remove, Stat,
};
use crate::proto::path::{RootPath, partial_name};
use crate::wire::{Connection, ErrorCode, Header, RemoteError};

/// How to transfer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferOptions {
    /// Replace an existing file.
    pub force: bool,
    /// Keep mode and modification time.
    pub preserve: bool,
}

/// What a finished transfer moved.
#[derive(Clone, Debug, PartialEq)]
pub struct Transferred {
    /// Bytes of the whole file.
    pub size: u64,
    /// Bytes that were already there from an interrupted attempt.
    pub resumed_from: u64,
    /// The whole file's BLAKE3 hash (hex), checked against the other side's.
    pub blake3: String,
}

impl Client {
    /// Every entry of a directory, sorted by name, asked for a page at a time.
    pub async fn list(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        let mut entries = Vec::new();
        let mut request = List {
            path: path.to_owned(),
            ..List::default()
        };
        loop {
            let reply = self.call(request.to_header(), b"").await?;
            let page = ListPage::from_message(&reply.header, &reply.body)?;
            entries.extend(page.entries);
            match page.next {
                Some(next) if next > request.after => request.after = next,
                _ => return Ok(entries),
            }
        }
    }

    /// One entry, file or directory.
    pub async fn stat(&mut self, path: &str) -> Result<Entry, ClientError> {
        let request = Stat {
            path: path.to_owned(),
        };
        let reply = self.call(request.to_header(), b"").await?;
        Ok(Entry::from_header(&reply.header)?)
    }

    /// Creates a directory; `parents` creates the missing ones above it too (as `mkdir -p`).
    pub async fn mkdir(&mut self, path: &str, parents: bool) -> Result<(), ClientError> {
        let request = Mkdir {
            path: path.to_owned(),
            parents,
        };
        self.call(request.to_header(), b"").await?;
        Ok(())
    }

    /// Removes a file or an empty directory; `recursive` removes a directory with its contents.
    pub async fn remove(&mut self, path: &str, recursive: bool) -> Result<(), ClientError> {
        let request = Remove {
            path: path.to_owned(),
            recursive,
        };
        self.call(request.to_header(), b"").await?;
        Ok(())
    }

    /// Moves `from` to `to`; an existing `to` is replaced only with `force`.
    pub async fn rename(&mut self, from: &str, to: &str, force: bool) -> Result<(), ClientError> {
        let request = Move {
            from: from.to_owned(),
            to: to.to_owned(),
            force,
        };
        self.call(request.to_header(), b"").await?;
        Ok(())
    }

    /// Uploads `local` to `remote`. Small files go in one frame; larger ones resume from a
    /// partial upload whose hash matches the start of `local`. `progress` sees bytes sent.
    pub async fn put_file(
        &mut self,
        local: &Path,
        remote: &str,
        options: TransferOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Transferred, ClientError> {
        let mut file = File::open(local).await.map_err(|e| local_error(local, e))?;
        let meta = file.metadata().await.map_err(|e| local_error(local, e))?;
        let size = meta.len();
        let put = put_request(remote, size, options, &meta);
        if size <= INLINE_MAX {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data)
                .await
                .map_err(|e| local_error(local, e))?;
            let inline = Put {
                blake3: Some(blake3::hash(&data).to_hex().to_string()),
                ..put
            };
            let reply = self.call(inline.to_header(), &data).await?;
            progress(size);
            return transferred(&reply.header, size, 0);
        }
        let streamed = Put { resume: true, ..put };
        let ready = self.call_when_free(streamed.to_header(), b"").await?;
        let id = ready.header.id().unwrap_or(0);
        let offered = PutReady::from_header(&ready.header)?;
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0;
        if offered.offset > 0 && offered.offset <= size {
            hash_prefix(&mut file, offered.offset, &mut hasher)
                .await
                .map_err(|e| local_error(local, e))?;
            if hasher.finalize().to_hex().as_str() == offered.prefix_blake3 {
                offset = offered.offset;
            } else {
                hasher = blake3::Hasher::new();
            }
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| local_error(local, e))?;
        progress(offset);
        let data = PutData { offset }
            .to_header()
            .with_id(Some(id))
            .with_body_len(size - offset);
        let writer = &mut self.conn.writer;
        writer.queue_header(&data)?;
        let mut disk = DiskReader::spawn(file.into_std().await, hasher, size - offset);
        while let Some(chunk) = disk.next().await {
            let chunk = chunk.map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    ClientError::Protocol(format!("{} shrank while being sent", local.display()))
                }
                _ => local_error(local, error),
            })?;
            writer.send_body(&chunk).await?;
            progress(chunk.len() as u64);
            disk.recycle(chunk);
        }
        let hasher = disk.finish().await.map_err(|e| local_error(local, e))?;
        let end = PutEnd {
            blake3: hasher.finalize().to_hex().to_string(),
        };
        writer.queue(end.to_header().with_id(Some(id)), b"")?;
        writer.flush().await?;
        let reply = self.conn.read_message().await?.ok_or(ClientError::Closed)?;
        if let Some(error) = RemoteError::from_header(&reply.header) {
            return Err(ClientError::Remote(error));
        }
        transferred(&reply.header, size, offset)
    }

    /// Uploads many small files (each at most [`INLINE_MAX`]) without a round trip per file.
    ///
    /// Three things overlap: a blocking thread reads the local files ahead, puts stream out
    /// while up to a window of them awaits its answer, and answers are read as they come. The
    /// window is larger than the server's commit group, so the server always has a full group
    /// to commit with one filesystem sync.
    pub async fn put_small_files(
        &mut self,
        files: &[(PathBuf, String)],
        options: TransferOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Vec<Result<Transferred, ClientError>>, ClientError> {
        const WINDOW_FILES: usize = 4096;
        const WINDOW_BYTES: usize = 32 * 1024 * 1024;
        let mut results: Vec<Option<Result<Transferred, ClientError>>> = Vec::new();
        results.resize_with(files.len(), || None);
        let mut loaded = read_ahead(files.to_vec());
        let window = Semaphore::new(WINDOW_BYTES);
        let (in_flight, mut awaited) = mpsc::unbounded_channel::<(usize, u64, u64)>();
        let first_id = self.next_id;
        let Connection { reader, writer } = &mut self.conn;
        let (local_failures, next_id) = {
            let send = async {
                let mut failures = Vec::new();
                let mut id = first_id;
                let mut queued = 0;
                while let Some((index, file)) = loaded.recv().await {
                    let (data, header) = match file.and_then(|file| inline_put(&files[index], file, options))
                    {
                        Ok(put) => put,
                        Err(error) => {
                            failures.push((index, error));
                            continue;
                        }
                    };
                    let size = data.len() as u64;
                    let permit = window.acquire_many(1 + data.len() as u32).await.expect("open");
                    permit.forget();
                    writer.queue(header.with_id(Some(id)), &data)?;
                    let _ = in_flight.send((index, id, size));
                    id += 1;
                    queued += 1;
                    if queued == WINDOW_FILES / 4
                        || loaded.is_empty()
                        || window.available_permits() < INLINE_MAX as usize
                    {
                        writer.flush().await?;
                        queued = 0;
                    }
                }
                writer.flush().await?;
                drop(in_flight);
                Ok::<_, ClientError>((failures, id))
            };
            let receive = async {
                while let Some((index, id, size)) = awaited.recv().await {
                    let reply = reader.read_message().await?.ok_or(ClientError::Closed)?;
                    if reply.header.id() != Some(id) {
                        return Err(ClientError::Protocol(format!(
                            "answer for {:?}, expected {id}",
                            reply.header.id()
                        )));
                    }
                    window.add_permits(1 + size as usize);
                    results[index] = Some(match RemoteError::from_header(&reply.header) {
                        Some(error) => Err(ClientError::Remote(error)),
                        None => {
                            progress(size);
                            transferred(&reply.header, size, 0)
                        }
                    });
                }
                Ok(())
            };
            tokio::try_join!(send, receive)?.0
        };
        self.next_id = next_id;
        for (index, error) in local_failures {
            results[index] = Some(Err(error));
        }
        Ok(results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(ClientError::Protocol("no answer".into()))))
            .collect())
    }

    /// Asks for `remote` from `offset` and reads the `get_data` header, asked again for up to
    /// 3 s while the server answers `busy` (its downloads are bounded per address and in all,
    /// and free up as others finish).
    async fn start_get(&mut self, remote: &str, offset: u64) -> Result<Header, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let id = self.next_id();
            let request = Get {
                path: remote.to_owned(),
                offset,
            };
            self.conn.send(request.to_header().with_id(Some(id)), b"").await?;
            let header = match self.conn.reader.read_frame().await? {
                Some(crate::wire::Frame::Header(header)) => header,
                _ => return Err(ClientError::Closed),
            };
            match RemoteError::from_header(&header) {
                None => return Ok(header),
                Some(error) if error.code == ErrorCode::Busy && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(error) => return Err(ClientError::Remote(error)),
            }
        }
    }

    /// Downloads `remote` to `local`, resuming a partial download next to it.
    pub async fn get_file(
        &mut self,
        remote: &str,
        local: &Path,
        options: TransferOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Transferred, ClientError> {
        if !options.force && tokio::fs::try_exists(local).await.unwrap_or(false) {
            return Err(ClientError::LocalExists(local.to_owned()));
        }
        let partial = partial_path(local);
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .await
            .map_err(|e| local_error(&partial, e))?;
        let have = file.metadata().await.map_err(|e| local_error(&partial, e))?.len();
        let start = GetData::from_header(&self.start_get(remote, have).await?)?;
        let reader = &mut self.conn.reader;
        let mut hasher = blake3::Hasher::new();
        hash_prefix(&mut file, have, &mut hasher)
            .await
            .map_err(|e| local_error(&partial, e))?;
        progress(have);
        let disk = DiskWriter::spawn(file.into_std().await, hasher);
        while let Some(chunk) = reader.read_body_chunk().await? {
            let len = chunk.len() as u64;
            if !disk.write(chunk).await {
                break;
            }
            progress(len);
        }
        let (file, hasher) = disk.finish().await.map_err(|e| local_error(&partial, e))?;
        let end = reader.read_message().await?.ok_or(ClientError::Closed)?;
        let end = GetEnd::from_header(&end.header)?;
        let actual = hasher.finalize().to_hex();
        if end.blake3 != actual.as_str() {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ClientError::Protocol(format!(
                "{remote}: the data does not match its BLAKE3 hash; the partial download was discarded, run again"
            )));
        }
        file.sync_all().map_err(|e| local_error(&partial, e))?;
        if options.preserve {
            apply_metadata(&file, start.mode, start.mtime).map_err(|e| local_error(local, e))?;
        }
        std::fs::rename(&partial, local).map_err(|e| local_error(local, e))?;
        Ok(Transferred {
            size: start.size,
            resumed_from: have,
            blake3: actual.to_string(),
        })
    }
}

/// `DIR/.NAME.sockit-part` for `DIR/NAME`.
pub fn partial_path(local: &Path) -> PathBuf {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(partial_name(&name))
}

/// A name from the server, for a local path: one plain component, or refused.
pub fn safe_local_name(name: &str) -> Result<&str, ClientError> {
    match RootPath::parse(name) {
        Ok(path) if !path.is_root() && !path.as_str().contains('/') && path.as_str() == name => Ok(name),
        _ => Err(ClientError::Protocol(format!(
            "the server sent an unsafe name {}; refusing to write it",
            crate::text::escape(name)
        ))),
    }
}

/// A local file read whole, with its metadata.
type LoadedFile = Result<(Vec<u8>, std::fs::Metadata), ClientError>;

/// Reads `files` one after another on a blocking thread, a few ahead of the sender.
fn read_ahead(files: Vec<(PathBuf, String)>) -> mpsc::Receiver<(usize, LoadedFile)> {
    let (loaded, receiver) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        for (index, (local, _)) in files.iter().enumerate() {
            let file = std::fs::read(local)
                .and_then(|data| Ok((data, std::fs::metadata(local)?)))
                .map_err(|e| local_error(local, e));
            if loaded.blocking_send((index, file)).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The `put` frame of a small file, whose data travels in the same frame.
fn inline_put(
    (local, remote): &(PathBuf, String),
    (data, meta): (Vec<u8>, std::fs::Metadata),
    options: TransferOptions,
) -> Result<(Vec<u8>, Header), ClientError> {
    if data.len() as u64 > INLINE_MAX {
        return Err(ClientError::Local(format!(
            "{} grew too large to batch",
            local.display()
        )));
    }
    let put = Put {
        blake3: Some(blake3::hash(&data).to_hex().to_string()),
        ..put_request(remote, data.len() as u64, options, &meta)
    };
    Ok((data, put.to_header()))
}

/// The `put` of `size` bytes to `remote`, with the local file's mode and time when they are
/// to be preserved; the caller makes it inline or streamed.
fn put_request(remote: &str, size: u64, options: TransferOptions, meta: &std::fs::Metadata) -> Put {
    use std::os::unix::fs::MetadataExt;
    let preserved = options.preserve;
    Put {
        path: remote.to_owned(),
        size,
        force: options.force,
        mode: preserved.then(|| meta.mode() & PRESERVED_MODE_BITS),
        mtime: preserved.then(|| meta.mtime()),
        ..Put::default()
    }
}

fn transferred(header: &Header, size: u64, resumed_from: u64) -> Result<Transferred, ClientError> {
    Ok(Transferred {
        size,
        resumed_from,
        blake3: PutOk::from_header(header)?.blake3,
    })
}

/// A reply the server sent that cannot be read as the message it should be.
impl From<BadRequest> for ClientError {
    fn from(error: BadRequest) -> ClientError {
        ClientError::Protocol(error.0)
    }
}

fn local_error(path: &Path, error: std::io::Error) -> ClientError {
    ClientError::Local(format!("{}: {error}", path.display()))
}
