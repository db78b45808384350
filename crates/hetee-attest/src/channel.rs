//! The secure channel between a client and the enclave: Noise `XK` with X25519, ChaCha20-Poly1305
//! and SHA-256 (via `snow`).
//!
//! - The enclave is the responder and holds a static X25519 key ([`StaticKeypair`]) whose public
//!   half is bound into its evidence's report data.
//! - The client is the initiator and knows that public key from verified evidence (`XK`: the
//!   responder's static key is known in advance). The client's own static key is sent encrypted
//!   in the third message, so the enclave learns a stable client identity if the client reuses one.
//! - The prologue is the evidence hash ([`Evidence::hash`](crate::evidence::Evidence::hash)), so
//!   both sides must agree on exactly which evidence the channel belongs to.
//!
//! The handshake is three explicit message-in/message-out steps, so a host can tunnel them through
//! any API; [`client_connect`] and [`enclave_accept`] run them over the frame layer instead.
//!
//! Transport messages may be of any size: [`Transport::seal`] splits a plaintext into Noise
//! messages of at most 65535 bytes, each carrying a one-byte "final" flag inside the encryption,
//! so truncation, extension, replay and reordering are all detected. Any failure closes the
//! channel for good (later calls return [`Error::ChannelPoisoned`]).

use std::fmt;
use std::io::{Read, Write};

use snow::{Builder, HandshakeState, TransportState};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::frame::{kind, FrameCodec};

/// The Noise protocol name used by every hetee channel.
pub const NOISE_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_SHA256";
/// Largest Noise message (protocol limit).
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// AEAD tag length.
const TAG_LEN: usize = 16;
/// Plaintext bytes carried per Noise message (one byte goes to the final flag).
pub const CHUNK_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN - 1;
/// Flag byte values.
const FLAG_MORE: u8 = 0;
const FLAG_FINAL: u8 = 1;

fn builder<'a>() -> Result<Builder<'a>> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| Error::Crypto(format!("Noise parameters {NOISE_PARAMS}: {e}; snow was built without the needed crypto features")))?;
    Ok(Builder::new(params))
}

fn hs_err(step: &'static str) -> impl Fn(snow::Error) -> Error {
    move |e| Error::Handshake {
        step,
        reason: e.to_string(),
    }
}

/// A static X25519 key pair; the private half is zeroized on drop and never printed.
pub struct StaticKeypair {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl StaticKeypair {
    /// Generates a fresh key pair from the OS random number generator (snow's key generator).
    pub fn generate() -> Result<Self> {
        let mut kp = builder()?
            .generate_keypair()
            .map_err(|e| {
                Error::Crypto(format!(
                    "X25519 key generation: {e}; check that the OS random number generator is available"
                ))
            })?;
        let mut private = Zeroizing::new([0u8; 32]);
        let ok = kp.private.len() == 32 && kp.public.len() == 32;
        if ok {
            private.copy_from_slice(&kp.private);
        }
        kp.private.zeroize();
        if !ok {
            return Err(Error::Crypto(
                "X25519 key has an unexpected length; snow's resolver returned a non-25519 key"
                    .into(),
            ));
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&kp.public);
        Ok(Self { private, public })
    }

    /// The public key (goes into the evidence's report data).
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// A key pair from its 32-byte private key (e.g. a client's saved key).
    pub fn from_private(private: &[u8; 32]) -> Self {
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes();
        Self {
            private: Zeroizing::new(*private),
            public,
        }
    }

    /// The private key, to save it (zeroized when dropped).
    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.private.clone()
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &crate::evidence::hex(&self.public))
            .finish_non_exhaustive()
    }
}

/// Client (initiator) side of the handshake, between message 1 and message 2.
pub struct ClientHandshake {
    hs: HandshakeState,
}

impl ClientHandshake {
    /// Starts a handshake to the enclave whose static key is `enclave_static_pub` (taken from
    /// verified evidence) with a fresh, throwaway client key. Returns the state and message 1.
    pub fn new(enclave_static_pub: &[u8; 32], prologue: &[u8]) -> Result<(Self, Vec<u8>)> {
        let client = StaticKeypair::generate()?;
        Self::with_client_key(&client, enclave_static_pub, prologue)
    }

    /// Like [`new`](Self::new) but with a long-term client key, which the enclave sees after
    /// message 3 ([`Transport::remote_static`]).
    pub fn with_client_key(
        client: &StaticKeypair,
        enclave_static_pub: &[u8; 32],
        prologue: &[u8],
    ) -> Result<(Self, Vec<u8>)> {
        let step = "client message 1";
        let mut hs = builder()?
            .local_private_key(&client.private[..])
            .and_then(|b| b.remote_public_key(enclave_static_pub))
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_initiator())
            .map_err(hs_err(step))?;
        let msg1 = write_hs(&mut hs, step)?;
        Ok((Self { hs }, msg1))
    }

    /// Consumes message 2 from the enclave; returns the transport and message 3 to send back.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Transport, Vec<u8>)> {
        read_hs(&mut self.hs, msg2, "client reading message 2")?;
        let step = "client message 3";
        let msg3 = write_hs(&mut self.hs, step)?;
        Ok((Transport::from_handshake(self.hs, step)?, msg3))
    }
}

