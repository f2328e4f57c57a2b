//! The file root: the one directory file services may touch, and nothing outside it.
//!
//! Two walls keep paths inside. Names are checked as text first (relative, no `..`, no NUL or
//! control characters), so a refusal can say what was wrong. Then every open goes through
//! `openat2` with `RESOLVE_BENEATH` relative to the root's descriptor, so the kernel refuses any
//! path, symlinks included, that would resolve outside the root, even if the tree changes
//! between check and use.
//!
//! Uploads are atomic: data goes to a partial file next to its target (`.NAME.sockit-part`),
//! is fsynced, and only then renamed over the final name. A reader never sees half a file, and
//! an interrupted upload leaves the previous version intact and its partial ready to resume.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// Suffix of partial uploads; names ending in it are reserved.
pub const PARTIAL_SUFFIX: &str = ".sockit-part";
const MAX_PATH: usize = 4096;

/// A path inside the root, checked: relative, `/`-separated, no empty, `.` or `..` components,
/// no NUL or control characters. The empty path is the root itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootPath(String);

impl RootPath {
    pub fn parse(text: &str) -> Result<RootPath, String> {
        let shown = escape(text);
        if text.len() > MAX_PATH {
            return Err(format!("path {shown} is longer than {MAX_PATH} bytes"));
        }
        if text.starts_with('/') {
            return Err(format!(
                "path {shown} is absolute; paths are relative to the file root"
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(format!("path {shown} contains control characters"));
        }
        let mut parts = Vec::new();
        for part in text.split('/').filter(|part| !part.is_empty() && *part != ".") {
            if part == ".." {
                return Err(format!("path {shown} climbs out with `..`"));
            }
            if part.ends_with(PARTIAL_SUFFIX) {
                return Err(format!(
                    "path {shown} ends in {PARTIAL_SUFFIX}, a name sockit reserves"
                ));
            }
            parts.push(part);
        }
        Ok(RootPath(parts.join("/")))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory and the last component (`None` for the root itself).
    fn split(&self) -> Option<(&str, &str)> {
        match self.0.rsplit_once('/') {
            Some((parent, name)) => Some((parent, name)),
            None if self.0.is_empty() => None,
            None => Some(("", &self.0)),
        }
    }

    pub fn name(&self) -> &str {
        self.split().map_or("", |(_, name)| name)
    }

    pub fn join(&self, name: &str) -> Result<RootPath, String> {
        RootPath::parse(&format!("{}/{name}", self.0))
    }
}

impl std::fmt::Display for RootPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", escape(&self.0))
    }
}

/// Escaping of others' text lives in [`crate::text`]; kept here for the paths that quote it.
pub use crate::text::{escape, escape_at_most};

/// One directory entry, as `ls` and `stat` report it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    pub mode: u32,
}

pub struct FileRoot {
    dir: OwnedFd,
    path: PathBuf,
}

