//! The end of a transfer: the last small-file batch is flushed, and the directories the
//! transfer sent get their times, and those it made their modes, deepest first, with one
//! flush for all of them.

use std::sync::Arc;

use super::small::flush;
use super::{Context, Session};
use crate::protocol::Frame;
use crate::server::writer::system_time;

/// `Finish`: answered with `Finished` once everything before it is durable.
pub(super) async fn finish(ctx: &Arc<Context>, session: &Arc<Session>) -> Vec<Frame> {
    let mut replies = flush(ctx, session).await;
    let dirs = {
        let mut s = session.lock();
        s.dir_bytes = 0;
        std::mem::take(&mut s.dirs)
    };
    // Deepest first, so stamping a parent is not undone by work in a child.
    let stamping = Arc::clone(ctx);
    let stamped = tokio::task::spawn_blocking(move || {
        let mut dirs: Vec<_> = dirs.into_iter().map(|(p, (m, t))| (p, m, t)).collect();
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (dir, mode, mtime) in &dirs {
            // Reached without following a symlink, should one have replaced it since.
            if let Ok(f) = stamping.root.open_dir(dir) {
                let _ = f.set_modified(system_time(*mtime));
                if let Some(mode) = mode {
                    let mode = mode & crate::server::writer::SAFE_MODE;
                    let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
                }
            }
        }
        // One flush for all of them (one journal commit on ext4), not one each.
        if dirs.is_empty() {
            Ok(())
        } else {
            stamping
                .flusher
                .flush_dirs(dirs.iter().map(|(dir, _, _)| dir.as_path()))
        }
    })
    .await;
    match stamped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing directory times failed"),
        Err(e) => tracing::warn!(error = %e, "stamping directory times failed"),
    }
    session.lock().finished = true;
    session.progressed();
    replies.push(Frame::Finished);
    replies
}
