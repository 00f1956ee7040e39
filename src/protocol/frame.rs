//! Frame types and their byte layout: the only file that knows field offsets.
//!
//! Every frame on the wire is `len: u32 BE | type: u8 | body`, where `len` counts the type
//! byte and the body. Integers are big-endian; byte strings (paths, messages) are a `u16 BE`
//! length followed by raw bytes (paths are not required to be UTF-8). A `Data` or
//! `SmallFile` frame ends with its payload, which runs to the end of the frame, so the
//! sender can write it straight from the chunk's `Bytes` with a vectored write.
//! `docs/PROTOCOL.md` is the specification; this file implements it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;

/// `TDGT` at the start of `Hello`.
pub const MAGIC: [u8; 4] = *b"TDGT";
/// The protocol version this build speaks.
pub const VERSION: u16 = 5;
/// Length of a SPAKE2 message (a side byte and an Ed25519 point), as `Hello` and `Pake`
/// carry it.
pub const PAKE_LEN: usize = 33;
/// Longest path or message, in bytes.
pub const MAX_STRING_LEN: usize = 4096;

/// File metadata carried by `FileBegin` and `SmallFile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Relative path, `/`-separated, raw bytes.
    pub path: Vec<u8>,
    /// Length in bytes.
    pub size: u64,
    /// Unix permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Client → server, first frame of a connection (inside TLS).
    Hello {
        /// Protocol version.
        version: u16,
        /// Identifies one transfer across its connections and reconnections.
        session: [u8; 16],
        /// The client's SPAKE2 message ([`PAKE_LEN`] bytes in this version). It runs to the
        /// end of the frame, so a `Hello` of any version parses far enough to compare
        /// versions.
        pake: Bytes,
    },
    /// Server → client: the server's SPAKE2 message and its key confirmation.
    Pake {
        /// The server's SPAKE2 message.
        pake: [u8; PAKE_LEN],
        /// Proof that the server derived the same key on the same TLS channel (see
        /// `handshake.rs`).
        confirm: [u8; 32],
    },
    /// Client → server: the client's key confirmation.
    Confirm {
        /// Proof that the client derived the same key on the same TLS channel.
        mac: [u8; 32],
    },
    /// Server → client: the client is in.
    Welcome {
        /// MAC of `incarnation` under the handshake's key.
        mac: [u8; 32],
        /// The server's id for the session's state: the same for every connection of the
        /// session while the server holds that state, another one once it was lost (the
        /// server restarted, or dropped the session), so that the sender sends again what
        /// the server no longer has.
        incarnation: u64,
    },
    /// Client → server: a file of more than one chunk begins.
    FileBegin {
        /// The transfer's id for the file.
        file: u64,
        /// Its metadata.
        meta: Meta,
        /// Chunk size; chunk `i` starts at `i * chunk_len`.
        chunk_len: u32,
    },
    /// Server → client: the partial file is ready for data.
    FileReady {
        /// The file.
        file: u64,
        /// Chunks `0..have` are already verified and on disk (an interrupted transfer of the
        /// same file being resumed): the sender need not send them.
        have: u64,
    },
    /// Client → server: one chunk.
    Data {
        /// The file.
        file: u64,
        /// The chunk index.
        index: u64,
        /// The chunk's BLAKE3 chaining value at its offset.
        cv: [u8; 32],
        /// The bytes.
        payload: Bytes,
    },
    /// Server → client: a chunk (or small file) was verified and written; its memory can go.
    Ack {
        /// The file.
        file: u64,
        /// The chunk index (0 for a small file).
        index: u64,
    },
    /// Client → server: every chunk of the file was acknowledged; here is its root.
    FileEnd {
        /// The file.
        file: u64,
        /// Its BLAKE3 root hash.
        root: [u8; 32],
    },
    /// Server → client: the file is verified, durable and in place under its final name.
    FileDone {
        /// The file.
        file: u64,
    },
    /// Client → server: a whole file of at most one chunk, in one frame.
    SmallFile {
        /// The transfer's id for the file.
        file: u64,
        /// Its metadata (`size` equals the payload length).
        meta: Meta,
        /// Its BLAKE3 root hash.
        root: [u8; 32],
        /// The content.
        payload: Bytes,
    },
    /// Client → server: a directory (created if missing; mode and mtime applied).
    Dir {
        /// The transfer's id for the entry.
        file: u64,
        /// Its metadata (`size` is 0).
        meta: Meta,
    },
    /// Client → server: a symbolic link.
    Symlink {
        /// The transfer's id for the entry.
        file: u64,
        /// Its metadata (`size` is 0, `mode` ignored).
        meta: Meta,
        /// The link target, raw bytes.
        target: Vec<u8>,
    },
    /// Either way: something failed. `file == u64::MAX` means the whole connection.
    Error {
        /// The file, or `u64::MAX`.
        file: u64,
        /// A machine-readable code (see `ErrorCode`).
        code: u16,
        /// A human-readable explanation.
        message: Vec<u8>,
    },
    /// Client → server: no more entries; flush everything and confirm.
    Finish,
    /// Server → client: everything of this session is durable.
    Finished,
}

