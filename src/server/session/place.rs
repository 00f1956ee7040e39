//! Creating paths from the network inside the served directory: each is checked (see
//! `paths.rs`), its missing parents are made as real directories, and the thing itself is
//! created, all through directory descriptors the kernel reached without following a
//! symbolic link (`beneath.rs`), so that nothing made by another connection or a local user
//! meanwhile can redirect it.

use std::path::PathBuf;
use std::sync::Arc;

use super::{error_frame, Context};
use crate::protocol::{ErrorCode, Frame};
use crate::server::beneath::is_through_symlink;
use crate::server::paths;

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
    /// Checks `raw` (see [`paths::lexical`]), makes its missing parent directories, and runs
    /// `create` on the checked path, which makes it through `self.root` (blocking).
    ///
    /// A symlink on the way, whether there before or made meanwhile, is refused by the kernel
    /// as the parents are opened (`beneath.rs`), and so is one in place of a parent when
    /// `create` reaches it: no lock between connections is needed for that.
    pub(super) fn place<T>(
        &self,
        raw: &[u8],
        mut create: impl FnMut(PathBuf) -> std::io::Result<T>,
    ) -> Result<T, PlaceError> {
        let target = paths::lexical(self.root.path(), raw).map_err(PlaceError::Path)?;
        let through = || {
            PlaceError::Path(paths::PathError::ThroughSymlink(
                String::from_utf8_lossy(raw).into_owned(),
            ))
        };
        self.root.make_parents(&target).map_err(|e| {
            if is_through_symlink(&e) {
                through()
            } else {
                PlaceError::Io(e)
            }
        })?;
        create(target).map_err(|e| {
            if is_through_symlink(&e) {
                through()
            } else {
                PlaceError::Io(e)
            }
        })
    }

    /// [`Context::place`] on the blocking pool.
    pub(super) async fn place_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        raw: Vec<u8>,
        create: impl FnMut(PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, PlaceError> {
        let ctx = Arc::clone(self);
        tokio::task::spawn_blocking(move || ctx.place(&raw, create))
            .await
            .unwrap_or_else(|e| Err(PlaceError::Io(std::io::Error::other(e))))
    }
}