/// Enclave (responder) side of the handshake, between message 2 and message 3.
pub struct EnclaveHandshake {
    hs: HandshakeState,
}

impl EnclaveHandshake {
    /// Consumes message 1 with the enclave's static key; returns the state and message 2.
    pub fn respond(
        static_key: &StaticKeypair,
        prologue: &[u8],
        msg1: &[u8],
    ) -> Result<(Self, Vec<u8>)> {
        let mut hs = builder()?
            .local_private_key(&static_key.private[..])
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.build_responder())
            .map_err(hs_err("enclave setup"))?;
        read_hs(&mut hs, msg1, "enclave reading message 1")?;
        let msg2 = write_hs(&mut hs, "enclave message 2")?;
        Ok((Self { hs }, msg2))
    }

    /// Consumes message 3 from the client; returns the transport.
    pub fn finish(mut self, msg3: &[u8]) -> Result<Transport> {
        let step = "enclave reading message 3";
        read_hs(&mut self.hs, msg3, step)?;
        Transport::from_handshake(self.hs, step)
    }
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

impl fmt::Debug for EnclaveHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnclaveHandshake").finish_non_exhaustive()
    }
}

fn write_hs(hs: &mut HandshakeState, step: &'static str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
    let n = hs.write_message(&[], &mut buf).map_err(hs_err(step))?;
    buf.truncate(n);
    Ok(buf)
}

fn read_hs(hs: &mut HandshakeState, msg: &[u8], step: &'static str) -> Result<()> {
    if msg.len() > MAX_NOISE_MESSAGE {
        return Err(Error::Handshake {
            step,
            reason: format!("message of {} bytes is over the Noise limit", msg.len()),
        });
    }
    let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
    let n = hs.read_message(msg, &mut payload).map_err(hs_err(step))?;
    if n != 0 {
        return Err(Error::Handshake {
            step,
            reason: format!("unexpected {n}-byte handshake payload (hetee sends none)"),
        });
    }
    Ok(())
}

/// An established channel: encrypts and decrypts messages of any size, in order, exactly once.
pub struct Transport {
    ts: TransportState,
    handshake_hash: [u8; 32],
    remote_static: Option<[u8; 32]>,
    poisoned: bool,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field(
                "handshake_hash",
                &crate::evidence::hex(&self.handshake_hash),
            )
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Transport {
    fn from_handshake(hs: HandshakeState, step: &'static str) -> Result<Self> {
        let mut handshake_hash = [0u8; 32];
        let h = hs.get_handshake_hash();
        if h.len() != 32 {
            return Err(Error::Handshake {
                step,
                reason: "handshake hash is not 32 bytes".into(),
            });
        }
        handshake_hash.copy_from_slice(h);
        let remote_static = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok());
        let ts = hs.into_transport_mode().map_err(hs_err(step))?;
        Ok(Self {
            ts,
            handshake_hash,
            remote_static,
            poisoned: false,
        })
    }

    /// The Noise handshake hash: identical on both sides, usable for channel binding.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// The peer's static public key: the enclave's key on the client side, the client's key on
    /// the enclave side.
    pub fn remote_static(&self) -> Option<&[u8; 32]> {
        self.remote_static.as_ref()
    }

    /// The length of the channel message that [`seal`](Self::seal) makes from `plaintext_len`
    /// bytes: one flag byte and one 16-byte tag per started chunk of [`CHUNK_PLAINTEXT`] bytes.
    pub fn sealed_len(plaintext_len: usize) -> usize {
        let chunks = plaintext_len.div_ceil(CHUNK_PLAINTEXT).max(1);
        plaintext_len + chunks * (1 + TAG_LEN)
    }