/// Codes carried by [`Frame::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed frame or a frame out of order.
    Protocol = 1,
    /// Wrong key.
    Auth = 2,
    /// A path that would leave the served directory.
    BadPath = 3,
    /// A chunk or file whose hash did not match.
    Hash = 4,
    /// The receiver's disk said no.
    Io = 5,
    /// Over a size or count limit.
    Limit = 6,
    /// The server is shutting down.
    Shutdown = 7,
    /// The receiver lacks the file a `Data` or `FileEnd` is about, or some of its chunks:
    /// begin it again (its `FileReady` says what the receiver has). Not a failure.
    Missing = 8,
}

/// Type bytes.
pub(crate) mod ty {
    pub(crate) const HELLO: u8 = 1;
    pub(crate) const PAKE: u8 = 2;
    pub(crate) const CONFIRM: u8 = 3;
    pub(crate) const WELCOME: u8 = 4;
    pub(crate) const FILE_BEGIN: u8 = 5;
    pub(crate) const FILE_READY: u8 = 6;
    pub(crate) const DATA: u8 = 7;
    pub(crate) const ACK: u8 = 8;
    pub(crate) const FILE_END: u8 = 9;
    pub(crate) const FILE_DONE: u8 = 10;
    pub(crate) const SMALL_FILE: u8 = 11;
    pub(crate) const DIR: u8 = 12;
    pub(crate) const SYMLINK: u8 = 13;
    pub(crate) const ERROR: u8 = 14;
    pub(crate) const FINISH: u8 = 15;
    pub(crate) const FINISHED: u8 = 16;
}

