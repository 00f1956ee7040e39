//! The handshake inside TLS: version check, then a PAKE over the passphrase bound to the TLS
//! channel, with key confirmation both ways.
//!
//! ```text
//! client                                   server
//!   Hello { version, session, pake_a }   ──►
//!                                        ◄──  Pake { pake_b, confirm_s }
//!   Confirm { confirm_c }                ──►   (a wrong passphrase ends here)
//!                                        ◄──  Welcome { mac, incarnation }
//! ```
//! `pake_a` and `pake_b` are SPAKE2 messages (Ed25519 group, the client as side A) over the
//! 32-byte [`Key`] derived from the passphrase. Each side gets the SPAKE2 key `K` and derives
//! `k = BLAKE3-derive_key("tidegate v5 handshake", version ‖ session ‖ binding ‖ pake_a ‖
//! pake_b ‖ K)`, where `binding` is the TLS exporter value of the connection. Then
//! `confirm_x = BLAKE3-keyed(k, label_x)` with one label per direction, and the `Welcome` MAC
//! is `BLAKE3-keyed(k, "welcome" ‖ incarnation)`.
//!
//! What this gives:
//! - A passive observer of the SPAKE2 messages (were TLS broken) learns nothing it could test
//!   passphrases against: SPAKE2 gives no offline dictionary attack.
//! - An active attacker without the passphrase commits to one guess per connection.
//! - A man in the middle that terminates TLS with its own key has two TLS channels with two
//!   different exporter values, so even relaying the SPAKE2 messages unchanged, neither
//!   confirmation verifies: it cannot complete either side.
//! - The confirmations differ per direction, so neither can be reflected.
//!
//! The anonymous key ([`Key::default`], the empty passphrase) runs the same exchange: the
//! channel is still encrypted, but anyone can complete it.
//!
//! Pure state machines: the caller supplies the TLS binding and the random seeds, and moves
//! the frames.

use bytes::Bytes;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::frame::{Frame, PAKE_LEN, VERSION};

/// A 32-byte key derived from a passphrase.
#[derive(Clone, PartialEq, Eq)]
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

    /// Whether this is the anonymous key (the empty passphrase), which anyone has.
    pub fn is_anonymous(&self) -> bool {
        *self == Key::default()
    }
}

impl Default for Key {
    /// The anonymous key: the empty passphrase.
    fn default() -> Self {
        Key::from_passphrase("")
    }
}

/// The TLS exporter value of a connection (RFC 8446 §7.5, label [`EXPORTER_LABEL`], no
/// context): the same at both ends of one TLS channel, different on any other.
pub type Binding = [u8; 32];

/// The label the TLS exporter is asked for.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-tidegate-pake";

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error(
        "peer speaks protocol version {theirs}, this build speaks version {ours} (run the same \
         release on both ends; `tidegate --version` names its protocol)"
    )]
    Version {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer's confirmation did not match: a different passphrase, or a man in the
    /// middle.
    #[error(
        "authentication failed: the passphrases differ, or something between the two ends \
         intercepts the connection (give both ends the same --key-file or TIDEGATE_KEY)"
    )]
    BadKey,
    /// A key-exchange message that is not a valid SPAKE2 message.
    #[error("malformed key-exchange message")]
    BadPake,
    /// A frame that does not belong at this point.
    #[error("unexpected frame during the handshake (type {0})")]
    Unexpected(u8),
    /// The peer sent an error frame.
    #[error("peer refused: {0}")]
    Refused(String),
}

const ID_A: &[u8] = b"tidegate sender";
const ID_B: &[u8] = b"tidegate receiver";

/// A random source for SPAKE2's scalar: BLAKE3's output stream keyed by a seed.
struct Seeded(blake3::OutputReader);

impl Seeded {
    fn new(seed: &[u8; 32]) -> Self {
        Seeded(
            blake3::Hasher::new_derive_key("tidegate v5 handshake scalar")
                .update(seed)
                .finalize_xof(),
        )
    }
}

impl rand_core::RngCore for Seeded {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

// A seed from the OS's random source (see `random`) makes the stream unpredictable.
impl rand_core::CryptoRng for Seeded {}

/// The key both sides derive once SPAKE2 is done.
struct Derived([u8; 32]);

impl Derived {
    fn new(
        spake: &[u8],
        binding: &Binding,
        session: &[u8; 16],
        pake_a: &[u8],
        pake_b: &[u8],
    ) -> Self {
        let mut h = blake3::Hasher::new_derive_key("tidegate v5 handshake");
        h.update(&VERSION.to_be_bytes());
        h.update(session);
        h.update(binding);
        h.update(pake_a);
        h.update(pake_b);
        h.update(spake);
        Derived(*h.finalize().as_bytes())
    }

