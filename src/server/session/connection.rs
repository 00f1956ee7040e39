//! One connection, once TLS is up: the handshake (with the lockout of addresses that keep
//! failing it), then each frame read, handled against its session, and answered. The only
//! part of a session that touches a socket or the clock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{error_frame, handle, max_buffered, ConnError, Context, Session};
use crate::protocol::handshake::{random, Binding, HandshakeError, ServerHandshake, ServerStep};
use crate::protocol::ErrorCode;
use crate::server::admission::Handshaking;
use crate::server::events::ServerEvent;
use crate::wire::{FrameReader, FrameWriter, LinkError};

/// What the listener knows of a connection when it hands it over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    /// The peer's address.
    pub(crate) peer: Option<SocketAddr>,
    /// The TLS channel's exporter value, which the handshake binds to.
    pub(crate) binding: Binding,
    /// When the handshake must be done by (counted from the accept, TLS included).
    pub(crate) deadline: tokio::time::Instant,
}

/// Counts a guess that was not confirmed against the peer's address, however the handshake
/// ends (an error, a timeout, the peer leaving, the server shutting down).
struct Guess<'a> {
    ctx: &'a Context,
    peer: Option<SocketAddr>,
    offered: AtomicBool,
    confirmed: AtomicBool,
}

impl Drop for Guess<'_> {
    fn drop(&mut self) {
        let (Some(peer), true, false) = (
            self.peer,
            self.offered.load(Ordering::Relaxed),
            self.confirmed.load(Ordering::Relaxed),
        ) else {
            return;
        };
        let failures = self.ctx.strikes.fail(peer.ip(), Instant::now());
        tracing::warn!(%peer, failures, "failed authentication");
    }
}