impl Frame {
    /// The type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => ty::HELLO,
            Frame::Pake { .. } => ty::PAKE,
            Frame::Confirm { .. } => ty::CONFIRM,
            Frame::Welcome { .. } => ty::WELCOME,
            Frame::FileBegin { .. } => ty::FILE_BEGIN,
            Frame::FileReady { .. } => ty::FILE_READY,
            Frame::Data { .. } => ty::DATA,
            Frame::Ack { .. } => ty::ACK,
            Frame::FileEnd { .. } => ty::FILE_END,
            Frame::FileDone { .. } => ty::FILE_DONE,
            Frame::SmallFile { .. } => ty::SMALL_FILE,
            Frame::Dir { .. } => ty::DIR,
            Frame::Symlink { .. } => ty::SYMLINK,
            Frame::Error { .. } => ty::ERROR,
            Frame::Finish => ty::FINISH,
            Frame::Finished => ty::FINISHED,
        }
    }

    /// The payload that follows the body, for frames that carry one.
    pub fn payload(&self) -> Option<&Bytes> {
        match self {
            Frame::Data { payload, .. } | Frame::SmallFile { payload, .. } => Some(payload),
            _ => None,
        }
    }

    /// Writes the body without the payload.
    pub(crate) fn put_body(&self, dst: &mut BytesMut) {
        match self {
            Frame::Hello {
                version,
                session,
                pake,
            } => {
                dst.put_slice(&MAGIC);
                dst.put_u16(*version);
                dst.put_slice(session);
                dst.put_slice(pake);
            }
            Frame::Pake { pake, confirm } => {
                dst.put_slice(pake);
                dst.put_slice(confirm);
            }
            Frame::Confirm { mac } => dst.put_slice(mac),
            Frame::Welcome { mac, incarnation } => {
                dst.put_slice(mac);
                dst.put_u64(*incarnation);
            }
            Frame::FileBegin {
                file,
                meta,
                chunk_len,
            } => {
                dst.put_u64(*file);
                put_meta(dst, meta);
                dst.put_u32(*chunk_len);
            }
            Frame::FileReady { file, have } => {
                dst.put_u64(*file);
                dst.put_u64(*have);
            }
            Frame::FileDone { file } => dst.put_u64(*file),
            Frame::Data {
                file, index, cv, ..
            } => {
                dst.put_u64(*file);
                dst.put_u64(*index);
                dst.put_slice(cv);
            }
            Frame::Ack { file, index } => {
                dst.put_u64(*file);
                dst.put_u64(*index);
            }
            Frame::FileEnd { file, root } => {
                dst.put_u64(*file);
                dst.put_slice(root);
            }
            Frame::SmallFile {
                file, meta, root, ..
            } => {
                dst.put_u64(*file);
                put_meta(dst, meta);
                dst.put_slice(root);
            }
            Frame::Dir { file, meta } => {
                dst.put_u64(*file);
                put_meta(dst, meta);
            }
            Frame::Symlink { file, meta, target } => {
                dst.put_u64(*file);
                put_meta(dst, meta);
                put_string(dst, target);
            }
            Frame::Error {
                file,
                code,
                message,
            } => {
                dst.put_u64(*file);
                dst.put_u16(*code);
                put_string(dst, message);
            }
            Frame::Finish | Frame::Finished => {}
        }
    }

    /// Parses a body (everything after the type byte). `body` is exactly the frame's bytes.
    pub(crate) fn parse(ty: u8, mut body: Bytes) -> Result<Frame, DecodeError> {
        let b = &mut body;
        let frame = match ty {
            ty::HELLO => {
                let magic: [u8; 4] = array(b)?;
                if magic != MAGIC {
                    return Err(DecodeError::BadMagic(magic));
                }
                Frame::Hello {
                    version: u16_(b)?,
                    session: array(b)?,
                    pake: b.split_to(b.len()),
                }
            }
            ty::PAKE => Frame::Pake {
                pake: array(b)?,
                confirm: array(b)?,
            },
            ty::CONFIRM => Frame::Confirm { mac: array(b)? },
            ty::WELCOME => Frame::Welcome {
                mac: array(b)?,
                incarnation: u64_(b)?,
            },
            ty::FILE_BEGIN => Frame::FileBegin {
                file: u64_(b)?,
                meta: meta(b)?,
                chunk_len: u32_(b)?,
            },
            ty::FILE_READY => Frame::FileReady {
                file: u64_(b)?,
                have: u64_(b)?,
            },
            ty::DATA => {
                let file = u64_(b)?;
                let index = u64_(b)?;
                let cv = array(b)?;
                let payload = b.split_to(b.len());
                Frame::Data {
                    file,
                    index,
                    cv,
                    payload,
                }
            }
            ty::ACK => Frame::Ack {
                file: u64_(b)?,
                index: u64_(b)?,
            },
            ty::FILE_END => Frame::FileEnd {
                file: u64_(b)?,
                root: array(b)?,
            },
            ty::FILE_DONE => Frame::FileDone { file: u64_(b)? },
            ty::SMALL_FILE => {
                let file = u64_(b)?;
                let meta = meta(b)?;
                let root = array(b)?;
                let payload = b.split_to(b.len());
                if payload.len() as u64 != meta.size {
                    return Err(DecodeError::SizeMismatch {
                        declared: meta.size,
                        actual: payload.len() as u64,
                    });
                }
                Frame::SmallFile {
                    file,
                    meta,
                    root,
                    payload,
                }
            }
            ty::DIR => Frame::Dir {
                file: u64_(b)?,
                meta: meta(b)?,
            },
            ty::SYMLINK => Frame::Symlink {
                file: u64_(b)?,
                meta: meta(b)?,
                target: string(b)?,
            },
            ty::ERROR => Frame::Error {
                file: u64_(b)?,
                code: u16_(b)?,
                message: string(b)?,
            },
            ty::FINISH => Frame::Finish,
            ty::FINISHED => Frame::Finished,
            other => return Err(DecodeError::UnknownType(other)),
        };
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes {
                ty,
                extra: body.len(),
            });
        }
        Ok(frame)
    }
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    // Encoders are given validated strings; an over-long one is cut at the limit rather than
    // producing a frame the peer must reject as malformed.
    let s = &s[..s.len().min(MAX_STRING_LEN)];
    dst.put_u16(s.len() as u16);
    dst.put_slice(s);
}

fn put_meta(dst: &mut BytesMut, meta: &Meta) {
    put_string(dst, &meta.path);
    dst.put_u64(meta.size);
    dst.put_u32(meta.mode);
    dst.put_i64(meta.mtime_ns);
}

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        Err(DecodeError::ShortBody)
    } else {
        Ok(())
    }
}

fn u16_(b: &mut Bytes) -> Result<u16, DecodeError> {
    need(b, 2)?;
    Ok(b.get_u16())
}

fn u32_(b: &mut Bytes) -> Result<u32, DecodeError> {
    need(b, 4)?;
    Ok(b.get_u32())
}

fn u64_(b: &mut Bytes) -> Result<u64, DecodeError> {
    need(b, 8)?;
    Ok(b.get_u64())
}

fn i64_(b: &mut Bytes) -> Result<i64, DecodeError> {
    need(b, 8)?;
    Ok(b.get_i64())
}

fn array<const N: usize>(b: &mut Bytes) -> Result<[u8; N], DecodeError> {
    need(b, N)?;
    let mut out = [0u8; N];
    b.copy_to_slice(&mut out);
    Ok(out)
}

fn string(b: &mut Bytes) -> Result<Vec<u8>, DecodeError> {
    let len = usize::from(u16_(b)?);
    if len > MAX_STRING_LEN {
        return Err(DecodeError::StringTooLong { len });
    }
    need(b, len)?;
    Ok(b.split_to(len).to_vec())
}

fn meta(b: &mut Bytes) -> Result<Meta, DecodeError> {
    Ok(Meta {
        path: string(b)?,
        size: u64_(b)?,
        mode: u32_(b)?,
        mtime_ns: i64_(b)?,
    })
}
