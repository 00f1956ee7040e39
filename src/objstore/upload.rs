//! One object-store destination: takes the pipeline's events like a receiver's dispatcher
//! and runs one upload task per file, at most `files_in_flight` at once.
//!
//! A file that fits in one part (see [`part_size`]) is held whole, then compared with what
//! the store has under its key and put with one `PUT` carrying its `blake3` metadata, unless
//! an object of the same size and root is there already. A larger file is uploaded in parts
//! made of its chunks as they come, at most `parts_in_flight` at once; an object of the same
//! size with a `blake3` already there makes its chunks be read through without being sent,
//! and if the root then differs the file is read again in the redo pass and uploaded. A
//! failed or cancelled multipart upload is aborted, so no parts are left behind. Under a
//! prefix that was empty when the destination started, nothing is looked up first.
//!
//! The store checks every body (see [`Bodies`]). A whole object or a part it refused as
//! damaged on the way is sent again from the chunks still held, under the same part number.
//!
//! Chunks are held, with their budget permits, until the request that carries them is
//! answered: the memory bound of the transfer holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, PutOptions, PutPayload};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::meta::{self, Existing};
use super::options::{Bodies, S3Options};
use super::target::S3Target;
use crate::client::dispatch::{DestEvent, Note, Outcome};
use crate::pipeline::chunk::Chunk;
use crate::source::walk::{Entry, EntryKind};
use crate::transfer::DestinationFailure;

/// S3's smallest part but the last.
pub(crate) const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Pieces of one file queued ahead of its task.
const PIECES: usize = 16;
/// Directories remembered while looking for empty ones; past this, the rest are not checked.
const DIRS_TRACKED: usize = 65_536;
/// Names of empty directories kept for the report.
const EMPTY_NAMED: usize = 20;

/// The part size for a file of `size` bytes: a whole number of chunks, at least S3's
/// minimum, and such that `parts_in_flight` parts plus the one being gathered and one more
/// fit in the budget, so that the reader is never starved of budget by parts alone. Large
/// enough for the file to fit in S3's 10,000 parts; `None` when that does not fit in the
/// budget.
pub(crate) fn part_size(size: u64, chunk: u64, budget: u64, parts_in_flight: usize) -> Option<u64> {
    let chunk = chunk.max(1);
    let round_up = |n: u64| n.div_ceil(chunk) * chunk;
    let by_budget = (budget / (parts_in_flight as u64 + 2)) / chunk * chunk;
    let least = round_up(MIN_PART.max(size.div_ceil(MAX_PARTS)));
    let part = by_budget.max(least).min(MAX_PART);
    (part >= least && part.saturating_mul(2) <= budget).then_some(part)
}

/// What one file's task is given, in order.
enum Piece {
    Chunk(Arc<Chunk>),
    End([u8; 32]),
    Abort,
}

/// Counts shared by the file tasks.
#[derive(Default)]
struct Counts {
    files_done: u64,
    already_there: u64,
    bytes_acked: u64,
    bytes_resumed: u64,
    bytes_resent: u64,
    failed: Vec<(u64, String)>,
    redo: Vec<u64>,
}

/// What every file task shares.
struct Ctx {
    /// For whole objects and requests without a body.
    store: Arc<AmazonS3>,
    /// For multipart uploads (see [`Bodies::Parts`]).
    parts: Arc<AmazonS3>,
    http: reqwest::Client,
    target: S3Target,
    notes: mpsc::Sender<(usize, Note)>,
    dest: usize,
    cancel: CancellationToken,
    counts: Mutex<Counts>,
    chunk_len: u64,
    budget: u64,
    parts_in_flight: usize,
    retry_for: Duration,
    /// The largest object copied onto itself in one request (see `meta::set_root`).
    max_copy: u64,
    force: bool,
    /// Nothing was under the prefix when the destination started, so no object needs looking
    /// up before it is put (one request per file fewer, which a tree of small files feels).
    fresh: bool,
}

