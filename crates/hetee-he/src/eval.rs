//! The untrusted host's ct x ct evaluator.
//!
//! Each operand is extended to the multiplication basis once and kept in
//! NTT form, products of a sum are accumulated in that basis, and each output
//! is scaled back by `t/q` once.
//!
//! The multiplication basis `q p` must hold every coefficient of the sums
//! that are rescaled (`a0 b0`, `a0 b1 + a1 b0`, `a1 b1`) exactly. With
//! operands lifted to `(-q/2, q/2]`, a sum of `K` products has coefficients
//! below `K N q^2 / 2`, so `p > K N q` suffices. An evaluator made for sums
//! of at most `K` terms ([`Evaluator::for_sums`]) takes the fewest 62-bit
//! primes that give it; MNIST's sums of at most four products need two
//! instead of three, which makes every extension, product and rescale a
//! fifth cheaper. The host's sums are of fresh ciphertexts, whose
//! coefficients are uniform: [`Evaluator::for_fresh_sums`] bounds them with
//! `p > 12 sqrt(K N) q` instead (failing with probability below `2^-100`
//! per coefficient, caught by the enclave's checks), which takes two primes
//! for every bundled model.
//!
//! The cross term takes two products (four per pair in all). Karatsuba's
//! three would work in the same basis (its middle sum may wrap, but the
//! cross term formed from it is exact modulo the basis); with `a0 + a1`
//! kept per operand it was measured slower on MNIST (one image and 64) and
//! no faster on MobileNet's 16-image model, within the noise, and formed on
//! the fly it was slower still.
//! The result is a degree-2 ciphertext; the enclave decrypts it directly,
//! so no relinearization key is needed.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use fhe_math::zq::primes::generate_prime;
use fhe_math::zq::Modulus;
use ndarray::Array2;
use num_bigint::BigUint;
use rayon::prelude::*;

use crate::ntt::Ntt;
use crate::rns::{row_slices, BasisExtender, Rescaler};
use crate::HeError;

/// A fresh ciphertext extended to the multiplication basis, NTT form.
#[derive(Debug, Clone)]
pub struct ExtendedCiphertext {
    c0: Poly,
    c1: Poly,
}

impl ExtendedCiphertext {
    /// Bytes held in memory by this operand.
    pub fn memory_bytes(&self) -> usize {
        let n = self.c0.coefficients().shape()[1];
        2 * self.c0.ctx().moduli().len() * n * 8
    }
}

/// The longest sum [`Evaluator::new`] takes: far beyond any layer.
pub const GENERAL_MAX_TERMS: usize = 1 << 20;

/// Products summed in 128 bits before one reduction: each is below `2^124`
/// (primes below `2^62`), and fifteen of them plus the running sum (below
/// `2^62`) stay below `2^128`.
const LAZY_PRODUCTS: usize = 15;

/// Running sums of `a0 b0`, `a0 b1 + a1 b0` and `a1 b1` in the
/// multiplication basis, NTT form, one row per prime.
#[derive(Debug)]
struct Sums([Array2<u64>; 3]);

impl Sums {
    fn zero(primes: usize, n: usize) -> Self {
        Sums(std::array::from_fn(|_| Array2::zeros((primes, n))))
    }

    /// Adds another partial sum of the same output.
    fn add(&mut self, other: &Sums, ops: &[Modulus]) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            for (i, op) in ops.iter().enumerate() {
                for (x, y) in mine.row_mut(i).iter_mut().zip(theirs.row(i)) {
                    *x = op.add(*x, *y);
                }
            }
        }
    }
}

/// How finely a step of the evaluator spreads over the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Each task (a sum, an output) runs whole on one thread: enough tasks
    /// keep every core busy.
    Whole,
    /// Each task spreads its rows, or blocks of coefficients, over the
    /// pool: a layer with one or two outputs would otherwise leave cores
    /// idle (e2dm's layers at one image have one, two and one). Not used
    /// where the tasks alone fill the cores: splitting them there only adds
    /// hand-offs (a first version that always split ran e2dm's 64-image
    /// batch at 572-639 img/s against 618-706, three interleaved pairs,
    /// within this VM's noise).
    Parts,
}

