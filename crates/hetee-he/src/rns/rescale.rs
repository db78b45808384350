//! The `t/q` rescale of an accumulated product down to the output basis
//! (see the module doc of [`super`]).

use std::sync::Arc;

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use ndarray::Array2;
use num_bigint::BigUint;
use rayon::prelude::*;

use super::{big_mod, degree, fraction, row_slices, Decomposition, FixedSplit, MAX_PRIMES};
use crate::HeError;

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

/// Coefficients per parallel block of [`Rescaler::scale_split`]: a
/// quarter of N = 4096, about 25 µs of work each.
const SCALE_BLOCK: usize = 1024;

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
        self.scale_in_blocks(p, usize::MAX)
    }

    /// [`Rescaler::scale`] with the coefficients spread over the pool in
    /// blocks: for a layer with too few outputs to keep every core busy.
    pub fn scale_split(&self, p: &Poly) -> Result<Poly, HeError> {
        self.scale_in_blocks(p, SCALE_BLOCK)
    }

    /// [`Rescaler::scale`], in parallel blocks of `block` coefficients in
    /// the evaluator's case (one output prime).
    pub(super) fn scale_in_blocks(&self, p: &Poly, block: usize) -> Result<Poly, HeError> {
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
        // input primes unrolled for the bases it uses. Each coefficient
        // scales on its own, so blocks of them may run in parallel.
        let unrolled = matches!(rows.len(), 3..=6);
        if let (1, true, Some(row)) = (l, unrolled, out.as_slice_mut()) {
            // The coefficients from `start` on, into `out`.
            let run = |start: usize, out: &mut [u64]| {
                let rows: Vec<&[u64]> = rows.iter().map(|r| &r[start..]).collect();
                match rows.len() {
                    3 => self.scale_to_one::<3>(&rows, out),
                    4 => self.scale_to_one::<4>(&rows, out),
                    5 => self.scale_to_one::<5>(&rows, out),
                    _ => self.scale_to_one::<6>(&rows, out),
                }
            };
            // One block stays on this thread, without the pool.
            if block >= n {
                run(0, row);
            } else {
                let block = block.max(1);
                row.par_chunks_mut(block)
                    .enumerate()
                    .for_each(|(b, out)| run(b * block, out));
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
    /// On CPUs with AVX-512, its kernel ([`crate::simd::rescale_to_one`]).
    fn scale_to_one<const K: usize>(&self, rows: &[&[u64]], out: &mut [u64]) {
        let split = FixedSplit::<K>::new(&self.from, rows, out.len());
        if !crate::simd::rescale_to_one(&self.vector_consts(&split), out) {
            self.scale_to_one_scalar::<K>(rows, out);
        }
    }

    /// [`Rescaler::scale_to_one`] in scalar code.
    pub(super) fn scale_to_one_scalar<const K: usize>(&self, rows: &[&[u64]], out: &mut [u64]) {
        let split = FixedSplit::<K>::new(&self.from, rows, out.len());
        let (f, g): ([f64; K], [f64; K]) = (
            std::array::from_fn(|i| self.f[i]),
            std::array::from_fn(|i| self.g[i]),
        );
        let ints: [u64; K] = std::array::from_fn(|i| self.int_mod_q[0][i]);
        let highs: [u64; K] = std::array::from_fn(|i| self.high_mod_q[0][i]);
        let (neg_int_m, neg_shift) = (self.neg_int_m_mod_q[0], self.neg_shift_mod_q[0]);
        let op = &self.to.moduli_operators()[0];
        for (c, o) in out.iter_mut().enumerate() {
            let (y, v) = split.split(c);
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

    /// The constants of [`Rescaler::scale_to_one`] for its AVX-512 kernel.
    fn vector_consts<'a, const K: usize>(
        &self,
        split: &FixedSplit<'a, K>,
    ) -> crate::simd::RescaleToOne<'a, K> {
        crate::simd::RescaleToOne {
            rows: split.rows,
            inv_hat: split.inv_hat,
            moduli: split.moduli,
            inv_m: split.inv_m,
            f: std::array::from_fn(|i| self.f[i]),
            g: std::array::from_fn(|i| self.g[i]),
            f_m: self.f_m,
            ints: std::array::from_fn(|i| self.int_mod_q[0][i]),
            highs: std::array::from_fn(|i| self.high_mod_q[0][i]),
            neg_int_m: self.neg_int_m_mod_q[0],
            neg_shift: self.neg_shift_mod_q[0],
            q: self.to.moduli()[0],
            round_shift: ROUND_SHIFT,
        }
    }

    /// [`Rescaler::scale`] for any number of primes, into `out` (`[l, n]`).
    pub(super) fn scale_rows(&self, rows: &[&[u64]], out: &mut Array2<u64>) {
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