impl Ctx {
    async fn note(&self, note: Note) {
        let _ = self.notes.send((self.dest, note)).await;
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn done(&self, file: u64) {
        self.counts().files_done += 1;
        self.note(Note::Done { file }).await;
    }

    async fn fail(&self, file: u64, message: String) {
        self.counts().failed.push((file, message.clone()));
        self.note(Note::Failed { file, message }).await;
    }

    async fn acked(&self, bytes: u64) {
        self.counts().bytes_acked += bytes;
        self.note(Note::Acked { bytes }).await;
    }
}

/// An object-store destination's task.
pub(crate) struct Upload {
    pub(crate) target: S3Target,
    pub(crate) options: S3Options,
    pub(crate) retry_for: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) chunk_len: u64,
    /// The transfer's memory budget, in bytes.
    pub(crate) budget: u64,
    pub(crate) input: mpsc::Receiver<DestEvent>,
    pub(crate) notes: mpsc::Sender<(usize, Note)>,
    pub(crate) dest: usize,
    pub(crate) cancel: CancellationToken,
    /// Upload even what is there already (the redo pass: the root differed).
    pub(crate) force: bool,
}

/// Directories seen without anything inside them yet.
#[derive(Default)]
struct EmptyDirs {
    waiting: std::collections::HashSet<Vec<u8>>,
    untracked: u64,
}

impl EmptyDirs {
    fn dir(&mut self, rel: &[u8]) {
        if self.waiting.len() < DIRS_TRACKED {
            self.waiting.insert(rel.to_vec());
        } else {
            self.untracked += 1;
        }
    }

    fn child(&mut self, rel: &[u8]) {
        if let Some(slash) = rel.iter().rposition(|&b| b == b'/') {
            self.waiting.remove(&rel[..slash]);
        }
    }

    fn notes(self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.waiting.is_empty() {
            let mut names: Vec<String> = self
                .waiting
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .collect();
            names.sort();
            let n = names.len();
            names.truncate(EMPTY_NAMED);
            notes.push(format!(
                "{n} empty director{} not stored (object stores have no directories): {}{}",
                if n == 1 { "y" } else { "ies" },
                names.join(", "),
                if n > EMPTY_NAMED { ", …" } else { "" }
            ));
        }
        if self.untracked > 0 {
            notes.push(format!(
                "{} more directories were not checked for being empty",
                self.untracked
            ));
        }
        notes
    }
}

impl Upload {
    /// Fails the destination as a whole.
    fn fatal(why: String, failure: DestinationFailure) -> Outcome {
        Outcome {
            fatal: Some(why),
            failure: Some(failure),
            ..Outcome::default()
        }
    }

