//! The [`Server`]: bind, accept (never waiting: what a connection may take is decided in
//! `admission.rs`), expire idle sessions, shut down gracefully within a bounded time.
//!
//! A failed connection is logged and dropped; it never stops the server. Shutdown stops
//! accepting, tells every connection to stop (in-flight chunks are abandoned, and a partial
//! file is never renamed into place), waits for them, and ends the sessions that did not
//! finish: small files' partial files are deleted, large files' kept with their resume
//! journals. A background task deletes such leftovers once they expire (`leftovers.rs`).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::Handshaking;
use super::durability::Flusher;
use super::leftovers;
use super::session::{self, Context};
use super::staging::{descriptor_limit, reserve_descriptors, Staging};
use super::{ServerEvent, ServerOptions};

/// A receiving server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    connections: Arc<AtomicUsize>,
}

/// Live counts of a [`Server`], readable while it serves (for a status display, or to wait
/// until a server is idle). Cheap to clone; it does not keep the server alive.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    ctx: Weak<Context>,
    connections: Arc<AtomicUsize>,
}

impl ServerStatus {
    /// Connections being served. A connection counts until its task has ended and been
    /// reaped, so 0 means that every connection's memory has been released.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Connections accepted and still in their handshake (see
    /// [`ServerOptions::max_handshakes`](crate::ServerOptions::max_handshakes)).
    pub fn handshakes(&self) -> usize {
        self.ctx
            .upgrade()
            .map_or(0, |ctx| ctx.admission.handshakes())
    }

    /// Events a subscriber missed because it fell behind (see [`Server::subscribe`]).
    pub fn missed_events(&self) -> u64 {
        self.ctx.upgrade().map_or(0, |ctx| ctx.events.missed())
    }

