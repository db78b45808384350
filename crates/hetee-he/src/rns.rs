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

use std::borrow::Cow;
use std::sync::Arc;

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use fhe_math::zq::Modulus;
use ndarray::{s, Array2, ArrayView2};
use num_bigint::BigUint;

use crate::HeError;

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
fn degree(ctx: &Arc<Context>) -> usize {
    Poly::zero(ctx, Representation::PowerBasis)
        .coefficients()
        .shape()[1]
}

/// Rows of `p` in the power basis (a copy converted when `p` is in NTT form).
fn power_basis(p: &Poly) -> Poly {
    let mut q = p.clone();
    if q.representation() != &Representation::PowerBasis {
        q.change_representation(Representation::PowerBasis);
    }
    q
}

/// Extends polynomials exactly (up to the lift of a coefficient at `+-q/2`)
/// from a basis `q` to `q` followed by extra primes, in NTT form.
#[derive(Debug)]
pub struct BasisExtender {
    from: Decomposition,
    to: Arc<Context>,
    extra: Arc<Context>,
    /// `[j][i]`: `(q / q_i) mod p_j`.
    hat_mod_p: Vec<Vec<u64>>,
    /// `p_j - (q mod p_j)`.
    neg_q_mod_p: Vec<u64>,
}

impl BasisExtender {
    /// An extender from `from` to `to`, whose moduli must start with
    /// `from`'s.
    pub fn new(from: &Arc<Context>, to: &Arc<Context>) -> Result<Self, HeError> {
        let k = from.moduli().len();
        if to.moduli().len() <= k || to.moduli()[..k] != *from.moduli() {
            return Err(HeError::Params(
                "the multiplication basis must extend the ciphertext basis".into(),
            ));
        }
        let dec = Decomposition::new(from)?;
        let extra_moduli = &to.moduli()[k..];
        let extra = Context::new_arc(extra_moduli, degree(to))?;
        let hat_mod_p = extra_moduli
            .iter()
            .map(|&p| {
                dec.moduli
                    .iter()
                    .map(|&m| big_mod(&(&dec.product / m), p))
                    .collect()
            })
            .collect();
        let neg_q_mod_p = extra_moduli
            .iter()
            .map(|&p| (p - big_mod(&dec.product, p)) % p)
            .collect();
        Ok(BasisExtender {
            from: dec,
            to: to.clone(),
            extra,
            hat_mod_p,
            neg_q_mod_p,
        })
    }

    /// `p` (over the ciphertext basis, either form) over the extended basis,
    /// in NTT form, variable time allowed.
    pub fn extend(&self, p: &Poly) -> Result<Poly, HeError> {
        let k = self.from.moduli.len();
        if p.ctx().moduli() != self.from.moduli.as_slice() {
            return Err(HeError::Malformed(
                "polynomial is not over the ciphertext basis".into(),
            ));
        }
        // The power basis for the new primes' residues, the NTT form for the
        // old primes' rows: one of them is `p` itself.
        let (coeffs, ntt): (Cow<'_, Poly>, Cow<'_, Poly>) = match p.representation() {
            Representation::PowerBasis => {
                let mut n = p.clone();
                unsafe { n.allow_variable_time_computations() };
                n.change_representation(Representation::Ntt);
                (Cow::Borrowed(p), Cow::Owned(n))
            }
            _ => (Cow::Owned(power_basis(p)), Cow::Borrowed(p)),
        };
        let view = coeffs.coefficients();
        let n = view.shape()[1];
        let rows = row_slices(&view)?;
        let e = self.hat_mod_p.len();
        let mut out = Array2::<u64>::zeros((e, n));
        // Unrolled for the bases in use (two ciphertext primes, two or
        // three extra ones).
        match (k, e, out.as_slice_mut()) {
            (2, 2, Some(o)) => self.extend_rows::<2, 2>(&rows, o),
            (2, 3, Some(o)) => self.extend_rows::<2, 3>(&rows, o),
            _ => {
                let ops = self.extra.moduli_operators();
                let mut y = [0u64; MAX_PRIMES];
                for c in 0..n {
                    let v = self.from.split(&rows, c, &mut y);
                    for j in 0..e {
                        let hat = &self.hat_mod_p[j];
                        let mut acc = v as u128 * self.neg_q_mod_p[j] as u128;
                        for i in 0..k {
                            acc += y[i] as u128 * hat[i] as u128;
                        }
                        out[[j, c]] = ops[j].reduce_u128(acc);
                    }
                }
            }
        }
        let mut extra = Poly::try_convert_from(out, &self.extra, true, Representation::PowerBasis)?;
        extra.change_representation(Representation::Ntt);
        let mut all = Array2::<u64>::zeros((k + e, n));
        all.slice_mut(s![..k, ..]).assign(&ntt.coefficients());
        all.slice_mut(s![k.., ..]).assign(&extra.coefficients());
        Ok(Poly::try_convert_from(
            all,
            &self.to,
            true,
            Representation::Ntt,
        )?)
    }
}

