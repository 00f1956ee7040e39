//! [`FileSource`]: one opened input handing out its bytes chunk by chunk, in order, by the
//! route its kind calls for (mapped windows, positioned reads, or a stream into pooled
//! buffers; see the module above).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::dir::LastDir;
use super::guard::Watch;
use super::mmap::{MapFailure, MappedReader};
use super::read::{self, BufPool};
use super::{Input, SourceError, SMALL_FILE_BYTES};

/// Bytes of one chunk, as read, before hashing.
pub(crate) struct RawChunk {
    pub(crate) offset: u64,
    pub(crate) data: Bytes,
    /// Set for mapped chunks: tells whether the window lost pages to truncation.
    pub(crate) watch: Option<Watch>,
    /// A part of a larger mapped window, whose pages are worth releasing once it is
    /// consumed (the window itself is unmapped only when its last chunk is gone).
    pub(crate) release: bool,
}

enum Route {
    Mapped(MappedReader),
    Positioned(File),
    Stream {
        stream: Box<dyn Read + Send>,
        eof: bool,
    },
}

/// An opened input that hands out its bytes chunk by chunk, in order.
pub(crate) struct FileSource {
    path: PathBuf,
    route: Route,
    chunk_len: usize,
    /// Length at open time for regular files; `None` for streams.
    len: Option<u64>,
    offset: u64,
    pool: Arc<BufPool>,
}

impl FileSource {
    /// Opens `input`. `window_len` is the mapping window (a multiple of `chunk_len`); `pool`
    /// provides `chunk_len`-sized buffers for unmapped reads.
    ///
    /// `walked` is the length a directory walk just saw for a regular file. A small one is
    /// then opened and read without asking its type and length again (one `fstat` fewer per
    /// file, a measurable share of a tree of small files): opened non-blocking, so that a
    /// pipe put in its place since cannot block the reader, and read with positioned reads,
    /// which fail on anything but a file or a device. A file that shrank since is reported
    /// truncated; one that grew is sent as long as the walk saw it.
    ///
    /// Such files are opened relative to their directory, kept open in the [`LastDir`] that
    /// comes with `walked` while files of the same directory follow (one name to look up
    /// instead of every component of the path, another measurable share of a tree of small
    /// files).
    pub(crate) fn open(
        input: &Input,
        walked: Option<(u64, &mut LastDir)>,
        chunk_len: usize,
        window_len: u64,
        pool: Arc<BufPool>,
    ) -> Result<Self, SourceError> {
        let path = input.display_path().to_path_buf();
        let open_err = |source| SourceError::Open {
            path: path.clone(),
            source,
        };
        let (route, len) = match (input, walked) {
            (Input::Path(p), Some((len, dirs))) if len > 0 && len <= SMALL_FILE_BYTES => {
                let file = dirs.open_nonblocking(p).map_err(open_err)?;
                (Route::Positioned(file), Some(len))
            }
            _ => Self::open_asking(input, &path, window_len)?,
        };
        Ok(FileSource {
            path,
            route,
            chunk_len,
            len,
            offset: 0,
            pool,
        })
    }

