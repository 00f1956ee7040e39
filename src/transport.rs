//! Frames over a byte stream: the thin I/O layer between the sans-IO codec and TCP.
//!
//! [`FrameReader`] reads into a buffer that never grows past one frame of the allowed size
//! plus its read-ahead (the codec rejects longer lengths from the header, and grows the
//! buffer exactly, see `codec::reserve_exact`). [`FrameWriter`] writes a frame's head
//! and its payload with one vectored write, straight from the payload's `Bytes`.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{codec, DecodeError, Frame};

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
    /// Nothing arrived within the idle timeout.
    #[error("no data for {0:?}")]
    Idle(Duration),
}

/// Reads frames from `R`.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame_len: usize,
    /// Bytes read ahead at a time.
    read_ahead: usize,
}

/// The read buffer starts here and grows only to hold a frame that is within the limit.
const INITIAL_READ_BUF: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader accepting frames up to `max_frame_len`, reading ahead 64 KiB at a time: for
    /// streams of large frames.
    pub fn new(inner: R, max_frame_len: usize) -> Self {
        Self::with_read_ahead(inner, max_frame_len, INITIAL_READ_BUF)
    }

    /// A reader that reads ahead `read_ahead` bytes at a time (at least 4 KiB): for streams
    /// of small frames, such as the replies a client reads.
    pub fn with_read_ahead(inner: R, max_frame_len: usize, read_ahead: usize) -> Self {
        let read_ahead = read_ahead.max(4096);
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(read_ahead),
            max_frame_len,
            read_ahead,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream (between frames).
    ///
    /// # Errors
    /// [`LinkError`] on socket errors, malformed frames, or EOF mid-frame.
    pub async fn next(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf, self.max_frame_len)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                codec::reserve_exact(&mut self.buf, self.read_ahead);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LinkError::Truncated)
                };
            }
        }
    }

    /// The next frame if one is already complete in the read buffer; never reads.
    ///
    /// # Errors
    /// [`LinkError`] on a malformed frame.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, LinkError> {
        Ok(codec::decode(&mut self.buf, self.max_frame_len)?)
    }

    /// The underlying reader. Bytes already read but not yet decoded are dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Changes the frame limit (raised once a peer is authenticated).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// [`next`](Self::next) with an idle timeout.
    ///
    /// # Errors
    /// As `next`, plus [`LinkError::Idle`].
    pub async fn next_within(&mut self, idle: Duration) -> Result<Option<Frame>, LinkError> {
        match tokio::time::timeout(idle, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Idle(idle)),
        }
    }
}

/// Writes frames to `W`.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    head: BytesMut,
    /// Frames queued by [`FrameWriter::queue`], not yet written.
    pending: BytesMut,
}

/// Queued frames are written once this much has gathered, even without a flush.
const MAX_PENDING: usize = 64 * 1024;

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            head: BytesMut::with_capacity(256),
            pending: BytesMut::new(),
        }
    }

    /// Queues a small frame (it is copied) to go out with others in one write, at the next
    /// [`flush`](Self::flush) or [`send`](Self::send), or once 64 KiB have gathered: for
    /// many small replies answered in a row.
    ///
    /// # Errors
    /// Socket errors, when the queue had to be written.
    pub async fn queue(&mut self, frame: &Frame) -> io::Result<()> {
        codec::encode(frame, &mut self.pending);
        if self.pending.len() >= MAX_PENDING {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the queued frames.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.inner.write_all(&self.pending).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes one frame (after any queued ones); the payload goes out by vectored write
    /// without being copied.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.flush().await?;
        self.head.clear();
        let payload = codec::encode_head(frame, &mut self.head);
        match payload {
            Some(payload) if !payload.is_empty() => {
                let mut both = Buf::chain(&self.head[..], &payload[..]);
                while both.has_remaining() {
                    if self.inner.write_buf(&mut both).await? == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                }
            }
            _ => self.inner.write_all(&self.head).await?,
        }
        Ok(())
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Flushes and shuts down the write side.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}
