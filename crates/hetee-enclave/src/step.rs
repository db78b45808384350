//! One enclave step of a query: decrypt the host's stage result, finish the
//! stage exactly in the clear, and re-encrypt for the next stage (or release
//! the logits).

use fhe::bfv::Ciphertext;
use hetee_he::codec::{ciphertext_from_bytes, seeded_ciphertext_to_bytes};
use hetee_he::secret::SecretOps;
use hetee_model::quant::StageOutput;
use hetee_model::reference::finish_stage;
use rayon::prelude::*;

use zeroize::Zeroizing;

use crate::freivalds::StageCheck;
use crate::keys::KeySet;
use crate::schedule::Schedule;
use crate::EnclaveError;

/// What a stage step produced.
pub enum StepOutput {
    /// Fresh ciphertexts for stage `k + 1`, and their plaintext (per image),
    /// which the enclave keeps to check the next stage.
    Next(Vec<Vec<u8>>, Zeroizing<Vec<Vec<i64>>>),
    /// Dequantized logits, `batch x classes`.
    Logits(Zeroizing<Vec<f32>>),
}

/// The fixed message of a failed integrity check (no detail leaks).
pub const INTEGRITY_FAILURE: &str =
    "integrity: the host's stage result failed the check; session closed";

/// Decrypts ciphertexts of `polys` polynomials to centred coefficients.
pub fn decrypt_all(
    keys: &KeySet,
    cts: &[Vec<u8>],
    polys: usize,
) -> Result<Vec<Vec<i64>>, EnclaveError> {
    cts.par_iter()
        .map(|b| {
            let ct = ciphertext_from_bytes(b, &keys.par, polys)?;
            decrypt(&keys.ops, &ct, keys.par.plaintext())
        })
        .collect()
}

/// Decrypt, check against the stage's input `x` (per image) with `check`,
/// finish stage `k` in the clear, and re-encrypt or release.
pub fn step(
    keys: &KeySet,
    schedule: &Schedule,
    k: usize,
    cts: &[Vec<u8>],
    x: &[Vec<i64>],
    check: Option<&StageCheck>,
) -> Result<StepOutput, EnclaveError> {
    let st = schedule
        .stages
        .get(k)
        .ok_or_else(|| EnclaveError::Protocol(format!("no stage {k}")))?;
    if cts.len() != st.packing.output_count() {
        return Err(EnclaveError::Protocol(format!(
            "stage {k} needs {} ciphertexts, got {}",
            st.packing.output_count(),
            cts.len()
        )));
    }
    let polys = Zeroizing::new(decrypt_all(keys, cts, 3)?);
    let accs = Zeroizing::new(schedule.unpack_stage_output(k, &polys)?);
    if let Some(c) = check {
        let mut ok = x.len() == accs.len();
        for (xi, yi) in x.iter().zip(accs.iter()) {
            ok &= c.holds(xi, yi);
        }
        if !ok {
            return Err(EnclaveError::Integrity(INTEGRITY_FAILURE.into()));
        }
    }
    let ys: Zeroizing<Vec<Vec<i64>>> = Zeroizing::new(
        accs.iter()
            .map(|acc| finish_stage(&st.tail, acc.clone()))
            .collect(),
    );
    match st.tail.output {
        StageOutput::Logits => Ok(StepOutput::Logits(Zeroizing::new(
            ys.iter().flat_map(|y| st.tail.dequantize(y)).collect(),
        ))),
        StageOutput::Requant(_) => {
            let polys = Zeroizing::new(schedule.pack_stage_input(k + 1, &ys)?);
            Ok(StepOutput::Next(encrypt_all(keys, &polys)?, ys))
        }
    }
}

/// Encrypts polynomials under the secret key (fresh, symmetric, at the top
/// level), in the seeded form: `c0` and the seed of `c1`, half the bytes.
pub fn encrypt_all(keys: &KeySet, polys: &[Vec<i64>]) -> Result<Vec<Vec<u8>>, EnclaveError> {
    polys
        .par_iter()
        .map(|p| {
            let (ct, seed) = keys.ops.encrypt_seeded(p, &mut rand::rng())?;
            Ok(seeded_ciphertext_to_bytes(&ct, &seed)?)
        })
        .collect()
}

/// Decrypts to centred coefficients in `(-t/2, t/2]`.
pub fn decrypt(ops: &SecretOps, ct: &Ciphertext, t: u64) -> Result<Vec<i64>, EnclaveError> {
    let v = ops.decrypt(ct)?;
    Ok(v.iter().map(|&x| centre(x, t)).collect())
}

/// Branch-free centring of a residue `x < t`: `x - t` if `x > t/2`, else `x`.
fn centre(x: u64, t: u64) -> i64 {
    let above = ((t / 2) as i64).wrapping_sub(x as i64) >> 63; // all ones if x > t/2
    (x as i64).wrapping_sub(t as i64 & above)
}

#[cfg(test)]
mod tests {
    #[test]
    fn centre_matches_the_signed_representative() {
        for t in [3u64, 65537, 16760833] {
            for x in [0, 1, t / 2, t / 2 + 1, t - 1] {
                let want = if x > t / 2 {
                    x as i64 - t as i64
                } else {
                    x as i64
                };
                assert_eq!(super::centre(x, t), want, "x={x} t={t}");
            }
        }
    }
}
