//! Resume journals: which chunks of a large file are verified and on disk, kept next to its
//! partial file, so that a transfer interrupted by anything (the sender, the receiver or the
//! network dying) resumes by sending only what is missing.
//!
//! `.<name>.tidegate-journal`, beside `.<name>.tidegate-partial`:
//!
//! ```text
//! header  48 B: "TDGJ" | version u32 | size u64 | chunk_len u64 | mtime_ns i64 | check [12]
//! record  48 B: index u64 | chaining value [32] | check [8]
//! ```
//!
//! Integers are big-endian; a check is the start of the BLAKE3 hash of the bytes before it in
//! the header or record. The header names the source file's identity as the sender announced
//! it (size, chunk size, mtime): a transfer of anything else starts the file over.
//!
//! Crash safety without a flush per chunk: records wait in memory until `FLUSH_EVERY / 2`
//! bytes of chunks are behind them, then the partial file is flushed (`fdatasync`) and only
//! then are the records appended. A record on disk therefore always names data on disk,
//! whatever dies when; and since a chunk that would bring the unrecorded bytes to
//! `FLUSH_EVERY` waits for the running flush (its acknowledgement with it), a crash loses at
//! most `FLUSH_EVERY` bytes the sender was told had arrived; a torn or damaged record ends the replay, and the chunks after it are sent again. The
//! root hash checked at the end covers every chunk, replayed or received.
//!
//! The journal is locked (`flock`) while a transfer writes its file; another transfer of the
//! same target meanwhile gets a private partial file and no journal.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::beneath::{Dir, Root};

use super::names::journal_path;
use super::verified::{Recorded, Verified};
use super::writer::PartialFile;

/// Most chunk bytes acknowledged and not yet recorded on disk: what a crash can cost to
/// resend. A flush starts at half of it, so that the next half arrives while it runs.
pub(crate) const FLUSH_EVERY: u64 = 64 << 20;

/// What the caller of [`Journal::note`] does before acknowledging the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Noted {
    /// Nothing: the chunk is within what a crash may cost.
    Ack,
    /// Start a [`flush`](Journal::flush) (the only one running) and acknowledge after it.
    Flush,
    /// A flush is running and the unrecorded bytes reached [`FLUSH_EVERY`]: flush (which
    /// waits for the running one) and acknowledge after it.
    Wait,
}

const MAGIC: [u8; 4] = *b"TDGJ";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const RECORD_LEN: usize = 48;

/// What identifies the source of a partial file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) size: u64,
    pub(crate) chunk_len: u64,
    pub(crate) mtime_ns: i64,
}

impl Identity {
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&VERSION.to_be_bytes());
        h[8..16].copy_from_slice(&self.size.to_be_bytes());
        h[16..24].copy_from_slice(&self.chunk_len.to_be_bytes());
        h[24..32].copy_from_slice(&self.mtime_ns.to_be_bytes());
        let check = blake3::hash(&h[..36]);
        h[36..].copy_from_slice(&check.as_bytes()[..12]);
        h
    }

    fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_len.max(1))
    }
}

fn record(index: u64, cv: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..8].copy_from_slice(&index.to_be_bytes());
    r[8..40].copy_from_slice(cv);
    let check = blake3::hash(&r[..40]);
    r[40..].copy_from_slice(&check.as_bytes()[..8]);
    r
}

fn parse_record(r: &[u8; RECORD_LEN]) -> Option<(u64, [u8; 32])> {
    if blake3::hash(&r[..40]).as_bytes()[..8] != r[40..] {
        return None;
    }
    let index = u64::from_be_bytes(r[..8].try_into().ok()?);
    let cv = r[8..40].try_into().ok()?;
    Some((index, cv))
}

/// Records not yet on disk.
#[derive(Debug, Default)]
struct Pending {
    records: Vec<u8>,
    /// Chunk bytes behind `records`.
    bytes: u64,
    /// Chunk bytes behind the records a running flush took.
    flushing_bytes: u64,
    /// A flush is running; another is not started meanwhile.
    flushing: bool,
    /// Records on disk (replayed or appended).
    on_disk: u64,
}

/// The locked journal of one partial file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    root: Arc<Root>,
    path: PathBuf,
    pending: Mutex<Pending>,
    /// Held for the whole of a flush: flushes run one after the other, in note order.
    flush: Mutex<()>,
}

