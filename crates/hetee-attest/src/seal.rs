//! Sealing: encrypting data so that only the same enclave build on the same platform can read it.
//!
//! For the simulated platform:
//! - key = HKDF-SHA256(ikm = platform secret (32 bytes), salt = measurement,
//!   info = `"hetee/seal/v1" ‖ label`);
//! - AEAD = ChaCha20-Poly1305 with a random 96-bit nonce;
//! - blob = `version (1 byte) ‖ nonce (12 bytes) ‖ ciphertext+tag`;
//! - associated data = `version ‖ measurement ‖ label`.
//!
//! A different measurement (changed enclave binary or config), label or platform secret derives a
//! different key, so the blob does not open.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::evidence::Measurement;

/// Version byte at the start of every sealed blob.
pub const SEAL_VERSION: u8 = 1;
/// HKDF info prefix (the label follows).
const INFO_PREFIX: &[u8] = b"hetee/seal/v1";
/// Nonce length.
const NONCE_LEN: usize = 12;
/// Authentication tag length.
const TAG_LEN: usize = 16;
/// Smallest possible blob: version, nonce and tag around an empty plaintext.
pub const MIN_BLOB_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

fn cipher(
    platform_secret: &[u8; 32],
    measurement: &Measurement,
    label: &str,
) -> Result<ChaCha20Poly1305> {
    let hk = Hkdf::<Sha256>::new(Some(measurement.as_bytes()), platform_secret);
    let mut info = Vec::with_capacity(INFO_PREFIX.len() + label.len());
    info.extend_from_slice(INFO_PREFIX);
    info.extend_from_slice(label.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit; the error path is unreachable.
    hk.expand(&info, &mut key[..])
        .map_err(|e| Error::Crypto(format!("HKDF expand: {e}")))?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key[..])))
}

fn associated_data(measurement: &Measurement, label: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + 32 + label.len());
    ad.push(SEAL_VERSION);
    ad.extend_from_slice(measurement.as_bytes());
    ad.extend_from_slice(label.as_bytes());
    ad
}

/// Seals `plaintext` for the enclave with this `measurement` on the platform holding
/// `platform_secret`, under a purpose `label` (e.g. `"model-secrets"`).
///
/// Fails only if the OS random number generator fails.
pub fn seal(
    platform_secret: &[u8; 32],
    measurement: &Measurement,
    label: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let aead = cipher(platform_secret, measurement, label)?;
    let mut nonce = Nonce::default();
    rand_fill(&mut nonce)?;
    let ad = associated_data(measurement, label);
    let ct = aead
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .map_err(|_| {
            Error::Crypto("ChaCha20-Poly1305 encryption failed (plaintext too large?)".into())
        })?;
    let mut blob = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    blob.push(SEAL_VERSION);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

fn rand_fill(nonce: &mut Nonce) -> Result<()> {
    // The fallible OS RNG call: `AeadCore::generate_nonce` would panic on RNG failure.
    OsRng.try_fill_bytes(nonce.as_mut_slice()).map_err(|e| {
        Error::Crypto(format!(
            "OS random number generator: {e}; check that /dev/urandom (getrandom) is available"
        ))
    })
}

/// Opens a blob made by [`seal`] with the same platform secret, measurement and label.
pub fn unseal(
    platform_secret: &[u8; 32],
    measurement: &Measurement,
    label: &str,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if blob.len() < MIN_BLOB_LEN {
        return Err(Error::Unseal(format!(
            "blob is {} bytes, shorter than the minimum {MIN_BLOB_LEN} (truncated)",
            blob.len()
        )));
    }
    if blob[0] != SEAL_VERSION {
        return Err(Error::Unseal(format!(
            "unknown sealed-blob version {} (this build reads version {SEAL_VERSION})",
            blob[0]
        )));
    }
    let nonce = Nonce::from_slice(&blob[1..1 + NONCE_LEN]);
    let aead = cipher(platform_secret, measurement, label)?;
    let ad = associated_data(measurement, label);
    aead.decrypt(
        nonce,
        Payload {
            msg: &blob[1 + NONCE_LEN..],
            aad: &ad,
        },
    )
    .map(Zeroizing::new)
    .map_err(|_| Error::Unseal("authentication failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::measure;

    const SECRET: [u8; 32] = [0x5a; 32];

    #[test]
    fn round_trip_and_fresh_nonces() {
        let m = measure(b"enclave", b"cfg");
        let a = seal(&SECRET, &m, "model-secrets", b"weights").unwrap();
        let b = seal(&SECRET, &m, "model-secrets", b"weights").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert_eq!(a.len(), MIN_BLOB_LEN + 7);
        assert_eq!(
            &unseal(&SECRET, &m, "model-secrets", &a).unwrap()[..],
            b"weights"
        );
        let e = seal(&SECRET, &m, "x", b"").unwrap();
        assert!(unseal(&SECRET, &m, "x", &e).unwrap().is_empty());
    }

    #[test]
    fn other_enclave_label_or_secret_cannot_unseal() {
        let m = measure(b"enclave", b"cfg");
        let blob = seal(&SECRET, &m, "model-secrets", b"weights").unwrap();
        let changed = measure(b"enclave-patched", b"cfg");
        assert!(matches!(
            unseal(&SECRET, &changed, "model-secrets", &blob),
            Err(Error::Unseal(_))
        ));
        assert!(unseal(&SECRET, &m, "query-key", &blob).is_err());
        assert!(unseal(&[0; 32], &m, "model-secrets", &blob).is_err());
    }

    #[test]
    fn tampered_and_truncated_blobs_fail_cleanly() {
        let m = measure(b"enclave", b"cfg");
        let blob = seal(&SECRET, &m, "l", b"some plaintext").unwrap();
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            assert!(unseal(&SECRET, &m, "l", &t).is_err(), "flip at {i}");
        }
        for cut in 0..blob.len() {
            let err = unseal(&SECRET, &m, "l", &blob[..cut]).unwrap_err();
            assert!(matches!(err, Error::Unseal(_)), "cut {cut}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(unseal(&SECRET, &m, "l", &longer).is_err());
    }
}