/// Serves one connection until it closes, fails, or the server shuts down.
pub(crate) async fn serve<R, W>(
    rd: R,
    wr: W,
    conn: Conn,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    handshaking: Handshaking,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opts = &ctx.options;
    let max_frame = max_buffered(opts);
    // Until authenticated, a peer may only send small frames.
    let mut reader = FrameReader::new(rd, 256);
    let mut writer = FrameWriter::new(wr);
    writer.set_write_timeout(Some(opts.write_timeout));
    let result = async {
        let peer = conn.peer;
        let mut hs = ServerHandshake::new(opts.key.clone(), conn.binding, random()?);
        let limit = opts.handshake_timeout;
        let guess = Guess {
            ctx: &ctx,
            peer,
            offered: AtomicBool::new(false),
            confirmed: AtomicBool::new(false),
        };
        // The whole handshake, not each frame, has `handshake_timeout`: a peer trickling its
        // frames holds its place no longer than a silent one.
        let handshake = tokio::time::timeout_at(conn.deadline, async {
            loop {
                let Some(frame) = reader.next().await? else {
                    return Ok(None);
                };
                if let (false, Some(peer)) = (hs.offered(), peer) {
                    if let Some(wait) = ctx.strikes.locked(peer.ip(), Instant::now()) {
                        let why = format!(
                            "too many failed authentications from {}: try again in {} s",
                            peer.ip(),
                            wait.as_secs() + 1
                        );
                        let _ = writer
                            .send(&error_frame(u64::MAX, ErrorCode::Limit, &why))
                            .await;
                        if ctx.events.on() {
                            ctx.events.tell(ServerEvent::Refused {
                                peer,
                                reason: why.clone(),
                            });
                        }
                        return Err(ConnError::Locked(why));
                    }
                }
                match hs.handle(&frame) {
                    Ok(ServerStep::Reply(reply)) => {
                        writer.send(&reply).await?;
                        guess.offered.store(hs.offered(), Ordering::Relaxed);
                    }
                    Ok(ServerStep::Done(accepted)) => {
                        guess.confirmed.store(true, Ordering::Relaxed);
                        if let Some(peer) = peer {
                            ctx.strikes.succeed(peer.ip());
                        }
                        return Ok(Some(accepted.session));
                    }
                    Err(e) => {
                        let code = if matches!(e, HandshakeError::BadKey) {
                            ErrorCode::Auth
                        } else {
                            ErrorCode::Protocol
                        };
                        let _ = writer.send(&error_frame(u64::MAX, code, &e)).await;
                        if let Some(peer) = peer.filter(|_| ctx.events.on()) {
                            ctx.events.tell(ServerEvent::Refused {
                                peer,
                                reason: e.to_string(),
                            });
                        }
                        return Err(ConnError::from(e));
                    }
                }
            }
        });
        let admitting = async {
            let Some(session) = handshake
                .await
                .map_err(|_| ConnError::Link(LinkError::Idle(limit)))??
            else {
                return Ok::<_, ConnError>(None);
            };
            // Authenticated: now it may take a connection slot (waiting as long as a handshake
            // may take for one to come free), and its session may be made.
            let admitted = ctx.admission.admit(peer, limit).await;
            let attached = admitted.and_then(|admitted| {
                let session = ctx.attach(session, Instant::now(), peer)?;
                Ok((admitted, session))
            });
            Ok(Some(attached))
        };
        let attached = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err(ConnError::Shutdown),
            () = handshaking.pushed_out.cancelled() => return Err(ConnError::PushedOut),
            attached = admitting => attached?,
        };
        drop(handshaking);
        drop(guess);
        let Some(attached) = attached else {
            return Ok(());
        };
        let (_admitted, session) = match attached {
            Ok(attached) => attached,
            Err(refused) => {
                let _ = writer
                    .send(&error_frame(u64::MAX, ErrorCode::Limit, &refused))
                    .await;
                if let Some(peer) = peer.filter(|_| ctx.events.on()) {
                    ctx.events.tell(ServerEvent::Refused {
                        peer,
                        reason: refused.to_string(),
                    });
                }
                return Err(ConnError::Refused(refused));
            }
        };
        let session_id = session.id;
        reader.set_max_frame_len(max_frame);
        if let Some(peer) = peer {
            ctx.events.tell(ServerEvent::Connected { peer });
        }
        let result = match hs.welcome(session.incarnation) {
            Some(welcome) => match writer.send(&welcome).await {
                Ok(()) => frames(&mut reader, &mut writer, &ctx, &session, &shutdown).await,
                Err(e) => Err(e.into()),
            },
            None => Err(ConnError::Protocol(
                "handshake ended without authentication",
            )),
        };
        ctx.detach(session_id, &session, Instant::now());
        if let Some(peer) = peer.filter(|_| ctx.events.on()) {
            let error = match &result {
                Ok(()) | Err(ConnError::Shutdown) => None,
                Err(e) => Some(e.to_string()),
            };
            ctx.events.tell(ServerEvent::Disconnected { peer, error });
        }
        if let Err(ConnError::Link(LinkError::Decode(e))) = &result {
            let _ = writer
                .send(&error_frame(u64::MAX, ErrorCode::Protocol, e))
                .await;
        }
        if matches!(result, Err(ConnError::Shutdown)) {
            let _ = writer
                .send(&error_frame(
                    u64::MAX,
                    ErrorCode::Shutdown,
                    "server shutting down",
                ))
                .await;
        }
        result
    }
    .await;
    // A connection ends with TLS's `close_notify`, so the peer can tell an end from a cut.
    let _ = writer.shutdown().await;
    result
}

async fn frames<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
    shutdown: &CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = ctx.options.idle_timeout;
    // Closed after `idle_timeout` without progress (see `Session::progressed`), whether the
    // peer is silent or trickles frames that change nothing.
    let mut progress = (session.progress(), tokio::time::Instant::now());
    loop {
        // Frames already received are answered at once, and their replies (mostly
        // acknowledgements of a dozen bytes) go out together when the reader has to wait.
        let frame = match reader.next_buffered()? {
            Some(frame) => Some(frame),
            None => {
                writer.flush().await?;
                let deadline = progress.1 + idle;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Err(ConnError::Shutdown),
                    frame = tokio::time::timeout_at(deadline, reader.next()) => {
                        frame.map_err(|_| LinkError::Idle(idle))??
                    }
                }
            }
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        session.lock().last_active = Some(now.into_std());
        for reply in handle(frame, ctx, session).await? {
            writer.queue(&reply).await?;
        }
        let seen = session.progress();
        if seen != progress.0 {
            progress = (seen, now);
        } else if now.duration_since(progress.1) >= idle {
            return Err(ConnError::Stalled(idle));
        }
    }
}
