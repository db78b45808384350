//! Length-prefixed, versioned frames over any byte stream.
//!
//! Wire layout of one frame (all integers little-endian):
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"HTEE"
//! 4       2     protocol version (u16, currently 1)
//! 6       1     message kind (u8, see [`kind`])
//! 7       4     payload length (u32)
//! 11      len   payload
//! ```
//!
//! The reader checks magic, version and length *before* it allocates anything, and it grows the
//! payload buffer only as bytes actually arrive, so a peer that announces a huge frame and then
//! sends nothing cannot make it allocate the announced size.

use std::io::{ErrorKind, Read, Write};

use crate::error::{Error, Result};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"HTEE";

/// The protocol version this build writes and the only one it accepts.
pub const PROTOCOL_VERSION: u16 = 1;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 11;

/// Default limit on a frame's payload: 64 MiB (large enough for a batch of BFV ciphertexts).
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// Message kinds owned by this crate. Kinds `0x00..=0x0F` are reserved for `hetee-attest`;
/// other crates define their own kinds from `0x10` up. The frame layer itself treats the kind
/// as an opaque byte.
pub mod kind {
    /// Serialized [`Evidence`](crate::evidence::Evidence).
    pub const EVIDENCE: u8 = 0x01;
    /// One Noise handshake message.
    pub const HANDSHAKE: u8 = 0x02;
    /// One secure-channel message (output of [`Transport::seal`](crate::channel::Transport::seal)).
    pub const CHANNEL: u8 = 0x03;
    /// A fixed-form error report (UTF-8 text, no secrets).
    pub const ERROR: u8 = 0x0F;
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Message kind byte (see [`kind`]).
    pub kind: u8,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// A decoded and validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version (always [`PROTOCOL_VERSION`] once validated).
    pub version: u16,
    /// Message kind byte.
    pub kind: u8,
    /// Payload length in bytes (at most the codec's limit once validated).
    pub len: u32,
}

/// Reads and writes frames with a payload size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameCodec {
    /// A codec that refuses payloads larger than `max_payload` bytes, on read and on write.
    pub const fn new(max_payload: u32) -> Self {
        Self { max_payload }
    }

    /// The payload limit in bytes.
    pub const fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Encodes a header for a payload of `len` bytes, refusing lengths over the limit.
    pub fn encode_header(&self, kind: u8, len: usize) -> Result<[u8; HEADER_LEN]> {
        let len32 = u32::try_from(len)
            .ok()
            .filter(|l| *l <= self.max_payload)
            .ok_or(Error::FrameTooLarge {
                len: len as u64,
                max: self.max_payload,
            })?;
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h[6] = kind;
        h[7..11].copy_from_slice(&len32.to_le_bytes());
        Ok(h)
    }

    /// Decodes and validates a header: magic, version and length limit.
    pub fn decode_header(&self, h: &[u8; HEADER_LEN]) -> Result<FrameHeader> {
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let kind = h[6];
        let len = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
        if len > self.max_payload {
            return Err(Error::FrameTooLarge {
                len: u64::from(len),
                max: self.max_payload,
            });
        }
        Ok(FrameHeader { version, kind, len })
    }

    /// Encodes a whole frame (header and payload) into a new buffer.
    pub fn encode(&self, kind: u8, payload: &[u8]) -> Result<Vec<u8>> {
        let h = self.encode_header(kind, payload.len())?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// Decodes one frame from the front of `bytes`; returns it and the number of bytes used.
    ///
    /// Fails with [`Error::UnexpectedEof`] if `bytes` holds less than one whole frame.
    pub fn decode(&self, bytes: &[u8]) -> Result<(Frame, usize)> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(Error::UnexpectedEof {
                what: "frame header",
                got: bytes.len(),
                expected: HEADER_LEN,
            });
        };
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(h);
        let header = self.decode_header(&hb)?;
        let len = header.len as usize;
        let rest = &bytes[HEADER_LEN..];
        let Some(payload) = rest.get(..len) else {
            return Err(Error::UnexpectedEof {
                what: "frame payload",
                got: rest.len(),
                expected: len,
            });
        };
        Ok((
            Frame {
                kind: header.kind,
                payload: payload.to_vec(),
            },
            HEADER_LEN + len,
        ))
    }

    /// Writes one frame to `w` and flushes it.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, kind: u8, payload: &[u8]) -> Result<()> {
        let h = self.encode_header(kind, payload.len())?;
        w.write_all(&h)?;
        w.write_all(payload)?;
        w.flush()?;
        Ok(())
    }

    /// Reads one frame from `r`.
    ///
    /// Returns [`Error::Closed`] if the stream ends cleanly before the first header byte, and
    /// [`Error::UnexpectedEof`] if it ends inside a frame.
    pub fn read<R: Read + ?Sized>(&self, r: &mut R) -> Result<Frame> {
        let mut hb = [0u8; HEADER_LEN];
        let got = read_full(r, &mut hb)?;
        if got == 0 {
            return Err(Error::Closed);
        }
        if got < HEADER_LEN {
            return Err(Error::UnexpectedEof {
                what: "frame header",
                got,
                expected: HEADER_LEN,
            });
        }
        let header = self.decode_header(&hb)?;
        let len = header.len as usize;
        // Grow with the data actually received, never trusting the announced length up front.
        let mut payload = Vec::with_capacity(len.min(64 * 1024));
        let got = r.take(u64::from(header.len)).read_to_end(&mut payload)?;
        if got < len {
            return Err(Error::UnexpectedEof {
                what: "frame payload",
                got,
                expected: len,
            });
        }
        Ok(Frame {
            kind: header.kind,
            payload,
        })
    }

    /// Reads one frame and checks that it has the `expected` kind.
    pub fn read_kind<R: Read + ?Sized>(&self, r: &mut R, expected: u8) -> Result<Vec<u8>> {
        let f = self.read(r)?;
        if f.kind != expected {
            return Err(Error::UnexpectedKind {
                found: f.kind,
                expected,
            });
        }
        Ok(f.payload)
    }
}

