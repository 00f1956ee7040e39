//! One connection: the handshake, then each frame read, handled against its session, and
//! answered. The only part of a session that touches a socket or the clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{error_frame, handle, max_buffered, ConnError, Context, Session};
use crate::protocol::handshake::{random, ServerHandshake, ServerStep};
use crate::protocol::ErrorCode;
use crate::server::events::ServerEvent;
use crate::wire::{FrameReader, FrameWriter, LinkError};

/// Serves one connection until it closes, fails, or the server shuts down.
pub(crate) async fn serve<R, W>(
    rd: R,
    wr: W,
    peer: Option<SocketAddr>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
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
    let mut hs = ServerHandshake::new(opts.key.clone(), random()?);
    let deadline = opts.handshake_timeout;
    let session_id = loop {
        let Some(frame) = reader.next_within(deadline).await? else {
            return Ok(());
        };
        match hs.handle(&frame) {
            Ok(ServerStep::Reply(reply)) => writer.send(&reply).await?,
            Ok(ServerStep::Done(accepted)) => break accepted.session,
            Err(e) => {
                let code = if matches!(e, crate::protocol::handshake::HandshakeError::BadKey) {
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
                return Err(e.into());
            }
        }
    };
    reader.set_max_frame_len(max_frame);
    let session = ctx.attach(session_id, Instant::now());
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
    loop {
        // Frames already received are answered at once, and their replies (mostly
        // acknowledgements of a dozen bytes) go out together when the reader has to wait.
        let frame = match reader.next_buffered()? {
            Some(frame) => Some(frame),
            None => {
                writer.flush().await?;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Err(ConnError::Shutdown),
                    frame = reader.next_within(idle) => frame?,
                }
            }
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        session.lock().last_active = Some(Instant::now());
        for reply in handle(frame, ctx, session).await? {
            writer.queue(&reply).await?;
        }
    }
}