/// A resumable partial file: its journal and the chunks already verified.
#[derive(Debug)]
pub(crate) struct Resumable {
    pub(crate) partial: PartialFile,
    pub(crate) journal: Journal,
    pub(crate) verified: Verified,
}

/// Opens the resumable partial file and journal for `target`, replaying what the journal
/// records when it matches `id` and the partial file is still there. `None` when another
/// transfer holds the journal. Blocking.
pub(crate) fn open(
    root: &Arc<Root>,
    target: PathBuf,
    id: Identity,
    mode: u32,
    mtime_ns: i64,
) -> io::Result<Option<Resumable>> {
    let path = journal_path(&target);
    let Some(file) = open_locked(root, &path)? else {
        return Ok(None);
    };
    let journal = Journal {
        file,
        root: Arc::clone(root),
        path,
        pending: Mutex::new(Pending::default()),
        flush: Mutex::new(()),
    };
    let (mut verified, on_disk) = journal.replay(id)?;
    let (partial, kept) =
        PartialFile::open_resumable(root, target, id.size, mode, mtime_ns, on_disk > 0)
            .inspect_err(|_| journal.remove())?;
    if !kept && on_disk > 0 {
        journal.reset(id)?;
        verified = Verified::new(id.chunks());
    }
    journal.lock().on_disk = if kept { on_disk } else { 0 };
    Ok(Some(Resumable {
        partial,
        journal,
        verified,
    }))
}