    pub(crate) async fn run(mut self) -> Outcome {
        let client = |bodies| {
            self.options
                .client(&self.target, self.retry_for, self.connect_timeout, bodies)
        };
        let (store, parts) =
            match client(Bodies::Whole).and_then(|s| Ok((s, client(Bodies::Parts)?))) {
                Ok(clients) => clients,
                Err(e) => return Self::fatal(e.to_string(), DestinationFailure::Other),
            };
        let fresh = match probe(&store, &self.target, &self.cancel).await {
            Ok(empty) => empty,
            Err((why, failure)) => return Self::fatal(why, failure),
        };
        let (files_in_flight, parts_in_flight) = self.options.limits();
        let ctx = Arc::new(Ctx {
            store,
            parts,
            http: reqwest::Client::new(),
            target: self.target.clone(),
            notes: self.notes.clone(),
            dest: self.dest,
            cancel: self.cancel.clone(),
            counts: Mutex::new(Counts::default()),
            chunk_len: self.chunk_len,
            budget: self.budget,
            parts_in_flight,
            retry_for: self.retry_for,
            max_copy: self.options.max_copy(),
            force: self.force,
            fresh,
        });
        let slots = Arc::new(Semaphore::new(files_in_flight));
        let mut tasks = JoinSet::new();
        let mut open: HashMap<u64, mpsc::Sender<Piece>> = HashMap::new();
        let mut dirs = EmptyDirs::default();
        let mut symlinks = 0u64;
        let cancel = self.cancel.clone();
        loop {
            while tasks.try_join_next().is_some() {}
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                event = self.input.recv() => event,
            };
            let Some(event) = event else { break };
            match event {
                DestEvent::Start { file, entry, size } => {
                    dirs.child(&entry.rel);
                    let slot = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        slot = Arc::clone(&slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    let (tx, rx) = mpsc::channel(PIECES);
                    open.insert(file, tx);
                    tasks.spawn(upload_file(Arc::clone(&ctx), file, entry, size, rx, slot));
                }
                DestEvent::Chunk(chunk) => {
                    let file = chunk.file;
                    send_piece(&mut open, file, Piece::Chunk(chunk), &cancel).await;
                }
                DestEvent::End { file, root } => {
                    send_piece(&mut open, file, Piece::End(root), &cancel).await;
                    open.remove(&file);
                }
                DestEvent::Abort { file } => {
                    send_piece(&mut open, file, Piece::Abort, &cancel).await;
                    open.remove(&file);
                }
                DestEvent::Entry { file, entry } => {
                    dirs.child(&entry.rel);
                    match entry.kind {
                        EntryKind::Dir => dirs.dir(&entry.rel),
                        EntryKind::Symlink(_) => symlinks += 1,
                        EntryKind::File => {}
                    }
                    // Nothing to store; the entry is done as far as this destination goes.
                    ctx.note(Note::Done { file }).await;
                }
            }
        }
        // Input ended or the transfer was cancelled: the tasks of files still open see their
        // input end (and abort), the others finish.
        open.clear();
        while tasks.join_next().await.is_some() {}
        let counts = std::mem::take(&mut *ctx.counts());
        let mut notes = dirs.notes();
        if symlinks > 0 {
            notes.push(format!(
                "{symlinks} symlink{} not stored (object stores have no links)",
                if symlinks == 1 { "" } else { "s" }
            ));
        }
        for note in &notes {
            tracing::info!(destination = %self.target, "{note}");
        }
        let mut outcome = Outcome {
            files_done: counts.files_done,
            files_failed: counts.failed,
            bytes_acked: counts.bytes_acked,
            bytes_resumed: counts.bytes_resumed,
            bytes_resent: counts.bytes_resent,
            redo: counts.redo,
            already_there: counts.already_there,
            notes,
            ..Outcome::default()
        };
        if cancel.is_cancelled() {
            outcome.fatal = Some("cancelled".into());
            outcome.failure = Some(DestinationFailure::Cancelled);
        }
        outcome
    }
}

/// Hands `piece` to its file's task; a task that ended (it failed) no longer wants it.
async fn send_piece(
    open: &mut HashMap<u64, mpsc::Sender<Piece>>,
    file: u64,
    piece: Piece,
    cancel: &CancellationToken,
) {
    let Some(tx) = open.get(&file) else { return };
    let sent = tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        sent = tx.send(piece) => sent.is_ok(),
    };
    if !sent {
        open.remove(&file);
    }
}

