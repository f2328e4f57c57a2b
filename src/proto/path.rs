//! The path syntax of the file root, which both sides check: the service before it touches the
//! disk, the client before it writes a name the server listed.
//!
//! Names are checked as text (relative, no `..`, no NUL or control characters, no reserved
//! partial-file names), so a refusal can say what was wrong. This is only the first wall: the
//! service also opens every path beneath the root's descriptor, so the kernel refuses whatever
//! would resolve outside it (services/files/root.rs).

use std::fmt;

use crate::text::escape;
use crate::wire::{ErrorCode, RemoteError};

/// Suffix of partial uploads and downloads (`.NAME.sockit-part`); names ending in it are
/// reserved.
pub const PARTIAL_SUFFIX: &str = ".sockit-part";

/// The longest path text accepted, in bytes.
pub const MAX_PATH: usize = 4096;

/// A path inside the root, checked: relative, `/`-separated, no empty, `.` or `..` components,
/// no NUL or control characters. The empty path is the root itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootPath(String);

/// Why a path was refused, with the path shown escaped; answered as `bad_path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPath(String);

impl From<BadPath> for RemoteError {
    fn from(error: BadPath) -> RemoteError {
        RemoteError::new(ErrorCode::BadPath, error.0)
    }
}

impl RootPath {
    /// Checks `text` as a path inside the root; the empty text is the root.
    pub fn parse(text: &str) -> Result<RootPath, BadPath> {
        let shown = escape(text);
        let refuse = |why: String| Err(BadPath(format!("path {shown} {why}")));
        if text.len() > MAX_PATH {
            return refuse(format!("is longer than {MAX_PATH} bytes"));
        }
        if text.starts_with('/') {
            return refuse("is absolute; paths are relative to the file root".into());
        }
        if text.chars().any(char::is_control) {
            return refuse("contains control characters".into());
        }
        let mut parts = Vec::new();
        for part in text.split('/').filter(|part| !part.is_empty() && *part != ".") {
            if part == ".." {
                return refuse("climbs out with `..`".into());
            }
            if part.ends_with(PARTIAL_SUFFIX) {
                return refuse(format!("ends in {PARTIAL_SUFFIX}, a name sockit reserves"));
            }
            parts.push(part);
        }
        Ok(RootPath(parts.join("/")))
    }

    /// [`RootPath::parse`] for the commands that act on something in the root (`get`, `put`,
    /// `rm`, ...), which the root itself never is.
    pub fn parse_inside(text: &str) -> Result<RootPath, BadPath> {
        let path = RootPath::parse(text)?;
        if path.is_root() {
            return Err(BadPath(
                "this needs a path inside the root, not the root itself".into(),
            ));
        }
        Ok(path)
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's text, `/`-separated, as checked.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory and the last component (`None` for the root itself).
    pub fn split(&self) -> Option<(&str, &str)> {
        match self.0.rsplit_once('/') {
            Some((parent, name)) => Some((parent, name)),
            None if self.0.is_empty() => None,
            None => Some(("", &self.0)),
        }
    }

    /// The last component (`""` for the root).
    pub fn name(&self) -> &str {
        self.split().map_or("", |(_, name)| name)
    }

    /// The directory part (`""` for the root and for a name directly in it).
    pub fn parent(&self) -> &str {
        self.split().map_or("", |(parent, _)| parent)
    }

    /// `name` inside this directory (for the root, `name` itself: never an absolute `/name`).
    pub fn join(&self, name: &str) -> Result<RootPath, BadPath> {
        if self.is_root() {
            return RootPath::parse(name);
        }
        RootPath::parse(&format!("{}/{name}", self.0))
    }

    /// Every ancestor directory of this path and the path itself, shortest first (`a`, `a/b`,
    /// `a/b/c`): what `mkdir` with `parents` creates.
    pub fn ancestry(&self) -> impl Iterator<Item = RootPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(end, _)| end)
            .chain((!self.is_root()).then_some(self.0.len()))
            .filter_map(|end| self.0.get(..end).map(|prefix| RootPath(prefix.to_owned())))
    }
}

impl fmt::Display for RootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", escape(&self.0))
    }
}

/// The name of the partial file kept beside `name` while it is transferred.
pub fn partial_name(name: &str) -> String {
    format!(".{name}{PARTIAL_SUFFIX}")
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
            let error = RootPath::parse(bad).unwrap_err().to_string();
            assert!(!error.contains('\0') && !error.contains('\x1b'), "{error}");
        }
        assert!(RootPath::parse_inside("").is_err() && RootPath::parse_inside("./").is_err());
    }

    #[test]
    fn a_name_joined_to_the_root_stays_relative() {
        let top = RootPath::parse("").unwrap().join("dir").unwrap();
        assert_eq!(top.as_str(), "dir");
        assert_eq!(top.join("f").unwrap().as_str(), "dir/f");
        assert_eq!(top.join("f").unwrap().parent(), "dir");
    }

    #[test]
    fn ancestry_runs_from_the_top_down() {
        let path = RootPath::parse("a/b/c").unwrap();
        let shown: Vec<String> = path.ancestry().map(|p| p.as_str().to_owned()).collect();
        assert_eq!(shown, ["a", "a/b", "a/b/c"]);
        assert_eq!(RootPath::parse("").unwrap().ancestry().count(), 0);
    }
}
