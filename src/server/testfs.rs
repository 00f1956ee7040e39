//! Filesystems for tests that need the disk to say no: a small tmpfs that fills up, and an
//! ext4 filesystem whose new data cannot reach its disk. Both need root (to mount) and are
//! unmounted when dropped. Where they cannot be made, their constructors print `SKIPPED` and
//! return `None`, and the test returns: it passes without having run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command; its trimmed stdout, or `None` (with its stderr printed) when it fails.
pub(crate) fn run(cmd: &[&str]) -> Option<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().ok()?;
    if !out.status.success() {
        eprintln!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs of a given size mounted on a temporary directory.
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    /// A tmpfs of `size` (as `mount -o size=` takes it); `None` (and `SKIPPED` printed)
    /// without root or tmpfs.
    pub(crate) fn new(size: &str) -> Option<Self> {
        let fs = Self::mount(size);
        if fs.is_none() {
            eprintln!("SKIPPED: needs root and tmpfs");
        }
        fs
    }

    fn mount(size: &str) -> Option<Self> {
        if !is_root() {
            return None;
        }
        let mut fs = Tmpfs {
            dir: tempfile::tempdir().ok()?,
            mounted: false,
        };
        let at = fs.dir.path().to_str()?;
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            at,
        ])?;
        fs.mounted = true;
        Some(fs)
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let (true, Some(at)) = (self.mounted, self.dir.path().to_str()) {
            // Lazily: a loop device lets go of an image on it a moment after it is detached.
            run(&["umount", "--lazy", at]);
        }
    }
}

/// An ext4 filesystem whose new data cannot reach its disk: a loop device over a sparse image
/// on a small tmpfs that is then filled, so that writing back any block the image has not
/// stored yet fails. It has no journal and is mounted `errors=continue`, so that it stays
/// writable (a journal that fails to commit turns it read-only, and then no file could be put
/// in place anyway). Mounted at `root()`, inside `base()`; it holds an empty directory `d`.
pub(crate) struct FailingFs {
    base: tempfile::TempDir,
    dev: Option<String>,
    mounted: bool,
    // Dropped (unmounted) last: it holds the image.
    _store: Tmpfs,
}

impl FailingFs {
    /// `None` (and `SKIPPED` printed) without root, loop devices, tmpfs or `mkfs.ext4`.
    pub(crate) fn new() -> Option<Self> {
        let fs = Self::make();
        if fs.is_none() {
            eprintln!("SKIPPED: needs root, loop devices, tmpfs and mkfs.ext4");
        }
        fs
    }

    fn make() -> Option<Self> {
        let store = Tmpfs::mount("16m")?;
        let mut fs = FailingFs {
            base: tempfile::tempdir().ok()?,
            dev: None,
            mounted: false,
            _store: store,
        };
        let img = fs._store.path().join("img");
        let i = img.to_str()?;
        run(&["truncate", "-s", "64M", i])?;
        run(&[
            "mkfs.ext4",
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "nodiscard,lazy_itable_init=0",
            i,
        ])?;
        fs.dev = Some(run(&["losetup", "--find", "--show", i])?);
        let mnt = fs.root();
        std::fs::create_dir(&mnt).ok()?;
        let m = mnt.to_str()?;
        run(&["mount", "-o", "errors=continue", fs.dev.as_deref()?, m])?;
        fs.mounted = true;
        std::fs::create_dir(mnt.join("d")).ok()?;
        run(&["sync", "-f", m])?;
        // Fill the store: from now on, only blocks the image already holds can be written.
        let mut fill = std::fs::File::create(fs._store.path().join("fill")).ok()?;
        let block = vec![0u8; 1 << 16];
        while std::io::Write::write_all(&mut fill, &block).is_ok() {}
        Some(fs)
    }

    /// Where the failing filesystem is mounted.
    pub(crate) fn root(&self) -> PathBuf {
        self.base.path().join("mnt")
    }

    /// The directory it is mounted in (on the ordinary filesystem).
    pub(crate) fn base(&self) -> &Path {
        self.base.path()
    }
}

impl Drop for FailingFs {
    fn drop(&mut self) {
        if let (true, Some(m)) = (self.mounted, self.root().to_str()) {
            run(&["umount", "--lazy", m]);
        }
        if let Some(dev) = self.dev.take() {
            run(&["losetup", "-d", &dev]);
        }
    }
}