/// One request to the bucket before anything is read: a missing bucket or refused
/// credentials fail the destination at once, with what the store said. Returns whether
/// nothing is stored under the prefix.
async fn probe(
    store: &AmazonS3,
    target: &S3Target,
    cancel: &CancellationToken,
) -> Result<bool, (String, DestinationFailure)> {
    use futures_util::StreamExt;
    let prefix = Path::parse(&target.prefix).map_err(|e| {
        (
            format!("{target}: the prefix is not a valid key: {e}"),
            DestinationFailure::Other,
        )
    })?;
    let mut listing = store.list(Some(&prefix));
    let first = tokio::select! {
        () = cancel.cancelled() => return Err(("cancelled".into(), DestinationFailure::Cancelled)),
        first = listing.next() => first,
    };
    match first {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(object_store::Error::NotFound { .. })) => Err((
            format!("{target}: the bucket {:?} does not exist", target.bucket),
            DestinationFailure::Other,
        )),
        Some(Err(
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }),
        )) => Err((
            format!("{target}: the store refused the credentials: {e}"),
            DestinationFailure::Authentication,
        )),
        Some(Err(e)) if e.to_string().contains("NoSuchBucket") => Err((
            format!("{target}: the bucket {:?} does not exist", target.bucket),
            DestinationFailure::Other,
        )),
        Some(Err(e)) if refused(&e.to_string()) => Err((
            format!(
                "{target}: the store refused the credentials: {}",
                said(&e.to_string())
            ),
            DestinationFailure::Authentication,
        )),
        Some(Err(e)) => Err((
            format!("{target}: cannot list the bucket: {e}"),
            DestinationFailure::Unreachable,
        )),
    }
}

/// Whether an error is S3's answer to a bad key or signature (the client library reports it
/// as a generic 403).
fn refused(error: &str) -> bool {
    [
        "403 Forbidden",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ]
    .iter()
    .any(|s| error.contains(s))
}

/// The code and message of an S3 error answer, or the whole error.
fn said(error: &str) -> String {
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = error.find(&open)? + open.len();
        let end = error[start..].find('<')? + start;
        Some(&error[start..end])
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => error.to_owned(),
    }
}

/// Whether the store refused a body that did not match its checksum or signed hash: it was
/// damaged on the way, and nothing of it was kept.
fn damaged(error: &object_store::Error) -> bool {
    let text = error.to_string();
    ["InvalidDigest", "BadDigest", "XAmzContentSHA256Mismatch"]
        .iter()
        .any(|code| text.contains(&format!("<Code>{code}</Code>")))
}

/// How many times a body damaged on the way (a whole object, or one part) is sent again.
const DAMAGED_RETRIES: usize = 3;

/// Sends a body with `send`, and again from the bytes still held while the store refuses it
/// as damaged on the way, up to [`DAMAGED_RETRIES`] times.
async fn sent_again_if_damaged<T, Fut>(
    key: &Path,
    part: Option<usize>,
    mut send: impl FnMut() -> Fut,
) -> object_store::Result<T>
where
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut tries = 0;
    loop {
        match send().await {
            Err(e) if damaged(&e) && tries < DAMAGED_RETRIES => {
                tries += 1;
                tracing::warn!(%key, ?part, error = %e,
                    "damaged on the way to the store; sending it again");
            }
            result => return result,
        }
    }
}

/// The object key of an entry.
fn key_of(target: &S3Target, entry: &Entry) -> Result<Path, String> {
    let rel = std::str::from_utf8(&entry.rel)
        .map_err(|_| "the name is not UTF-8, which object keys must be".to_string())?;
    let key = target.key(rel);
    if key.len() > 1024 {
        return Err("the object key would be longer than 1024 bytes".into());
    }
    Path::parse(&key).map_err(|e| format!("not a valid object key: {e}"))
}

/// What became of one file.
enum Fate {
    Stored,
    AlreadyThere {
        bytes: u64,
    },
    /// Its root differed from the object's: read it again in the redo pass.
    Redo,
    Failed(String),
}

