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

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, PublicKey};
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

/// The message-free half of [`encrypt_input`]: ciphertext `i` encrypts
/// zero with the randomness `seed` gives it, so that `masks[i] + polys[i]`
/// is `encrypt_input`'s ciphertext `i` (`fhe` draws the same samples in the
/// same order whatever the message, and adds the message to `c0` last).
/// On the calling thread alone, as [`made_with_masks`]: the enclave runs
/// each input check on a thread of its own, beside the host's stage 0,
/// and that thread must never wait for a thread pool whose threads may be
/// waiting for the check.
pub fn input_masks(
    pk: &PublicKey,
    par: &Arc<BfvParameters>,
    seed: &[u8; 32],
    count: usize,
) -> Result<Vec<Ciphertext>, ProtoError> {
    let zero = Plaintext::zero(Encoding::poly(), par).map_err(hetee_he::HeError::from)?;
    (0..count)
        .map(|i| {
            Ok(pk
                .try_encrypt(&zero, &mut input_rng(seed, i))
                .map_err(hetee_he::HeError::from)?)
        })
        .collect()
}

/// Whether `input` is exactly `masks + polys` ([`input_masks`] under the
/// same parameters `par`), i.e. the encryption of `polys` under the seed.
pub fn made_with_masks(
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
    masks: Vec<Ciphertext>,
    input: &[Vec<u8>],
) -> Result<bool, ProtoError> {
    if polys.len() != input.len() || masks.len() != input.len() {
        return Ok(false);
    }
    polys
        .iter()
        .zip(masks)
        .zip(input)
        .map(|((p, mask), got)| {
            let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), par)
                .map_err(hetee_he::HeError::from)?;
            // Same parameters and level 0 on both sides by construction
            // (fhe's `+=` asserts them).
            let level = par
                .context_at_level(pt.level())
                .map_err(hetee_he::HeError::from)?;
            if mask.len() != 2 || mask[0].ctx().moduli() != level.moduli() {
                return Ok(false);
            }
            let ct = mask + &pt;
            Ok(ciphertext_to_bytes(&ct) == *got)
        })
        .try_fold(true, |all, same: Result<bool, ProtoError>| Ok(all & same?))
}

/// Whether `input` is exactly the encryption of `polys` under `seed`.
pub fn made_with(
    pk: &PublicKey,
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
    seed: &[u8; 32],
    input: &[Vec<u8>],
) -> Result<bool, ProtoError> {
    made_with_masks(par, polys, input_masks(pk, par, seed, input.len())?, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe::bfv::SecretKey;

    #[test]
    fn masks_plus_messages_are_the_data_providers_ciphertexts() {
        let par = hetee_he::HeConfig::for_accumulator_bound(1 << 20)
            .unwrap()
            .build()
            .unwrap();
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let sk = SecretKey::random(&par, &mut rng);
        let pk = PublicKey::new(&sk, &mut rng);
        let t = par.plaintext() as i64;
        let polys: Vec<Vec<i64>> = (0..3)
            .map(|k| {
                (0..par.degree() as i64)
                    .map(|i| (i * 7919 + k * 104_729) % t - t / 2)
                    .collect()
            })
            .collect();
        let seed = [9; 32];
        let input = encrypt_input(&pk, &par, &polys, &seed).unwrap();
        assert!(made_with(&pk, &par, &polys, &seed, &input).unwrap());
        // Another seed, another message, a swapped order, a missing one.
        assert!(!made_with(&pk, &par, &polys, &[8; 32], &input).unwrap());
        let mut other = polys.clone();
        other[1][5] += 1;
        assert!(!made_with(&pk, &par, &other, &seed, &input).unwrap());
        let swapped = vec![input[1].clone(), input[0].clone(), input[2].clone()];
        assert!(!made_with(&pk, &par, &polys, &seed, &swapped).unwrap());
        assert!(!made_with(&pk, &par, &polys[..2], &seed, &input).unwrap());
    }
}
