//! Creating paths from the network inside the served directory: each is checked (see
//! `paths.rs`), its missing parents are made as real directories, and the thing itself is
//! created, under a lock that keeps a symlink made by another connection from redirecting
//! it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{error_frame, Context};
use crate::protocol::{ErrorCode, Frame};
use crate::server::paths;

/// Serialises changes to the shape of the served tree, and remembers the directories already
/// made or checked, so that the many files of one directory do not each check and create
/// their parents again.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// Shared while a file or directory is placed, exclusive while a symlink is.
    lock: RwLock<()>,
    /// Real directories inside the root, made or checked under `lock`. Cleared whenever a
    /// symlink is made, and when it grows past `MAX_KNOWN_DIRS`.
    known: Mutex<HashSet<PathBuf>>,
}

/// Directories remembered at most; then the set starts over.
const MAX_KNOWN_DIRS: usize = 16_384;

impl Placement {
    fn knows(&self, dir: &std::path::Path) -> bool {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(dir)
    }

    fn remember(&self, dir: &std::path::Path) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_KNOWN_DIRS {
            known.clear();
            known.shrink_to(0);
        }
        known.insert(dir.to_path_buf());
    }

    fn forget(&self, dir: &std::path::Path) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(dir);
    }

    fn forget_all(&self) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.clear();
        known.shrink_to(0);
    }
}

/// Why a path from the network could not be created.
#[derive(Debug)]
pub(crate) enum PlaceError {
    Path(paths::PathError),
    Io(std::io::Error),
}

impl PlaceError {
    pub(super) fn frame(self, file: u64) -> Frame {
        match self {
            PlaceError::Path(e) => error_frame(file, ErrorCode::BadPath, e),
            PlaceError::Io(e) => error_frame(file, ErrorCode::Io, e),
        }
    }
}

impl Context {
    /// Checks `raw` (see [`paths::resolve`]), makes its missing parent directories, and runs
    /// `create` on the checked path, all under the layout lock: shared for files and directories,
    /// exclusive for symlinks (`exclusive`). Blocking.
    ///
    /// `resolve` finds no symlink among the existing ancestors, and the missing ones are made as
    /// real directories; without the lock, a symlink made by another connection in between (at
    /// an ancestor that did not exist yet) would be followed out of the served directory. Only
    /// symlinks can turn a path that was safe into one that is not (no request deletes or renames
    /// a directory, and a symlink cannot replace one), so files and directories never wait for
    /// each other, and a parent once checked stays good until the next symlink.
    pub(super) fn place<T>(
        &self,
        raw: &[u8],
        exclusive: bool,
        mut create: impl FnMut(PathBuf) -> std::io::Result<T>,
    ) -> Result<T, PlaceError> {
        let (layout, root) = (&self.placement, self.options.root.as_path());
        let (_shared, _exclusive);
        if exclusive {
            _exclusive = layout.lock.write().unwrap_or_else(PoisonError::into_inner);
        } else {
            _shared = layout.lock.read().unwrap_or_else(PoisonError::into_inner);
        }
        let target = paths::lexical(root, raw).map_err(PlaceError::Path)?;
        let parent = target.parent().unwrap_or(root);
        let prepare = || -> Result<(), PlaceError> {
            if parent != root {
                paths::check_ancestors(root, &target, raw).map_err(PlaceError::Path)?;
                std::fs::create_dir_all(parent).map_err(PlaceError::Io)?;
                layout.remember(parent);
            }
            Ok(())
        };
        let known = parent != root && layout.knows(parent);
        if !known {
            prepare()?;
        }
        let made = match create(target.clone()) {
            // A remembered directory that someone removed since: check and make it again.
            Err(e) if known && e.kind() == std::io::ErrorKind::NotFound => {
                layout.forget(parent);
                prepare()?;
                create(target)
            }
            other => other,
        }
        .map_err(PlaceError::Io);
        if exclusive {
            layout.forget_all();
        }
        made
    }

    /// [`Context::place`] on the blocking pool.
    pub(super) async fn place_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        raw: Vec<u8>,
        exclusive: bool,
        create: impl FnMut(PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, PlaceError> {
        let ctx = Arc::clone(self);
        tokio::task::spawn_blocking(move || ctx.place(&raw, exclusive, create))
            .await
            .unwrap_or_else(|e| Err(PlaceError::Io(std::io::Error::other(e))))
    }
}
