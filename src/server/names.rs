//! The receiver's on-disk naming scheme: what a partial file and a resume journal beside a
//! target are called, how a name too long to take those additions is shortened, and which
//! names a peer may therefore not use. A leaf: the writer, the journal, staging, the path
//! checks and the leftovers sweep all take their names from here.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Suffix of partial files.
pub(crate) const PARTIAL_SUFFIX: &str = ".tidegate-partial";

/// Suffix of journals.
pub(crate) const JOURNAL_SUFFIX: &str = ".tidegate-journal";

/// The longest file name, in bytes, of Linux filesystems (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Hex digits of the name's BLAKE3 that stand for the part cut from a name too long to take
/// our additions.
const NAME_DIGEST: usize = 16;

/// `.<name>[.<tag>]<suffix>` beside `target`: partial files (tagged with a name of their own,
/// random and never used before, see `Session::partial_tag`; untagged for resumable large
/// files, whose journal says who holds them) and journals.
///
/// A name too long for these additions (they take up to about 40 bytes, and a name may have
/// 255) is cut, at a character boundary if it is UTF-8, and followed by `~` and a digest of the
/// whole name: the same for every transfer of that target (a resumable file finds its journal
/// again), different for names that only share the part kept.
pub(crate) fn sibling(target: &Path, tag: Option<&str>, suffix: &str) -> PathBuf {
    let base = target.file_name().unwrap_or_default().as_bytes();
    let added = 1 + tag.map_or(0, |t| 1 + t.len()) + suffix.len();
    let mut name = Vec::with_capacity(NAME_MAX);
    name.push(b'.');
    if added + base.len() <= NAME_MAX {
        name.extend_from_slice(base);
    } else {
        let mut keep = NAME_MAX.saturating_sub(added + 1 + NAME_DIGEST);
        if std::str::from_utf8(base).is_ok() {
            while keep > 0 && (base[keep] & 0xC0) == 0x80 {
                keep -= 1;
            }
        }
        name.extend_from_slice(&base[..keep]);
        name.push(b'~');
        name.extend_from_slice(&blake3::hash(base).to_hex().as_bytes()[..NAME_DIGEST]);
    }
    if let Some(tag) = tag {
        name.push(b'.');
        name.extend_from_slice(tag.as_bytes());
    }
    name.extend_from_slice(suffix.as_bytes());
    target.with_file_name(OsStr::from_bytes(&name))
}

/// The partial path of `target` with `tag` (small files, and large files that another
/// transfer's journal holds).
pub(crate) fn partial_path(target: &Path, tag: &str) -> PathBuf {
    sibling(target, Some(tag), PARTIAL_SUFFIX)
}

/// The untagged partial path of a resumable large file (its journal says who holds it).
pub(crate) fn resumable_path(target: &Path) -> PathBuf {
    sibling(target, None, PARTIAL_SUFFIX)
}

/// The journal path of `target`.
pub(crate) fn journal_path(target: &Path) -> PathBuf {
    sibling(target, None, JOURNAL_SUFFIX)
}

/// Whether `name` is one the receiver uses for its own files beside a target, in any case
/// (a case-insensitive filesystem would take `.X.TIDEGATE-JOURNAL` for the journal of `x`).
pub(crate) fn reserved(name: &[u8]) -> bool {
    name.starts_with(b".")
        && [PARTIAL_SUFFIX, JOURNAL_SUFFIX].iter().any(|s| {
            let s = s.as_bytes();
            name.len() >= s.len() && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
        })
}

/// The `.<stem>` of a name ending in `suffix`, if it has one.
pub(crate) fn stem(name: &OsStr, suffix: &str) -> Option<OsString> {
    let bytes = name.as_bytes();
    let stem = bytes.strip_suffix(suffix.as_bytes())?;
    (stem.len() > 1 && stem[0] == b'.').then(|| OsStr::from_bytes(stem).to_os_string())
}

/// `stem` followed by `suffix`.
pub(crate) fn with_suffix(stem: &OsStr, suffix: &str) -> OsString {
    let mut name = stem.to_os_string();
    name.push(suffix);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names beside a target fit in a file name whatever the target's length, stay the same
    /// for the same target, and differ between targets.
    #[test]
    fn names_beside_a_target_of_any_length_fit() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &[u8]| dir.path().join(OsStr::from_bytes(name));
        let name_len = |p: &Path| p.file_name().unwrap().len();
        assert_eq!(
            partial_path(&at(b"short"), "0123456789abcdef"),
            at(b".short.0123456789abcdef.tidegate-partial")
        );
        let mut long = vec![b'n'; 255];
        let mut other = long.clone();
        other[254] = b'm';
        // 'ü' is two bytes: a cut at 255 minus our additions falls inside one of them.
        let utf8 = "ü".repeat(127).into_bytes();
        for name in [&long, &other, &utf8, &vec![b'x'; 220]] {
            let target = at(name);
            let paths = [
                partial_path(&target, "0123456789abcdef"),
                resumable_path(&target),
                journal_path(&target),
            ];
            for p in &paths {
                assert!(name_len(p) <= NAME_MAX, "{p:?}");
                let n = p.file_name().unwrap().as_bytes();
                assert!(
                    n.starts_with(b".")
                        && (n.ends_with(PARTIAL_SUFFIX.as_bytes())
                            || n.ends_with(JOURNAL_SUFFIX.as_bytes())),
                    "{p:?}"
                );
                std::fs::write(p, b"fits").unwrap();
            }
            assert_eq!(paths[1], resumable_path(&target), "the same every time");
            // The journal and the partial file it describes share everything but the suffix.
            let stem = |p: &Path| p.file_name().unwrap().len() - PARTIAL_SUFFIX.len();
            assert_eq!(
                paths[1].file_name().unwrap().as_bytes()[..stem(&paths[1])],
                paths[2].file_name().unwrap().as_bytes()[..stem(&paths[2])]
            );
        }
        assert!(
            std::str::from_utf8(resumable_path(&at(&utf8)).file_name().unwrap().as_bytes()).is_ok()
        );
        assert_ne!(resumable_path(&at(&long)), resumable_path(&at(&other)));
        long.truncate(200);
        assert_eq!(
            resumable_path(&at(&long)).file_name().unwrap().len(),
            1 + 200 + PARTIAL_SUFFIX.len(),
            "a name that fits is not cut"
        );
    }
}