impl Split {
    /// [`Split::Parts`] when `tasks` are fewer than two per thread.
    fn below(tasks: usize) -> Self {
        if tasks < 2 * rayon::current_num_threads() {
            Split::Parts
        } else {
            Split::Whole
        }
    }
}

/// Extends, multiplies and accumulates ciphertexts; one per parameter set.
#[derive(Debug)]
pub struct Evaluator {
    par: Arc<BfvParameters>,
    mul_ctx: Arc<Context>,
    extender: BasisExtender,
    down: Rescaler,
    /// The transforms of the multiplication basis and of the output level.
    mul_ntt: Ntt,
    out_ntt: Ntt,
    max_terms: usize,
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

/// Coefficients per block of [`accumulate_group`]: its 128-bit sums
/// (4 KiB) stay in the L1 cache while every product of the group is added
/// (256 measured best of 128 to 1024).
const BLOCK: usize = 256;

/// `acc += sum a_i b_i` modulo `op` for one group of at most
/// [`LAZY_PRODUCTS`] rows of length `acc.len()`, summed in 128 bits and
/// reduced once. Block by block, each product streams through its two rows
/// in order, which the compiler unrolls without bounds checks.
fn accumulate_group(acc: &mut [u64], group: &[(&[u64], &[u64])], op: &Modulus) {
    let mut wide = [0u128; BLOCK];
    for (start, acc) in (0..).step_by(BLOCK).zip(acc.chunks_mut(BLOCK)) {
        let wide = &mut wide[..acc.len()];
        for (w, &x) in wide.iter_mut().zip(acc.iter()) {
            *w = x as u128;
        }
        for (a, b) in group {
            let (a, b) = (&a[start..start + acc.len()], &b[start..start + acc.len()]);
            for ((w, &x), &y) in wide.iter_mut().zip(a).zip(b) {
                *w += x as u128 * y as u128;
            }
        }
        for (slot, &w) in acc.iter_mut().zip(wide.iter()) {
            *slot = op.reduce_u128(w);
        }
    }
}

impl Evaluator {
    /// Prepares the multiplication basis for `par` (ciphertexts at level 0),
    /// for sums of up to [`GENERAL_MAX_TERMS`] products.
    pub fn new(par: &Arc<BfvParameters>) -> Result<Self, HeError> {
        Self::for_sums(par, GENERAL_MAX_TERMS)
    }

    /// Prepares the smallest multiplication basis that holds every sum of
    /// up to `max_terms` products exactly (`p > max_terms N q`), whatever
    /// the operands; longer sums are refused.
    pub fn for_sums(par: &Arc<BfvParameters>, max_terms: usize) -> Result<Self, HeError> {
        let q = par.context_at_level(0)?.modulus().clone();
        let knq = BigUint::from(max_terms.max(1)) * BigUint::from(par.degree()) * q;
        Self::with_extension_above(par, knq, max_terms)
    }

