//! Walking a directory tree inside the file root by directory descriptors.
//!
//! Clients shape the tree: with `mkdir` and `mv` they can build one far deeper than any path
//! the kernel accepts, or than a thread's stack would survive recursing into. So the walk keeps
//! its own stack (the names still to visit, per level), holds one directory open at a time, and
//! reaches everything by a single name relative to the directory it is in: no full path is
//! ever built, and no depth is too deep. It climbs back with `..`, checking each time that it
//! lands in the very directory it came from (device and inode), so a tree moved meanwhile
//! makes the walk fail rather than wander outside the part it was asked to visit.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// What a walk does with what it finds.
pub(crate) trait Visitor {
    /// Something that is not a directory, in `dir`.
    fn entry(&mut self, dir: &OwnedFd, name: &CStr, stat: &Stat) -> io::Result<()>;
    /// A subdirectory of `parent`, once everything under it has been visited.
    fn left(&mut self, _parent: &OwnedFd, _name: &CStr) -> io::Result<()> {
        Ok(())
    }
}

/// A directory on the walk's path: its name in its parent, who it is, and its subdirectories
/// not visited yet.
struct Level {
    name: Option<CString>,
    id: (u64, u64),
    pending: Vec<CString>,
}

/// Visits everything under the directory `top` (open for reading), depth first.
pub(crate) fn walk(top: OwnedFd, visitor: &mut impl Visitor) -> io::Result<()> {
    let mut dir = top;
    let mut levels = vec![Level {
        name: None,
        id: identity(&dir)?,
        pending: scan(&dir, visitor)?,
    }];
    while let Some(level) = levels.last_mut() {
        if let Some(child) = level.pending.pop() {
            let Some(opened) = open_subdir(&dir, &child)? else {
                continue;
            };
            dir = opened;
            let pending = scan(&dir, visitor)?;
            levels.push(Level {
                name: Some(child),
                id: identity(&dir)?,
                pending,
            });
            continue;
        }
        let Some(done) = levels.pop().and_then(|level| level.name) else {
            return Ok(());
        };
        let expected = levels.last().map(|level| level.id);
        dir = climb(&dir, expected)?;
        visitor.left(&dir, &done)?;
    }
    Ok(())
}

/// Opens `name` under `dir` as a directory, never following a symlink; `None` if it has gone.
fn open_subdir(dir: &OwnedFd, name: &CStr) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The parent of `dir`, which must be the directory `expected` identifies.
fn climb(dir: &OwnedFd, expected: Option<(u64, u64)>) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent = rustix::fs::openat(dir, c"..", flags, Mode::empty())?;
    if Some(identity(&parent)?) != expected {
        return Err(io::Error::other("the tree was moved while being walked"));
    }
    Ok(parent)
}

/// Hands every non-directory in `dir` to the visitor; returns the subdirectories' names.
fn scan(dir: &OwnedFd, visitor: &mut impl Visitor) -> io::Result<Vec<CString>> {
    let mut subdirs = Vec::new();
    for item in rustix::fs::Dir::read_from(dir)? {
        let item = item?;
        let name = item.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(error) => return Err(error.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            subdirs.push(name.to_owned());
        } else {
            visitor.entry(dir, name, &stat)?;
        }
    }
    Ok(subdirs)
}

fn identity(dir: &OwnedFd) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::fstat(dir)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Empties a tree: unlinks every file, then each directory once it is empty.
pub(crate) struct Remover;

impl Visitor for Remover {
    fn entry(&mut self, dir: &OwnedFd, name: &CStr, _stat: &Stat) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }

    fn left(&mut self, parent: &OwnedFd, name: &CStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn a_tree_deeper_than_any_path_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        // 3,000 levels of 3-byte names: 12,000 bytes of path, built one level at a time.
        let mut fd = open_dir(dir.path());
        for _ in 0..3000 {
            rustix::fs::mkdirat(&fd, "abc", Mode::from_raw_mode(0o755)).unwrap();
            let file = rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            );
            drop(file.unwrap());
            fd = rustix::fs::openat(&fd, "abc", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        walk(open_dir(dir.path()), &mut Remover).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
