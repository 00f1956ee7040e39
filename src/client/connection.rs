//! One TCP connection of a destination's pool, kept alive across drops.
//!
//! It takes jobs (frames, with the chunk memory they hold) from the destination's shared
//! queue, writes them, and matches the server's replies to them. A job stays in the
//! connection's unacknowledged list, holding its chunk, until its reply arrives. When the
//! connection drops, the unacknowledged jobs go back to the dispatcher to be resent, and the
//! connection redials with jittered exponential backoff until the retry deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transfer::DestinationFailure;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::pipeline::chunk::Chunk;
use crate::protocol::frame::VERSION;
use crate::protocol::handshake::{random, ClientHandshake, HandshakeError, Key};
use crate::protocol::{ErrorCode, Frame};
use crate::tls::{self, Negotiated};
use crate::wire::{FrameReader, FrameWriter, LinkError};

/// What reply retires a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Ack { file: u64, index: u64 },
    Ready(u64),
    Done(u64),
    Finished,
    Nothing,
}

/// Whether a job's bytes go out for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Again {
    /// First time.
    #[default]
    No,
    /// Sent before, not acknowledged (its connection dropped, or the receiver lacked the
    /// file): sent again from memory.
    Unanswered,
    /// Acknowledged before by a receiver that lost it since: read again from the source.
    Reread,
}

/// A frame to send, and the chunk memory it keeps alive until acknowledged.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) frame: Frame,
    pub(crate) hold: Option<Arc<Chunk>>,
    pub(crate) expect: Expect,
    /// The dispatcher's count of begins when the job was queued: tells a job queued before
    /// its file was begun again from one queued after.
    pub(crate) epoch: u64,
    pub(crate) again: Again,
}

impl Job {
    pub(crate) fn new(frame: Frame, hold: Option<Arc<Chunk>>, expect: Expect) -> Self {
        Job {
            frame,
            hold,
            expect,
            epoch: 0,
            again: Again::No,
        }
    }

    pub(crate) fn file(&self) -> Option<u64> {
        match self.expect {
            Expect::Ack { file, .. } | Expect::Ready(file) | Expect::Done(file) => Some(file),
            Expect::Finished | Expect::Nothing => None,
        }
    }
}

/// What a connection tells its dispatcher. `incarnation` is that of the server's state
/// the connection talks to (from its `Welcome`): an answer from an incarnation the
/// dispatcher has left behind speaks for state that is gone.
#[derive(Debug)]
pub(crate) enum Reply {
    Ack {
        file: u64,
        index: u64,
        bytes: u64,
        again: Again,
        incarnation: u64,
    },
    /// `FileReady`: chunks `0..have` are already at the server.
    Ready {
        file: u64,
        have: u64,
        incarnation: u64,
    },
    Done(u64),
    Failed {
        file: u64,
        /// The server's [`ErrorCode`], as sent.
        code: u16,
        message: String,
    },
    /// The server lacks `file` (error code `Missing`), answering `job`: begin it again.
    Missing {
        file: u64,
        job: Option<Job>,
        incarnation: u64,
    },
    Finished {
        incarnation: u64,
    },
    /// The connection is up (handshake done) and takes jobs.
    Up {
        incarnation: u64,
        tls: Negotiated,
    },
    /// The connection dropped (`was_up`), or an attempt to make it failed; these jobs were
    /// not answered and must be resent.
    Down {
        unacked: Vec<Job>,
        error: String,
        was_up: bool,
    },
    /// The connection gave up for good.
    Dead {
        error: String,
        failure: DestinationFailure,
    },
}

/// Connection settings.
#[derive(Debug, Clone)]
pub(crate) struct DialOptions {
    pub(crate) addr: String,
    pub(crate) key: Key,
    pub(crate) session: [u8; 16],
    pub(crate) connect_timeout: Duration,
    /// With requests outstanding, silence for this long drops the connection.
    pub(crate) reply_timeout: Duration,
    pub(crate) retry_for: Duration,
    pub(crate) max_in_flight: usize,
}

