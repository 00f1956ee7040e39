//! Frames over a byte stream: the thin I/O layer between the sans-IO codec and TCP, and the
//! socket options both ends set ([`tune`]).
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
            // Once `decode` has seen a frame's length it makes room for exactly the rest of
            // that frame. With little room left, growing the buffer by a read-ahead copies
            // what is buffered and saves reads: for small frames, a copy costs less than the
            // extra read (reading only the rest of each frame doubled the receiver's reads of
            // a tree of small files). But when more than a read-ahead is buffered (most of a
            // chunk), the rest is read in place: a copy would move nearly a whole chunk and,
            // for a moment, hold it twice.
            let spare = self.buf.capacity() - self.buf.len();
            if spare == 0 || (spare < 4096 && self.buf.len() <= self.read_ahead) {
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
    /// Each write must complete within this (see [`FrameWriter::set_write_timeout`]).
    timeout: Option<Duration>,
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
            timeout: None,
        }
    }

    /// Fails each later write (a flush, or one frame) that takes longer than `timeout` with
    /// [`io::ErrorKind::TimedOut`]: for a peer that stops reading. For small frames; a large
    /// one on a slow link may need longer.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
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
            let (inner, pending) = (&mut self.inner, &self.pending);
            within(self.timeout, async move {
                inner.write_all(pending).await?;
                inner.flush().await
            })
            .await?;
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
        let payload = self.encode(frame);
        self.send_encoded(payload).await
    }

    /// Encodes `frame` for [`send_encoded`](Self::send_encoded), which then writes it: a
    /// caller can let go of the frame before the write completes. Returns the payload, sent
    /// without being copied.
    pub fn encode(&mut self, frame: &Frame) -> Option<bytes::Bytes> {
        self.head.clear();
        codec::encode_head(frame, &mut self.head)
    }

    /// Writes the frame last [`encode`](Self::encode)d, with its `payload`, after any queued
    /// frames.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn send_encoded(&mut self, payload: Option<bytes::Bytes>) -> io::Result<()> {
        self.flush().await?;
        let (inner, head) = (&mut self.inner, &self.head);
        within(self.timeout, async move {
            match payload {
                Some(payload) if !payload.is_empty() => {
                    let mut both = Buf::chain(&head[..], &payload[..]);
                    while both.has_remaining() {
                        if inner.write_buf(&mut both).await? == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                    }
                }
                _ => inner.write_all(head).await?,
            }
            // A TLS writer may keep the last records until flushed (a no-op on TCP).
            inner.flush().await
        })
        .await
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Flushes and shuts down the write side (over TLS, sending its `close_notify` first), within
    /// the write timeout.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        within(self.timeout, self.inner.shutdown()).await
    }
}

/// `write` within `limit`, if any; past it, [`io::ErrorKind::TimedOut`].
async fn within(
    limit: Option<Duration>,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    let Some(limit) = limit else {
        return write.await;
    };
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {limit:?}"),
            ))
        })
}

/// Large socket buffers and keepalive; small acknowledgements go out at once.
pub(crate) fn tune(stream: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = stream.set_nodelay(true);
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    let _ =
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)));
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use tokio::io::ReadBuf;

    use super::*;

    /// Hands out its pieces one read at a time (each read gets at most one piece) and records,
    /// for each read, where the room it is offered ends (the end of the reader's buffer) and
    /// how much room that is.
    struct Pieces {
        pieces: VecDeque<Vec<u8>>,
        reads: Vec<(usize, usize)>,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            // `read_buf` offers the buffer's spare capacity: its end is the allocation's.
            let end = buf.filled().as_ptr() as usize + buf.remaining();
            self.reads.push((end, buf.remaining()));
            if let Some(mut piece) = self.pieces.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.pieces.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_last_bytes_of_a_large_frame_are_read_in_place() {
        let frame = Frame::Data {
            file: 1,
            index: 0,
            cv: [7; 32],
            payload: Bytes::from(vec![5u8; 1 << 20]),
        };
        let mut wire = BytesMut::new();
        codec::encode(&frame, &mut wire);
        // Everything but the last 100 bytes, then those.
        let tail = wire.split_off(wire.len() - 100);
        let source = Pieces {
            pieces: VecDeque::from([wire.to_vec(), tail.to_vec()]),
            reads: Vec::new(),
        };
        let mut reader = FrameReader::new(source, codec::MAX_FRAME_LEN);
        assert_eq!(reader.next().await.unwrap(), Some(frame));

        let reads = reader.into_inner().reads;
        // 64 KiB into the first buffer; the rest of the first piece into a buffer sized for
        // the frame by `decode`; the 100 bytes into the same buffer, which has just that room.
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert_eq!(reads[1].0, reads[2].0, "the buffer moved: {reads:?}");
        assert_eq!(reads[2].1, 100, "{reads:?}");
    }

    #[tokio::test]
    async fn the_last_bytes_of_a_small_frame_come_with_a_read_ahead() {
        let frames: Vec<Frame> = (0..5)
            .map(|file| Frame::Data {
                file,
                index: 0,
                cv: [1; 32],
                payload: Bytes::from(vec![2u8; 20_000]),
            })
            .collect();
        let mut wire = BytesMut::new();
        for f in &frames {
            codec::encode(f, &mut wire);
        }
        let each = codec::encoded_len(&frames[0]);
        // The first read fills the initial 64 KiB: three frames and part of the fourth. The
        // second brings all of the fourth but 100 bytes, into room made for exactly that
        // frame (the frames already read are still held, so the buffer cannot be reused).
        // The last piece is those 100 bytes and the fifth frame.
        let first = wire.split_to(INITIAL_READ_BUF);
        let second = wire.split_to(4 * each - INITIAL_READ_BUF - 100);
        let source = Pieces {
            pieces: VecDeque::from([first.to_vec(), second.to_vec(), wire.to_vec()]),
            reads: Vec::new(),
        };
        let mut reader = FrameReader::new(source, codec::MAX_FRAME_LEN);
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await.unwrap() {
            got.push(frame);
        }
        assert_eq!(got, frames);
        let reads = reader.into_inner().reads;
        // The buffer grew by a read-ahead for the fourth frame's last bytes, so they and the
        // fifth frame came in one read; then one read found the end.
        assert_eq!(reads.len(), 4, "{reads:?}");
        assert!(reads[2].1 >= 100 + each, "{reads:?}");
    }

    #[tokio::test]
    async fn small_frames_are_read_ahead() {
        let mut wire = BytesMut::new();
        for file in 0..100 {
            codec::encode(&Frame::Ack { file, index: 0 }, &mut wire);
        }
        let source = Pieces {
            pieces: VecDeque::from([wire.to_vec()]),
            reads: Vec::new(),
        };
        let mut reader = FrameReader::new(source, codec::MAX_FRAME_LEN);
        for file in 0..100 {
            assert_eq!(
                reader.next().await.unwrap(),
                Some(Frame::Ack { file, index: 0 })
            );
        }
        assert_eq!(reader.next().await.unwrap(), None);
        // One read for all of them, one that finds the end.
        assert_eq!(reader.into_inner().reads.len(), 2);
    }
}
