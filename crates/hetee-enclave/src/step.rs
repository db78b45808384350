//! One enclave step of a query: decrypt the host's stage result, finish the
//! stage exactly in the clear, and re-encrypt for the next stage (or release
//! the logits).

use hetee_model::graph::TensorRef;
use hetee_model::graph::{live_after, Values};
use hetee_model::quant::dequantize_output;
use hetee_model::reference::{after_stage, run_joins};
use rayon::prelude::*;

use zeroize::Zeroizing;

use crate::freivalds::StageCheck;
use crate::keys::KeySet;
use crate::schedule::Schedule;
use crate::EnclaveError;

/// What a stage step produced.
pub enum StepOutput {
    /// Fresh ciphertexts for stage `k + 1` (whose plaintext stays in the
    /// session's values, to check that stage).
    Next(Vec<Vec<u8>>),
    /// Dequantized logits, `batch x classes`.
    Logits(Zeroizing<Vec<f32>>),
}

/// The fixed message of a failed integrity check (no detail leaks).
pub const INTEGRITY_FAILURE: &str =
    "integrity: the host's stage result failed the check; session closed";

/// Decrypts ciphertexts of `polys` polynomials (the codec's bytes) to
/// centred coefficients in `(-t/2, t/2]`.
pub fn decrypt_all(
    keys: &KeySet,
    cts: &[Vec<u8>],
    polys: usize,
) -> Result<Vec<Vec<i64>>, EnclaveError> {
    cts.par_iter()
        .map(|b| decrypt_one(keys, b, polys))
        .collect()
}

/// Decrypts one ciphertext of `polys` polynomials (the codec's bytes) to
/// centred coefficients.
pub fn decrypt_one(keys: &KeySet, ct: &[u8], polys: usize) -> Result<Vec<i64>, EnclaveError> {
    let t = keys.par.plaintext();
    let v = keys.ops.decrypt_bytes(ct, polys)?;
    Ok(v.iter().map(|&x| centre(x, t)).collect())
}

/// Decrypt, check against the stage's input (held in `values`, one store
/// per image) with `check`, finish stage `k` and the joins after it in the
/// clear, free what nothing reads any more, and re-encrypt the next
/// stage's input or release the result.
pub fn step(
    keys: &KeySet,
    schedule: &Schedule,
    k: usize,
    cts: &[Vec<u8>],
    values: &mut [Values],
    check: Option<&StageCheck>,
) -> Result<StepOutput, EnclaveError> {
    let polys = decrypt_stage(keys, schedule, k, cts)?;
    step_decrypted(keys, schedule, k, &polys, values, check)
}

/// The decrypted result of stage `k` (its polynomials' centred
/// coefficients), after checking that `cts` holds as many ciphertexts as
/// the stage has outputs.
pub fn decrypt_stage(
    keys: &KeySet,
    schedule: &Schedule,
    k: usize,
    cts: &[Vec<u8>],
) -> Result<Zeroizing<Vec<Vec<i64>>>, EnclaveError> {
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
    match st.packing.strided_output_positions() {
        // A dense layer's outputs: only their coefficients are decrypted
        // (the rest of each polynomial, never read, stays zero).
        Some(positions) => {
            let n = schedule.he.degree;
            let t = keys.par.plaintext();
            cts.par_iter()
                .map(|b| {
                    let v = keys.ops.decrypt_bytes_at(b, 3, &positions)?;
                    let mut poly = vec![0i64; n];
                    for (&x, &y) in positions.iter().zip(v.iter()) {
                        if let Some(c) = poly.get_mut(x) {
                            *c = centre(y, t);
                        }
                    }
                    Ok(poly)
                })
                .collect::<Result<Vec<_>, EnclaveError>>()
                .map(Zeroizing::new)
        }
        None => Ok(Zeroizing::new(decrypt_all(keys, cts, 3)?)),
    }
}

