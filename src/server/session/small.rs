//! Small files, directories and symlinks. A small file comes whole in one frame, is verified
//! and written at once, and waits in the session's batch; all three are confirmed
//! (`FileDone`) only when the batch is flushed, once their parent directory is durable:
//! confirmed at once, one could be lost with the machine after the sender stopped asking.

use std::collections::hash_map::Entry;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use bytes::Bytes;

use super::place::PlaceError;
use super::{error_frame, Context, Session};
use crate::protocol::{ErrorCode, Frame, Meta};
use crate::server::writer::{make_dir, make_symlink, PartialFile};

/// A small file: verified, written, and put in the batch.
pub(super) async fn file(
    file: u64,
    meta: Meta,
    root_hash: [u8; 32],
    payload: Bytes,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Vec<Frame> {
    let opts = &ctx.options;
    {
        let s = session.lock();
        if s.done.contains(file) {
            return vec![Frame::Ack { file, index: 0 }, Frame::FileDone { file }];
        }
        if s.batch.contains(file) {
            return vec![Frame::Ack { file, index: 0 }];
        }
    }
    if meta.size > opts.max_file_size {
        return vec![error_frame(file, ErrorCode::Limit, "file too large")];
    }
    let committed = ctx.unfinished.load(std::sync::atomic::Ordering::Acquire);
    if let Err(e) = ctx.space.admit_small(committed, payload.len() as u64) {
        return vec![error_frame(file, ErrorCode::Limit, e)];
    }
    let tag = session.partial_tag();
    let bytes = payload.len() as u64;
    let placing = Arc::clone(ctx);
    // Not on the hashing pool: most of this is creating and writing the file, and the
    // hash of a small file takes microseconds. On this task while the filesystem is
    // fast, else on the blocking pool (see `inline.rs`).
    let written = ctx
        .inline
        .run(move || {
            if blake3::hash(&payload) != blake3::Hash::from_bytes(root_hash) {
                return Err(None);
            }
            let partial = placing
                .place(&meta.path, |target| {
                    PartialFile::create_small(
                        &placing.root,
                        target,
                        meta.mode,
                        meta.mtime_ns,
                        &tag,
                        &placing.staging,
                    )
                })
                .map_err(Some)?;
            let written = partial.write_at(0, &payload);
            match written.and(Ok(())) {
                Ok(()) => partial.finish(false).map_err(|e| Some(PlaceError::Io(e))),
                Err(e) => {
                    partial.abandon();
                    Err(Some(PlaceError::Io(e)))
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(Some(PlaceError::Io(e))));
    match written {
        Ok(finished) => {
            session.progressed();
            let full = {
                let mut s = session.lock();
                s.batch.push(file, finished, bytes);
                s.batch.is_full(opts.batch_files, opts.batch_bytes)
            };
            let mut replies = vec![Frame::Ack { file, index: 0 }];
            if full {
                replies.extend(flush(ctx, session).await);
            }
            replies
        }
        Err(None) => vec![error_frame(
            file,
            ErrorCode::Hash,
            "file failed BLAKE3 verification",
        )],
        Err(Some(e)) => vec![e.frame(file)],
    }
}

/// A directory: made (writable by the server until `Finish` stamps its mode), and put in
/// the batch.
pub(super) async fn dir(
    file: u64,
    meta: Meta,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Vec<Frame> {
    if let Some(replies) = made_before(session, file) {
        return replies;
    }
    let cost = dir_record_cost(&meta.path);
    let limit = ctx.options.max_dir_bytes;
    {
        let s = session.lock();
        if s.dir_bytes + cost > limit {
            let again = ctx
                .options
                .root
                .join(std::ffi::OsStr::from_bytes(&meta.path));
            if !s.dirs.contains_key(&again) {
                return vec![error_frame(
                    file,
                    ErrorCode::Limit,
                    format!(
                        "this session's directories take more than {limit} bytes to remember \
                         until it finishes (serve's --max-dir-bytes raises the limit; or send \
                         the tree in parts)"
                    ),
                )];
            }
        }
    }
    let (mode, mtime_ns) = (meta.mode, meta.mtime_ns);
    let root = Arc::clone(&ctx.root);
    let made = ctx
        .place_blocking(meta.path, move |target| {
            // Writable by the server until `Finish` gives it its mode.
            make_dir(&root, &target, mode | 0o700).map(|made| (target, made))
        })
        .await;
    match made {
        Ok((target, made)) => {
            {
                let mut guard = session.lock();
                let s = &mut *guard;
                match s.dirs.entry(target.clone()) {
                    // Sent again: the latest time, and the latest mode if this session made
                    // it (then it existed for the repeat).
                    Entry::Occupied(mut e) => {
                        let (made_mode, time) = e.get_mut();
                        *time = mtime_ns;
                        if made_mode.is_some() {
                            *made_mode = Some(mode);
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert((made.then_some(mode), mtime_ns));
                        s.dir_bytes += cost;
                    }
                }
            }
            batch_made(ctx, session, file, target).await
        }
        Err(e) => vec![e.frame(file)],
    }
}

/// What remembering a directory until `Finish` costs: its path and the record around it.
fn dir_record_cost(path: &[u8]) -> u64 {
    path.len() as u64 + 64
}

/// A symlink: made, and put in the batch.
pub(super) async fn symlink(
    file: u64,
    meta: Meta,
    target: Vec<u8>,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Vec<Frame> {
    if let Some(replies) = made_before(session, file) {
        return replies;
    }
    if !ctx.options.links_anywhere {
        if let Err(e) = crate::server::paths::link_target(&meta.path, &target) {
            return vec![PlaceError::Path(e).frame(file)];
        }
    }
    let tag = session.partial_tag();
    let root = Arc::clone(&ctx.root);
    let made = ctx
        .place_blocking(meta.path, move |path| {
            make_symlink(&root, &path, &target, &tag).map(|()| path)
        })
        .await;
    match made {
        Ok(path) => batch_made(ctx, session, file, path).await,
        Err(e) => vec![e.frame(file)],
    }
}

/// The answer to a directory or symlink this session already made: `FileDone` once durable,
/// nothing while it waits in the batch (`FileDone` comes with it). `None`: not made yet.
fn made_before(session: &Arc<Session>, file: u64) -> Option<Vec<Frame>> {
    let s = session.lock();
    if s.done.contains(file) {
        Some(vec![Frame::FileDone { file }])
    } else if s.batch.contains(file) {
        Some(Vec::new())
    } else {
        None
    }
}

/// Puts a directory or symlink just made at `path` in the batch, committing the batch if
/// that filled it.
async fn batch_made(
    ctx: &Arc<Context>,
    session: &Arc<Session>,
    file: u64,
    path: std::path::PathBuf,
) -> Vec<Frame> {
    session.progressed();
    let full = {
        let mut s = session.lock();
        s.batch.push_made(file, path);
        s.batch
            .is_full(ctx.options.batch_files, ctx.options.batch_bytes)
    };
    if full {
        flush(ctx, session).await
    } else {
        Vec::new()
    }
}

/// Commits the session's small-file batch; answers `FileDone` or `Error` for each file.
pub(super) async fn flush(ctx: &Arc<Context>, session: &Arc<Session>) -> Vec<Frame> {
    let batch = session.lock().batch.take();
    if batch.is_empty() {
        return Vec::new();
    }
    // Only files are told of; directories and links are not "received".
    let mut told: std::collections::HashMap<u64, (std::path::PathBuf, u64)> = if ctx.events.on() {
        batch
            .files()
            .map(|(file, target, bytes)| (file, (target.to_path_buf(), bytes)))
            .collect()
    } else {
        std::collections::HashMap::new()
    };
    let committing = Arc::clone(ctx);
    let committed =
        tokio::task::spawn_blocking(move || batch.commit(&committing.root, &committing.flusher))
            .await;
    let Ok((done, failed)) = committed else {
        return vec![error_frame(
            u64::MAX,
            ErrorCode::Io,
            "flushing small files failed",
        )];
    };
    let mut s = session.lock();
    let mut replies = Vec::with_capacity(done.len() + failed.len());
    for file in done {
        s.done.insert(file);
        replies.push(Frame::FileDone { file });
        if let Some((target, bytes)) = told.remove(&file) {
            ctx.events.received(&ctx.options.root, &target, bytes);
        }
    }
    for (file, e) in failed {
        replies.push(error_frame(file, ErrorCode::Io, e));
    }
    replies
}