    /// Prepares the smallest multiplication basis that holds sums of up to
    /// `max_terms` products of *fresh* ciphertexts, except with probability
    /// below `2^-100` per coefficient (`p > 12 sqrt(max_terms N) q`); longer
    /// sums are refused.
    ///
    /// Every operand the host multiplies is a fresh encryption (the data
    /// provider's input, the enclave's re-encryptions, the model provider's
    /// weights), whose polynomials have independent coefficients uniform
    /// in `(-q/2, q/2]` (pseudorandom: a seed's expansion, or an RLWE
    /// sample, which no one can tell from uniform without the secret key,
    /// so a bound that holds for uniform operands holds for them up to a
    /// negligible difference), and the products of one sum pair distinct inputs
    /// with distinct weights ([`crate::packing::ConvPacking::product_plan`]).
    /// Given the weights, a coefficient of `Σ a0 b1` is then a sum of
    /// `K N` independent terms in `[-q²/4, q²/4]` with mean zero, so by
    /// Hoeffding it exceeds `x` with probability at most
    /// `2 exp(-8 x² / (K N q⁴))`; the same holds for `Σ a1 b0`, `Σ a0 b0`
    /// and `Σ a1 b1`. The cross term is the largest, and it stays below
    /// `q p / 2` when `p > q sqrt(2 K N ln(2/δ))`, which is `11.8 sqrt(K N) q`
    /// for `δ = 2^-100`.
    ///
    /// The worst case ([`Evaluator::for_sums`]) grows with `K N` instead of
    /// its square root: e2dm's sums of 8 to 16 products, or ResNet-20's of
    /// 64, need three 62-bit primes there and two here, which makes every
    /// extension, product and rescale of theirs a fifth cheaper.
    ///
    /// Only operands chosen to defeat the bound make a sum wrap, and only
    /// the model provider can choose them (its weights): a data provider's
    /// input must be the public-key encryption its seed gives, or the
    /// enclave's binding check refuses it, and every other operand is the
    /// enclave's. A wrapped sum decrypts to a wrong result, which the
    /// enclave's Freivalds check refuses like any wrong result from the
    /// host (which could return any ciphertext anyway): the model provider
    /// only spoils, and locks, its own model.
    pub fn for_fresh_sums(par: &Arc<BfvParameters>, max_terms: usize) -> Result<Self, HeError> {
        let q = par.context_at_level(0)?.modulus().clone();
        let kn = max_terms.max(1) as f64 * par.degree() as f64;
        // 12 sqrt(K N), rounded up to an integer.
        let factor = (12.0 * kn.sqrt()).ceil() as u64 + 1;
        Self::with_extension_above(par, BigUint::from(factor) * q, max_terms)
    }

    /// The evaluator whose extension primes `p` exceed `need`.
    fn with_extension_above(
        par: &Arc<BfvParameters>,
        need: BigUint,
        max_terms: usize,
    ) -> Result<Self, HeError> {
        let base = par.context_at_level(0)?.clone();
        let moduli = base.moduli().to_vec();
        // 2^-30 to spare for a lift that lands a hair above q/2 (see `rns`).
        let need = &need + (&need >> 30u32);
        let mut ext = moduli.clone();
        let mut p = BigUint::from(1u8);
        let mut upper = 1u64 << 62;
        while p <= need {
            upper = generate_prime(62, 2 * par.degree() as u64, upper)
                .ok_or_else(|| HeError::Params("no prime for the multiplication basis".into()))?;
            if !ext.contains(&upper) {
                ext.push(upper);
                p *= upper;
            }
        }
        let mul_ctx = Context::new_arc(&ext, par.degree())?;
        let extender = BasisExtender::new(&base, &mul_ctx)?;
        // Rescale by t/q and mod-switch to the output level in one step:
        // factor (t / q) * (q_out / q), straight into the smaller basis.
        let out_level = output_level(par);
        let out_ctx = par.context_at_level(out_level)?;
        let down = Rescaler::new(
            &mul_ctx,
            out_ctx,
            &(BigUint::from(par.plaintext()) * out_ctx.modulus()),
            &(base.modulus() * base.modulus()),
        )?;
        Ok(Evaluator {
            par: par.clone(),
            mul_ntt: Ntt::for_context(&mul_ctx)?,
            out_ntt: Ntt::for_context(out_ctx)?,
            mul_ctx,
            extender,
            down,
            max_terms: max_terms.max(1),
        })
    }

    fn check_terms(&self, terms: usize) -> Result<(), HeError> {
        if terms > self.max_terms {
            return Err(HeError::Params(format!(
                "a sum of {terms} products exceeds the {} this evaluator's basis holds",
                self.max_terms
            )));
        }
        Ok(())
    }

    /// Primes of the multiplication basis (ciphertext primes included).
    pub fn basis_primes(&self) -> usize {
        self.mul_ctx.moduli().len()
    }

    /// The parameters this evaluator works with.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.par
    }

    /// Extends a fresh (degree-1, level-0) ciphertext to the multiplication basis.
    pub fn extend(&self, ct: &Ciphertext) -> Result<ExtendedCiphertext, HeError> {
        let polys: Vec<&Poly> = ct.iter().collect();
        self.extend_polys(&polys)
    }

