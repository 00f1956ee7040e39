//! Raw protocol clients for tests that play a (possibly hostile) peer frame by frame, over
//! the same TLS and handshake as a real sender.

use tidegate::protocol::handshake::{ClientHandshake, Key};
use tidegate::protocol::{Frame, Meta};
use tidegate::tls::ClientStream;
use tidegate::wire::{FrameReader, FrameWriter};
use tokio::net::TcpStream;

/// Both halves of an authenticated connection.
pub type Conn = (
    FrameReader<tokio::io::ReadHalf<ClientStream<TcpStream>>>,
    FrameWriter<tokio::io::WriteHalf<ClientStream<TcpStream>>>,
);

/// Runs TLS, then the handshake for `session` with `key`, on `stream`; a refusal comes back
/// as its error code and message, a failed handshake as code 0 and why.
pub async fn handshake(
    stream: TcpStream,
    key: &Key,
    session: [u8; 16],
) -> Result<Conn, (u16, String)> {
    let tls = tidegate::tls::connect(stream).await.unwrap();
    let binding = tidegate::tls::binding(tls.get_ref().1).unwrap();
    let (rd, wr) = tokio::io::split(tls);
    let (mut r, mut w) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
    let (mut hs, hello) = ClientHandshake::new(key, session, binding, [7; 32]);
    w.send(&hello).await.unwrap();
    loop {
        let frame = r.next().await.unwrap().unwrap();
        if let Frame::Error { code, message, .. } = &frame {
            return Err((*code, String::from_utf8_lossy(message).into_owned()));
        }
        match hs.handle(&frame) {
            Ok(Some(reply)) => w.send(&reply).await.unwrap(),
            Ok(None) => return Ok((r, w)),
            Err(e) => return Err((0, e.to_string())),
        }
    }
}

/// Connects with [`TEST_KEY`](crate::TEST_KEY) and completes the handshake for `session`.
pub async fn connect(addr: std::net::SocketAddr, session: [u8; 16]) -> Conn {
    let stream = TcpStream::connect(addr).await.unwrap();
    handshake(stream, &crate::test_key(), session)
        .await
        .unwrap()
}

/// Connects from `from` (a loopback address such as 127.0.0.2, so that a test plays a peer
/// of its own) with [`TEST_KEY`](crate::TEST_KEY), and completes the handshake for `session`; a refusal
/// comes back as its error code and message.
pub async fn try_connect_from(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    session: [u8; 16],
) -> Result<Conn, (u16, String)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    handshake(stream, &crate::test_key(), session).await
}

/// Metadata of a plain file at `path`.
pub fn meta(path: impl Into<Vec<u8>>, size: u64) -> Meta {
    Meta {
        path: path.into(),
        size,
        mode: 0o644,
        mtime_ns: 0,
    }
}

/// Sends `Finish` and reads the answers up to `Finished`: acknowledgements, `FileDone`s and
/// per-file errors (not with `strict`: then any error is a failure).
pub async fn finish<R, W>(r: &mut FrameReader<R>, w: &mut FrameWriter<W>, strict: bool)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    w.send(&Frame::Finish).await.unwrap();
    loop {
        match r.next().await.unwrap().unwrap() {
            Frame::Finished => return,
            Frame::Ack { .. } | Frame::FileDone { .. } => {}
            Frame::Error { .. } if !strict => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