    fn mac(&self, label: &[u8], extra: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(extra);
        *h.finalize().as_bytes()
    }

    fn server_confirm(&self) -> [u8; 32] {
        self.mac(b"server confirm", &[])
    }

    fn client_confirm(&self) -> [u8; 32] {
        self.mac(b"client confirm", &[])
    }

    fn welcome(&self, incarnation: u64) -> [u8; 32] {
        self.mac(b"welcome", &incarnation.to_be_bytes())
    }
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

fn password(key: &Key) -> Password {
    Password::new(key.0)
}

/// The client side.
pub struct ClientHandshake {
    binding: Binding,
    session: [u8; 16],
    pake_a: Vec<u8>,
    spake: Option<Spake2<Ed25519Group>>,
    derived: Option<Derived>,
    incarnation: Option<u64>,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("confirmed", &self.derived.is_some())
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a handshake on the TLS channel whose exporter value is `binding`, with a fresh
    /// random `seed`; send the returned `Hello`.
    pub fn new(key: &Key, session: [u8; 16], binding: Binding, seed: [u8; 32]) -> (Self, Frame) {
        let (spake, pake_a) = Spake2::<Ed25519Group>::start_a_with_rng(
            &password(key),
            &Identity::new(ID_A),
            &Identity::new(ID_B),
            Seeded::new(&seed),
        );
        let hello = Frame::Hello {
            version: VERSION,
            session,
            pake: Bytes::copy_from_slice(&pake_a),
        };
        (
            ClientHandshake {
                binding,
                session,
                pake_a,
                spake: Some(spake),
                derived: None,
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
        match frame {
            Frame::Pake { pake, confirm } if self.spake.is_some() => {
                let spake = self.spake.take().ok_or(HandshakeError::Unexpected(2))?;
                let k = spake.finish(pake).map_err(|_| HandshakeError::BadPake)?;
                let derived = Derived::new(&k, &self.binding, &self.session, &self.pake_a, pake);
                if !same(confirm, &derived.server_confirm()) {
                    return Err(HandshakeError::BadKey);
                }
                let mac = derived.client_confirm();
                self.derived = Some(derived);
                Ok(Some(Frame::Confirm { mac }))
            }
            Frame::Welcome { mac, incarnation } if self.incarnation.is_none() => {
                let derived = self
                    .derived
                    .as_ref()
                    .ok_or(HandshakeError::Unexpected(frame.type_byte()))?;
                if !same(mac, &derived.welcome(*incarnation)) {
                    return Err(HandshakeError::BadKey);
                }
                self.incarnation = Some(*incarnation);
                Ok(None)
            }
            other => Err(refused(other)),
        }
    }

    /// Once the handshake is complete: the server's id for the session's state (see
    /// [`Frame::Welcome`]).
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }
}

/// The server side.
pub struct ServerHandshake {
    key: Key,
    binding: Binding,
    seed: [u8; 32],
    session: Option<[u8; 16]>,
    derived: Option<Derived>,
    authenticated: bool,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("offered", &self.offered())
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
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
    /// A server handshake on the TLS channel whose exporter value is `binding`, with a fresh
    /// random `seed`.
    pub fn new(key: Key, binding: Binding, seed: [u8; 32]) -> Self {
        ServerHandshake {
            key,
            binding,
            seed,
            session: None,
            derived: None,
            authenticated: false,
        }
    }

    /// Whether the server's key-exchange message went out: from then on, a client that does
    /// not confirm has spent one guess at the passphrase.
    pub fn offered(&self) -> bool {
        self.derived.is_some()
    }

