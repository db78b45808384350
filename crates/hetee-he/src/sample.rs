//! The two samplings of an encryption: the public uniform `c1` expanded
//! from a seed, and the secret error.
//!
//! Both were `fhe-math`'s (`Poly::random_from_seed`, `Poly::small`), and
//! they were most of the cost of an encryption of zero: `rand`'s generic
//! `Uniform` draws one 64-bit word per residue through an iterator that
//! is collected and then copied, and `fhe-util`'s binomial sampler asks
//! its generator for one word at a time. Here both draw their bytes in
//! bulk from the same generators (ChaCha8 for the public expansion, the
//! caller's CSPRNG for the error) and write straight into the rows.
//!
//! - [`uniform_ntt_rows`]: residue `i` modulo `q` is the next 64-bit word
//!   of ChaCha8 (keyed by the seed, one stream per prime) masked to the
//!   bit length of `q`, kept if below `q` (rejection sampling: exactly
//!   uniform; the parameters' primes lie within a fraction 2^-34 below a
//!   power of two, so a word is rejected about once in 10^10). The seed
//!   and the values are public (`c1` travels as its seed), so the
//!   rejection's branch reveals nothing. The host and the enclave call
//!   the same function.
//! - [`centred_binomial`]: the centred binomial distribution of variance
//!   `v`, `Σ 2v bits − Σ 2v bits`, from `⌈4v/8⌉` bytes per coefficient,
//!   as `fhe-util`'s `sample_vec_cbd` defines it; population counts and
//!   masks only, no branch on a secret bit. The bytes are zeroized.

use std::sync::Arc;

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use rand::RngCore;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zeroize::Zeroizing;

use crate::HeError;

/// Words drawn from the generator at a time.
const WORDS: usize = 512;

/// The rows (prime after prime, `n` residues each) of the uniform
/// polynomial in NTT form that `seed` names, over the primes `moduli`.
pub fn uniform_ntt_rows(moduli: &[u64], n: usize, seed: &[u8; 32]) -> Vec<u64> {
    let mut out = vec![0u64; moduli.len() * n];
    for (i, (row, &q)) in out.chunks_exact_mut(n).zip(moduli).enumerate() {
        let mut rng = ChaCha8Rng::from_seed(*seed);
        rng.set_stream(i as u64);
        uniform_row(&mut rng, q, row);
    }
    out
}

/// The uniform polynomial in NTT form that `seed` names over `ctx`: the
/// `c1` of a seeded encryption ([`uniform_ntt_rows`]).
pub fn uniform_ntt(ctx: &Arc<Context>, seed: &[u8; 32]) -> Result<Poly, HeError> {
    let rows = uniform_ntt_rows(ctx.moduli(), crate::rns::degree(ctx), seed);
    Ok(Poly::try_convert_from(
        rows,
        ctx,
        false,
        Representation::Ntt,
    )?)
}

/// Fills `row` with residues uniform modulo `q` drawn from `rng`.
fn uniform_row(rng: &mut ChaCha8Rng, q: u64, row: &mut [u64]) {
    let mask = u64::MAX >> q.leading_zeros();
    let mut bytes = [0u8; WORDS * 8];
    let mut filled = 0;
    while filled < row.len() {
        rng.fill_bytes(&mut bytes);
        for word in bytes.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            let v = u64::from_le_bytes(w) & mask;
            // Public values: the branch reveals nothing.
            if v < q {
                row[filled] = v;
                filled += 1;
                if filled == row.len() {
                    return;
                }
            }
        }
    }
}