    /// Encrypts `plaintext` (any length) into one channel message.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if self.poisoned {
            return Err(Error::ChannelPoisoned);
        }
        let chunks = plaintext.len().div_ceil(CHUNK_PLAINTEXT).max(1);
        let mut out = vec![0u8; Self::sealed_len(plaintext.len())];
        // The flag and the largest chunk's data: a short message does not
        // allocate (and zeroize) a whole Noise message's worth.
        let mut piece = Zeroizing::new(vec![0u8; plaintext.len().min(CHUNK_PLAINTEXT) + 1]);
        let mut off = 0;
        for i in 0..chunks {
            let data =
                &plaintext[i * CHUNK_PLAINTEXT..((i + 1) * CHUNK_PLAINTEXT).min(plaintext.len())];
            piece[0] = if i + 1 == chunks {
                FLAG_FINAL
            } else {
                FLAG_MORE
            };
            piece[1..1 + data.len()].copy_from_slice(data);
            let len = data.len() + 1 + TAG_LEN;
            let res = self
                .ts
                .write_message(&piece[..1 + data.len()], &mut out[off..off + len]);
            match res {
                Ok(n) if n == len => off += n,
                other => {
                    self.poisoned = true;
                    let why = other.err().map_or("wrong length".into(), |e| e.to_string());
                    return Err(Error::Crypto(format!(
                        "Noise encryption failed ({why}); the channel is closed, open a new one"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Decrypts one channel message produced by the peer's [`seal`](Self::seal).
    ///
    /// Fails (and closes the channel) if the message was altered, truncated, extended,
    /// replayed or delivered out of order.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if self.poisoned {
            return Err(Error::ChannelPoisoned);
        }
        let res = self.open_inner(ciphertext);
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    fn open_inner(&mut self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if ct.is_empty() {
            return Err(Error::ChannelMessage("empty message".into()));
        }
        let pieces = ct.len().div_ceil(MAX_NOISE_MESSAGE);
        let mut out = Zeroizing::new(Vec::with_capacity(ct.len()));
        // Room for the largest piece's plaintext (shorter than the piece).
        let mut buf = Zeroizing::new(vec![0u8; ct.len().min(MAX_NOISE_MESSAGE)]);
        for (i, piece) in ct.chunks(MAX_NOISE_MESSAGE).enumerate() {
            if piece.len() < 1 + TAG_LEN {
                return Err(Error::ChannelMessage(format!(
                    "chunk {i} is {} bytes, shorter than flag and tag",
                    piece.len()
                )));
            }
            let n = self
                .ts
                .read_message(piece, &mut buf)
                .map_err(|e| Error::ChannelMessage(format!("chunk {i} does not decrypt ({e})")))?;
            let last = i + 1 == pieces;
            match (n.checked_sub(1).map(|_| buf[0]), last) {
                (Some(FLAG_FINAL), true) | (Some(FLAG_MORE), false) => {}
                (Some(FLAG_MORE), true) => {
                    return Err(Error::ChannelMessage(
                        "message ends before its final chunk (truncated)".into(),
                    ))
                }
                (Some(FLAG_FINAL), false) => {
                    return Err(Error::ChannelMessage(
                        "data after the final chunk (messages spliced)".into(),
                    ))
                }
                _ => return Err(Error::ChannelMessage("bad chunk flag".into())),
            }
            out.extend_from_slice(&buf[1..n]);
        }
        Ok(out)
    }

    /// Seals `plaintext` and writes it as one [`kind::CHANNEL`] frame.
    ///
    /// A message too large for `codec` is refused before encryption, so the channel stays usable.
    pub fn send<W: Write + ?Sized>(
        &mut self,
        codec: &FrameCodec,
        w: &mut W,
        plaintext: &[u8],
    ) -> Result<()> {
        let len = Self::sealed_len(plaintext.len());
        if len > codec.max_payload() as usize {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: codec.max_payload(),
            });
        }
        let ct = self.seal(plaintext)?;
        codec.write(w, kind::CHANNEL, &ct)
    }

    /// Reads one [`kind::CHANNEL`] frame and opens it.
    pub fn recv<R: Read + ?Sized>(
        &mut self,
        codec: &FrameCodec,
        r: &mut R,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if self.poisoned {
            return Err(Error::ChannelPoisoned);
        }
        let ct = codec.read_kind(r, kind::CHANNEL)?;
        self.open(&ct)
    }
}

/// Runs the client side of the handshake over `stream` in [`kind::HANDSHAKE`] frames.
pub fn client_connect<S: Read + Write + ?Sized>(
    stream: &mut S,
    codec: &FrameCodec,
    enclave_static_pub: &[u8; 32],
    prologue: &[u8],
) -> Result<Transport> {
    let (hs, msg1) = ClientHandshake::new(enclave_static_pub, prologue)?;
    codec.write(stream, kind::HANDSHAKE, &msg1)?;
    let msg2 = codec.read_kind(stream, kind::HANDSHAKE)?;
    let (t, msg3) = hs.finish(&msg2)?;
    codec.write(stream, kind::HANDSHAKE, &msg3)?;
    Ok(t)
}

/// Runs the enclave side of the handshake over `stream` in [`kind::HANDSHAKE`] frames.
pub fn enclave_accept<S: Read + Write + ?Sized>(
    stream: &mut S,
    codec: &FrameCodec,
    static_key: &StaticKeypair,
    prologue: &[u8],
) -> Result<Transport> {
    let msg1 = codec.read_kind(stream, kind::HANDSHAKE)?;
    let (hs, msg2) = EnclaveHandshake::respond(static_key, prologue, &msg1)?;
    codec.write(stream, kind::HANDSHAKE, &msg2)?;
    let msg3 = codec.read_kind(stream, kind::HANDSHAKE)?;
    hs.finish(&msg3)
}
