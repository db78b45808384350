//! One message to a known static key: a Noise `N` handshake message (an
//! ephemeral X25519 key and the payload under ChaCha20-Poly1305, bound to a
//! prologue). Enclaves use it to hand a secret to a peer enclave whose
//! attested channel key they checked; the sender proves itself with its own
//! evidence over the message.

use snow::Builder;
use zeroize::Zeroizing;

use crate::channel::{StaticKeypair, MAX_NOISE_MESSAGE};
use crate::error::{Error, Result};

/// The Noise protocol of a one-way message.
pub const ONE_WAY_PARAMS: &str = "Noise_N_25519_ChaChaPoly_SHA256";

fn builder<'a>() -> Result<Builder<'a>> {
    let params = ONE_WAY_PARAMS
        .parse()
        .map_err(|e| Error::Crypto(format!("Noise parameters {ONE_WAY_PARAMS}: {e}")))?;
    Ok(Builder::new(params))
}

fn crypto(step: &'static str) -> impl Fn(snow::Error) -> Error {
    move |e| Error::Handshake {
        step,
        reason: e.to_string(),
    }
}

/// Encrypts `payload` (a few KiB at most) to `recipient`, bound to `prologue`.
pub fn seal_to(recipient: &[u8; 32], prologue: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() + 64 > MAX_NOISE_MESSAGE {
        return Err(Error::Crypto("one-way payload too large".into()));
    }
    let mut hs = builder()?
        .remote_public_key(recipient)
        .map_err(crypto("one-way: recipient key"))?
        .prologue(prologue)
        .map_err(crypto("one-way: prologue"))?
        .build_initiator()
        .map_err(crypto("one-way: initiator"))?;
    let mut out = vec![0u8; MAX_NOISE_MESSAGE];
    let n = hs
        .write_message(payload, &mut out)
        .map_err(crypto("one-way: write"))?;
    out.truncate(n);
    Ok(out)
}

/// Opens a message [`seal_to`] made for `me` with the same `prologue`.
pub fn open_with(me: &StaticKeypair, prologue: &[u8], msg: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let private = me.private_bytes();
    let mut hs = builder()?
        .local_private_key(&private[..])
        .map_err(crypto("one-way: own key"))?
        .prologue(prologue)
        .map_err(crypto("one-way: prologue"))?
        .build_responder()
        .map_err(crypto("one-way: responder"))?;
    let mut out = Zeroizing::new(vec![0u8; MAX_NOISE_MESSAGE]);
    let n = hs
        .read_message(msg, &mut out)
        .map_err(crypto("one-way: read"))?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_with_the_same_prologue_opens() {
        let b = StaticKeypair::generate().unwrap();
        let other = StaticKeypair::generate().unwrap();
        let msg = seal_to(b.public(), b"p", b"secret").unwrap();
        assert_eq!(&open_with(&b, b"p", &msg).unwrap()[..], b"secret");
        assert!(open_with(&other, b"p", &msg).is_err());
        assert!(open_with(&b, b"q", &msg).is_err());
        let mut bad = msg.clone();
        bad[40] ^= 1;
        assert!(open_with(&b, b"p", &bad).is_err());
    }
}