impl BasisExtender {
    /// The new primes' residues of `rows` (`K` primes, power basis) into
    /// `out` (`E` rows of one residue per coefficient): the general loop of
    /// [`BasisExtender::extend`] with every constant in a register.
    fn extend_rows<const K: usize, const E: usize>(&self, rows: &[&[u64]], out: &mut [u64]) {
        let n = out.len() / E;
        let rows: [&[u64]; K] = std::array::from_fn(|i| &rows[i][..n]);
        let inv_hat: [(u64, u64); K] = std::array::from_fn(|i| self.from.inv_hat[i]);
        let moduli: [u64; K] = std::array::from_fn(|i| self.from.moduli[i]);
        let inv_m: [f64; K] = std::array::from_fn(|i| self.from.inv_m[i]);
        let hat: [[u64; K]; E] =
            std::array::from_fn(|j| std::array::from_fn(|i| self.hat_mod_p[j][i]));
        let neg_q: [u64; E] = std::array::from_fn(|j| self.neg_q_mod_p[j]);
        let ops = self.extra.moduli_operators();
        for c in 0..n {
            let mut y = [0u64; K];
            let mut s = 0.5f64;
            for i in 0..K {
                let (b, bs) = inv_hat[i];
                y[i] = mul_shoup(rows[i][c], b, bs, moduli[i]);
                s += (y[i] as i64) as f64 * inv_m[i];
            }
            let v = (s as i64) as u64;
            for j in 0..E {
                let mut acc = v as u128 * neg_q[j] as u128;
                for i in 0..K {
                    acc += y[i] as u128 * hat[j][i] as u128;
                }
                out[j * n + c] = ops[j].reduce_u128(acc);
            }
        }
    }
}

/// Scales polynomials by a rational `a` with rounding, from one basis to
/// another (the rescale by `t q_out / q^2` of the evaluator).
#[derive(Debug)]
pub struct Rescaler {
    from: Decomposition,
    to: Arc<Context>,
    /// `[j][i]`: `I_i mod q_j`, with `a M / m_i = I_i + f_i`.
    int_mod_q: Vec<Vec<u64>>,
    /// `[j][i]`: `G_i mod q_j`, with `2^32 f_i = G_i + g_i`.
    high_mod_q: Vec<Vec<u64>>,
    /// `q_j - (I_M mod q_j)`, with `a M = I_M + f_M`.
    neg_int_m_mod_q: Vec<u64>,
    /// `q_j - (2^40 mod q_j)`: takes back the shift of the rounding.
    neg_shift_mod_q: Vec<u64>,
    f: Vec<f64>,
    g: Vec<f64>,
    f_m: f64,
}

/// `2^40 + 1/2`: added before truncating the fractional sum, so that the
/// truncation rounds to nearest.
const ROUND_SHIFT: f64 = 1_099_511_627_776.5;

