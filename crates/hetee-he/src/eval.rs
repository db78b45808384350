//! The untrusted host's ct x ct evaluator.
//!
//! Each operand is extended to the multiplication basis once and kept in
//! NTT form (with `c0 + c1` precomputed for Karatsuba), products of a sum are
//! accumulated in that basis, and each output is scaled back by `t/q` once.
//! The result is a degree-2 ciphertext; the enclave decrypts it directly,
//! so no relinearization key is needed.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::{scaler::Scaler, Context, Poly, Representation};
use fhe_math::zq::primes::generate_prime;
use num_bigint::BigUint;
use rayon::prelude::*;

use crate::HeError;

/// A fresh ciphertext extended to the multiplication basis, NTT form.
#[derive(Debug, Clone)]
pub struct ExtendedCiphertext {
    c0: Poly,
    c1: Poly,
    sum: Poly,
}

impl ExtendedCiphertext {
    /// Bytes held in memory by this operand.
    pub fn memory_bytes(&self) -> usize {
        let n = self.c0.coefficients().shape()[1];
        3 * self.c0.ctx().moduli().len() * n * 8
    }
}

/// Extends, multiplies and accumulates ciphertexts; one per parameter set.
#[derive(Debug)]
pub struct Evaluator {
    par: Arc<BfvParameters>,
    mul_ctx: Arc<Context>,
    extender: Scaler,
    down: Scaler,
}

/// Bits of ciphertext modulus kept above the plaintext modulus when the host
/// mod-switches a product down: covers the switching noise (about 12 bits
/// for a degree-2 ciphertext at N = 4096) with >= 10 bits to spare (see the
/// `noise` test).
pub const SWITCH_HEADROOM_BITS: u32 = 28;

/// The deepest level whose modulus still has [`SWITCH_HEADROOM_BITS`] over t.
pub fn output_level(par: &BfvParameters) -> usize {
    let t_bits = 64 - par.plaintext().leading_zeros();
    let mut best = 0;
    for level in 0..=par.max_level() {
        let kept: u32 = par.moduli_sizes()[..par.moduli().len() - level]
            .iter()
            .map(|&b| b as u32)
            .sum();
        if kept >= t_bits + SWITCH_HEADROOM_BITS {
            best = level;
        }
    }
    best
}

impl Evaluator {
    /// Prepares the multiplication basis for `par` (ciphertexts at level 0).
    pub fn new(par: &Arc<BfvParameters>) -> Result<Self, HeError> {
        let base = par.context_at_level(0)?.clone();
        let moduli = base.moduli().to_vec();
        let log_q: usize = par.moduli_sizes().iter().sum();
        let extra = (log_q + 60).div_ceil(62);
        let mut ext = moduli.clone();
        let mut upper = 1u64 << 62;
        while ext.len() < moduli.len() + extra {
            upper = generate_prime(62, 2 * par.degree() as u64, upper)
                .ok_or_else(|| HeError::Params("no prime for the multiplication basis".into()))?;
            if !ext.contains(&upper) {
                ext.push(upper);
            }
        }
        let mul_ctx = Context::new_arc(&ext, par.degree())?;
        let extender = Scaler::new(&base, &mul_ctx, ScalingFactor::one())?;
        // Rescale by t/q and mod-switch to the output level in one step:
        // factor (t / q) * (q_out / q), straight into the smaller basis.
        let out_level = output_level(par);
        let out_ctx = par.context_at_level(out_level)?;
        let down = Scaler::new(
            &mul_ctx,
            out_ctx,
            ScalingFactor::new(
                &(BigUint::from(par.plaintext()) * out_ctx.modulus()),
                &(base.modulus() * base.modulus()),
            ),
        )?;
        Ok(Evaluator {
            par: par.clone(),
            mul_ctx,
            extender,
            down,
        })
    }

