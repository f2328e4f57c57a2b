//! The file server of the course's FTP homework (8083).
//!
//! The course's client sends `struct.pack('i', len(header))`, the header
//! `{"cmd": "put", "filename": F, "filesize": N}` (F already reduced to its base name), then
//! N bytes, and expects no reply; several files may follow on one connection. The course's
//! server joins F to its upload directory (`os.path.normpath(os.path.join(server_dir, F))`,
//! so `../../etc/passwd` writes outside it), opens the target with `open(path, 'wb')` (a
//! reader sees half a file, a failed upload destroys the old one), trusts every declared
//! length, and serves one client at a time.
//!
//! Here, for `put`: only F's base name is used (the part after the last `/`), and a name
//! still invalid (`..`, empty, control characters, sockit's reserved partial suffix) is
//! refused. The size must be a whole number of bytes that the disk and the `--quota` can
//! take. The bytes go to a partial file in the file root, through the same checked, beneath-
//! the-root opens as the native `put`, and are renamed over the target only once all have
//! arrived and been synced; a client that leaves mid-file leaves nothing behind. Since the
//! course's client reads no reply, a refused `put` closes the connection (logged): that is the
//! one signal such a client notices. For `get` (`{"cmd": "get", "filename": F}`), the answer is
//! `struct.pack('i', len(header))` + `{"cmd": "get", "filename": F, "filesize": N}` + N bytes,
//! or the same header with `"filesize": 0` and an `"error"`, after which the connection goes
//! on; F is a path inside the root. Headers are limited to 64 KiB and checked before
//! anything is allocated; an unknown `cmd` is logged and skipped, as the course's server
//! skips it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{HeaderError, READ_CHUNK, header_bytes, read_header, shown};
use crate::proto::path::RootPath;
use crate::services::files::{FileStore, io_error};
use crate::services::unframed::{ServiceStream, StreamService};
use crate::source::source_key;

/// A request header, as loose as the course's: only `cmd` is always needed.
#[derive(Deserialize)]
struct FtpRequest {
    cmd: String,
    filename: Option<String>,
    filesize: Option<serde_json::Number>,
}

/// The answer to `get`.
#[derive(Serialize)]
pub(crate) struct GetReply<'a> {
    pub(crate) cmd: &'static str,
    pub(crate) filename: &'a str,
    pub(crate) filesize: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("refused put: {0}")]
    Put(String),
    #[error("the client left after {received} of {size} bytes of {path}; nothing was stored")]
    Vanished {
        path: RootPath,
        received: u64,
        size: u64,
    },
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

pub(crate) struct Ftp {
    store: Arc<FileStore>,
}

impl Ftp {
    pub(crate) fn new(store: Arc<FileStore>) -> Ftp {
        Ftp { store }
    }

