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

use std::collections::{BinaryHeap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use serde::{Deserialize, Serialize};

use super::tree;
use crate::text::escape;

/// Suffix of partial uploads; names ending in it are reserved.
pub const PARTIAL_SUFFIX: &str = ".sockit-part";
const MAX_PATH: usize = 4096;

/// What [`FileRoot::open_file`] refuses: a FIFO, a socket or a device.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file (a FIFO, a socket or a device is never served)")]
pub struct NotAFile;

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

    /// `name` inside this directory (for the root, `name` itself: never an absolute `/name`).
    pub fn join(&self, name: &str) -> Result<RootPath, String> {
        if self.is_root() {
            return RootPath::parse(name);
        }
        RootPath::parse(&format!("{}/{name}", self.0))
    }
}

impl std::fmt::Display for RootPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", escape(&self.0))
    }
}

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

    /// Opens a regular file for reading. `O_NONBLOCK`, so that a FIFO or a device in the root
    /// cannot hold the opening thread; anything but a regular file is then refused.
    pub fn open_file(&self, path: &RootPath) -> io::Result<File> {
        let fd = self.open_beneath(path.as_str(), OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        let file = File::from(fd);
        let kind = file.metadata()?.file_type();
        if kind.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        if !kind.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotAFile));
        }
        Ok(file)
    }

    pub fn stat(&self, path: &RootPath) -> io::Result<Entry> {
        let fd = self.open_beneath(path.as_str(), OFlags::PATH, Mode::empty())?;
        Ok(entry(path.name(), &rustix::fs::fstat(&fd)?))
    }

    /// One page of a directory's entries: at most `limit`, sorted by name, the first after
    /// `after`, without sockit's partial files; and whether more follow. However large the
    /// directory, only one page of names is held and only its entries are examined.
    pub fn list(&self, path: &RootPath, after: &str, limit: usize) -> io::Result<(Vec<Entry>, bool)> {
        let fd = self.open_beneath(path.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut smallest = BinaryHeap::new();
        for item in rustix::fs::Dir::read_from(&fd)? {
            let item = item?;
            let name = item.file_name().to_string_lossy();
            if name == "." || name == ".." || name.ends_with(PARTIAL_SUFFIX) || *name <= *after {
                continue;
            }
            if smallest.len() <= limit || smallest.peek().is_some_and(|top: &String| *name < **top) {
                smallest.push(name.into_owned());
                if smallest.len() > limit + 1 {
                    smallest.pop();
                }
            }
        }
        let mut names = smallest.into_sorted_vec();
        let more = names.len() > limit;
        names.truncate(limit);
        let entries = names
            .iter()
            .filter_map(|name| {
                let stat = rustix::fs::statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
                Some(entry(name, &stat))
            })
            .collect();
        Ok((entries, more))
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

    /// Removes a file or an empty directory; with `recursive`, a directory and everything in
    /// it, partial uploads included, however deep (see [`tree::walk`]).
    pub fn remove(&self, path: &RootPath, recursive: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
            return Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?);
        }
        if recursive {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            tree::walk(
                rustix::fs::openat(&dir, name, flags, Mode::empty())?,
                &mut tree::Remover,
            )?;
        }
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
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

    /// Who the partial file of an upload to `path` is (device, inode), if there is one.
    pub fn partial_identity(&self, path: &RootPath) -> io::Result<(u64, u64)> {
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, partial_name(name).as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok((stat.st_dev, stat.st_ino))
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

    /// Total size of the files in the root, partial uploads included, except the partial
    /// files in `skip` (by device and inode: uploads in progress, counted by what they reserved).
    pub fn usage(&self, skip: &HashSet<(u64, u64)>) -> io::Result<u64> {
        let mut usage = Usage { skip, total: 0 };
        tree::walk(
            self.open_beneath("", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?,
            &mut usage,
        )?;
        Ok(usage.total)
    }

    /// Removes the partial uploads last changed before `cutoff`, except those `in_use` says
    /// an upload holds (asked as each is found, since a walk may take a while and an upload
    /// may resume an old partial meanwhile); returns how many went. The change time, not the modification
    /// time: `-p` sets a partial's mtime to the sender's, however old, before it is renamed.
    pub fn expire_partials(
        &self,
        cutoff: SystemTime,
        in_use: &dyn Fn((u64, u64)) -> bool,
    ) -> io::Result<u64> {
        let mut expiry = Expiry {
            cutoff: cutoff
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            in_use,
            removed: 0,
        };
        tree::walk(
            self.open_beneath("", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?,
            &mut expiry,
        )?;
        Ok(expiry.removed)
    }
}

/// Adds up file sizes for [`FileRoot::usage`].
struct Usage<'a> {
    skip: &'a HashSet<(u64, u64)>,
    total: u64,
}

impl tree::Visitor for Usage<'_> {
    fn entry(&mut self, _dir: &OwnedFd, _name: &CStr, stat: &Stat) -> io::Result<()> {
        if !self.skip.contains(&(stat.st_dev, stat.st_ino)) {
            self.total = self.total.saturating_add(stat.st_size as u64);
        }
        Ok(())
    }
}

/// Removes old partial files for [`FileRoot::expire_partials`].
struct Expiry<'a> {
    cutoff: i64,
    in_use: &'a dyn Fn((u64, u64)) -> bool,
    removed: u64,
}

impl tree::Visitor for Expiry<'_> {
    fn entry(&mut self, dir: &OwnedFd, name: &CStr, stat: &Stat) -> io::Result<()> {
        let partial = name.to_bytes().ends_with(PARTIAL_SUFFIX.as_bytes());
        if partial && stat.st_ctime < self.cutoff && !(self.in_use)((stat.st_dev, stat.st_ino)) {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => self.removed += 1,
                Err(rustix::io::Errno::NOENT) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// The directory part of a path (`""` for the root).
pub fn parent_of(path: &RootPath) -> &str {
    path.split().map_or("", |(parent, _)| parent)
}

fn partial_name(name: &str) -> String {
    format!(".{name}{PARTIAL_SUFFIX}")
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
    fn a_name_joined_to_the_root_stays_relative() {
        let top = RootPath::parse("").unwrap().join("dir").unwrap();
        assert_eq!(top.as_str(), "dir");
        assert_eq!(top.join("f").unwrap().as_str(), "dir/f");
    }

    #[test]
    fn listings_come_in_pages_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let root = FileRoot::open(dir.path()).unwrap();
        for name in ["c", "a", "e", "b", "d", ".a.sockit-part"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let names = |(entries, more): (Vec<Entry>, bool)| {
            let names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
            (names.join(""), more)
        };
        let top = RootPath::parse("").unwrap();
        assert_eq!(names(root.list(&top, "", 2).unwrap()), ("ab".into(), true));
        assert_eq!(names(root.list(&top, "b", 2).unwrap()), ("cd".into(), true));
        assert_eq!(names(root.list(&top, "d", 2).unwrap()), ("e".into(), false));
        assert_eq!(names(root.list(&top, "", 5).unwrap()), ("abcde".into(), false));
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
        assert!(root.list(&RootPath::parse("out").unwrap(), "", 10).is_err());
    }
}