impl FileRoot {
    /// Opens (creating if needed) the root directory.
    pub fn open(path: &Path) -> io::Result<FileRoot> {
        std::fs::create_dir_all(path)?;
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(FileRoot {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` beneath the root; the kernel refuses any escape.
    fn open_beneath(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let path = if path.is_empty() { "." } else { path };
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        Ok(rustix::fs::openat2(
            &self.dir,
            path,
            flags | OFlags::CLOEXEC,
            mode,
            resolve,
        )?)
    }

    /// The directory holding `path`, and `path`'s last component.
    fn parent<'p>(&self, path: &'p RootPath) -> io::Result<(OwnedFd, &'p str)> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not on the root itself"))?;
        let dir = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok((dir, name))
    }

    pub fn open_file(&self, path: &RootPath) -> io::Result<File> {
        let fd = self.open_beneath(path.as_str(), OFlags::RDONLY, Mode::empty())?;
        let file = File::from(fd);
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        Ok(file)
    }

    pub fn stat(&self, path: &RootPath) -> io::Result<Entry> {
        let fd = self.open_beneath(path.as_str(), OFlags::PATH, Mode::empty())?;
        Ok(entry(path.name(), &rustix::fs::fstat(&fd)?))
    }

    /// The entries of a directory, sorted by name, without sockit's partial files.
    pub fn list(&self, path: &RootPath) -> io::Result<Vec<Entry>> {
        let fd = self.open_beneath(path.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut entries = Vec::new();
        for item in rustix::fs::Dir::read_from(&fd)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." || name.ends_with(PARTIAL_SUFFIX) {
                continue;
            }
            if let Ok(stat) = rustix::fs::statat(&fd, item.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                entries.push(entry(&name, &stat));
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub fn mkdir(&self, path: &RootPath, parents: bool) -> io::Result<()> {
        if parents {
            let mut sofar = String::new();
            for part in path.as_str().split('/') {
                sofar = if sofar.is_empty() {
                    part.to_owned()
                } else {
                    format!("{sofar}/{part}")
                };
                match self.mkdir(&RootPath(sofar.clone()), false) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    other => other?,
                }
            }
            return Ok(());
        }
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?)
    }

    /// Removes a file or an empty directory; with `recursive`, a directory and its contents.
    pub fn remove(&self, path: &RootPath, recursive: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
            return Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?);
        }
        if recursive {
            for child in self.list_all(path)? {
                self.remove(&path.join(&child).map_err(invalid)?, true)?;
            }
        }
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
    }

    /// Every name in a directory, partial files included.
    fn list_all(&self, path: &RootPath) -> io::Result<Vec<String>> {
        let fd = self.open_beneath(path.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut names = Vec::new();
        for item in rustix::fs::Dir::read_from(&fd)? {
            let name = item?.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Renames within the root; refuses to replace an existing target unless `force`.
    pub fn rename(&self, from: &RootPath, to: &RootPath, force: bool) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let flags = if force {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        Ok(rustix::fs::renameat_with(
            &from_dir, from_name, &to_dir, to_name, flags,
        )?)
    }

    /// The partial file of an upload to `path`: created if absent, kept (for resuming) if present.
    pub fn open_partial(&self, path: &RootPath) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let partial = partial_name(name);
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            &dir,
            partial.as_str(),
            flags,
            Mode::from_raw_mode(0o644),
        )?))
    }

    pub fn remove_partial(&self, path: &RootPath) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::unlinkat(
            &dir,
            partial_name(name).as_str(),
            AtFlags::empty(),
        )?)
    }

    /// Makes a complete, verified partial the file at `path`: fsync, rename, fsync the directory.
    pub fn commit_partial(&self, path: &RootPath, file: &File, force: bool) -> io::Result<()> {
        file.sync_all()?;
        self.rename_partial(path, force)?;
        self.sync_dir(parent_of(path))
    }

    /// Renames a partial (already on stable storage) over its target.
    pub fn rename_partial(&self, path: &RootPath, force: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let flags = if force {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        Ok(rustix::fs::renameat_with(
            &dir,
            partial_name(name).as_str(),
            &dir,
            name,
            flags,
        )?)
    }

    /// Makes renames in a directory durable.
    pub fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let dir = self.open_beneath(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(rustix::fs::fsync(&dir)?)
    }

    /// Flushes everything written on the root's filesystem: one call for many small files.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        let dir = self.open_beneath("", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(rustix::fs::syncfs(&dir)?)
    }

    /// Whether something exists at `path`.
    pub fn exists(&self, path: &RootPath) -> bool {
        self.stat(path).is_ok()
    }

    /// Bytes free for an unprivileged user on the root's filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Total size of the files under `path`.
    pub fn usage(&self, path: &RootPath) -> io::Result<u64> {
        let mut total = 0;
        for entry in self.list(path)? {
            total += match entry.kind.as_str() {
                "dir" => self.usage(&path.join(&entry.name).map_err(invalid)?)?,
                _ => entry.size,
            };
        }
        Ok(total)
    }
}

/// The directory part of a path (`""` for the root).
pub fn parent_of(path: &RootPath) -> &str {
    path.split().map_or("", |(parent, _)| parent)
}

fn partial_name(name: &str) -> String {
    format!(".{name}{PARTIAL_SUFFIX}")
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn entry(name: &str, stat: &rustix::fs::Stat) -> Entry {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    };
    Entry {
        name: name.to_owned(),
        kind: kind.to_owned(),
        size: stat.st_size as u64,
        mtime: stat.st_mtime,
        mode: stat.st_mode & 0o7777,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_as_text() {
        assert_eq!(RootPath::parse("a//b/./c/").unwrap().as_str(), "a/b/c");
        assert!(RootPath::parse("").unwrap().is_root());
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "nul\0byte",
            "new\nline",
            "esc\x1b[31m",
            "x.sockit-part",
        ] {
            let error = RootPath::parse(bad).unwrap_err();
            assert!(!error.contains('\0') && !error.contains('\x1b'), "{error}");
        }
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused_by_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRoot::open(&dir.path().join("root")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("root/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("root/passwd")).unwrap();
        let out = RootPath::parse("out/passwd").unwrap();
        assert!(root.open_file(&out).is_err());
        assert!(root.open_file(&RootPath::parse("passwd").unwrap()).is_err());
        assert!(root.list(&RootPath::parse("out").unwrap()).is_err());
    }
}