async fn upload_file(
    ctx: Arc<Ctx>,
    file: u64,
    entry: Arc<Entry>,
    size: u64,
    mut pieces: mpsc::Receiver<Piece>,
    _slot: OwnedSemaphorePermit,
) {
    let fate = match key_of(&ctx.target, &entry) {
        Ok(key) => store_file(&ctx, &key, size, &mut pieces).await,
        Err(why) => Fate::Failed(why),
    };
    // Whatever is still queued is not wanted.
    pieces.close();
    while pieces.recv().await.is_some() {}
    match fate {
        Fate::Stored => ctx.done(file).await,
        Fate::AlreadyThere { bytes } => {
            {
                let mut counts = ctx.counts();
                counts.already_there += 1;
                counts.bytes_resumed += bytes;
            }
            ctx.note(Note::Acked { bytes }).await;
            ctx.done(file).await;
        }
        Fate::Redo => ctx.counts().redo.push(file),
        Fate::Failed(why) => ctx.fail(file, why).await,
    }
}

/// The next piece, or `None` when cancelled or the input ended early.
async fn next(ctx: &Ctx, pieces: &mut mpsc::Receiver<Piece>) -> Option<Piece> {
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => None,
        piece = pieces.recv() => piece,
    }
}

fn hex(root: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*root).to_hex().to_string()
}

fn payload(chunks: &[Arc<Chunk>]) -> PutPayload {
    chunks.iter().map(|c| c.data.clone()).collect()
}

fn len(chunks: &[Arc<Chunk>]) -> u64 {
    chunks.iter().map(|c| c.data.len() as u64).sum()
}

async fn store_file(ctx: &Ctx, key: &Path, size: u64, pieces: &mut mpsc::Receiver<Piece>) -> Fate {
    let Some(part) = part_size(size, ctx.chunk_len, ctx.budget, ctx.parts_in_flight) else {
        return Fate::Failed(format!(
            "a file of {size} bytes needs parts of at least {} bytes, and the memory budget \
             ({} bytes) cannot hold two: raise --memory",
            MIN_PART.max(size.div_ceil(MAX_PARTS)),
            ctx.budget
        ));
    };
    let existing = if ctx.force || ctx.fresh {
        None
    } else {
        match meta::existing(&ctx.store, key).await {
            Ok(e) => e,
            Err(e) => return Fate::Failed(format!("cannot look up {key}: {e}")),
        }
    };
    let same_size = existing.filter(|e| e.size == size && e.blake3.is_some());
    if size > part {
        if let Some(there) = same_size {
            return read_through(ctx, pieces, &there).await;
        }
        return multipart(ctx, key, part, pieces).await;
    }
    // Held whole: compared, then put in one request (or in parts, if it grew).
    let mut held = Vec::new();
    let root = loop {
        match next(ctx, pieces).await {
            Some(Piece::Chunk(c)) => {
                held.push(c);
                if len(&held) > part {
                    return multipart_from(ctx, key, part, pieces, held).await;
                }
            }
            Some(Piece::End(root)) => break root,
            Some(Piece::Abort) => return Fate::Failed("could not be read at the source".into()),
            None => return Fate::Failed(stopped(ctx)),
        }
    };
    let root = hex(&root);
    let bytes = len(&held);
    if let Some(there) = &same_size {
        if there.size == bytes && there.blake3.as_deref() == Some(root.as_str()) {
            return Fate::AlreadyThere { bytes };
        }
    }
    let options = PutOptions {
        attributes: meta::attributes(&root),
        ..PutOptions::default()
    };
    let put = sent_again_if_damaged(key, None, || {
        ctx.store.put_opts(key, payload(&held), options.clone())
    });
    let result = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return Fate::Failed("cancelled".into()),
        result = put => result,
    };
    match result {
        Ok(_) => {
            drop(held);
            ctx.acked(bytes).await;
            Fate::Stored
        }
        Err(e) => Fate::Failed(format!("cannot store {key}: {e}")),
    }
}

fn stopped(ctx: &Ctx) -> String {
    if ctx.cancel.is_cancelled() {
        "cancelled".into()
    } else {
        "the transfer ended before the file was read".into()
    }
}

