//! Reading without a mapping: positioned reads of regular files, plain reads of streams.
//!
//! Used for small files (a mapping costs more than a copy), empty files, pipes and stdin,
//! special files such as those in `/proc` (which report a size of zero), and any file the
//! kernel refuses to map. Full-size chunk buffers come from a [`BufPool`] and go back to it
//! when the chunk's last `Bytes` is dropped, so a long stream reuses a bounded set of buffers
//! instead of allocating per chunk. Also reads parts of a file again for a receiver that lost
//! them ([`open_again`], [`read_again`]).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::{Input, SourceError};

/// A bounded stack of equally sized buffers.
#[derive(Debug)]
pub(crate) struct BufPool {
    buf_len: usize,
    /// At most `retain` idle buffers are kept; more are freed.
    retain: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    pub(crate) fn new(buf_len: usize, retain: usize) -> Arc<Self> {
        Arc::new(BufPool {
            buf_len,
            retain,
            free: Mutex::new(Vec::new()),
        })
    }

    /// The size of every buffer in the pool.
    pub(crate) fn buf_len(&self) -> usize {
        self.buf_len
    }

    fn take(&self) -> Vec<u8> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        reused.unwrap_or_else(|| vec![0; self.buf_len])
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.retain && buf.len() == self.buf_len {
            free.push(buf);
        }
    }
}

/// A pooled buffer holding `len` valid bytes; returns itself to the pool on drop.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// Fills `buf` from `read`, stopping early only at end of input. Returns the bytes read.
/// `read` gets the unfilled rest of the buffer and how many bytes are already filled.
fn fill(
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads exactly `len` bytes at `offset`, or fewer if the file ends first (the caller treats
/// a short read of a regular file as truncation). Full-size reads use the pool; shorter ones
/// (the tail of a file, small files) get a buffer of exactly their size, so that the memory
/// held matches what the budget counted.
pub(crate) fn read_at(
    file: &File,
    offset: u64,
    len: usize,
    pool: &Arc<BufPool>,
) -> io::Result<Bytes> {
    if len == pool.buf_len() {
        let mut buf = pool.take();
        let n = fill(|b, done| file.read_at(b, offset + done), &mut buf)?;
        Ok(Bytes::from_owner(Pooled {
            buf,
            len: n,
            pool: Arc::clone(pool),
        }))
    } else {
        Ok(Bytes::from(read_fresh(file, offset, len)?))
    }
}

/// Reads up to `len` bytes at `offset` into a new buffer that is not zeroed first (for a
/// tree of small files, zeroing would be a noticeable share of the reading thread's time).
fn read_fresh(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the pointer and count name the vector's spare capacity, `len - done` bytes
        // that it owns and nothing else references; the kernel writes at most that many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                len - done,
                at,
            )
        };
        match usize::try_from(n) {
            Ok(0) => break,
            // SAFETY: the kernel initialised `n` more bytes, within the capacity.
            Ok(n) => unsafe { buf.set_len(done + n) },
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

/// Opens `input` again, to read parts of it a receiver lost (see `client/reread.rs`): a
/// regular file of at least `len` bytes, opened without blocking (something else put at the
/// path since cannot stall the caller).
///
/// # Errors
/// Standard input and anything that is not a regular file cannot be read again; a file
/// shorter than `len` has shrunk since it was read.
pub(crate) fn open_again(input: &Input, len: u64) -> Result<File, SourceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = input.display_path().to_path_buf();
    let Input::Path(p) = input else {
        return Err(SourceError::Open {
            path,
            source: io::Error::other("standard input cannot be read again"),
        });
    };
    let open_err = |source| SourceError::Open {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.file_type().is_file() {
        return Err(open_err(io::Error::other(
            "no longer a regular file, cannot be read again",
        )));
    }
    if meta.len() < len {
        return Err(SourceError::Truncated {
            path,
            offset: meta.len(),
            expected_len: len,
            actual_len: meta.len(),
        });
    }
    Ok(file)
}

/// Reads exactly `len` bytes at `offset` of a file opened with [`open_again`].
///
/// # Errors
/// A failed read, or a file that ends first (it shrank).
pub(crate) fn read_again(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Bytes, SourceError> {
    let buf = read_fresh(file, offset, len).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        offset,
        source,
    })?;
    if buf.len() < len {
        return Err(SourceError::Truncated {
            path: path.to_path_buf(),
            offset: offset + buf.len() as u64,
            expected_len: offset + len as u64,
            actual_len: offset + buf.len() as u64,
        });
    }
    Ok(Bytes::from(buf))
}

/// Reads up to one pool buffer from a stream. An empty result means end of input.
pub(crate) fn read_stream(
    stream: &mut (dyn Read + Send),
    pool: &Arc<BufPool>,
) -> io::Result<Bytes> {
    let mut buf = pool.take();
    let n = fill(|b, _| stream.read(b), &mut buf)?;
    if n == 0 {
        pool.give_back(buf);
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(Pooled {
        buf,
        len: n,
        pool: Arc::clone(pool),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pooled_buffers_are_reused() {
        let pool = BufPool::new(16, 2);
        let mut input: &[u8] = &[7u8; 40];
        let a = read_stream(&mut input, &pool).unwrap();
        let ptr = a.as_ptr();
        assert_eq!(a.len(), 16);
        drop(a);
        let b = read_stream(&mut input, &pool).unwrap();
        assert_eq!(b.as_ptr(), ptr, "the dropped buffer is reused");
        let c = read_stream(&mut input, &pool).unwrap();
        assert_eq!(c.len(), 8);
        assert!(read_stream(&mut input, &pool).unwrap().is_empty());
    }

    #[test]
    fn read_at_short_tail_and_truncation() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&(0..100u8).collect::<Vec<_>>()).unwrap();
        let pool = BufPool::new(64, 1);
        let full = read_at(&f, 0, 64, &pool).unwrap();
        assert_eq!(&full[..], &(0..64u8).collect::<Vec<_>>()[..]);
        let tail = read_at(&f, 64, 36, &pool).unwrap();
        assert_eq!(&tail[..], &(64..100u8).collect::<Vec<_>>()[..]);
        let past = read_at(&f, 90, 36, &pool).unwrap();
        assert_eq!(past.len(), 10, "a short read reports what was there");
    }
}