/// Fills `buf` as far as the stream allows; returns how many bytes were read (short only at EOF).
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Writes one frame with the default codec ([`DEFAULT_MAX_PAYLOAD`]).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: u8, payload: &[u8]) -> Result<()> {
    FrameCodec::default().write(w, kind, payload)
}

/// Reads one frame with the default codec ([`DEFAULT_MAX_PAYLOAD`]).
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Frame> {
    FrameCodec::default().read(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_stream() {
        let c = FrameCodec::new(1024);
        let mut buf = Vec::new();
        c.write(&mut buf, 7, b"hello").unwrap();
        c.write(&mut buf, kind::CHANNEL, b"").unwrap();
        assert_eq!(buf.len(), 2 * HEADER_LEN + 5);
        let mut r = Cursor::new(buf);
        assert_eq!(
            c.read(&mut r).unwrap(),
            Frame {
                kind: 7,
                payload: b"hello".to_vec()
            }
        );
        assert_eq!(c.read(&mut r).unwrap().payload, b"");
        assert!(matches!(c.read(&mut r), Err(Error::Closed)));
    }

    #[test]
    fn header_layout_is_little_endian() {
        let f = FrameCodec::default().encode(0x42, &[1, 2, 3]).unwrap();
        assert_eq!(&f[..], b"HTEE\x01\x00\x42\x03\x00\x00\x00\x01\x02\x03");
    }

    #[test]
    fn rejects_too_large_before_reading_payload() {
        let big = FrameCodec::new(u32::MAX).encode_header(1, 1 << 30).unwrap();
        // Only the header exists; the reader must refuse without waiting for or allocating 1 GiB.
        let err = FrameCodec::new(1024)
            .read(&mut Cursor::new(big))
            .unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { len, max: 1024 } if len == 1 << 30),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the limit"));
        let err = FrameCodec::new(4).encode(1, b"hello").unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn eof_mid_frame() {
        let f = FrameCodec::default().encode(1, b"hello").unwrap();
        for cut in 1..f.len() {
            let err = read_frame(&mut Cursor::new(&f[..cut])).unwrap_err();
            assert!(
                matches!(err, Error::UnexpectedEof { .. }),
                "cut {cut}: {err}"
            );
            let err = FrameCodec::default().decode(&f[..cut]).unwrap_err();
            assert!(
                matches!(err, Error::UnexpectedEof { .. }),
                "cut {cut}: {err}"
            );
        }
        assert!(matches!(
            read_frame(&mut Cursor::new(Vec::new())),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn wrong_magic_and_version() {
        let mut f = FrameCodec::default().encode(1, b"x").unwrap();
        f[0] = b'X';
        let err = read_frame(&mut Cursor::new(&f)).unwrap_err();
        assert!(matches!(err, Error::BadMagic { found } if &found == b"XTEE"));
        let mut f = FrameCodec::default().encode(1, b"x").unwrap();
        f[4] = 2;
        let err = read_frame(&mut Cursor::new(&f)).unwrap_err();
        assert!(matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn decode_reports_consumed_and_kind_check() {
        let c = FrameCodec::default();
        let mut two = c.encode(1, b"ab").unwrap();
        two.extend(c.encode(2, b"c").unwrap());
        let (f, used) = c.decode(&two).unwrap();
        assert_eq!((f.kind, used), (1, HEADER_LEN + 2));
        let (f, _) = c.decode(&two[used..]).unwrap();
        assert_eq!(f.payload, b"c");
        let err = c.read_kind(&mut Cursor::new(&two), 2).unwrap_err();
        assert!(matches!(
            err,
            Error::UnexpectedKind {
                found: 1,
                expected: 2
            }
        ));
    }
}
