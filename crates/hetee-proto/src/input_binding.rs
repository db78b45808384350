//! Binding a query's input ciphertexts to the data provider who made them.
//!
//! A data provider encrypts its input under the enclave's public key with
//! randomness derived from a fresh secret seed, and sends the seed inside
//! its channel. The enclave decrypts the input (it needs it in the clear for
//! the stage-0 check anyway), encrypts it again with the same seed and
//! accepts it only if the bytes are identical. Anyone else's ciphertexts
//! (another data provider's input, re-randomized copies, the enclave's own
//! activations or thin-query inputs) fail: producing them requires the
//! seed they were made with. Without this, the host could open its own
//! session, replay a victim's input and receive the victim's result.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{FheEncoder, FheEncrypter};
use hetee_he::codec::ciphertext_to_bytes;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::ProtoError;

/// The randomness of input ciphertext `i` under `seed`.
fn input_rng(seed: &[u8; 32], i: usize) -> ChaCha20Rng {
    let mut h = Sha256::new();
    h.update(b"hetee/input-randomness/v1");
    h.update(seed);
    h.update((i as u64).to_le_bytes());
    ChaCha20Rng::from_seed(h.finalize().into())
}

/// Encrypts input polynomials under `pk`, ciphertext `i` with randomness
/// derived from `seed` and `i`; serialized ciphertexts.
pub fn encrypt_input(
    pk: &PublicKey,
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
    seed: &[u8; 32],
) -> Result<Vec<Vec<u8>>, ProtoError> {
    polys
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), par)
                .map_err(hetee_he::HeError::from)?;
            let ct = pk
                .try_encrypt(&pt, &mut input_rng(seed, i))
                .map_err(hetee_he::HeError::from)?;
            Ok(ciphertext_to_bytes(&ct))
        })
        .collect()
}

/// Whether `input` is exactly the encryption of `polys` under `seed`.
pub fn made_with(
    pk: &PublicKey,
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
    seed: &[u8; 32],
    input: &[Vec<u8>],
) -> Result<bool, ProtoError> {
    Ok(encrypt_input(pk, par, polys, seed)? == input)
}