    /// Handles a client frame.
    ///
    /// # Errors
    /// See [`HandshakeError`]; on error, send an `Error` frame and close.
    pub fn handle(&mut self, frame: &Frame) -> Result<ServerStep, HandshakeError> {
        match frame {
            Frame::Hello {
                version,
                session,
                pake,
            } if self.session.is_none() => {
                if *version != VERSION {
                    return Err(HandshakeError::Version {
                        theirs: *version,
                        ours: VERSION,
                    });
                }
                if pake.len() != PAKE_LEN {
                    return Err(HandshakeError::BadPake);
                }
                let (spake, pake_b) = Spake2::<Ed25519Group>::start_b_with_rng(
                    &password(&self.key),
                    &Identity::new(ID_A),
                    &Identity::new(ID_B),
                    Seeded::new(&self.seed),
                );
                let k = spake.finish(pake).map_err(|_| HandshakeError::BadPake)?;
                let derived = Derived::new(&k, &self.binding, session, pake, &pake_b);
                let confirm = derived.server_confirm();
                let pake_b: [u8; PAKE_LEN] =
                    pake_b.try_into().map_err(|_| HandshakeError::BadPake)?;
                self.session = Some(*session);
                self.derived = Some(derived);
                Ok(ServerStep::Reply(Frame::Pake {
                    pake: pake_b,
                    confirm,
                }))
            }
            // The client found the server's confirmation wrong, and says so.
            Frame::Error { code, .. } if *code == super::ErrorCode::Auth as u16 => {
                Err(HandshakeError::BadKey)
            }
            Frame::Confirm { mac } if !self.authenticated => {
                let (Some(derived), Some(session)) = (&self.derived, self.session) else {
                    return Err(HandshakeError::Unexpected(frame.type_byte()));
                };
                if !same(mac, &derived.client_confirm()) {
                    return Err(HandshakeError::BadKey);
                }
                self.authenticated = true;
                Ok(ServerStep::Done(Accepted { session }))
            }
            other => Err(HandshakeError::Unexpected(other.type_byte())),
        }
    }