    /// The parameters this evaluator works with.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.par
    }

    /// Extends a fresh (degree-1, level-0) ciphertext to the multiplication basis.
    pub fn extend(&self, ct: &Ciphertext) -> Result<ExtendedCiphertext, HeError> {
        if ct.len() != 2 {
            return Err(HeError::Malformed(format!(
                "operand has {} polynomials, expected 2",
                ct.len()
            )));
        }
        if ct[0].ctx().moduli() != self.par.context_at_level(0)?.moduli() {
            return Err(HeError::Malformed("operand is not at level 0".into()));
        }
        let mut c0 = ct[0].scale(&self.extender)?;
        let mut c1 = ct[1].scale(&self.extender)?;
        c0.change_representation(Representation::Ntt);
        c1.change_representation(Representation::Ntt);
        // Host data is public ciphertext: variable-time arithmetic is fine here.
        unsafe {
            c0.allow_variable_time_computations();
            c1.allow_variable_time_computations();
        }
        let sum = &c0 + &c1;
        Ok(ExtendedCiphertext { c0, c1, sum })
    }

    /// Extends many ciphertexts in parallel.
    pub fn extend_all(&self, cts: &[Ciphertext]) -> Result<Vec<ExtendedCiphertext>, HeError> {
        cts.par_iter().map(|c| self.extend(c)).collect()
    }

    fn zero(&self) -> Poly {
        let mut p = Poly::zero(&self.mul_ctx, Representation::Ntt);
        unsafe { p.allow_variable_time_computations() };
        p
    }

    /// Accumulates `sum a_i * b_i` in the multiplication basis (Karatsuba:
    /// `a0 b0`, `a1 b1`, `(a0 + a1)(b0 + b1)`).
    fn accumulate(&self, pairs: &[(&ExtendedCiphertext, &ExtendedCiphertext)]) -> [Poly; 3] {
        let (mut s0, mut s2, mut s01) = (self.zero(), self.zero(), self.zero());
        let mut tmp = self.zero();
        for (a, b) in pairs {
            tmp.clone_from(&a.c0);
            tmp *= &b.c0;
            s0 += &tmp;
            tmp.clone_from(&a.c1);
            tmp *= &b.c1;
            s2 += &tmp;
            tmp.clone_from(&a.sum);
            tmp *= &b.sum;
            s01 += &tmp;
        }
        [s0, s2, s01]
    }

    /// Turns accumulated products into a degree-2 ciphertext: one scaling per
    /// polynomial by `t/q` that also switches down to [`output_level`], so
    /// that the enclave decrypts a smaller ciphertext.
    fn finish(&self, acc: [Poly; 3]) -> Result<Ciphertext, HeError> {
        let [s0, s2, mut s01] = acc;
        s01 -= &s0;
        s01 -= &s2;
        let polys = [s0, s01, s2]
            .into_par_iter()
            .map(|mut p| {
                p.change_representation(Representation::PowerBasis);
                let mut d = p.scale(&self.down)?;
                d.change_representation(Representation::Ntt);
                d.disallow_variable_time_computations();
                Ok(d)
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        Ok(Ciphertext::new(polys, &self.par)?)
    }

    /// `sum_i a_i * b_i` as one degree-2 ciphertext.
    pub fn sum_of_products(
        &self,
        pairs: &[(&ExtendedCiphertext, &ExtendedCiphertext)],
    ) -> Result<Ciphertext, HeError> {
        if pairs.is_empty() {
            return Err(HeError::Malformed("empty sum of products".into()));
        }
        self.finish(self.accumulate(pairs))
    }

    /// Evaluates a whole product plan: output `k` is the sum over `plan[k]`
    /// of `inputs[i] * weights[j]`. Products are spread over all cores in
    /// chunks (so a layer with one long sum still scales), partial sums are
    /// added, and the outputs are finished in parallel.
    pub fn evaluate_plan(
        &self,
        plan: &[Vec<(usize, usize)>],
        inputs: &[ExtendedCiphertext],
        weights: &[ExtendedCiphertext],
    ) -> Result<Vec<Ciphertext>, HeError> {
        let total: usize = plan.iter().map(Vec::len).sum();
        let threads = rayon::current_num_threads().max(1);
        let chunk = total.div_ceil(2 * threads).max(4);
        let mut tasks = Vec::new();
        for (k, sum) in plan.iter().enumerate() {
            if sum.is_empty() {
                return Err(HeError::Malformed(format!("output {k} has no products")));
            }
            for part in sum.chunks(chunk) {
                tasks.push((k, part));
            }
        }
        let partials = tasks
            .par_iter()
            .map(|&(k, part)| {
                let pairs = part
                    .iter()
                    .map(|&(i, w)| {
                        let a = inputs.get(i).ok_or_else(|| {
                            HeError::Malformed(format!(
                                "input ciphertext {i} missing ({} given)",
                                inputs.len()
                            ))
                        })?;
                        let b = weights.get(w).ok_or_else(|| {
                            HeError::Malformed(format!(
                                "weight ciphertext {w} missing ({} given)",
                                weights.len()
                            ))
                        })?;
                        Ok((a, b))
                    })
                    .collect::<Result<Vec<_>, HeError>>()?;
                Ok((k, self.accumulate(&pairs)))
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        let mut sums: Vec<Option<[Poly; 3]>> = (0..plan.len()).map(|_| None).collect();
        for (k, acc) in partials {
            sums[k] = Some(match sums[k].take() {
                None => acc,
                Some([mut a0, mut a2, mut a01]) => {
                    a0 += &acc[0];
                    a2 += &acc[1];
                    a01 += &acc[2];
                    [a0, a2, a01]
                }
            });
        }
        sums.into_par_iter()
            .map(|acc| self.finish(acc.ok_or_else(|| HeError::Malformed("missing sum".into()))?))
            .collect()
    }
}