/// `n` coefficients of the centred binomial distribution of variance
/// `variance` (1 to 16), from `rng`.
pub fn centred_binomial<R: RngCore>(
    n: usize,
    variance: usize,
    rng: &mut R,
) -> Result<Zeroizing<Vec<i64>>, HeError> {
    if !(1..=16).contains(&variance) {
        return Err(HeError::Params(format!(
            "an error variance of {variance}; expected 1 to 16"
        )));
    }
    let half = 2 * variance;
    let per = (2 * half).div_ceil(8);
    let mask = (1u64 << half) - 1;
    // Seven bytes past the last coefficient's, so that each is one
    // unaligned 8-byte read (the bits past its own masked off).
    let mut bytes = Zeroizing::new(vec![0u8; n * per + 7]);
    rng.fill_bytes(&mut bytes[..n * per]);
    let out = (0..n)
        .map(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * per..i * per + 8]);
            let x = u64::from_le_bytes(w);
            (x & mask).count_ones() as i64 - ((x >> half) & mask).count_ones() as i64
        })
        .collect();
    Ok(Zeroizing::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    const PRIMES: [u64; 2] = [36028797018652673, 18014398509309953];

    #[test]
    fn the_expansion_is_a_function_of_the_seed_below_each_prime() {
        let seed: [u8; 32] = rand::rng().random();
        let a = uniform_ntt_rows(&PRIMES, 4096, &seed);
        assert_eq!(a, uniform_ntt_rows(&PRIMES, 4096, &seed));
        let mut other = seed;
        other[31] ^= 1;
        let b = uniform_ntt_rows(&PRIMES, 4096, &other);
        assert_eq!(a.iter().zip(&b).filter(|(x, y)| x == y).count(), 0);
        for (row, &q) in a.chunks_exact(4096).zip(&PRIMES) {
            assert!(row.iter().all(|&v| v < q));
        }
        // The two primes' rows come from different streams.
        assert_ne!(a[..16], a[4096..4096 + 16]);
    }

    /// A prime far below a power of two rejects about half the words and
    /// still fills its row, uniformly: each of 16 equal bins of `[0, q)`
    /// holds 1/16 of 65536 draws within 5 standard deviations.
    #[test]
    fn rejection_keeps_the_residues_uniform() {
        let q = (1u64 << 40) + (1 << 39) + 1;
        let seed: [u8; 32] = rand::rng().random();
        let rows = uniform_ntt_rows(&[q; 16], 4096, &seed);
        let mut bins = [0usize; 16];
        for &v in &rows {
            assert!(v < q);
            bins[(v as u128 * 16 / q as u128) as usize] += 1;
        }
        let (mean, sd) = (4096.0, (4096.0f64 * 15.0 / 16.0).sqrt());
        for b in bins {
            assert!((b as f64 - mean).abs() < 5.0 * sd, "{bins:?}");
        }
    }

    /// The same bytes give fhe-util's values: its sampler reads 64-bit
    /// words into a 128-bit pool, 4v bits a coefficient, low half added.
    #[test]
    fn the_binomial_is_fhe_utils_on_the_same_bits() {
        struct Replay(Vec<u8>, usize);
        impl RngCore for Replay {
            fn next_u32(&mut self) -> u32 {
                self.next_u64() as u32
            }
            fn next_u64(&mut self) -> u64 {
                let mut w = [0u8; 8];
                self.fill_bytes(&mut w);
                u64::from_le_bytes(w)
            }
            fn fill_bytes(&mut self, dst: &mut [u8]) {
                dst.copy_from_slice(&self.0[self.1..self.1 + dst.len()]);
                self.1 += dst.len();
            }
        }
        impl rand::CryptoRng for Replay {}
        // Variance 4 and 16: 16 and 64 bits a coefficient, whole words
        // and halves of them, where both read the same bits in the same order.
        for variance in [4usize, 16] {
            let bytes: Vec<u8> = (0..4096 * 8).map(|_| rand::rng().random()).collect();
            let ours = centred_binomial(1024, variance, &mut Replay(bytes.clone(), 0)).unwrap();
            let theirs = fhe_util::sample_vec_cbd(1024, variance, &mut Replay(bytes, 0)).unwrap();
            assert_eq!(*ours, theirs, "variance {variance}");
        }
    }

    #[test]
    fn the_binomial_has_its_range_mean_and_variance() {
        let e = centred_binomial(1 << 16, 10, &mut rand::rng()).unwrap();
        assert!(e.iter().all(|v| v.abs() <= 20));
        let n = e.len() as f64;
        let mean = e.iter().sum::<i64>() as f64 / n;
        let var = e.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard errors: sqrt(10 / n) for the mean, about 0.06 for the variance.
        assert!(mean.abs() < 0.07, "mean {mean}");
        assert!((var - 10.0).abs() < 0.3, "variance {var}");
        assert!(centred_binomial(8, 0, &mut rand::rng()).is_err());
        assert!(centred_binomial(8, 17, &mut rand::rng()).is_err());
    }
}