    async fn serve_requests(&self, stream: &mut ServiceStream, peer: SocketAddr) -> Result<(), Refusal> {
        while let Some(request) = read_header::<FtpRequest>(stream).await? {
            match request.cmd.as_str() {
                "put" => self.put(stream, &request, peer).await?,
                "get" => {
                    self.get(stream, request.filename.as_deref().unwrap_or(""))
                        .await?
                }
                other => {
                    // Not a warning: one connection can send a hundred thousand a second.
                    debug!(cmd = %shown(other.as_bytes()), "unknown command skipped")
                }
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        stream: &mut ServiceStream,
        request: &FtpRequest,
        peer: SocketAddr,
    ) -> Result<(), Refusal> {
        let refuse = |message: String| Refusal::Put(message);
        let filename = request
            .filename
            .as_deref()
            .ok_or_else(|| refuse("no `filename`".into()))?;
        let size = request
            .filesize
            .as_ref()
            .ok_or_else(|| refuse("no `filesize`".into()))?;
        let size = size
            .as_u64()
            .ok_or_else(|| refuse(format!("`filesize` {size} is not a whole number of bytes")))?;
        let path = base_name(filename).map_err(refuse)?;
        let (claim, partial) = self
            .store
            .blocking(move |store| {
                let mut claim = store.reserve(&path, size, true)?;
                let file = store.open_upload(&mut claim, Some(source_key(peer.ip())))?;
                file.set_len(0).map_err(|e| io_error(claim.path(), e))?;
                Ok((claim, file))
            })
            .await
            .map_err(|e| refuse(e.message))?;
        let path = claim.path().clone();
        let mut file = tokio::fs::File::from_std(partial);
        let received = receive(stream, &mut file, size).await;
        let file = file.into_std().await;
        let stored = match received {
            Ok(received) if received == size => self.commit(&path, file).await,
            Ok(received) => Err(Refusal::Vanished {
                path: path.clone(),
                received,
                size,
            }),
            Err(error) => Err(refuse(io_error(&path, error).message)),
        };
        if stored.is_err() {
            let _ = self
                .store
                .blocking(move |store| Ok(store.root().remove_partial(&path)))
                .await;
        } else {
            info!(%path, size, "stored");
        }
        stored
    }

    /// Makes a complete upload the file at `path` (replacing any, as the course's `open(.., 'wb')`
    /// does): fsync, rename, fsync the directory, on a blocking thread.
    async fn commit(&self, path: &RootPath, file: std::fs::File) -> Result<(), Refusal> {
        let (store, path) = (self.store.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            store
                .root()
                .commit_partial(&path, &file, true)
                .map_err(|e| Refusal::Put(io_error(&path, e).message))
        })
        .await
        .map_err(|e| Refusal::Io(io::Error::other(e)))?
    }

    async fn get(&self, stream: &mut ServiceStream, filename: &str) -> Result<(), Refusal> {
        let opened = match RootPath::parse(filename) {
            Ok(path) if path.is_root() => Err("no filename".to_owned()),
            Ok(path) => self
                .store
                .blocking(move |store| {
                    let file = store.root().open_file(&path).map_err(|e| io_error(&path, e))?;
                    let size = file.metadata().map_err(|e| io_error(&path, e))?.len();
                    Ok((path, file, size))
                })
                .await
                .map_err(|e| e.message),
            Err(error) => Err(error.to_string()),
        };
        let (path, file, size) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                warn!(filename = %shown(filename.as_bytes()), "get refused: {error}");
                let reply = GetReply {
                    cmd: "get",
                    filename,
                    filesize: 0,
                    error: Some(error),
                };
                stream.write_all(&header_bytes(&reply)?).await?;
                return Ok(());
            }
        };
        let reply = GetReply {
            cmd: "get",
            filename,
            filesize: size,
            error: None,
        };
        stream.write_all(&header_bytes(&reply)?).await?;
        // The size is promised: a file that shrinks meanwhile ends the connection, one that
        // grows is sent as it was.
        let mut file = tokio::fs::File::from_std(file).take(size);
        let sent = tokio::io::copy(&mut file, stream).await?;
        if sent < size {
            return Err(Refusal::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} shrank while it was sent"),
            )));
        }
        info!(%path, size, "sent");
        Ok(())
    }
}

#[async_trait]
impl StreamService for Ftp {
    async fn serve(&self, mut stream: ServiceStream, peer: SocketAddr) -> io::Result<()> {
        match self.serve_requests(&mut stream, peer).await {
            Ok(()) => Ok(()),
            Err(Refusal::Io(error)) => Err(error),
            Err(refusal) => {
                warn!("{refusal}; connection closed");
                Ok(())
            }
        }
    }
}

/// The name an upload is stored under: the base name of what the client sent, checked as any
/// path in the file root is.
pub(crate) fn base_name(filename: &str) -> Result<RootPath, String> {
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let path = RootPath::parse(base).map_err(|refused| refused.to_string())?;
    if path.is_root() || base == "." {
        return Err(format!(
            "filename {} has no base name",
            shown(filename.as_bytes())
        ));
    }
    Ok(path)
}

/// Copies exactly `size` bytes (or fewer, if the client leaves) from `stream` into `file`;
/// how many arrived.
async fn receive(stream: &mut ServiceStream, file: &mut tokio::fs::File, size: u64) -> io::Result<u64> {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut received = 0;
    while received < size {
        let want = (size - received).min(READ_CHUNK as u64) as usize;
        buffer.clear();
        let n = match stream.read_buf(&mut (&mut buffer).limit(want)).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error)
                if error.kind() == io::ErrorKind::TimedOut
                    || error.kind() == io::ErrorKind::ConnectionReset =>
            {
                break;
            }
            Err(error) => return Err(error),
        };
        file.write_all(&buffer).await?;
        received += n as u64;
    }
    file.flush().await?;
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::base_name;

    #[test]
    fn only_base_names_are_stored_and_invalid_ones_refused() {
        assert_eq!(base_name("a.txt").unwrap().as_str(), "a.txt");
        assert_eq!(base_name("../../etc/passwd").unwrap().as_str(), "passwd");
        assert_eq!(base_name("/etc/passwd").unwrap().as_str(), "passwd");
        assert_eq!(base_name("dir\\x.txt").unwrap().as_str(), "dir\\x.txt");
        for bad in ["", "..", "a/..", ".", "dir/", "x\ny", ".a.sockit-part"] {
            assert!(base_name(bad).is_err(), "{bad:?}");
        }
    }
}