    /// The `Welcome` that completes the handshake, announcing `incarnation` (the server's id
    /// for the session's state). `None` before [`ServerStep::Done`].
    pub fn welcome(&self, incarnation: u64) -> Option<Frame> {
        let derived = self.derived.as_ref().filter(|_| self.authenticated)?;
        Some(Frame::Welcome {
            mac: derived.welcome(incarnation),
            incarnation,
        })
    }
}

/// A random code phrase of 80 bits: 16 characters of Crockford's base32 (lower case; no
/// i, l, o or u, which read like 1, 1, 0 and v) in four groups, like `7k2m-x9qd-c4hn-e8tw`.
/// Easy to read out and type, and with the PAKE, safe against guessing: an attacker gets
/// one online guess per connection, and the receiver locks out addresses that keep failing.
///
/// # Errors
/// When the kernel's random source fails.
pub fn code_phrase() -> std::io::Result<String> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let bytes = random::<10>()?;
    let mut bits = u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[6..].copy_from_slice(&bytes);
        b
    });
    let mut chars = [0u8; 16];
    for c in chars.iter_mut().rev() {
        *c = ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    let mut phrase = String::with_capacity(19);
    for (i, group) in chars.chunks(4).enumerate() {
        if i > 0 {
            phrase.push('-');
        }
        phrase.extend(group.iter().map(|&b| char::from(b)));
    }
    Ok(phrase)
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

    const BIND: Binding = [5; 32];

    fn run_bound(
        client_key: &str,
        server_key: &str,
        client_binding: Binding,
        server_binding: Binding,
    ) -> Result<Accepted, HandshakeError> {
        let (mut c, hello) = ClientHandshake::new(
            &Key::from_passphrase(client_key),
            [1; 16],
            client_binding,
            [2; 32],
        );
        let mut s = ServerHandshake::new(Key::from_passphrase(server_key), server_binding, [3; 32]);
        let ServerStep::Reply(pake) = s.handle(&hello)? else {
            panic!("key exchange expected")
        };
        assert!(s.offered());
        let confirm = c.handle(&pake)?.expect("confirmation");
        let ServerStep::Done(accepted) = s.handle(&confirm)? else {
            panic!("welcome expected")
        };
        let welcome = s.welcome(42).expect("authenticated");
        assert_eq!(c.handle(&welcome)?, None);
        assert_eq!(c.incarnation(), Some(42));
        Ok(accepted)
    }

    fn run(client_key: &str, server_key: &str) -> Result<Accepted, HandshakeError> {
        run_bound(client_key, server_key, BIND, BIND)
    }

    #[test]
    fn same_key_succeeds_other_key_fails() {
        assert_eq!(run("k", "k").unwrap().session, [1; 16]);
        assert_eq!(run("", "").unwrap().session, [1; 16]);
        assert_eq!(run("k", "other").unwrap_err(), HandshakeError::BadKey);
        assert_eq!(run("", "k").unwrap_err(), HandshakeError::BadKey);
        assert!(Key::default().is_anonymous());
        assert!(!Key::from_passphrase("k").is_anonymous());
    }

    #[test]
    fn two_tls_channels_cannot_be_joined() {
        // A man in the middle terminating TLS at both ends has two exporter values: relaying
        // the frames unchanged between them fails, although the passphrases agree.
        assert_eq!(
            run_bound("k", "k", [5; 32], [6; 32]).unwrap_err(),
            HandshakeError::BadKey
        );
    }

    #[test]
    fn a_reflected_confirmation_is_rejected() {
        // A server echoing a client's confirmation, or a client echoing the server's, fails.
        let key = Key::from_passphrase("k");
        let (mut c, hello) = ClientHandshake::new(&key, [1; 16], BIND, [2; 32]);
        let mut s = ServerHandshake::new(key.clone(), BIND, [3; 32]);
        let ServerStep::Reply(Frame::Pake { pake, confirm }) = s.handle(&hello).unwrap() else {
            panic!()
        };
        assert!(matches!(
            s.handle(&Frame::Confirm { mac: confirm }),
            Err(HandshakeError::BadKey)
        ));
        let Some(Frame::Confirm { mac }) = c.handle(&Frame::Pake { pake, confirm }).unwrap() else {
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
        // A Welcome whose incarnation was changed on the way fails the check.
        let key = Key::from_passphrase("k");
        let (mut c, hello) = ClientHandshake::new(&key, [1; 16], BIND, [2; 32]);
        let mut s = ServerHandshake::new(key, BIND, [3; 32]);
        assert!(s.welcome(1).is_none(), "no welcome before authentication");
        let ServerStep::Reply(pake) = s.handle(&hello).unwrap() else {
            panic!()
        };
        let confirm = c.handle(&pake).unwrap().unwrap();
        assert!(matches!(s.handle(&confirm), Ok(ServerStep::Done(_))));
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
    fn out_of_order_malformed_and_version_errors() {
        let mut s = ServerHandshake::new(Key::default(), BIND, [0; 32]);
        assert!(matches!(
            s.handle(&Frame::Confirm { mac: [0; 32] }),
            Err(HandshakeError::Unexpected(3))
        ));
        let mut s = ServerHandshake::new(Key::default(), BIND, [0; 32]);
        let hello = |version, pake: &'static [u8]| Frame::Hello {
            version,
            session: [0; 16],
            pake: Bytes::from_static(pake),
        };
        assert!(matches!(
            s.handle(&hello(99, &[0; 32])),
            Err(HandshakeError::Version { theirs: 99, .. })
        ));
        assert!(!s.offered());
        let mut s = ServerHandshake::new(Key::default(), BIND, [0; 32]);
        assert_eq!(
            s.handle(&hello(VERSION, &[0; 32])).unwrap_err(),
            HandshakeError::BadPake
        );
        let mut s = ServerHandshake::new(Key::default(), BIND, [0; 32]);
        // Side B's tag where side A's belongs.
        assert_eq!(
            s.handle(&hello(VERSION, &[0x42; 33])).unwrap_err(),
            HandshakeError::BadPake
        );
        let (mut c, _) = ClientHandshake::new(&Key::default(), [0; 16], BIND, [1; 32]);
        assert!(matches!(
            c.handle(&Frame::Welcome {
                mac: [0; 32],
                incarnation: 1
            }),
            Err(HandshakeError::Unexpected(4))
        ));
        assert_ne!(random::<32>().unwrap(), random::<32>().unwrap());
    }

    #[test]
    fn code_phrases_are_grouped_base32() {
        let a = code_phrase().unwrap();
        assert_eq!(a.len(), 19);
        assert!(a.split('-').all(|g| g.len() == 4
            && g.bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"ilou".contains(&b)))));
        assert_ne!(a, code_phrase().unwrap());
    }

    #[test]
    fn fresh_seeds_make_fresh_messages() {
        let key = Key::from_passphrase("k");
        let (_, a) = ClientHandshake::new(&key, [0; 16], BIND, [1; 32]);
        let (_, b) = ClientHandshake::new(&key, [0; 16], BIND, [2; 32]);
        assert_ne!(a, b);
    }
}
