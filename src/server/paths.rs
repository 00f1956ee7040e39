//! Hostile path checks: every path from the network is turned into a location inside the
//! served directory, or rejected.
//!
//! Rejected here, before the filesystem is touched: empty paths, absolute paths, `.` and `..`
//! components, empty components (`a//b`), NUL bytes, over-long paths, and components named
//! like the receiver's own partial files and journals, in any case. A path through a symbolic
//! link inside the served directory is refused by the kernel as it is reached
//! (`beneath.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest accepted relative path, in bytes.
pub(crate) const MAX_PATH_LEN: usize = 4096;
/// Deepest accepted path, in components.
pub(crate) const MAX_DEPTH: usize = 256;

/// Why a path from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PathError {
    /// Empty, absolute, or containing `.`, `..`, empty components or NUL.
    #[error("path {0:?} is not a plain relative path")]
    NotRelative(String),
    /// Too long or too deep.
    #[error("path {0:?} is too long")]
    TooLong(String),
    /// An ancestor is a symbolic link.
    #[error("path {0:?} goes through a symbolic link")]
    ThroughSymlink(String),
    /// A symlink target that is absolute or leads out of the served directory.
    #[error(
        "symlink {0:?} points outside the served directory (serve --links-anywhere allows it)"
    )]
    LinkOutside(String),
    /// Named like the receiver's own partial files or resume journals.
    #[error("path {0:?} has a name the receiver keeps for its partial files and journals")]
    Reserved(String),
}

/// Checks `raw` (a `/`-separated relative path from the wire) and returns it joined onto
/// `root`. Does not touch the filesystem.
///
/// # Errors
/// [`PathError::NotRelative`], [`PathError::TooLong`], or [`PathError::Reserved`] for a
/// component named like the receiver's partial files and journals (`.*.tidegate-partial`,
/// `.*.tidegate-journal`, in any case): a peer could otherwise plant one for another
/// transfer, or a directory that blocks one.
pub(crate) fn lexical(root: &Path, raw: &[u8]) -> Result<PathBuf, PathError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(shown()));
    }
    if raw.is_empty() || raw[0] == b'/' || raw.contains(&0) {
        return Err(PathError::NotRelative(shown()));
    }
    let mut out = root.to_path_buf();
    let mut depth = 0;
    for part in raw.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." || part == b".." {
            return Err(PathError::NotRelative(shown()));
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(PathError::TooLong(shown()));
        }
        // In every component: a directory so named would block the target it shadows.
        if super::names::reserved(part) {
            return Err(PathError::Reserved(shown()));
        }
        out.push(OsStr::from_bytes(part));
    }
    Ok(out)
}

/// Checks that a symlink at `raw` (a path that passed [`lexical`]) with `target` stays inside
/// the served directory when followed: the target is relative, and its `..` components never
/// climb above the root, counted from the link's own directory. Lexical, like rsync's
/// `--safe-links`: an ancestor that is itself a symlink is refused as it is reached
/// (`beneath.rs`).
///
/// # Errors
/// [`PathError::LinkOutside`].
pub(crate) fn link_target(raw: &[u8], target: &[u8]) -> Result<(), PathError> {
    let outside = || PathError::LinkOutside(String::from_utf8_lossy(raw).into_owned());
    if target.is_empty() || target[0] == b'/' {
        return Err(outside());
    }
    // The link's directory, in components below the root.
    let mut depth = raw.split(|&b| b == b'/').count().saturating_sub(1);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => depth = depth.checked_sub(1).ok_or_else(outside)?,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_rejected() {
        let root = Path::new("/srv/in");
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b"../x",
            b"a/../../x",
            b"a/./b",
            b"a//b",
            b"a/",
            b"a\0b",
            b".",
        ] {
            assert!(
                lexical(root, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            lexical(root, &[b'a'; MAX_PATH_LEN + 1]),
            Err(PathError::TooLong(_))
        ));
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(matches!(
            lexical(root, deep.as_bytes()),
            Err(PathError::TooLong(_))
        ));
        assert_eq!(
            lexical(root, b"a b/\xc3\xa9t\xc3\xa9").unwrap(),
            Path::new("/srv/in/a b/été")
        );
        assert_eq!(
            lexical(root, b"..a/b..").unwrap(),
            Path::new("/srv/in/..a/b..")
        );
    }

    #[test]
    fn the_receivers_own_names_are_refused_in_every_component_and_any_case() {
        let root = Path::new("/srv/in");
        for bad in [
            &b".x.tidegate-journal"[..],
            b".x.tidegate-partial",
            b".X.TIDEGATE-JOURNAL/y",
            b"a/.x.Tidegate-Partial/b",
            b"a/.b.0123.tidegate-partial",
        ] {
            assert!(
                matches!(lexical(root, bad), Err(PathError::Reserved(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"x.tidegate-journal"[..],
            b".tidegate-journalx",
            b"a/.x.tidegate-partial.txt",
        ] {
            assert!(
                lexical(root, good).is_ok(),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
    }

    #[test]
    fn link_targets_must_stay_inside() {
        for (at, target) in [
            (&b"l"[..], &b"x"[..]),
            (b"a/l", b"../x"),
            (b"a/b/l", b"../../x"),
            (b"a/l", b"./b/../../y"),
            (b"a/l", b"b//c"),
        ] {
            assert_eq!(link_target(at, target), Ok(()), "{at:?} -> {target:?}");
        }
        for (at, target) in [
            (&b"l"[..], &b"/etc/passwd"[..]),
            (b"l", b".."),
            (b"l", b"../x"),
            (b"a/l", b"../../x"),
            (b"a/l", b"b/../../../x"),
            (b"l", b""),
        ] {
            assert!(
                matches!(link_target(at, target), Err(PathError::LinkOutside(_))),
                "{at:?} -> {target:?}"
            );
        }
    }
}
