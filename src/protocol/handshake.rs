//! The handshake: version check and mutual authentication with a pre-shared key.
//!
//! ```text
//! client                                   server
//!   Hello { version, session, nonce_c }  ──►
//!                                        ◄──  Challenge { nonce_s }
//!   Auth { mac_c }                       ──►   (checks mac_c; a wrong key ends here)
//!                                        ◄──  Welcome { mac_s, incarnation }
//!   (checks mac_s)
//! ```
//! `mac_x = BLAKE3-keyed(key, label_x ‖ version ‖ session ‖ nonce_c ‖ nonce_s)` (and, for the
//! server's, `‖ incarnation`: the id of the server's state for the session), with distinct
//! labels for the two sides so one proof cannot be reflected as the other. The key itself
//! never crosses the wire; fresh nonces on both sides make every proof single-use. MACs are
//! compared in constant time. Without `--key`, both sides use the key derived from the empty
//! passphrase: the handshake still runs, but authenticates nothing.
//!
//! Pure state machines: the caller supplies nonces and moves the frames.

use super::frame::{Frame, VERSION};

/// A 32-byte key derived from a passphrase.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Derives the key from a passphrase (BLAKE3 `derive_key`, with a tidegate context).
    pub fn from_passphrase(passphrase: &str) -> Self {
        Key(blake3::derive_key(
            "tidegate 2026-11 pre-shared transfer key v1",
            passphrase.as_bytes(),
        ))
    }
}

impl Default for Key {
    fn default() -> Self {
        Key::from_passphrase("")
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error(
        "peer speaks protocol version {theirs}, this build speaks {ours} (run the same \
         release on both ends; `tidegate --version` names its protocol)"
    )]
    Version {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer's proof did not match: a different key.
    #[error(
        "authentication failed: the keys differ (give both ends the same --key-file or \
         TIDEGATE_KEY)"
    )]
    BadKey,
    /// A frame that does not belong at this point.
    #[error("unexpected frame during the handshake (type {0})")]
    Unexpected(u8),
    /// The peer sent an error frame.
    #[error("peer refused: {0}")]
    Refused(String),
}

fn mac(key: &Key, label: &[u8; 6], session: &[u8; 16], nc: &[u8; 32], ns: &[u8; 32]) -> [u8; 32] {
    *transcript(key, label, session, nc, ns)
        .finalize()
        .as_bytes()
}

fn transcript(
    key: &Key,
    label: &[u8; 6],
    session: &[u8; 16],
    nc: &[u8; 32],
    ns: &[u8; 32],
) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(label);
    h.update(&VERSION.to_be_bytes());
    h.update(session);
    h.update(nc);
    h.update(ns);
    h
}

/// The server's proof, which also vouches for the incarnation it announces.
fn server_mac(
    key: &Key,
    session: &[u8; 16],
    nc: &[u8; 32],
    ns: &[u8; 32],
    incarnation: u64,
) -> [u8; 32] {
    let mut h = transcript(key, b"server", session, nc, ns);
    h.update(&incarnation.to_be_bytes());
    *h.finalize().as_bytes()
}

/// Constant-time comparison (`blake3::Hash`'s `PartialEq` is constant-time).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
}

fn refused(frame: &Frame) -> HandshakeError {
    match frame {
        Frame::Error { message, .. } => HandshakeError::Refused(super::peer_text(message)),
        other => HandshakeError::Unexpected(other.type_byte()),
    }
}

/// The client side.
#[derive(Debug)]
pub struct ClientHandshake {
    key: Key,
    session: [u8; 16],
    nonce: [u8; 32],
    server_nonce: Option<[u8; 32]>,
    incarnation: Option<u64>,
}

impl ClientHandshake {
    /// Starts a handshake; send the returned `Hello`.
    pub fn new(key: Key, session: [u8; 16], nonce: [u8; 32]) -> (Self, Frame) {
        let hello = Frame::Hello {
            version: VERSION,
            session,
            nonce,
        };
        (
            ClientHandshake {
                key,
                session,
                nonce,
                server_nonce: None,
                incarnation: None,
            },
            hello,
        )
    }

    /// Handles a server frame. Returns `Ok(Some(frame))` to send, `Ok(None)` when the
    /// handshake is complete.
    ///
    /// # Errors
    /// See [`HandshakeError`].
    pub fn handle(&mut self, frame: &Frame) -> Result<Option<Frame>, HandshakeError> {
        match (frame, self.server_nonce) {
            (Frame::Challenge { nonce }, None) => {
                self.server_nonce = Some(*nonce);
                let mac = mac(&self.key, b"client", &self.session, &self.nonce, nonce);
                Ok(Some(Frame::Auth { mac }))
            }
            (
                Frame::Welcome {
                    mac: theirs,
                    incarnation,
                },
                Some(ns),
            ) if self.incarnation.is_none() => {
                let want = server_mac(&self.key, &self.session, &self.nonce, &ns, *incarnation);
                if same(theirs, &want) {
                    self.incarnation = Some(*incarnation);
                    Ok(None)
                } else {
                    Err(HandshakeError::BadKey)
                }
            }
            (other, _) => Err(refused(other)),
        }
    }

    /// Once the handshake is complete: the server's id for the session's state (see
    /// [`Frame::Welcome`]).
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }
}

/// The server side.
#[derive(Debug)]
pub struct ServerHandshake {
    key: Key,
    nonce: [u8; 32],
    hello: Option<([u8; 16], [u8; 32])>,
    authenticated: bool,
}

/// What a completed server handshake yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The session the connection belongs to.
    pub session: [u8; 16],
}