impl Rescaler {
    /// A rescaler by `numerator / denominator` from `from` to `to`, for
    /// inputs whose centred value is far below the product of `from`'s
    /// primes (a sum of ct x ct products in the multiplication basis is).
    pub fn new(
        from: &Arc<Context>,
        to: &Arc<Context>,
        numerator: &BigUint,
        denominator: &BigUint,
    ) -> Result<Self, HeError> {
        if denominator == &BigUint::ZERO || degree(from) != degree(to) {
            return Err(HeError::Params("malformed rescale".into()));
        }
        let dec = Decomposition::new(from)?;
        let mut int_parts = Vec::new();
        let (mut f, mut g) = (Vec::new(), Vec::new());
        let mut highs = Vec::new();
        for &m in &dec.moduli {
            let num = numerator * (&dec.product / m);
            let int = &num / denominator;
            let rem = &num % denominator;
            f.push(fraction(&rem, denominator));
            let shifted: BigUint = rem << 32u32;
            highs.push(&shifted / denominator);
            g.push(fraction(&(&shifted % denominator), denominator));
            int_parts.push(int);
        }
        let num_m = numerator * &dec.product;
        let int_m = &num_m / denominator;
        let f_m = fraction(&(&num_m % denominator), denominator);
        let int_mod_q = to
            .moduli()
            .iter()
            .map(|&q| int_parts.iter().map(|x| big_mod(x, q)).collect())
            .collect();
        let high_mod_q = to
            .moduli()
            .iter()
            .map(|&q| highs.iter().map(|x| big_mod(x, q)).collect())
            .collect();
        let neg_int_m_mod_q = to
            .moduli()
            .iter()
            .map(|&q| (q - big_mod(&int_m, q)) % q)
            .collect();
        Ok(Rescaler {
            from: dec,
            to: to.clone(),
            int_mod_q,
            high_mod_q,
            neg_int_m_mod_q,
            neg_shift_mod_q: to
                .moduli()
                .iter()
                .map(|&q| (q - (1u64 << 40) % q) % q)
                .collect(),
            f,
            g,
            f_m,
        })
    }

    /// `round(a x)` of every coefficient `x` of `p` (over the `from` basis,
    /// power basis), over the `to` basis in the power basis.
    pub fn scale(&self, p: &Poly) -> Result<Poly, HeError> {
        if p.ctx().moduli() != self.from.moduli.as_slice()
            || p.representation() != &Representation::PowerBasis
        {
            return Err(HeError::Malformed(
                "rescale input is not over the multiplication basis in the power basis".into(),
            ));
        }
        let view = p.coefficients();
        let n = view.shape()[1];
        let rows = row_slices(&view)?;
        let l = self.int_mod_q.len();
        let mut out = Array2::<u64>::zeros((l, n));
        // The evaluator's case, one output prime, with the loop over the
        // input primes unrolled for the bases it uses.
        if let (1, Some(row)) = (l, out.as_slice_mut()) {
            match rows.len() {
                3 => self.scale_to_one::<3>(&rows, row),
                4 => self.scale_to_one::<4>(&rows, row),
                5 => self.scale_to_one::<5>(&rows, row),
                6 => self.scale_to_one::<6>(&rows, row),
                _ => self.scale_rows(&rows, &mut out),
            }
        } else {
            self.scale_rows(&rows, &mut out);
        }
        Ok(Poly::try_convert_from(
            out,
            &self.to,
            true,
            Representation::PowerBasis,
        )?)
    }

    /// [`Rescaler::scale`] for `K` input primes and one output prime, into
    /// `out` (one residue per coefficient): the same arithmetic as
    /// [`Rescaler::scale_rows`], with every constant in a register.
    fn scale_to_one<const K: usize>(&self, rows: &[&[u64]], out: &mut [u64]) {
        let n = out.len();
        let rows: [&[u64]; K] = std::array::from_fn(|i| &rows[i][..n]);
        let inv_hat: [(u64, u64); K] = std::array::from_fn(|i| self.from.inv_hat[i]);
        let moduli: [u64; K] = std::array::from_fn(|i| self.from.moduli[i]);
        let inv_m: [f64; K] = std::array::from_fn(|i| self.from.inv_m[i]);
        let (f, g): ([f64; K], [f64; K]) = (
            std::array::from_fn(|i| self.f[i]),
            std::array::from_fn(|i| self.g[i]),
        );
        let ints: [u64; K] = std::array::from_fn(|i| self.int_mod_q[0][i]);
        let highs: [u64; K] = std::array::from_fn(|i| self.high_mod_q[0][i]);
        let (neg_int_m, neg_shift) = (self.neg_int_m_mod_q[0], self.neg_shift_mod_q[0]);
        let op = &self.to.moduli_operators()[0];
        for (c, o) in out.iter_mut().enumerate() {
            let mut y = [0u64; K];
            let mut s = 0.5f64;
            for i in 0..K {
                let (b, bs) = inv_hat[i];
                y[i] = mul_shoup(rows[i][c], b, bs, moduli[i]);
                s += (y[i] as i64) as f64 * inv_m[i];
            }
            let v = (s as i64) as u64;
            let mut frac = -((v as i64) as f64) * self.f_m;
            for i in 0..K {
                frac += ((y[i] >> 32) as i64) as f64 * g[i]
                    + ((y[i] & 0xffff_ffff) as i64) as f64 * f[i];
            }
            let shifted = (frac + ROUND_SHIFT) as i64 as u64;
            let mut acc = v as u128 * neg_int_m as u128 + shifted as u128 + neg_shift as u128;
            for i in 0..K {
                acc += y[i] as u128 * ints[i] as u128 + (y[i] >> 32) as u128 * highs[i] as u128;
            }
            *o = op.reduce_u128(acc);
        }
    }