/// [`step`] from the stage's result decrypted already ([`decrypt_stage`]).
pub fn step_decrypted(
    keys: &KeySet,
    schedule: &Schedule,
    k: usize,
    polys: &[Vec<i64>],
    values: &mut [Values],
    check: Option<&StageCheck>,
) -> Result<StepOutput, EnclaveError> {
    let st = schedule
        .stages
        .get(k)
        .ok_or_else(|| EnclaveError::Protocol(format!("no stage {k}")))?;
    let accs = Zeroizing::new(schedule.unpack_stage_output(k, polys)?);
    if let Some(c) = check {
        let mut ok = values.len() == accs.len();
        for (v, yi) in values.iter().zip(accs.iter()) {
            ok &= v.get(st.tail.reads).is_some_and(|xi| c.holds(xi, yi));
        }
        if !ok {
            return Err(EnclaveError::Integrity(INTEGRITY_FAILURE.into()));
        }
    }
    if values.len() != accs.len() {
        return Err(EnclaveError::Protocol("one value store per image".into()));
    }
    values
        .par_iter_mut()
        .zip(accs.par_iter())
        .try_for_each(|(v, acc)| after_stage(k, &st.tail, &schedule.joins, acc.clone(), v))
        .map_err(|e| EnclaveError::Schedule(e.to_string()))?;
    let out = schedule.output_ref();
    let live = live_after(Some(k), &schedule.stage_reads(), &schedule.joins, out);
    values.iter_mut().for_each(|v| v.retain(&live));
    if k + 1 == schedule.stages.len() {
        let mut logits = Zeroizing::new(Vec::new());
        for v in values.iter_mut() {
            let y = Zeroizing::new(
                v.take(out)
                    .ok_or_else(|| EnclaveError::Schedule("the output was not computed".into()))?,
            );
            logits.extend(dequantize_output(
                schedule.stages.last().map(|s| &s.tail),
                &schedule.joins,
                schedule.softmax,
                &y,
            ));
        }
        return Ok(StepOutput::Logits(logits));
    }
    Ok(StepOutput::Next(encrypt_stage_input(
        keys,
        schedule,
        k + 1,
        values,
    )?))
}

/// The value stores of a query's images from their quantized inputs, with
/// the joins on the input (ops before the first linear layer) already run
/// and what nothing reads later freed.
pub fn start_values(schedule: &Schedule, xs: &[Vec<i64>]) -> Result<Vec<Values>, EnclaveError> {
    make_values(schedule, xs, true)
}

/// [`start_values`] on this thread alone (for a thread outside the
/// global pool, which must not wait for it).
pub fn start_values_here(
    schedule: &Schedule,
    xs: &[Vec<i64>],
) -> Result<Vec<Values>, EnclaveError> {
    make_values(schedule, xs, false)
}

fn make_values(
    schedule: &Schedule,
    xs: &[Vec<i64>],
    parallel: bool,
) -> Result<Vec<Values>, EnclaveError> {
    let (n, j) = (schedule.stages.len(), schedule.joins.len());
    let mut values: Vec<Values> = xs.iter().map(|x| Values::new(x.clone(), n, j)).collect();
    let joins = |v: &mut Values| run_joins(None, &schedule.joins, v);
    let ran = if parallel {
        values.par_iter_mut().try_for_each(joins)
    } else {
        values.iter_mut().try_for_each(joins)
    };
    ran.map_err(|e| EnclaveError::Schedule(e.to_string()))?;
    let live = live_after(
        None,
        &schedule.stage_reads(),
        &schedule.joins,
        schedule.output_ref(),
    );
    values.iter_mut().for_each(|v| v.retain(&live));
    Ok(values)
}

/// Packs stage `k`'s input from the values the enclave holds and encrypts
/// it for the host.
pub fn encrypt_stage_input(
    keys: &KeySet,
    schedule: &Schedule,
    k: usize,
    values: &[Values],
) -> Result<Vec<Vec<u8>>, EnclaveError> {
    let st = schedule
        .stages
        .get(k)
        .ok_or_else(|| EnclaveError::Protocol(format!("no stage {k}")))?;
    let reads: TensorRef = st.tail.reads;
    let xs: Zeroizing<Vec<Vec<i64>>> = Zeroizing::new(
        values
            .iter()
            .map(|v| v.get(reads).map(<[i64]>::to_vec))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| EnclaveError::Schedule(format!("stage {k} input is not held")))?,
    );
    let mut polys = Zeroizing::new(schedule.pack_stage_input(k, &xs)?);
    // Past its tile's length a polynomial is zero by the layout (a public
    // length): its encryption there is the zero's row, only packed.
    let used = st.packing.input_len();
    polys.iter_mut().for_each(|p| p.truncate(used));
    encrypt_all(keys, &polys)
}

/// Encrypts polynomials under the secret key (fresh, symmetric, at the top
/// level), in the seeded form: `c0` and the seed of `c1`, half the bytes.
/// Each takes its own encryption of zero from the key set's reserve
/// ([`crate::reserve`]); those the reserve lacks (the costly half, about
/// 130 µs each) are made on the enclave's threads. The message's half
/// (about 18 µs, straight to the wire form) runs on this thread: a
/// fork-join would cost more in waking and yielding threads than it saves
/// (it took 0.55 ms instead of 0.13 for MNIST's three stage-2 inputs, the
/// idle refill thread getting the yielded cores).
pub fn encrypt_all(keys: &KeySet, polys: &[Vec<i64>]) -> Result<Vec<Vec<u8>>, EnclaveError> {
    let mut zeros = keys.reserve.take(polys.len());
    let made = (zeros.len()..polys.len())
        .into_par_iter()
        .map(|_| keys.reserve.make(&keys.ops))
        .collect::<Result<Vec<_>, _>>()?;
    zeros.extend(made);
    polys
        .iter()
        .zip(zeros)
        .map(|(p, zero)| Ok(keys.ops.encrypt_to_bytes(p, zero)?))
        .collect()
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