    /// Opens `input` and routes it by what `fstat` says it is.
    fn open_asking(
        input: &Input,
        path: &Path,
        window_len: u64,
    ) -> Result<(Route, Option<u64>), SourceError> {
        let open_err = |source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        };
        Ok(match input {
            Input::Stdin => (
                Route::Stream {
                    stream: Box::new(io::stdin()),
                    eof: false,
                },
                None,
            ),
            Input::Stream(s) => (
                Route::Stream {
                    stream: s.open().map_err(open_err)?,
                    eof: false,
                },
                None,
            ),
            Input::Path(p) => {
                let file = File::open(p).map_err(open_err)?;
                let meta = file.metadata().map_err(open_err)?;
                let ft = meta.file_type();
                if ft.is_dir() {
                    return Err(SourceError::IsDirectory {
                        path: path.to_path_buf(),
                    });
                }
                let len = meta.len();
                if ft.is_file() && len > SMALL_FILE_BYTES {
                    (
                        Route::Mapped(MappedReader::new(file, len, window_len)),
                        Some(len),
                    )
                } else if ft.is_file() && len > 0 {
                    (Route::Positioned(file), Some(len))
                } else if ft.is_file() || ft.is_fifo() || ft.is_char_device() || ft.is_socket() {
                    // Empty regular files and /proc-style files that report size 0 but have
                    // content are both read as streams: the stream decides.
                    let stream = Box::new(file);
                    (Route::Stream { stream, eof: false }, None)
                } else {
                    // Block devices and anything else: positioned reads to the reported size
                    // would be wrong for devices (len 0); read them as streams too.
                    let stream = Box::new(file);
                    (Route::Stream { stream, eof: false }, None)
                }
            }
        })
    }

    /// The path used in messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The length at open time, when known (regular files).
    pub(crate) fn len_hint(&self) -> Option<u64> {
        self.len
    }

    /// How many bytes the next chunk may hold (what to reserve from the budget), or `None`
    /// when the input is exhausted.
    pub(crate) fn next_request(&self) -> Option<usize> {
        match (&self.route, self.len) {
            (Route::Stream { eof: true, .. }, _) => None,
            (Route::Stream { .. }, _) => Some(self.chunk_len),
            (_, Some(len)) if self.offset < len => {
                // Bounded by chunk_len, a usize.
                Some((len - self.offset).min(self.chunk_len as u64) as usize)
            }
            _ => None,
        }
    }

    /// Reads the next chunk, of at most `len` bytes (the value `next_request` returned).
    /// `Ok(None)` means end of input.
    pub(crate) fn read_next(&mut self, len: usize) -> Result<Option<RawChunk>, SourceError> {
        let offset = self.offset;
        if let Route::Mapped(reader) = &mut self.route {
            match reader.chunk(&self.path, offset, len) {
                Ok(chunk) => {
                    self.offset += chunk.data.len() as u64;
                    return Ok(Some(RawChunk {
                        offset,
                        data: chunk.data,
                        watch: chunk.watch,
                        release: chunk.release,
                    }));
                }
                Err(MapFailure::Source(e)) => return Err(e),
                Err(MapFailure::Unsupported) => self.fall_back_to_reads(),
            }
        }
        let data = match &mut self.route {
            Route::Mapped(_) => unreachable!("fall_back_to_reads replaced the mapped route"),
            Route::Positioned(file) => {
                let data = read::read_at(file, offset, len, &self.pool).map_err(|source| {
                    SourceError::Read {
                        path: self.path.clone(),
                        offset,
                        source,
                    }
                })?;
                if data.len() < len {
                    let actual_len = file.metadata().map(|m| m.len()).unwrap_or(offset);
                    return Err(SourceError::Truncated {
                        path: self.path.clone(),
                        offset: offset + data.len() as u64,
                        expected_len: self.len.unwrap_or(0),
                        actual_len,
                    });
                }
                data
            }
            Route::Stream { stream, eof } => {
                let data = read::read_stream(stream.as_mut(), &self.pool).map_err(|source| {
                    SourceError::Read {
                        path: self.path.clone(),
                        offset,
                        source,
                    }
                })?;
                if data.is_empty() {
                    *eof = true;
                    return Ok(None);
                }
                data
            }
        };
        self.offset += data.len() as u64;
        Ok(Some(RawChunk {
            offset,
            data,
            watch: None,
            release: false,
        }))
    }

    /// Switches a mapped file to positioned reads, keeping the offset.
    fn fall_back_to_reads(&mut self) {
        let placeholder = Route::Stream {
            stream: Box::new(io::empty()),
            eof: true,
        };
        if let Route::Mapped(reader) = std::mem::replace(&mut self.route, placeholder) {
            self.route = Route::Positioned(reader.into_file());
        }
    }

    /// Call after the last chunk: checks that a regular file did not shrink meanwhile, and
    /// returns the number of bytes read. A file that grew is sent as it was when opened,
    /// with a warning, as rsync does.
    pub(crate) fn finish(&self) -> Result<u64, SourceError> {
        if let (Some(expected_len), Route::Mapped(_) | Route::Positioned(_)) =
            (self.len, &self.route)
        {
            let file = match &self.route {
                Route::Mapped(r) => r.file(),
                // Small files are read with plain reads, and a read returns what is there:
                // every byte arrived, so a later change cannot have touched what was sent.
                // (Not worth a `fstat` per small file just to warn that it grew.)
                Route::Positioned(_) if self.offset == expected_len => return Ok(self.offset),
                Route::Positioned(f) => f,
                Route::Stream { .. } => return Ok(self.offset),
            };
            let actual_len = file
                .metadata()
                .map_err(|source| SourceError::Open {
                    path: self.path.clone(),
                    source,
                })?
                .len();
            if actual_len < expected_len {
                return Err(SourceError::Truncated {
                    path: self.path.clone(),
                    offset: actual_len,
                    expected_len,
                    actual_len,
                });
            }
            if actual_len > expected_len {
                tracing::warn!(path = %self.path.display(), expected_len, actual_len,
                    "file grew while being read; sent as it was when opened");
            }
        }
        Ok(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let block: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len());
            f.write_all(&block[..n]).unwrap();
            left -= n;
        }
        f.flush().unwrap();
        f
    }

    fn open(path: &Path, chunk: usize, window: u64) -> FileSource {
        FileSource::open(
            &Input::Path(path.to_path_buf()),
            None,
            chunk,
            window,
            BufPool::new(chunk, 4),
        )
        .unwrap()
    }

    /// How many mappings of `path` this process has.
    fn mappings_of(path: &Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.to_str().unwrap();
        maps.lines().filter(|l| l.ends_with(name)).count()
    }

    /// A window is unmapped as soon as its last chunk is dropped, even while the reader has
    /// not moved on (it may be waiting for budget); only chunks that are a part of a larger
    /// window ask for their pages to be released.
    #[test]
    fn a_window_goes_with_its_last_chunk() {
        let f = file_of(8 << 20);
        let mut src = open(f.path(), 1 << 20, 2 << 20);
        let a = src.read_next(1 << 20).unwrap().unwrap();
        let b = src.read_next(1 << 20).unwrap().unwrap();
        assert!(a.release && b.release, "halves of a window");
        assert_eq!(mappings_of(f.path()), 1);
        drop(a);
        assert_eq!(mappings_of(f.path()), 1, "the second half still borrows it");
        drop(b);
        assert_eq!(
            mappings_of(f.path()),
            0,
            "nothing holds the window any more"
        );

        let mut whole = open(f.path(), 2 << 20, 2 << 20);
        let c = whole.read_next(2 << 20).unwrap().unwrap();
        assert!(!c.release, "a whole window is unmapped, not released");
        drop(c);
        assert_eq!(mappings_of(f.path()), 0);
    }

    /// The SIGBUS defence: a mapped window whose file is truncated underneath reads zeros
    /// and is marked poisoned, instead of killing the process.
    #[test]
    fn truncation_under_a_mapped_window_poisons_it_instead_of_crashing() {
        let f = file_of(8 << 20);
        let mut src = open(f.path(), 1 << 20, 4 << 20);
        let first = src.read_next(1 << 20).unwrap().unwrap();
        let second = src.read_next(1 << 20).unwrap().unwrap();
        assert!(first.watch.is_some(), "large files are mapped");
        // Touch the first chunk while the file is intact.
        assert_eq!(first.data[1000], (1000 % 256) as u8);
        assert!(!first.watch.unwrap().poisoned());
        f.as_file().set_len(0).unwrap();
        // Every page of the second chunk is now past the end of the file.
        let sum: u64 = second.data.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum, 0, "vanished pages read as zeros");
        assert!(second.watch.unwrap().poisoned());
        // The rest of this window is still mapped (and would poison in turn); the next window
        // is refused up front, with the file named.
        drop((first, second));
        src.read_next(1 << 20).unwrap().unwrap();
        src.read_next(1 << 20).unwrap().unwrap();
        let err = src.read_next(1 << 20).err().unwrap();
        assert!(
            matches!(err, SourceError::Truncated { actual_len: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn shrinking_before_the_next_window_is_a_typed_error() {
        let f = file_of(8 << 20);
        let mut src = open(f.path(), 1 << 20, 2 << 20);
        for _ in 0..2 {
            src.read_next(1 << 20).unwrap().unwrap();
        }
        f.as_file().set_len(3 << 20).unwrap();
        let err = src.read_next(1 << 20).err().unwrap();
        match err {
            SourceError::Truncated {
                path,
                expected_len,
                actual_len,
                ..
            } => {
                assert_eq!(path, f.path());
                assert_eq!((expected_len, actual_len), (8 << 20, 3 << 20));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn routes_by_kind_and_size() {
        let small = file_of(1000);
        let mut src = open(small.path(), 16384, 65536);
        let c = src.read_next(src.next_request().unwrap()).unwrap().unwrap();
        assert!(c.watch.is_none() && c.data.len() == 1000);
        assert!(src.next_request().is_none());
        assert_eq!(src.finish().unwrap(), 1000);

        let dir = tempfile::tempdir().unwrap();
        let err = FileSource::open(
            &Input::Path(dir.path().to_path_buf()),
            None,
            16384,
            65536,
            BufPool::new(16384, 1),
        )
        .err()
        .unwrap();
        assert!(matches!(err, SourceError::IsDirectory { .. }));

        // /proc files report size 0 but have content: read as a stream.
        let mut proc_file = open(Path::new("/proc/self/status"), 16384, 65536);
        let c = proc_file.read_next(16384).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&c.data).contains("VmHWM"));
    }

    #[test]
    fn positioned_read_reports_truncation() {
        let f = file_of(50_000);
        let mut src = open(f.path(), 16384, 65536);
        src.read_next(16384).unwrap().unwrap();
        f.as_file().set_len(20_000).unwrap();
        let err = src.read_next(16384).err().unwrap();
        assert!(
            matches!(err, SourceError::Truncated { offset: 20_000, .. }),
            "{err:?}"
        );
    }

    fn open_walked(path: &Path, walked: u64) -> Result<FileSource, SourceError> {
        FileSource::open(
            &Input::Path(path.to_path_buf()),
            Some((walked, &mut LastDir::default())),
            16384,
            65536,
            BufPool::new(16384, 1),
        )
    }

    fn read_all(src: &mut FileSource) -> Result<Vec<u8>, SourceError> {
        let mut out = Vec::new();
        while let Some(want) = src.next_request() {
            match src.read_next(want)? {
                Some(c) => out.extend_from_slice(&c.data),
                None => break,
            }
        }
        src.finish()?;
        Ok(out)
    }

    /// Files are opened relative to the last directory, which is switched when they move on.
    #[test]
    fn last_dir_opens_in_the_right_directory() {
        let d = tempfile::tempdir().unwrap();
        for (dir, body) in [("a", "in a"), ("b", "in b")] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("f"), body).unwrap();
        }
        let mut dirs = LastDir::default();
        for (dir, body) in [("a", "in a"), ("a", "in a"), ("b", "in b"), ("a", "in a")] {
            let mut got = String::new();
            dirs.open_nonblocking(&d.path().join(dir).join("f"))
                .unwrap()
                .read_to_string(&mut got)
                .unwrap();
            assert_eq!(got, body);
        }
        let err = dirs
            .open_nonblocking(&d.path().join("a/missing"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = dirs.open_nonblocking(&d.path().join("c/f")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let long = d.path().join("a").join("x".repeat(300));
        let err = dirs.open_nonblocking(&long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// A small file the walk just saw is opened without asking again what it is; whatever
    /// took its place since gives an error (or its bytes as long as the walk saw them),
    /// never a blocked reader.
    #[test]
    fn a_walked_small_file_is_read_at_the_walked_length() {
        let f = file_of(40_000);
        let mut src = open_walked(f.path(), 40_000).unwrap();
        let data = read_all(&mut src).unwrap();
        assert_eq!(data.len(), 40_000);
        assert_eq!(data[39_999], (39_999 % 256) as u8);

        // Shrank since the walk: truncated, with both lengths.
        let mut src = open_walked(f.path(), 50_000).unwrap();
        let err = read_all(&mut src).err().unwrap();
        assert!(
            matches!(
                err,
                SourceError::Truncated {
                    expected_len: 50_000,
                    actual_len: 40_000,
                    ..
                }
            ),
            "{err:?}"
        );

        // Grew since the walk: sent as the walk saw it.
        let mut src = open_walked(f.path(), 30_000).unwrap();
        assert_eq!(read_all(&mut src).unwrap(), data[..30_000]);

        // Replaced by a directory, or by a pipe nobody writes to: an error, at once.
        let dir = tempfile::tempdir().unwrap();
        let err = read_all(&mut open_walked(dir.path(), 4096).unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::Read { .. }), "{err:?}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_all(&mut open_walked(&fifo, 4096).unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::Read { .. }), "{err:?}");

        // Larger than a small file: its size is asked and it is mapped.
        let big = file_of(100_000);
        let mut src = open_walked(big.path(), 100_000).unwrap();
        let c = src.read_next(16384).unwrap().unwrap();
        assert!(c.watch.is_some(), "large files are mapped");
    }
}
