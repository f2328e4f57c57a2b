//! Partial files: where an upload's data waits until it is complete and verified.
//!
//! Uploads are atomic: data goes to a partial file next to its target (`.NAME.sockit-part`),
//! is fsynced, and only then renamed over the final name. A reader never sees half a file, and
//! an interrupted upload leaves the previous version intact and its partial ready to resume.
//! Partials nobody resumes are expired, by the time they last changed.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use super::root::{FileRoot, replacing};
use super::tree;
use crate::proto::path::{PARTIAL_SUFFIX, RootPath, partial_name};

impl FileRoot {
    /// The partial file of an upload to `path`: created if absent, kept (for resuming) if present.
    pub(crate) fn open_partial(&self, path: &RootPath) -> io::Result<File> {
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
    pub(crate) fn partial_identity(&self, path: &RootPath) -> io::Result<(u64, u64)> {
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, partial_name(name).as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok((stat.st_dev, stat.st_ino))
    }

    pub(crate) fn remove_partial(&self, path: &RootPath) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::unlinkat(
            &dir,
            partial_name(name).as_str(),
            AtFlags::empty(),
        )?)
    }

    /// Makes a complete, verified partial the file at `path`: fsync, rename, fsync the directory.
    pub(crate) fn commit_partial(&self, path: &RootPath, file: &File, force: bool) -> io::Result<()> {
        file.sync_all()?;
        self.rename_partial(path, force)?;
        self.sync_dir(path.parent())
    }

    /// Renames a partial (already on stable storage) over its target.
    pub(crate) fn rename_partial(&self, path: &RootPath, force: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::renameat_with(
            &dir,
            partial_name(name).as_str(),
            &dir,
            name,
            replacing(force),
        )?)
    }

    /// Removes the partial uploads last changed before `cutoff`, except those `in_use` says
    /// an upload holds (asked as each is found, since a walk may take a while and an upload
    /// may resume an old partial meanwhile); returns how many went. The change time, not the
    /// modification time: `-p` sets a partial's mtime to the sender's, however old, before it is renamed.
    pub(crate) fn expire_partials(
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
        tree::walk(self.top()?, &mut expiry)?;
        Ok(expiry.removed)
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