/// Largest frame a server sends (errors carry at most a 4 KiB message).
const MAX_REPLY_FRAME: usize = 16 * 1024;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;
type Reader = FrameReader<tokio::io::ReadHalf<Tls>>;
type Writer = FrameWriter<tokio::io::WriteHalf<Tls>>;

/// Why a connection attempt or a live connection failed.
enum Failure {
    /// Worth retrying.
    Retry(String),
    /// Retrying cannot help (wrong key, incompatible peer).
    Fatal(DestinationFailure, String),
}

/// Runs one pooled connection until the queue closes, the deadline passes, or `cancel`.
pub(crate) async fn run(
    params: DialOptions,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    replies: mpsc::Sender<Reply>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
        params.retry_for,
    );
    let mut unacked: VecDeque<Job> = VecDeque::new();
    loop {
        let (failure, was_up) = match connect(&params).await {
            Ok((mut reader, writer, incarnation, tls)) => {
                backoff.reset();
                let _ = replies.send(Reply::Up { incarnation, tls }).await;
                let pumped = pump(
                    &params,
                    incarnation,
                    &mut reader,
                    writer,
                    &jobs,
                    &replies,
                    &mut unacked,
                    &cancel,
                )
                .await;
                match pumped {
                    Ok(()) => return,
                    Err(f) => (f, true),
                }
            }
            Err(f) => (f, false),
        };
        let error = match failure {
            Failure::Fatal(failure, error) => {
                give_back(&replies, &mut unacked, error.clone(), was_up).await;
                let _ = replies.send(Reply::Dead { error, failure }).await;
                return;
            }
            Failure::Retry(error) => error,
        };
        tracing::debug!(addr = %params.addr, %error, was_up, "connection failed");
        give_back(&replies, &mut unacked, error.clone(), was_up).await;
        let unit = random::<2>().map_or(0.5, |b| f64::from(u16::from_le_bytes(b)) / 65536.0);
        let Some(wait) = backoff.fail(Instant::now(), unit) else {
            let failure = DestinationFailure::Unreachable;
            let _ = replies.send(Reply::Dead { error, failure }).await;
            return;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn give_back(
    replies: &mpsc::Sender<Reply>,
    unacked: &mut VecDeque<Job>,
    error: String,
    was_up: bool,
) {
    let unacked: Vec<Job> = unacked.drain(..).collect();
    let _ = replies
        .send(Reply::Down {
            unacked,
            error,
            was_up,
        })
        .await;
}

/// Why a sender without a key was refused.
const NO_KEY: &str = "authentication failed: the receiver requires a passphrase, and none was \
    given. `tidegate serve` printed a code phrase when it started (or was given --key-file or \
    TIDEGATE_KEY): give the same one here, as TIDEGATE_KEY=<phrase> or --key-file";

async fn connect(params: &DialOptions) -> Result<(Reader, Writer, u64, Negotiated), Failure> {
    let stream = tokio::time::timeout(params.connect_timeout, TcpStream::connect(&params.addr))
        .await
        .map_err(|_| {
            Failure::Retry(format!(
                "connecting timed out after {:?}",
                params.connect_timeout
            ))
        })?
        .map_err(|e| Failure::Retry(format!("connecting: {e}")))?;
    crate::wire::tune(&stream);
    let tls = tokio::time::timeout(params.connect_timeout, tls::connect(stream))
        .await
        .map_err(|_| {
            Failure::Retry(format!(
                "TLS handshake timed out after {:?}",
                params.connect_timeout
            ))
        })?
        .map_err(|e| {
            if tls::not_tls(&e) {
                Failure::Fatal(
                    DestinationFailure::Incompatible,
                    format!(
                        "the receiver does not speak TLS: it runs tidegate with protocol \
                         version 4 or older, or is not tidegate (this build speaks version \
                         {VERSION}; run the same release on both ends)"
                    ),
                )
            } else {
                Failure::Retry(format!("TLS handshake: {e}"))
            }
        })?;
    let binding =
        tls::binding(tls.get_ref().1).map_err(|e| Failure::Retry(format!("TLS exporter: {e}")))?;
    let negotiated = tls::negotiated(tls.get_ref().1);
    let (rd, wr) = tokio::io::split(tls);
    // Replies are small (an acknowledgement is 13 bytes); 16 KiB holds a burst of them.
    let mut reader = FrameReader::with_read_ahead(rd, MAX_REPLY_FRAME, 16 * 1024);
    let mut writer = FrameWriter::new(wr);
    let seed = random()
        .map_err(|e| Failure::Fatal(DestinationFailure::Other, format!("no randomness: {e}")))?;
    let (mut hs, hello) = ClientHandshake::new(&params.key, params.session, binding, seed);
    let io = |e: std::io::Error| Failure::Retry(format!("handshake: {e}"));
    writer.send(&hello).await.map_err(io)?;
    loop {
        let frame = reader
            .next_within(params.connect_timeout)
            .await
            .map_err(|e| Failure::Retry(format!("handshake: {e}")))?
            .ok_or_else(|| Failure::Retry("handshake: connection closed".into()))?;
        let handled = hs.handle(&frame);
        if let Err(HandshakeError::BadKey) = &handled {
            // Tells the receiver, which counts the failure against this address and logs it.
            let _ = writer
                .send(&Frame::Error {
                    file: u64::MAX,
                    code: ErrorCode::Auth as u16,
                    message: b"the receiver's key confirmation did not match".to_vec(),
                })
                .await;
            let _ = writer.shutdown().await;
        }
        match handled {
            Ok(Some(reply)) => writer.send(&reply).await.map_err(io)?,
            Ok(None) => {
                let incarnation = hs
                    .incarnation()
                    .ok_or_else(|| Failure::Retry("handshake: no incarnation".into()))?;
                return Ok((reader, writer, incarnation, negotiated));
            }
            Err(HandshakeError::BadKey) if params.key.is_anonymous() => {
                return Err(Failure::Fatal(
                    DestinationFailure::Authentication,
                    NO_KEY.to_owned(),
                ))
            }
            Err(e @ HandshakeError::BadKey) => {
                return Err(Failure::Fatal(
                    DestinationFailure::Authentication,
                    e.to_string(),
                ))
            }
            Err(e @ HandshakeError::Version { .. }) => {
                return Err(Failure::Fatal(
                    DestinationFailure::Incompatible,
                    e.to_string(),
                ))
            }
            Err(HandshakeError::Refused(msg))
                if frame_code(&frame) == Some(ErrorCode::Auth as u16) =>
            {
                return Err(Failure::Fatal(
                    DestinationFailure::Authentication,
                    format!("authentication failed: {msg}"),
                ))
            }
            Err(e) => return Err(Failure::Retry(e.to_string())),
        }
    }
}

fn frame_code(frame: &Frame) -> Option<u16> {
    match frame {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Moves jobs out and replies in until the queue is closed and drained (`Ok`), or the link
/// fails.
#[allow(clippy::too_many_arguments)] // one connection's whole context, used once
async fn pump(
    params: &DialOptions,
    incarnation: u64,
    reader: &mut Reader,
    writer: Writer,
    jobs: &Arc<Mutex<mpsc::Receiver<Job>>>,
    replies: &mpsc::Sender<Reply>,
    unacked: &mut VecDeque<Job>,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let link = |e: LinkError| Failure::Retry(e.to_string());
    let mut queue_closed = false;
    // One waiter on the token for the connection's life, not one per frame.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    // The frame being written. Replies are read meanwhile: a link that takes a large frame
    // slowly (or stalls) still has the replies to earlier frames counted as they come.
    // The writer is in that write while it runs, and in `idle` otherwise.
    let mut writing = std::pin::pin!(None);
    let mut idle = Some(writer);
    loop {
        if queue_closed && unacked.is_empty() && writing.is_none() {
            break;
        }
        let can_take = !queue_closed && unacked.len() < params.max_in_flight && idle.is_some();
        let waiting = !unacked.is_empty() || writing.is_some();
        tokio::select! {
            biased;
            () = &mut cancelled => {
                // A clean end for the receiver (TLS's `close_notify`), unless a write is
                // under way.
                if let Some(mut writer) = idle.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
                }
                return Ok(());
            }
            // Before replies: a reply can only answer a frame whose write has completed.
            written = async {
                match writing.as_mut().as_pin_mut() {
                    Some(write) => write.await,
                    None => std::future::pending().await,
                }
            }, if writing.is_some() => {
                writing.set(None);
                let (writer, written): (Writer, std::io::Result<()>) = written;
                written.map_err(|e| Failure::Retry(format!("sending: {e}")))?;
                idle = Some(writer);
            }
            // With requests outstanding, silence means a dead link; otherwise just listen, to
            // notice a server that closes or errors.
            frame = async {
                if waiting {
                    reader.next_within(params.reply_timeout).await
                } else {
                    reader.next().await
                }
            } => {
                let frame = frame.map_err(link)?.ok_or_else(|| Failure::Retry("server closed the connection".into()))?;
                handle_reply(frame, incarnation, unacked, replies).await?;
            }
            job = async { jobs.lock().await.recv().await }, if can_take => {
                let Some(job) = job else {
                    queue_closed = true;
                    continue;
                };
                let Some(mut writer) = idle.take() else {
                    continue; // not taken: `can_take` needs the writer idle
                };
                let payload = writer.encode(&job.frame);
                writing.set(Some(async move {
                    let written = writer.send_encoded(payload).await;
                    (writer, written)
                }));
                // Unanswered until its reply, whatever happens to the write: a failed
                // connection gives it back to be sent again.
                if job.expect != Expect::Nothing {
                    unacked.push_back(job);
                }
            }
        }
    }
    if let Some(mut writer) = idle {
        let _ = writer.shutdown().await;
    }
    Ok(())
}

async fn handle_reply(
    frame: Frame,
    incarnation: u64,
    unacked: &mut VecDeque<Job>,
    replies: &mpsc::Sender<Reply>,
) -> Result<(), Failure> {
    let retire = |unacked: &mut VecDeque<Job>, want: Expect| -> Option<Job> {
        let at = unacked.iter().position(|j| j.expect == want)?;
        unacked.remove(at)
    };
    let reply = match frame {
        Frame::Ack { file, index } => {
            let Some(job) = retire(unacked, Expect::Ack { file, index }) else {
                return Ok(()); // a duplicate for a job resent elsewhere
            };
            let bytes = job.hold.as_ref().map_or(0, |c| c.data.len() as u64);
            Reply::Ack {
                file,
                index,
                bytes,
                again: job.again,
                incarnation,
            }
        }
        Frame::FileReady { file, have } => {
            retire(unacked, Expect::Ready(file));
            Reply::Ready {
                file,
                have,
                incarnation,
            }
        }
        Frame::FileDone { file } => {
            retire(unacked, Expect::Done(file));
            Reply::Done(file)
        }
        Frame::Finished => {
            retire(unacked, Expect::Finished);
            Reply::Finished { incarnation }
        }
        Frame::Error {
            file,
            code,
            message,
        } => {
            let message = crate::protocol::peer_text(&message);
            if file == u64::MAX {
                return Err(if code == ErrorCode::Auth as u16 {
                    Failure::Fatal(
                        DestinationFailure::Authentication,
                        format!("authentication failed: {message}"),
                    )
                } else {
                    Failure::Retry(format!("server: {message}"))
                });
            }
            if code == ErrorCode::Missing as u16 {
                // Answers are in request order, so it answers the oldest unanswered `Data`
                // or `FileEnd` of that file; the others will have answers of their own.
                let at = unacked.iter().position(|j| {
                    j.file() == Some(file)
                        && matches!(j.frame, Frame::Data { .. } | Frame::FileEnd { .. })
                });
                let job = at.and_then(|at| unacked.remove(at));
                Reply::Missing {
                    file,
                    job,
                    incarnation,
                }
            } else {
                unacked.retain(|j| j.file() != Some(file));
                Reply::Failed {
                    file,
                    code,
                    message,
                }
            }
        }
        other => {
            return Err(Failure::Retry(format!(
                "unexpected frame type {} from server",
                other.type_byte()
            )))
        }
    };
    replies
        .send(reply)
        .await
        .map_err(|_| Failure::Fatal(DestinationFailure::Other, "transfer ended".into()))
}
