//! Fast RNS basis changes for the host's evaluator: the extension of a fresh
//! ciphertext to the multiplication basis, and the `t/q` rescale of an
//! accumulated product down to the output basis.
//!
//! Both follow Halevi, Polyakov and Shoup (HPS, eprint 2018/117): a residue
//! vector `r` modulo `M = m_0 ... m_{k-1}` is written as
//! `x = sum_i y_i (M / m_i) - v M` with `y_i = r_i (M / m_i)^-1 mod m_i`,
//! where the overflow `v = round(sum_i y_i / m_i)` is computed in floating
//! point. A scaled `round(a x)` splits each `a M / m_i` into an integer part,
//! reduced modulo the output primes, and a fraction, summed in floating point.
//!
//! fhe-math's general scaler gets the same results with 256-bit fixed-point
//! arithmetic, column by column; these are about five times faster. The price
//! is that a result may be off by one where the exact value lies within about
//! `2^-13` of a rounding boundary (the rescale), or where a fresh coefficient
//! lies within about `2^-40 q` of `+-q/2` (the extension lifts it to the other
//! representative). Both only add noise of size 1 to a ciphertext whose noise
//! budget is tens of bits; the tests bound the difference to fhe-math's
//! exact scaler, and every end-to-end test decrypts exactly.
//!
//! Host data only: ciphertexts are public, so these run in variable time.

use std::sync::Arc;

use fhe_math::rq::{Context, Poly, Representation};
use fhe_math::zq::Modulus;
use ndarray::ArrayView2;
use num_bigint::BigUint;

use crate::HeError;

mod extend;
mod rescale;
#[cfg(test)]
mod tests;

pub use extend::BasisExtender;
pub use rescale::Rescaler;

/// Most primes a basis may have here (the multiplication basis of N = 8192
/// has nine).
const MAX_PRIMES: usize = 16;

/// `2^64` as a float.
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// `a * b mod m` with `b_shoup = floor(b 2^64 / m)`, in `[0, m)`.
#[inline(always)]
fn mul_shoup(a: u64, b: u64, b_shoup: u64, m: u64) -> u64 {
    let q = ((a as u128 * b_shoup as u128) >> 64) as u64;
    let r = a.wrapping_mul(b).wrapping_sub(q.wrapping_mul(m));
    if r >= m {
        r - m
    } else {
        r
    }
}

/// `b` with its Shoup companion for modulus `m`.
fn shoup(b: u64, m: u64) -> (u64, u64) {
    (b, (((b as u128) << 64) / m as u128) as u64)
}

/// `x mod m` of a big integer.
fn big_mod(x: &BigUint, m: u64) -> u64 {
    (x % m).to_u64_digits().first().copied().unwrap_or(0)
}

/// `x^-1 mod m` for prime `m`.
fn inverse(x: u64, m: &Modulus) -> Result<u64, HeError> {
    m.inv(x)
        .ok_or_else(|| HeError::Params("RNS primes are not coprime".into()))
}

/// The fraction `num / den` (with `num < den`) as a float.
fn fraction(num: &BigUint, den: &BigUint) -> f64 {
    let scaled: BigUint = (num << 64u32) / den;
    scaled.to_u64_digits().first().copied().unwrap_or(0) as f64 / TWO_64
}

/// The HPS decomposition of residues modulo one basis: per prime `m_i`,
/// `(M / m_i)^-1 mod m_i` (with its Shoup companion) and `1 / m_i`.
#[derive(Debug, Clone)]
struct Decomposition {
    moduli: Vec<u64>,
    inv_hat: Vec<(u64, u64)>,
    inv_m: Vec<f64>,
    product: BigUint,
}

impl Decomposition {
    fn new(ctx: &Context) -> Result<Self, HeError> {
        let moduli = ctx.moduli().to_vec();
        if moduli.is_empty() || moduli.len() > MAX_PRIMES {
            return Err(HeError::Params(format!(
                "an RNS basis of {} primes is not supported (1..={MAX_PRIMES})",
                moduli.len()
            )));
        }
        let product = ctx.modulus().clone();
        let mut inv_hat = Vec::with_capacity(moduli.len());
        for (&m, op) in moduli.iter().zip(ctx.moduli_operators()) {
            let hat = big_mod(&(&product / m), m);
            inv_hat.push(shoup(inverse(hat, op)?, m));
        }
        let inv_m = moduli.iter().map(|&m| 1.0 / m as f64).collect();
        Ok(Decomposition {
            moduli,
            inv_hat,
            inv_m,
            product,
        })
    }

    /// Fills `y` with `y_i` of coefficient `c` and returns `v` (the centred
    /// representative is `sum y_i M / m_i - v M`).
    #[inline(always)]
    fn split(&self, rows: &[&[u64]], c: usize, y: &mut [u64; MAX_PRIMES]) -> u64 {
        let mut s = 0.5f64;
        for (i, row) in rows.iter().enumerate() {
            let (b, bs) = self.inv_hat[i];
            let yi = mul_shoup(row[c], b, bs, self.moduli[i]);
            y[i] = yi;
            s += (yi as i64) as f64 * self.inv_m[i];
        }
        // s >= 0: truncation is the floor, so this rounds.
        (s as i64) as u64
    }
}

/// The rows of a polynomial's coefficient array.
pub(crate) fn row_slices<'a>(a: &'a ArrayView2<'a, u64>) -> Result<Vec<&'a [u64]>, HeError> {
    a.outer_iter()
        .map(|r| {
            r.to_slice()
                .ok_or_else(|| HeError::Malformed("polynomial rows are not contiguous".into()))
        })
        .collect()
}

/// The ring degree of a context.
pub(crate) fn degree(ctx: &Arc<Context>) -> usize {
    Poly::zero(ctx, Representation::PowerBasis)
        .coefficients()
        .shape()[1]
}

/// [`Decomposition::split`] for exactly `K` primes, with the rows cut to one
/// length and every constant in a register: the loops unrolled over the
/// bases in use ([`BasisExtender`], [`Rescaler`]).
struct FixedSplit<'a, const K: usize> {
    rows: [&'a [u64]; K],
    inv_hat: [(u64, u64); K],
    moduli: [u64; K],
    inv_m: [f64; K],
}

impl<'a, const K: usize> FixedSplit<'a, K> {
    /// The first `K` of `rows`, each cut to `n` residues, split with `dec`.
    #[inline(always)]
    fn new(dec: &Decomposition, rows: &[&'a [u64]], n: usize) -> Self {
        FixedSplit {
            rows: std::array::from_fn(|i| &rows[i][..n]),
            inv_hat: std::array::from_fn(|i| dec.inv_hat[i]),
            moduli: std::array::from_fn(|i| dec.moduli[i]),
            inv_m: std::array::from_fn(|i| dec.inv_m[i]),
        }
    }

    /// `y_i` and `v` of coefficient `c`, as [`Decomposition::split`].
    #[inline(always)]
    fn split(&self, c: usize) -> ([u64; K], u64) {
        let mut y = [0u64; K];
        let mut s = 0.5f64;
        // Indexed: the zipped iterators measured 3-7 % slower here.
        #[allow(clippy::needless_range_loop)]
        for i in 0..K {
            let (b, bs) = self.inv_hat[i];
            y[i] = mul_shoup(self.rows[i][c], b, bs, self.moduli[i]);
            s += (y[i] as i64) as f64 * self.inv_m[i];
        }
        // s >= 0: truncation is the floor, so this rounds.
        (y, (s as i64) as u64)
    }
}