    /// Sessions held: transfers with a connection, or waiting (up to `session_linger`) for a
    /// client to reconnect and resume. 0 once the server has stopped.
    pub fn sessions(&self) -> usize {
        self.ctx.upgrade().map_or(0, |ctx| {
            ctx.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("root", &self.options.root)
            .finish_non_exhaustive()
    }
}

/// How often idle sessions are looked for: at most this long apart, at least `MIN_SWEEP`.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const MIN_SWEEP: Duration = Duration::from_millis(50);

impl Server {
    /// Binds `addr` (port 0 picks a free port) and prepares to serve `options.root`, which is
    /// created if missing and checked with [`check_dir`](crate::server::check_dir).
    ///
    /// # Errors
    /// When the directory cannot be created or written, or the address cannot be bound.
    pub async fn bind(addr: SocketAddr, mut options: ServerOptions) -> std::io::Result<Server> {
        options.root = super::probe::check_dir(&options.root)
            .map_err(|e| std::io::Error::new(e.source.kind(), e))?;
        let listener = TcpListener::bind(addr).await?;
        let slots = options
            .unnamed_files
            .unwrap_or_else(|| descriptor_limit() / 2);
        let flusher = Flusher::open(&options.root)?;
        let staging = Staging::probe(&options.root, slots);
        if staging.is_on() {
            // A batch filling while the one before waits for its flush, and the sockets.
            let held = slots.min(2 * options.batch_files);
            reserve_descriptors(
                listener.as_fd(),
                held + options.max_connections + options.max_handshakes + 256,
            );
        }
        tracing::debug!(
            on = staging.is_on(),
            slots,
            "unnamed staging of small files"
        );
        let root = super::beneath::Root::open(&options.root)?;
        let tls = crate::tls::ServerTls::ephemeral()?;
        let ctx = Arc::new(Context::new(options, root, staging, flusher, tls));
        Ok(Server {
            listener,
            ctx,
            shutdown: CancellationToken::new(),
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A stream of [`ServerEvent`]s: connections and files received. The server never waits
    /// for it: when 1,024 events are unread, new ones are dropped and counted in
    /// [`ServerStatus::missed_events`]. `None` when a stream was taken already.
    pub fn subscribe(&mut self) -> Option<tokio::sync::mpsc::Receiver<ServerEvent>> {
        self.ctx.events.subscribe()
    }

    /// A handle on the server's live counts.
    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            ctx: Arc::downgrade(&self.ctx),
            connections: Arc::clone(&self.connections),
        }
    }

    /// Serves until the shutdown token is cancelled. A failing `accept` (out of descriptors,
    /// say) is retried after a wait of at most 640 ms, for as long as it fails.
    ///
    /// # Errors
    /// None: a failed `accept` is retried, so this returns `Ok` once shut down.
    pub async fn serve(self) -> std::io::Result<()> {
        let Server {
            listener,
            ctx,
            shutdown,
            connections,
        } = self;
        let leftovers = ctx.options.partial_expiry.map(|expiry| {
            tokio::spawn(expire_leftovers(
                ctx.options.root.clone(),
                expiry,
                shutdown.clone(),
            ))
        });
        let mut tasks = JoinSet::new();
        // Often enough that a short `session_linger` is honoured closely.
        let every = SWEEP_EVERY
            .min(ctx.options.session_linger / 2)
            .max(MIN_SWEEP);
        let mut sweep = tokio::time::interval(every);
        let mut accept_failures = 0u32;
        // Ended connections are reaped as soon as they end, so an idle server holds nothing.
        let reaped = || {
            connections.fetch_sub(1, Ordering::AcqRel);
        };
        loop {
            // Never waits for a slot: a connection takes one only once authenticated
            // (`admission.rs`).
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    reaped();
                    continue;
                }
                _ = sweep.tick() => {
                    expire_sessions(&ctx);
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    accept_failures = 0;
                    a
                }
                Err(e) => {
                    // Out of descriptors (`EMFILE`, `ENFILE`) and the like: never a reason to
                    // stop serving. Wait, for a connection to end or the error to pass, and
                    // try again; said once, then every hundredth time.
                    accept_failures += 1;
                    if accept_failures % 100 == 1 {
                        tracing::warn!(error = %e, failures = accept_failures, "accept failed; retrying");
                    }
                    let wait = Duration::from_millis(10 << accept_failures.min(6));
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => reaped(),
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            connections.fetch_add(1, Ordering::AcqRel);
            let handshaking = ctx.admission.handshaking();
            let ctx = Arc::clone(&ctx);
            let stop = shutdown.child_token();
            let span = tracing::debug_span!("connection", %peer);
            tasks.spawn(handle(stream, peer, ctx, stop, handshaking).instrument(span));
        }
        drop(listener);
        shutdown.cancel();
        // Each connection stops at its next frame, or its next write's timeout; past that
        // (a handler stuck on the disk), it is dropped where it stands (a partial file is
        // never put in place by a dropped handler).
        let grace = ctx.options.write_timeout + Duration::from_secs(1);
        let drained = tokio::time::timeout(grace, async {
            while tasks.join_next().await.is_some() {
                reaped();
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = tasks.len(),
                ?grace,
                "connections still busy at shutdown; dropping them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {
                reaped();
            }
        }
        let sessions: Vec<_> = {
            let mut map = ctx.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            map.drain().map(|(_, s)| s).collect()
        };
        let _ = tokio::task::spawn_blocking(move || {
            for s in sessions {
                s.suspend();
            }
        })
        .await;
        if let Some(task) = leftovers {
            let _ = task.await;
        }
        Ok(())
    }
}

/// Sweeps `root` for leftovers older than `expiry` now and then every
/// [`leftovers::interval`], until `stop`.
async fn expire_leftovers(root: PathBuf, expiry: Duration, stop: CancellationToken) {
    loop {
        let (dir, token) = (root.clone(), stop.clone());
        let swept = tokio::task::spawn_blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(expiry)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            leftovers::sweep(&dir, cutoff, &token)
        })
        .await
        .unwrap_or_default();
        if swept.files > 0 {
            tracing::info!(
                files = swept.files,
                bytes = swept.bytes,
                ?expiry,
                "deleted partial files and journals that no transfer came back for"
            );
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(leftovers::interval(expiry)) => {}
        }
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    stop: CancellationToken,
    handshaking: Handshaking,
) {
    crate::wire::tune(&stream);
    // The TLS handshake and the PAKE after it share one `handshake_timeout`.
    let deadline = tokio::time::Instant::now() + ctx.options.handshake_timeout;
    let secured = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        () = handshaking.pushed_out.cancelled() => return,
        secured = tokio::time::timeout_at(deadline, secure(stream, &ctx)) => secured,
    };
    let tls = match secured {
        Ok(Ok(Some(tls))) => tls,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let binding = match crate::tls::binding(tls.get_ref().1) {
        Ok(binding) => binding,
        Err(e) => {
            tracing::warn!(error = %e, "no TLS exporter");
            return;
        }
    };
    let (rd, wr) = tokio::io::split(tls);
    let conn = session::Conn {
        peer: Some(peer),
        binding,
        deadline,
    };
    match session::serve(rd, wr, conn, ctx, stop, handshaking).await {
        Ok(()) => tracing::debug!("connection closed"),
        Err(
            e @ (session::ConnError::Shutdown
            | session::ConnError::PushedOut
            | session::ConnError::Link(crate::wire::LinkError::Idle(_))),
        ) => tracing::debug!(error = %e, "connection ended"),
        Err(e @ (session::ConnError::Refused(_) | session::ConnError::Locked(_))) => {
            tracing::info!(error = %e, "connection refused");
        }
        Err(e) => tracing::warn!(error = %e, "connection ended"),
    }
}

/// The TLS side of an accepted connection; `None` when it ended before (a peer that closed
/// at once, or one speaking the plaintext protocol of version 4 or older, which was told).
async fn secure(
    stream: TcpStream,
    ctx: &Context,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    // Every TLS connection opens with a handshake record (content type 22); a plaintext
    // frame of version 4 or older opens with its length's high byte, 0.
    if first[0] != 22 {
        plaintext_peer(stream).await;
        return Ok(None);
    }
    ctx.tls.accept(stream).await.map(Some)
}

/// Answers a peer of protocol version 4 or older, which speaks frames without TLS, with an
/// error frame that names both versions (or says what this is), then closes.
async fn plaintext_peer(stream: TcpStream) {
    use crate::protocol::frame::VERSION;
    use crate::protocol::handshake::HandshakeError;
    use crate::protocol::{ErrorCode, Frame};
    let (rd, wr) = stream.into_split();
    let mut reader = crate::wire::FrameReader::new(rd, 256);
    let why = match reader.next().await {
        Ok(Some(Frame::Hello { version, .. })) if version != VERSION => HandshakeError::Version {
            theirs: version,
            ours: VERSION,
        }
        .to_string(),
        _ => format!("this receiver speaks tidegate protocol version {VERSION}, over TLS"),
    };
    tracing::info!(%why, "refused a connection without TLS");
    let mut writer = crate::wire::FrameWriter::new(wr);
    let _ = writer
        .send(&session::error_frame(u64::MAX, ErrorCode::Protocol, why))
        .await;
}

/// Drops sessions that finished, or that have had no connection for `session_linger`.
fn expire_sessions(ctx: &Context) {
    let linger = ctx.options.session_linger;
    let now = Instant::now();
    let expired: Vec<_> = {
        let mut map = ctx.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<_> = map
            .iter()
            .filter(|(_, s)| {
                let inner = s.lock();
                inner.connections == 0
                    && (inner.finished || inner.last_active.is_none_or(|t| now - t > linger))
            })
            .map(|(id, _)| *id)
            .collect();
        let expired = ids.into_iter().filter_map(|id| map.remove(&id)).collect();
        session::shrink_sessions(&mut map);
        expired
    };
    if !expired.is_empty() {
        // Suspending flushes resume journals: not on the accept loop.
        tokio::task::spawn_blocking(move || {
            for s in expired {
                s.suspend();
            }
        });
    }
}