/// Takes a journal's `flock` without waiting: false when a transfer holds it. Released when
/// `file` is closed.
pub(crate) fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: a valid descriptor for the call; the lock lives as long as the open file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Opens (creating) and locks the journal at `path`. `None` when another transfer holds it.
/// A journal deleted between the open and the lock (its transfer committed, or a sweep of
/// expired leftovers took it) is opened again, so the lock is always on the file at `path`.
fn open_locked(root: &Root, path: &Path) -> io::Result<Option<File>> {
    for _ in 0..3 {
        let file = root.at(path, false, |d, name| {
            d.open(name, libc::O_RDWR | libc::O_APPEND | libc::O_CREAT, 0o600)
        })?;
        if !try_lock(&file)? {
            return Ok(None);
        }
        let held = file.metadata()?;
        match root.at(path, false, |d, name| d.lstat(name)) {
            Ok(now) if now.st_dev == held.dev() && now.st_ino == held.ino() => {
                return Ok(Some(file))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the journal into a [`Verified`]: from scratch (and the journal started over)
    /// when its header is not `id`'s. Returns how many records were replayed.
    fn replay(&self, id: Identity) -> io::Result<(Verified, u64)> {
        let chunks = id.chunks();
        let mut verified = Verified::new(chunks);
        let mut reader = BufReader::with_capacity(64 * 1024, &self.file);
        let mut header = [0u8; HEADER_LEN];
        if read_full(&mut reader, &mut header)? != HEADER_LEN || header != id.header() {
            self.reset(id)?;
            return Ok((verified, 0));
        }
        let mut good = 0u64;
        let mut rec = [0u8; RECORD_LEN];
        while read_full(&mut reader, &mut rec)? == RECORD_LEN {
            let Some((index, cv)) = parse_record(&rec) else {
                break;
            };
            match verified.record(index, cv) {
                Recorded::New | Recorded::Repeat => good += 1,
                Recorded::TooFarAhead => break,
            }
        }
        // Appends continue after the last good record.
        self.file
            .set_len(HEADER_LEN as u64 + good * RECORD_LEN as u64)?;
        Ok((verified, good))
    }

    /// Empties the journal and writes `id`'s header.
    fn reset(&self, id: Identity) -> io::Result<()> {
        self.file.set_len(0)?;
        (&self.file).write_all(&id.header())
    }

    /// Notes chunk `index`, verified and written (`len` bytes), and says what must happen
    /// before it is acknowledged.
    pub(crate) fn note(&self, index: u64, cv: &[u8; 32], len: u64) -> Noted {
        let mut p = self.lock();
        if p.records.capacity() == 0 {
            p.records.reserve(RECORD_LEN * 64);
        }
        p.records.extend_from_slice(&record(index, cv));
        p.bytes += len;
        if p.flushing_bytes + p.bytes >= FLUSH_EVERY {
            Noted::Wait
        } else if p.bytes >= FLUSH_EVERY / 2 && !p.flushing {
            p.flushing = true;
            Noted::Flush
        } else {
            Noted::Ack
        }
    }

    /// Makes the data of every noted chunk durable, then appends their records; waits for a
    /// flush already running first. Blocking.
    pub(crate) fn flush(&self, partial: &PartialFile) -> io::Result<()> {
        let _one = self.flush.lock().unwrap_or_else(PoisonError::into_inner);
        let records = {
            let mut p = self.lock();
            p.flushing = true;
            p.flushing_bytes = std::mem::take(&mut p.bytes);
            let cap = p.records.capacity();
            std::mem::replace(&mut p.records, Vec::with_capacity(cap))
        };
        let written = (|| {
            if !records.is_empty() {
                partial.sync_data()?;
                (&self.file).write_all(&records)?;
            }
            Ok(())
        })();
        let mut p = self.lock();
        p.flushing = false;
        p.flushing_bytes = 0;
        if written.is_ok() {
            p.on_disk += (records.len() / RECORD_LEN) as u64;
        }
        written
    }

    /// Flushes what is noted and keeps the journal and partial file for a later transfer,
    /// or deletes both when nothing is recorded. Blocking.
    pub(crate) fn suspend(&self, partial: &PartialFile) {
        let flushed = self.flush(partial);
        if flushed.is_err() || self.lock().on_disk == 0 {
            partial.abandon();
            self.remove();
        }
    }

    /// Deletes the journal (the file was committed or abandoned).
    pub(crate) fn remove(&self) {
        let _ = self.root.at(&self.path, false, Dir::remove);
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // chunk indices index data and chaining values alike
mod tests {
    use super::*;
    use crate::pipeline::hash::digest;
    use crate::server::names::resumable_path;

    const CHUNK: usize = 16 * 1024;

    /// [`super::open`] in the target's own directory.
    fn open(
        target: PathBuf,
        id: Identity,
        mode: u32,
        mtime_ns: i64,
    ) -> io::Result<Option<Resumable>> {
        let root = Root::open(target.parent().unwrap()).unwrap();
        super::open(&root, target, id, mode, mtime_ns)
    }

    fn id(size: u64) -> Identity {
        Identity {
            size,
            chunk_len: CHUNK as u64,
            mtime_ns: 42,
        }
    }

    fn cvs(data: &[u8]) -> Vec<[u8; 32]> {
        data.chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| digest((i * CHUNK) as u64, c).chaining_value.unwrap())
            .collect()
    }

    fn write(r: &Resumable, data: &[u8], index: usize) {
        let at = index * CHUNK;
        r.partial
            .write_at(at as u64, &data[at..(at + CHUNK).min(data.len())])
            .unwrap();
    }

    #[test]
    fn flushed_chunks_are_replayed_and_the_rest_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let data: Vec<u8> = (0..CHUNK * 5 + 100).map(|i| (i % 253) as u8).collect();
        let cvs = cvs(&data);
        let first = open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        // Another transfer of the same target cannot take it meanwhile.
        assert!(open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .is_none());
        for i in [1, 0, 2] {
            write(&first, &data, i);
            first.journal.note(i as u64, &cvs[i], CHUNK as u64);
        }
        first.journal.flush(&first.partial).unwrap();
        write(&first, &data, 4);
        first.journal.note(4, &cvs[4], CHUNK as u64); // never flushed: lost in the "crash"
        drop(first);

        let mut again = open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        assert_eq!(again.verified.next(), 3);
        assert!(!again.verified.has(4));
        for i in 3..6 {
            write(&again, &data, i);
            again.verified.record(i as u64, cvs[i]);
        }
        assert_eq!(
            std::mem::replace(&mut again.verified, Verified::new(0)).finish(),
            Some(blake3::hash(&data))
        );
    }

    #[test]
    fn another_source_or_a_damaged_record_starts_over_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let data = vec![9u8; CHUNK * 4];
        let cvs = cvs(&data);
        let r = open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        for i in 0..3 {
            write(&r, &data, i);
            r.journal.note(i as u64, &cvs[i], CHUNK as u64);
        }
        r.journal.flush(&r.partial).unwrap();
        drop(r);
        // Damage the second record: only the first is replayed.
        let jp = journal_path(&target);
        let mut bytes = std::fs::read(&jp).unwrap();
        bytes[HEADER_LEN + RECORD_LEN + 3] ^= 1;
        std::fs::write(&jp, &bytes).unwrap();
        let r = open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        assert_eq!(r.verified.next(), 1);
        drop(r);
        assert_eq!(
            std::fs::metadata(&jp).unwrap().len(),
            (HEADER_LEN + RECORD_LEN) as u64,
            "the damaged tail is cut off"
        );
        // A different mtime: another source, nothing resumed.
        let mut other = id(data.len() as u64);
        other.mtime_ns = 43;
        let r = open(target.clone(), other, 0o644, 0).unwrap().unwrap();
        assert_eq!(r.verified.next(), 0);
        drop(r);
        // The partial file gone: nothing resumed either.
        let r = open(target.clone(), id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        for i in 0..2 {
            r.journal.note(i as u64, &cvs[i], CHUNK as u64);
        }
        r.journal.flush(&r.partial).unwrap();
        drop(r);
        std::fs::remove_file(resumable_path(&target)).unwrap();
        let r = open(target, id(data.len() as u64), 0o644, 0)
            .unwrap()
            .unwrap();
        assert_eq!(r.verified.next(), 0);
    }

    #[test]
    fn suspending_with_nothing_recorded_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let r = open(target.clone(), id(CHUNK as u64 * 3), 0o644, 0)
            .unwrap()
            .unwrap();
        r.journal.suspend(&r.partial);
        drop(r);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_crash_never_costs_more_than_flush_every_acknowledged_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path().join("f"), id(CHUNK as u64 * 64), 0o644, 0)
            .unwrap()
            .unwrap();
        let quarter = FLUSH_EVERY / 4;
        let cv = [7u8; 32];
        assert_eq!(r.journal.note(0, &cv, quarter), Noted::Ack);
        // Half unrecorded: a flush starts, and its chunk waits for it.
        assert_eq!(r.journal.note(1, &cv, quarter), Noted::Flush);
        // While it runs, chunks go on being acknowledged up to `FLUSH_EVERY` unrecorded bytes.
        assert_eq!(r.journal.note(2, &cv, quarter), Noted::Ack);
        assert_eq!(r.journal.note(3, &cv, quarter), Noted::Wait);
        assert_eq!(r.journal.note(4, &cv, 1), Noted::Wait);
        // Acknowledged and unrecorded now: chunks 0 and 2, half of `FLUSH_EVERY`.
        r.journal.flush(&r.partial).unwrap();
        assert_eq!(r.journal.lock().on_disk, 5);
        assert_eq!(r.journal.note(5, &cv, quarter), Noted::Ack);
        // A waiter finding the records taken by the flush it waited for writes nothing.
        r.journal.flush(&r.partial).unwrap();
        r.journal.flush(&r.partial).unwrap();
        assert_eq!(r.journal.lock().on_disk, 6);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever a journal holds (a local user could write anything there), opening it
        /// never panics, never resumes a chunk past the file's end, and records only what
        /// carries a valid check.
        #[test]
        fn any_journal_contents_are_read_safely(
            valid_header in proptest::bool::ANY,
            records in proptest::collection::vec((0u64..12, proptest::bool::ANY), 0..40),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("f");
            let id = id(CHUNK as u64 * 8 + 1);
            let mut bytes = Vec::new();
            if valid_header {
                bytes.extend_from_slice(&id.header());
            }
            let mut valid_prefix = Vec::new();
            let mut still_valid = valid_header;
            for (index, good) in &records {
                let mut r = record(*index, &[*index as u8; 32]);
                if !good {
                    r[45] ^= 0xff;
                }
                still_valid &= *good;
                if still_valid {
                    valid_prefix.push(*index);
                }
                bytes.extend_from_slice(&r);
            }
            bytes.extend_from_slice(&junk);
            std::fs::write(journal_path(&target), &bytes).unwrap();
            // The partial file exists with the right length, so recorded chunks count.
            std::fs::write(
                resumable_path(&target),
                vec![0u8; id.size as usize],
            ).unwrap();
            let r = open(target, id, 0o644, 0).unwrap().unwrap();
            let chunks = id.chunks();
            let next = r.verified.next();
            proptest::prop_assert!(next <= chunks);
            // The prefix replayed is what the valid records (in order, until the first bad one
            // or one past the end) make contiguous from chunk 0.
            let mut v = Verified::new(chunks);
            for index in valid_prefix {
                if v.record(index, [index as u8; 32]) == Recorded::TooFarAhead {
                    break;
                }
            }
            proptest::prop_assert_eq!(next, v.next());
        }
    }
}
