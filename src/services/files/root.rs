//! The file root: the one directory file services may touch, and nothing outside it.
//!
//! Two walls keep paths inside. Names are checked as text first ([`RootPath`], in the
//! protocol, since the client checks names too), so a refusal can say what was wrong. Then
//! every open goes through `openat2` with `RESOLVE_BENEATH` relative to the root's descriptor,
//! so the kernel refuses any path, symlinks included, that would resolve outside the root, even
//! if the tree changes between check and use. The partial files of uploads are in
//! [`super::partial`].

use std::collections::{BinaryHeap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, Stat};

use super::tree;
use crate::proto::files::Entry;
use crate::proto::path::{PARTIAL_SUFFIX, RootPath};

/// What [`FileRoot::open_file`] refuses: a FIFO, a socket or a device.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file (a FIFO, a socket or a device is never served)")]
pub(crate) struct NotAFile;

/// The root directory, held open: every path is resolved beneath this descriptor.
pub(crate) struct FileRoot {
    dir: OwnedFd,
}

impl FileRoot {
    /// Opens (creating if needed) the root directory.
    pub(crate) fn open(path: &Path) -> io::Result<FileRoot> {
        std::fs::create_dir_all(path)?;
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(FileRoot { dir })
    }

    /// Opens `path` beneath the root; the kernel refuses any escape.
    pub(super) fn open_beneath(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
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

    /// The root itself, open for reading: where the walks over the whole root start.
    pub(super) fn top(&self) -> io::Result<OwnedFd> {
        self.open_beneath("", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// The directory holding `path`, and `path`'s last component.
    pub(super) fn parent<'p>(&self, path: &'p RootPath) -> io::Result<(OwnedFd, &'p str)> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not on the root itself"))?;
        let dir = self.open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok((dir, name))
    }

    /// Opens a regular file for reading. `O_NONBLOCK`, so that a FIFO or a device in the root
    /// cannot hold the opening thread; anything but a regular file is then refused.
    pub(crate) fn open_file(&self, path: &RootPath) -> io::Result<File> {
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

    pub(crate) fn stat(&self, path: &RootPath) -> io::Result<Entry> {
        let fd = self.open_beneath(path.as_str(), OFlags::PATH, Mode::empty())?;
        Ok(entry(path.name(), &rustix::fs::fstat(&fd)?))
    }

    /// One page of a directory's entries: at most `limit`, sorted by name, the first after
    /// `after`, without sockit's partial files; and whether more follow. However large the
    /// directory, only one page of names is held and only its entries are examined.
    pub(crate) fn list(&self, path: &RootPath, after: &str, limit: usize) -> io::Result<(Vec<Entry>, bool)> {
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

    pub(crate) fn mkdir(&self, path: &RootPath, parents: bool) -> io::Result<()> {
        if parents {
            for ancestor in path.ancestry() {
                match self.mkdir(&ancestor, false) {
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
    /// it, partial uploads included, however deep (see `tree.rs`).
    pub(crate) fn remove(&self, path: &RootPath, recursive: bool) -> io::Result<()> {
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
    pub(crate) fn rename(&self, from: &RootPath, to: &RootPath, force: bool) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        Ok(rustix::fs::renameat_with(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            replacing(force),
        )?)
    }

    /// Makes renames in a directory durable.
    pub(crate) fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let dir = self.open_beneath(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(rustix::fs::fsync(&dir)?)
    }

    /// Flushes everything written on the root's filesystem: one call for many small files.
    pub(crate) fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(self.top()?)?)
    }

    /// Whether something exists at `path`.
    pub(crate) fn exists(&self, path: &RootPath) -> bool {
        self.stat(path).is_ok()
    }

    /// Bytes free for an unprivileged user on the root's filesystem.
    pub(crate) fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Total size of the files in the root, partial uploads included, except the partial
    /// files in `skip` (by device and inode: uploads in progress, counted by what they reserved).
    pub(crate) fn usage(&self, skip: &HashSet<(u64, u64)>) -> io::Result<u64> {
        let mut usage = Usage { skip, total: 0 };
        tree::walk(self.top()?, &mut usage)?;
        Ok(usage.total)
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

/// How a rename treats an existing target: replaced only with `force`.
pub(super) fn replacing(force: bool) -> RenameFlags {
    if force {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    }
}

/// An entry as `ls` and `stat` report it.
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
