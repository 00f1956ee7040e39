//! The properties the fuzz targets check, as plain functions, so that `cargo test` on stable
//! replays the committed corpora through exactly the same checks (`tests/integration/fuzz_corpus.rs`).

use bytes::BytesMut;

use super::codec::{decode, encode, LEN_PREFIX};

/// The frame limit used by the fuzz targets: small, so that the bound is exercised.
pub const FUZZ_MAX_FRAME: usize = 64 * 1024;

/// Decodes `data` frame by frame. Panics (a finding) if the buffer's capacity ever exceeds
/// what one frame within the limit needs, or if decoding panics.
pub fn check_decode(data: &[u8]) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf, FUZZ_MAX_FRAME) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let bound = (FUZZ_MAX_FRAME + LEN_PREFIX).max(data.len()) * 2;
        assert!(
            buf.capacity() <= bound,
            "buffered {} bytes for input of {}",
            buf.capacity(),
            data.len()
        );
    }
}

/// If `data` starts with a valid frame, checks that `decode(encode(f)) == f`.
pub fn check_roundtrip(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(frame)) = decode(&mut buf, FUZZ_MAX_FRAME) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out);
        let again = decode(&mut out, FUZZ_MAX_FRAME);
        assert_eq!(again, Ok(Some(frame)));
        assert!(out.is_empty());
    }
}

/// Property of the `handshake` fuzz target (the PAKE).
///
/// 1. The frames decoded from `data`, fed to a server and to a client whose key the input
///    never contains, never complete either handshake: no success without the key.
/// 2. A client and a server whose passphrases are cut from `data`, on TLS channels whose
///    exporter values differ when the input's first byte is odd (a man in the middle),
///    complete the handshake exactly when the passphrases are equal and the channel is one,
///    and agree on the session.
///
/// # Panics
/// On a finding.
pub fn check_handshake(data: &[u8]) {
    use super::handshake::{ClientHandshake, Key, ServerHandshake, ServerStep};

    let secret = || Key::from_passphrase("fuzzing: a key no input contains");
    let mut server = Some(ServerHandshake::new(secret(), [8; 32], [7; 32]));
    let mut client = Some(ClientHandshake::new(&secret(), [1; 16], [8; 32], [2; 32]).0);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode(&mut buf, FUZZ_MAX_FRAME) {
        if let Some(s) = &mut server {
            match s.handle(&frame) {
                Ok(ServerStep::Done(..)) => panic!("server accepted a peer without the key"),
                Ok(ServerStep::Reply(_)) => {}
                Err(_) => server = None,
            }
        }
        if let Some(c) = &mut client {
            match c.handle(&frame) {
                Ok(None) => panic!("client accepted a server without the key"),
                Ok(Some(_)) => {}
                Err(_) => client = None,
            }
        }
    }

    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let joined = cut & 1 == 0;
    let (a, b) = rest.split_at(usize::from(cut >> 1).min(rest.len()));
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let session: [u8; 16] = std::array::from_fn(|i| rest.get(i).copied().unwrap_or(0));
    let theirs = if joined { [5; 32] } else { [6; 32] };
    let (mut c, hello) = ClientHandshake::new(&Key::from_passphrase(&a), session, [5; 32], [3; 32]);
    let mut s = ServerHandshake::new(Key::from_passphrase(&b), theirs, [4; 32]);
    let outcome = (|| {
        let ServerStep::Reply(pake) = s.handle(&hello)? else {
            panic!("a server completed on Hello alone");
        };
        let confirm = c
            .handle(&pake)?
            .expect("the client confirms a key exchange");
        let ServerStep::Done(accepted) = s.handle(&confirm)? else {
            panic!("a server asked for more after Confirm");
        };
        let welcome = s.welcome(9).expect("a welcome once authenticated");
        assert_eq!(
            c.handle(&welcome)?,
            None,
            "the client wants more after Welcome"
        );
        Ok::<_, super::handshake::HandshakeError>(accepted)
    })();
    match outcome {
        Ok(accepted) => {
            assert!(a == b && joined, "different keys or channels authenticated");
            assert_eq!(accepted.session, session);
        }
        Err(e) => assert!(a != b || !joined, "equal keys on one channel failed: {e}"),
    }
}