    /// [`Rescaler::scale`] for any number of primes, into `out` (`[l, n]`).
    fn scale_rows(&self, rows: &[&[u64]], out: &mut Array2<u64>) {
        let n = out.shape()[1];
        let k = self.from.moduli.len();
        let l = self.int_mod_q.len();
        let ops = self.to.moduli_operators();
        let mut y = [0u64; MAX_PRIMES];
        for c in 0..n {
            let v = self.from.split(rows, c, &mut y);
            let mut frac = -((v as i64) as f64) * self.f_m;
            for ((yi, g), f) in y[..k].iter().zip(&self.g).zip(&self.f) {
                frac += ((yi >> 32) as i64) as f64 * g + ((yi & 0xffff_ffff) as i64) as f64 * f;
            }
            // |frac| < 2^40 < q_j: shift to positive, where truncation is
            // the floor, and take the shift back modulo q_j below.
            let shifted = (frac + ROUND_SHIFT) as i64 as u64;
            for j in 0..l {
                let (ints, highs) = (&self.int_mod_q[j], &self.high_mod_q[j]);
                let mut acc = v as u128 * self.neg_int_m_mod_q[j] as u128
                    + shifted as u128
                    + self.neg_shift_mod_q[j] as u128;
                for ((yi, int), high) in y[..k].iter().zip(ints).zip(highs) {
                    acc += *yi as u128 * *int as u128 + (yi >> 32) as u128 * *high as u128;
                }
                out[[j, c]] = ops[j].reduce_u128(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe_math::rns::ScalingFactor;
    use fhe_math::rq::scaler::Scaler;
    use rand::{Rng, SeedableRng};

    const N: usize = 64;

    fn contexts() -> (Arc<Context>, Arc<Context>, Arc<Context>) {
        use fhe_math::zq::primes::generate_prime;
        let q = [
            generate_prime(55, 2 * N as u64, 1 << 55).unwrap(),
            generate_prime(54, 2 * N as u64, 1 << 54).unwrap(),
        ];
        let mut ext = q.to_vec();
        let mut upper = 1u64 << 62;
        while ext.len() < 5 {
            upper = generate_prime(62, 2 * N as u64, upper).unwrap();
            ext.push(upper);
        }
        (
            Context::new_arc(&q, N).unwrap(),
            Context::new_arc(&ext, N).unwrap(),
            Context::new_arc(&q[..1], N).unwrap(),
        )
    }

    /// The centred value of every coefficient of `p`.
    fn centred(p: &Poly) -> Vec<num_bigint::BigInt> {
        let m = num_bigint::BigInt::from(p.ctx().modulus().clone());
        Vec::<BigUint>::from(p)
            .into_iter()
            .map(|x| {
                let x = num_bigint::BigInt::from(x);
                if &x * 2 >= m {
                    x - &m
                } else {
                    x
                }
            })
            .collect()
    }

    #[test]
    fn extension_is_the_exact_lift_of_random_coefficients() {
        let (q, five, _) = contexts();
        // Two extra primes (the unrolled case of the basis for fresh sums)
        // and three.
        let four = Context::new_arc(&five.moduli()[..4], N).unwrap();
        for ext in [four, five] {
            extension_is_exact(&q, &ext);
        }
    }

    fn extension_is_exact(q: &Arc<Context>, ext: &Arc<Context>) {
        let ours = BasisExtender::new(q, ext).unwrap();
        let theirs = Scaler::new(q, ext, ScalingFactor::one()).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for repr in [Representation::PowerBasis, Representation::Ntt] {
            for _ in 0..20 {
                let p = Poly::random(q, repr, &mut rng);
                let mut a = ours.extend(&p).unwrap();
                let mut b = power_basis(&p).scale(&theirs).unwrap();
                a.change_representation(Representation::PowerBasis);
                b.change_representation(Representation::PowerBasis);
                assert_eq!(centred(&a), centred(&b));
            }
        }
    }

    #[test]
    fn rescale_is_within_one_of_the_exact_rounding() {
        let (q, ext, out) = contexts();
        let num = BigUint::from(16_760_833u64) * out.modulus();
        let den = q.modulus() * q.modulus();
        let ours = Rescaler::new(&ext, &out, &num, &den).unwrap();
        let theirs = Scaler::new(&ext, &out, ScalingFactor::new(&num, &den)).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (mut equal, mut total) = (0usize, 0usize);
        for _ in 0..50 {
            // Values of the size of an accumulated product: |x| < q^2 2^20.
            let bound = q.modulus() * q.modulus() * BigUint::from(1u64 << 20);
            let xs: Vec<num_bigint::BigInt> = (0..N)
                .map(|_| {
                    let mag = BigUint::from_bytes_le(&rng.random::<[u8; 32]>()) % &bound;
                    let x = num_bigint::BigInt::from(mag);
                    if rng.random() {
                        -x
                    } else {
                        x
                    }
                })
                .collect();
            let m = num_bigint::BigInt::from(ext.modulus().clone());
            let residues: Vec<BigUint> = xs
                .iter()
                .map(|x| (((x % &m) + &m) % &m).to_biguint().unwrap())
                .collect();
            let p = Poly::try_convert_from(
                residues.as_slice(),
                &ext,
                false,
                Representation::PowerBasis,
            )
            .unwrap();
            let a = Vec::<BigUint>::from(&ours.scale(&p).unwrap());
            let b = Vec::<BigUint>::from(&p.scale(&theirs).unwrap());
            let qo = out.modulus().clone();
            for (a, b) in a.iter().zip(&b) {
                let d = (a + &qo - b) % &qo;
                assert!(
                    d <= BigUint::from(1u8) || d == &qo - 1u8,
                    "{a} and {b} differ by more than one"
                );
                equal += usize::from(a == b);
                total += 1;
            }
        }
        assert!(equal * 1000 >= total * 999, "{equal} of {total} equal");
    }

    #[test]
    fn the_unrolled_rescale_equals_the_general_loop() {
        let (q, _, out) = contexts();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for primes in 3..=6 {
            let mut ext = q.moduli().to_vec();
            let mut upper = 1u64 << 62;
            while ext.len() < primes {
                upper = fhe_math::zq::primes::generate_prime(62, 2 * N as u64, upper).unwrap();
                ext.push(upper);
            }
            let ext = Context::new_arc(&ext, N).unwrap();
            let num = BigUint::from(16_760_833u64) * out.modulus();
            let den = q.modulus() * q.modulus();
            let r = Rescaler::new(&ext, &out, &num, &den).unwrap();
            for _ in 0..10 {
                let p = Poly::random(&ext, Representation::PowerBasis, &mut rng);
                let view = p.coefficients();
                let rows = row_slices(&view).unwrap();
                let mut general = Array2::<u64>::zeros((1, N));
                r.scale_rows(&rows, &mut general);
                let unrolled = r.scale(&p).unwrap();
                assert_eq!(
                    unrolled.coefficients().as_slice().unwrap(),
                    general.as_slice().unwrap(),
                    "{primes} primes"
                );
            }
        }
    }

    #[test]
    fn mismatched_bases_are_refused() {
        let (q, ext, out) = contexts();
        assert!(BasisExtender::new(&ext, &q).is_err());
        let r = Rescaler::new(&ext, &out, &BigUint::from(1u8), &BigUint::from(2u8)).unwrap();
        assert!(r
            .scale(&Poly::zero(&q, Representation::PowerBasis))
            .is_err());
        assert!(r.scale(&Poly::zero(&ext, Representation::Ntt)).is_err());
    }
}
