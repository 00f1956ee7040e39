//! [`check_names`]: refusing, before anything is sent, sources that would put something at
//! the same path of the destination.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::top_name;

/// Two sources that would put something at the same path of the destination: one would
/// silently replace the other, whichever arrived last.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} and {} would both be delivered as {name}; send them in separate transfers",
    first.display(),
    second.display()
)]
pub struct NameClash {
    /// The path both would get, relative to the destination.
    pub name: String,
    /// The first source (or the entry of a source given with a trailing slash) with that name.
    pub first: PathBuf,
    /// The second.
    pub second: PathBuf,
}

/// Checks that no two of `roots` put something at the same path of the destination. Each
/// root puts at the top of the destination either one name (its last component) or, for a
/// directory given with a trailing slash, `.` or `/`, the entries it holds that the walk sends
/// (with the same rules for links and special files). Within one root, names cannot repeat,
/// so these must all differ, directories included: two trees merged into one by a single
/// transfer would each replace the other's files of the same name in whatever order they
/// arrived. A root that cannot be read is left for the walk to report.
///
/// Nothing is held per entry: a name is looked up in a directory root, and two directory
/// roots are compared by looking up each entry of the later one in the earlier one.
///
/// # Errors
/// A [`NameClash`], the earlier root first.
pub fn check_names(roots: &[PathBuf], links: bool) -> Result<(), NameClash> {
    /// What a root puts at the top of the destination.
    enum Top {
        Name(Vec<u8>),
        Contents,
    }
    if roots.len() < 2 {
        return Ok(());
    }
    let sent = |ft: fs::FileType| ft.is_file() || ft.is_dir() || (links && ft.is_symlink());
    let joined = |dir: &Path, name: &[u8]| dir.join(std::ffi::OsStr::from_bytes(name));
    let holds = |dir: &Path, name: &[u8]| {
        fs::symlink_metadata(joined(dir, name)).is_ok_and(|m| sent(m.file_type()))
    };
    let clash = |name: &[u8], first: PathBuf, second: PathBuf| NameClash {
        name: String::from_utf8_lossy(name).into_owned(),
        first,
        second,
    };
    let tops: Vec<(&PathBuf, Top)> = roots
        .iter()
        .filter_map(|root| {
            let meta = fs::symlink_metadata(root).ok()?;
            if !sent(meta.file_type()) {
                return None;
            }
            Some(match top_name(root) {
                Some(name) => (root, Top::Name(name)),
                None if meta.is_dir() => (root, Top::Contents),
                None => (root, Top::Name(root.as_os_str().as_bytes().to_vec())),
            })
        })
        .collect();
    for (i, (later, later_top)) in tops.iter().enumerate() {
        for (earlier, earlier_top) in &tops[..i] {
            match (earlier_top, later_top) {
                (Top::Name(a), Top::Name(b)) if a == b => {
                    return Err(clash(a, (*earlier).clone(), (*later).clone()))
                }
                (Top::Contents, Top::Name(b)) if holds(earlier, b) => {
                    return Err(clash(b, joined(earlier, b), (*later).clone()))
                }
                (Top::Name(a), Top::Contents) if holds(later, a) => {
                    return Err(clash(a, (*earlier).clone(), joined(later, a)))
                }
                (Top::Contents, Top::Contents) => {
                    let Ok(entries) = fs::read_dir(later) else {
                        continue;
                    };
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        if entry.file_type().is_ok_and(sent) && holds(earlier, name.as_bytes()) {
                            return Err(clash(
                                name.as_bytes(),
                                joined(earlier, name.as_bytes()),
                                entry.path(),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two roots that would put something at the same destination path are refused before
    /// anything is sent, whatever they are; roots whose names only look alike, or whose
    /// clashing entries the walk would not send, are not.
    #[test]
    fn sources_that_would_land_on_the_same_path_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = |rel: &str| d.path().join(rel);
        let slash = |rel: &str| PathBuf::from(format!("{}/", p(rel).display()));
        for dir in ["a", "b", "c/x", "t1/sub", "t2/sub", "t3", "t4"] {
            fs::create_dir_all(p(dir)).unwrap();
        }
        for file in ["a/x", "b/x", "a/y", "t1/only1", "t2/only2", "t3/x", "t4/f"] {
            fs::write(p(file), b"data").unwrap();
        }
        std::os::unix::fs::symlink("f", p("t4/link")).unwrap();
        std::os::unix::fs::symlink("x", p("b/link")).unwrap();
        std::os::unix::fs::symlink("x", p("t3/link")).unwrap();
        let c = std::ffi::CString::new(p("b/y").as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let clash = |roots: Vec<PathBuf>, links: bool| check_names(&roots, links).err();
        // Two files of the same name: which one stayed would depend on the network.
        let e = clash(vec![p("a/x"), p("b/x")], false).expect("two files named x");
        assert_eq!(
            (e.name.as_str(), &e.first, &e.second),
            ("x", &p("a/x"), &p("b/x"))
        );
        assert!(
            e.to_string().contains("would both be delivered as x"),
            "{e}"
        );
        // The same root twice, a file against a directory, two directories.
        assert!(clash(vec![p("a"), p("a")], false).is_some());
        assert_eq!(clash(vec![p("a/x"), p("c/x")], false).unwrap().name, "x");
        assert_eq!(
            clash(vec![p("t1/sub"), p("t2/sub")], false).unwrap().name,
            "sub"
        );
        // A trailing slash puts a directory's entries at the top: they clash with each
        // other's and with named roots.
        let e = clash(vec![slash("a"), slash("t3")], false).expect("a/x and t3/x");
        assert_eq!((e.name.as_str(), &e.second), ("x", &p("t3/x")));
        assert_eq!(clash(vec![slash("a"), p("b/x")], false).unwrap().name, "x");
        assert_eq!(clash(vec![p("c/x"), slash("t3")], false).unwrap().name, "x");
        // Links clash only when they are sent.
        assert!(clash(vec![slash("t4"), p("b/link")], false).is_none());
        assert_eq!(
            clash(vec![slash("t4"), p("b/link")], true).unwrap().name,
            "link"
        );
        assert!(clash(vec![slash("t3"), slash("t4")], false).is_none());
        assert!(clash(vec![slash("t3"), slash("t4")], true).is_some());
        // A FIFO is skipped by the walk, so it takes no name from a file.
        assert!(clash(vec![p("a/y"), slash("b")], false).is_none());
        assert!(clash(vec![p("a/y"), p("b/y")], false).is_none());
        assert!(clash(vec![p("a/x"), slash("b")], false).is_some());
        // Distinct names, a missing root (the walk reports it), one root alone.
        assert_eq!(
            clash(vec![slash("t1"), slash("t2")], false).unwrap().name,
            "sub"
        );
        assert!(clash(vec![p("a"), p("b"), slash("t3"), slash("t4")], false).is_none());
        assert!(clash(vec![p("a/x"), p("missing/x")], false).is_none());
        assert!(clash(vec![slash("a")], false).is_none());
        // `a` and `a/` differ unless `a` holds an entry named `a`.
        assert!(clash(vec![p("a"), slash("a")], false).is_none());
        fs::create_dir(p("a/a")).unwrap();
        assert!(clash(vec![p("a"), slash("a")], false).is_some());
    }
}