    /// Extends the two polynomials of a fresh level-0 ciphertext, each in
    /// either form (as [`crate::codec::polys_from_bytes`] gives them).
    pub fn extend_polys(&self, polys: &[&Poly]) -> Result<ExtendedCiphertext, HeError> {
        let [c0, c1] = polys else {
            return Err(HeError::Malformed(format!(
                "operand has {} polynomials, expected 2",
                polys.len()
            )));
        };
        let top = self.par.context_at_level(0)?;
        if c0.ctx().moduli() != top.moduli() || c1.ctx().moduli() != top.moduli() {
            return Err(HeError::Malformed("operand is not at level 0".into()));
        }
        // Host data is public ciphertext: variable-time arithmetic is fine
        // here (the extension allows it).
        // The two in parallel: a layer with a single input would otherwise
        // extend on one core.
        let (c0, c1) = rayon::join(|| self.extender.extend(c0), || self.extender.extend(c1));
        Ok(ExtendedCiphertext { c0: c0?, c1: c1? })
    }

    /// Extends many ciphertexts in parallel.
    pub fn extend_all(&self, cts: &[Ciphertext]) -> Result<Vec<ExtendedCiphertext>, HeError> {
        cts.par_iter().map(|c| self.extend(c)).collect()
    }

    /// Accumulates `sum a_i * b_i` in the multiplication basis (`a0 b0`,
    /// `a0 b1 + a1 b0`, `a1 b1`), in one pass per prime: up to
    /// [`LAZY_PRODUCTS`] products are summed in 128 bits and reduced once.
    ///
    /// With `split`, the three sums' rows (one per prime) accumulate in
    /// parallel: for a layer with too few sums to keep every core busy.
    fn accumulate(
        &self,
        pairs: &[(&ExtendedCiphertext, &ExtendedCiphertext)],
        split: Split,
    ) -> Result<Sums, HeError> {
        let ops = self.mul_ctx.moduli_operators();
        let n = self.par.degree();
        let mut sums = Sums::zero(ops.len(), n);
        let views = pairs
            .iter()
            .map(|(a, b)| {
                [
                    a.c0.coefficients(),
                    a.c1.coefficients(),
                    b.c0.coefficients(),
                    b.c1.coefficients(),
                ]
            })
            .collect::<Vec<_>>();
        // Per pair, the rows (one per prime) of a0, a1, b0 and b1.
        let parts = views
            .iter()
            .map(|v| {
                Ok([
                    row_slices(&v[0])?,
                    row_slices(&v[1])?,
                    row_slices(&v[2])?,
                    row_slices(&v[3])?,
                ])
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        // Which operand parts each sum multiplies: (a part, b part).
        const TERMS: [&[(usize, usize)]; 3] = [&[(0, 2)], &[(0, 3), (1, 2)], &[(1, 3)]];
        // One job per sum and prime.
        let mut jobs = Vec::with_capacity(3 * ops.len());
        for (terms, out) in TERMS.iter().zip(sums.0.iter_mut()) {
            let out = out
                .as_slice_mut()
                .ok_or_else(|| HeError::Malformed("accumulator rows".into()))?;
            for ((i, op), acc) in ops.iter().enumerate().zip(out.chunks_exact_mut(n)) {
                jobs.push((*terms, i, op, acc));
            }
        }
        let job = |(terms, i, op, acc): (&[(usize, usize)], usize, &Modulus, &mut [u64])| -> Result<(), HeError> {
                let rows = parts
                    .iter()
                    .flat_map(|p| {
                        terms
                            .iter()
                            .map(move |&(x, y)| Some((*p[x].get(i)?, *p[y].get(i)?)))
                    })
                    .collect::<Option<Vec<(&[u64], &[u64])>>>()
                    .ok_or_else(|| HeError::Malformed("an operand over another basis".into()))?;
                if rows.iter().any(|(a, b)| a.len() != n || b.len() != n) {
                    return Err(HeError::Malformed("an operand of another degree".into()));
                }
                for group in rows.chunks(LAZY_PRODUCTS) {
                    accumulate_group(acc, group, op);
                }
                Ok(())
            };
        match split {
            Split::Whole => jobs.into_iter().try_for_each(job)?,
            Split::Parts => jobs.into_par_iter().try_for_each(job)?,
        }
        Ok(sums)
    }

    /// Turns accumulated products into a degree-2 ciphertext: one scaling per
    /// polynomial by `t/q` that also switches down to [`output_level`], so
    /// that the enclave decrypts a smaller ciphertext.
    fn finish(&self, acc: Sums, split: Split) -> Result<Ciphertext, HeError> {
        Ok(Ciphertext::new(self.finish_polys(acc, split)?, &self.par)?)
    }

    /// [`Self::finish`]'s three polynomials, in NTT form at the output level.
    /// With `split`, each polynomial's primes transform in parallel and its
    /// coefficients rescale in parallel blocks.
    fn finish_polys(&self, acc: Sums, split: Split) -> Result<Vec<Poly>, HeError> {
        acc.0
            .into_par_iter()
            .map(|mut a| {
                match split {
                    Split::Whole => self.mul_ntt.inverse_rows(&mut a)?,
                    Split::Parts => self.mul_ntt.inverse_rows_par(&mut a)?,
                }
                let p = Poly::try_convert_from(a, &self.mul_ctx, true, Representation::PowerBasis)?;
                let d = match split {
                    Split::Whole => self.down.scale(&p)?,
                    Split::Parts => self.down.scale_split(&p)?,
                };
                self.out_ntt
                    .converted(&d, d.ctx(), Representation::Ntt, false)
            })
            .collect()
    }

    /// `sum_i a_i * b_i` as one degree-2 ciphertext.
    pub fn sum_of_products(
        &self,
        pairs: &[(&ExtendedCiphertext, &ExtendedCiphertext)],
    ) -> Result<Ciphertext, HeError> {
        if pairs.is_empty() {
            return Err(HeError::Malformed("empty sum of products".into()));
        }
        self.check_terms(pairs.len())?;
        self.finish(self.accumulate(pairs, Split::Parts)?, Split::Parts)
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
        let split = Split::below(plan.len());
        self.sums_of_plan(plan, inputs, weights)?
            .into_par_iter()
            .map(|acc| self.finish(acc, split))
            .collect()
    }

    /// [`Self::evaluate_plan`], each output encoded as
    /// [`crate::codec::ciphertext_to_bytes`] would encode it, straight from
    /// its polynomials.
    pub fn evaluate_plan_to_bytes(
        &self,
        plan: &[Vec<(usize, usize)>],
        inputs: &[ExtendedCiphertext],
        weights: &[ExtendedCiphertext],
    ) -> Result<Vec<Vec<u8>>, HeError> {
        let split = Split::below(plan.len());
        self.sums_of_plan(plan, inputs, weights)?
            .into_par_iter()
            .map(|acc| {
                Ok(crate::codec::polys_to_bytes(
                    &self.finish_polys(acc, split)?,
                ))
            })
            .collect()
    }

    /// The accumulated products of each output of `plan`.
    fn sums_of_plan(
        &self,
        plan: &[Vec<(usize, usize)>],
        inputs: &[ExtendedCiphertext],
        weights: &[ExtendedCiphertext],
    ) -> Result<Vec<Sums>, HeError> {
        let total: usize = plan.iter().map(Vec::len).sum();
        let threads = rayon::current_num_threads().max(1);
        let chunk = total.div_ceil(2 * threads).max(4);
        let mut tasks = Vec::new();
        for (k, sum) in plan.iter().enumerate() {
            if sum.is_empty() {
                return Err(HeError::Malformed(format!("output {k} has no products")));
            }
            self.check_terms(sum.len())?;
            for part in sum.chunks(chunk) {
                tasks.push((k, part));
            }
        }
        let split = Split::below(tasks.len());
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
                Ok((k, self.accumulate(&pairs, split)?))
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        let ops = self.mul_ctx.moduli_operators();
        let mut sums: Vec<Option<Sums>> = (0..plan.len()).map(|_| None).collect();
        for (k, acc) in partials {
            sums[k] = Some(match sums[k].take() {
                None => acc,
                Some(mut total) => {
                    total.add(&acc, ops);
                    total
                }
            });
        }
        sums.into_iter()
            .map(|acc| acc.ok_or_else(|| HeError::Malformed("missing sum".into())))
            .collect()
    }
}