/// A large file whose object looks already there: its chunks are read (for the root) and
/// dropped; a different root sends it to the redo pass.
async fn read_through(ctx: &Ctx, pieces: &mut mpsc::Receiver<Piece>, there: &Existing) -> Fate {
    let mut bytes = 0;
    loop {
        match next(ctx, pieces).await {
            Some(Piece::Chunk(c)) => bytes += c.data.len() as u64,
            Some(Piece::End(root)) => {
                return if there.size == bytes
                    && there.blake3.as_deref() == Some(hex(&root).as_str())
                {
                    Fate::AlreadyThere { bytes }
                } else {
                    Fate::Redo
                };
            }
            Some(Piece::Abort) => return Fate::Failed("could not be read at the source".into()),
            None => return Fate::Failed(stopped(ctx)),
        }
    }
}

async fn multipart(ctx: &Ctx, key: &Path, part: u64, pieces: &mut mpsc::Receiver<Piece>) -> Fate {
    multipart_from(ctx, key, part, pieces, Vec::new()).await
}

/// Parts in flight: each holds its chunks until answered, and answers with its number, its
/// bytes and its id in the upload.
type InFlight = futures_util::stream::FuturesUnordered<
    futures_util::future::BoxFuture<'static, (usize, u64, object_store::Result<PartId>)>,
>;

/// Uploads in parts, starting with the chunks `held`; aborts the upload on any failure.
async fn multipart_from(
    ctx: &Ctx,
    key: &Path,
    part: u64,
    pieces: &mut mpsc::Receiver<Piece>,
    held: Vec<Arc<Chunk>>,
) -> Fate {
    let created = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return Fate::Failed("cancelled".into()),
        created = ctx.parts.create_multipart(key) => created,
    };
    let id = match created {
        Ok(id) => id,
        Err(e) => return Fate::Failed(format!("cannot start uploading {key}: {e}")),
    };
    match parts(ctx, key, &id, part, pieces, held).await {
        Ok(fate) => fate,
        Err(why) => {
            // Nothing half-uploaded stays behind, and no parts are billed.
            let abort = tokio::time::timeout(
                ctx.retry_for.max(Duration::from_secs(5)),
                ctx.parts.abort_multipart(key, &id),
            );
            match abort.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%key, error = %e, "cannot abort the multipart upload"),
                Err(_) => tracing::warn!(%key, "aborting the multipart upload timed out"),
            }
            Fate::Failed(why)
        }
    }
}

/// One part: sent, and sent again from the same chunks if the store refused it as damaged on
/// the way. The chunks (and their budget) are held until it is answered.
fn send_part(
    ctx: &Ctx,
    key: &Path,
    id: &MultipartId,
    number: usize,
    chunks: Vec<Arc<Chunk>>,
) -> futures_util::future::BoxFuture<'static, (usize, u64, object_store::Result<PartId>)> {
    let (store, key, id) = (Arc::clone(&ctx.parts), key.clone(), id.clone());
    Box::pin(async move {
        let bytes = len(&chunks);
        let result = sent_again_if_damaged(&key, Some(number), || {
            store.put_part(&key, &id, number, payload(&chunks))
        })
        .await;
        drop(chunks); // their budget goes back once the part is answered
        (number, bytes, result)
    })
}