/// The next step of a server handshake.
#[derive(Debug)]
pub enum ServerStep {
    /// Send this frame and wait for the next.
    Reply(Frame),
    /// The client is authenticated: send [`ServerHandshake::welcome`].
    Done(Accepted),
}

impl ServerHandshake {
    /// A server handshake with a fresh nonce.
    pub fn new(key: Key, nonce: [u8; 32]) -> Self {
        ServerHandshake {
            key,
            nonce,
            hello: None,
            authenticated: false,
        }
    }

    /// Handles a client frame.
    ///
    /// # Errors
    /// See [`HandshakeError`]; on error, send an `Error` frame and close.
    pub fn handle(&mut self, frame: &Frame) -> Result<ServerStep, HandshakeError> {
        match (frame, self.hello) {
            (
                Frame::Hello {
                    version,
                    session,
                    nonce,
                },
                None,
            ) => {
                if *version != VERSION {
                    return Err(HandshakeError::Version {
                        theirs: *version,
                        ours: VERSION,
                    });
                }
                self.hello = Some((*session, *nonce));
                Ok(ServerStep::Reply(Frame::Challenge { nonce: self.nonce }))
            }
            (Frame::Auth { mac: theirs }, Some((session, nc))) if !self.authenticated => {
                let want = mac(&self.key, b"client", &session, &nc, &self.nonce);
                if !same(theirs, &want) {
                    return Err(HandshakeError::BadKey);
                }
                self.authenticated = true;
                Ok(ServerStep::Done(Accepted { session }))
            }
            (other, _) => Err(HandshakeError::Unexpected(other.type_byte())),
        }
    }

    /// The `Welcome` that completes the handshake, announcing `incarnation` (the server's id
    /// for the session's state). `None` before [`ServerStep::Done`].
    pub fn welcome(&self, incarnation: u64) -> Option<Frame> {
        let (session, nc) = self.hello.filter(|_| self.authenticated)?;
        Some(Frame::Welcome {
            mac: server_mac(&self.key, &session, &nc, &self.nonce, incarnation),
            incarnation,
        })
    }
}

/// Fills a buffer with random bytes from the OS.
///
/// # Errors
/// When the kernel's random source fails.
pub fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled rest of `out`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(client_key: &str, server_key: &str) -> Result<Accepted, HandshakeError> {
        let (mut c, hello) =
            ClientHandshake::new(Key::from_passphrase(client_key), [1; 16], [2; 32]);
        let mut s = ServerHandshake::new(Key::from_passphrase(server_key), [3; 32]);
        let ServerStep::Reply(challenge) = s.handle(&hello)? else {
            panic!("challenge expected")
        };
        let auth = c.handle(&challenge)?.expect("auth");
        let ServerStep::Done(accepted) = s.handle(&auth)? else {
            panic!("welcome expected")
        };
        let welcome = s.welcome(42).expect("authenticated");
        assert_eq!(c.handle(&welcome)?, None);
        assert_eq!(c.incarnation(), Some(42));
        Ok(accepted)
    }

    #[test]
    fn same_key_succeeds_other_key_fails() {
        assert_eq!(run("k", "k").unwrap().session, [1; 16]);
        assert_eq!(run("k", "other").unwrap_err(), HandshakeError::BadKey);
        assert_eq!(run("", "k").unwrap_err(), HandshakeError::BadKey);
    }

    #[test]
    fn a_reflected_proof_is_rejected() {
        // A server that echoes the client's own Auth as its Welcome must fail the check.
        let key = Key::from_passphrase("k");
        let (mut c, _) = ClientHandshake::new(key, [1; 16], [2; 32]);
        let Some(Frame::Auth { mac }) = c.handle(&Frame::Challenge { nonce: [3; 32] }).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.handle(&Frame::Welcome {
                mac,
                incarnation: 0
            }),
            Err(HandshakeError::BadKey)
        );
    }

    #[test]
    fn the_incarnation_is_vouched_for() {
        // A Welcome whose incarnation was changed on the way fails the check: a man in the
        // middle cannot make a sender believe the receiver lost (or kept) its state.
        let key = Key::from_passphrase("k");
        let (mut c, hello) = ClientHandshake::new(key.clone(), [1; 16], [2; 32]);
        let mut s = ServerHandshake::new(key, [3; 32]);
        assert!(s.welcome(1).is_none(), "no welcome before authentication");
        let ServerStep::Reply(challenge) = s.handle(&hello).unwrap() else {
            panic!()
        };
        let auth = c.handle(&challenge).unwrap().unwrap();
        assert!(matches!(s.handle(&auth), Ok(ServerStep::Done(_))));
        let Some(Frame::Welcome { mac, .. }) = s.welcome(7) else {
            panic!()
        };
        assert_eq!(
            c.handle(&Frame::Welcome {
                mac,
                incarnation: 8
            }),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(c.incarnation(), None);
    }

    #[test]
    fn out_of_order_and_version_errors() {
        let mut s = ServerHandshake::new(Key::default(), [0; 32]);
        assert!(matches!(
            s.handle(&Frame::Auth { mac: [0; 32] }),
            Err(HandshakeError::Unexpected(3))
        ));
        let mut s = ServerHandshake::new(Key::default(), [0; 32]);
        let hello = Frame::Hello {
            version: 99,
            session: [0; 16],
            nonce: [0; 32],
        };
        assert!(matches!(
            s.handle(&hello),
            Err(HandshakeError::Version { theirs: 99, .. })
        ));
        assert_ne!(random::<32>().unwrap(), random::<32>().unwrap());
    }
}