async fn parts(
    ctx: &Ctx,
    key: &Path,
    id: &MultipartId,
    part: u64,
    pieces: &mut mpsc::Receiver<Piece>,
    mut held: Vec<Arc<Chunk>>,
) -> Result<Fate, String> {
    use futures_util::StreamExt;
    let mut in_flight = InFlight::new();
    let mut stored = 0u64;
    let mut ids: Vec<Option<PartId>> = Vec::new();
    let failed = |e: object_store::Error| format!("a part of {key} failed: {e}");
    let mut answered = |(number, bytes, result): (usize, u64, object_store::Result<PartId>),
                        ids: &mut Vec<Option<PartId>>| {
        ids[number] = Some(result.map_err(failed)?);
        stored += bytes;
        Ok::<u64, String>(bytes)
    };
    let root = loop {
        // Answers that came meanwhile, without waiting.
        while let Some(Some(answer)) = futures_util::FutureExt::now_or_never(in_flight.next()) {
            ctx.acked(answered(answer, &mut ids)?).await;
        }
        match next(ctx, pieces).await {
            Some(Piece::Chunk(c)) => {
                held.push(c);
                if len(&held) >= part {
                    ids.push(None);
                    let number = ids.len() - 1;
                    in_flight.push(send_part(ctx, key, id, number, std::mem::take(&mut held)));
                    while in_flight.len() >= ctx.parts_in_flight {
                        let answer = tokio::select! {
                            biased;
                            () = ctx.cancel.cancelled() => return Err("cancelled".into()),
                            answer = in_flight.next() => answer,
                        };
                        if let Some(answer) = answer {
                            ctx.acked(answered(answer, &mut ids)?).await;
                        }
                    }
                }
            }
            Some(Piece::End(root)) => break root,
            Some(Piece::Abort) => return Err("could not be read at the source".into()),
            None => return Err(stopped(ctx)),
        }
    };
    if !held.is_empty() || ids.is_empty() {
        ids.push(None);
        let number = ids.len() - 1;
        in_flight.push(send_part(ctx, key, id, number, std::mem::take(&mut held)));
    }
    loop {
        let answer = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Err("cancelled".into()),
            answer = in_flight.next() => answer,
        };
        let Some(answer) = answer else {
            break;
        };
        ctx.acked(answered(answer, &mut ids)?).await;
    }
    // Every part was answered with an id, or this returned early.
    let ids: Vec<PartId> = ids.into_iter().flatten().collect();
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return Err("cancelled".into()),
        done = ctx.parts.complete_multipart(key, id, ids) =>
            done.map_err(|e| format!("cannot complete {key}: {e}"))?,
    };
    let root = hex(&root);
    // Stored and complete; the metadata comes with a copy onto itself.
    meta::set_root(
        &ctx.store,
        &ctx.http,
        &ctx.target.bucket,
        key,
        (&root, stored),
        ctx.max_copy,
        ctx.retry_for,
    )
    .await
    .map_err(|why| format!("{key} is stored, but its blake3 metadata could not be set: {why}"))
    .map(|()| Fate::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parts_fit_the_budget_and_s3s_limits() {
        // 64 MiB budget, 1 MiB chunks, 4 in flight: 10 MiB parts.
        assert_eq!(part_size(100 * MIB, MIB, 64 * MIB, 4), Some(10 * MIB));
        // Small budgets still get S3's minimum.
        assert_eq!(part_size(100 * MIB, MIB, 16 * MIB, 4), Some(5 * MIB));
        // A whole number of chunks.
        assert_eq!(part_size(100 * MIB, 4 * MIB, 64 * MIB, 4), Some(8 * MIB));
        assert_eq!(part_size(100 * MIB, 4 * MIB, 16 * MIB, 4), Some(8 * MIB));
        // 10,000 parts at most: a 1 TiB file needs parts over 100 MiB.
        let tib = 1 << 40;
        assert_eq!(part_size(tib, MIB, 64 * MIB, 4), None);
        let p = part_size(tib, MIB, 1 << 30, 4).unwrap();
        assert!(p * MAX_PARTS >= tib && p % MIB == 0 && 2 * p <= 1 << 30);
        // A budget that cannot hold two minimum parts.
        assert_eq!(part_size(100 * MIB, MIB, 8 * MIB, 4), None);
    }

    #[test]
    fn empty_directories_are_found() {
        let mut d = EmptyDirs::default();
        for dir in [&b"a"[..], b"a/b", b"c"] {
            d.dir(dir);
        }
        d.child(b"a/b");
        d.child(b"a/x");
        let notes = d.notes();
        assert_eq!(
            notes,
            vec![
                "2 empty directories not stored (object stores have no directories): a/b, c"
                    .to_string()
            ]
        );
    }
}
