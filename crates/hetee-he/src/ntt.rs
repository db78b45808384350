//! The number-theoretic transform of the hot paths: the host's extensions
//! and rescales, the enclave's decryptions and encryptions, on rows of
//! residues in place (no polynomial built and converted around each one).
//!
//! tfhe-ntt 0.7 runs its AVX-512 code on stable Rust (chosen at run time,
//! AVX2 or scalar code elsewhere): at N = 4096 a 62-bit prime's transform
//! takes about 5.4 µs here. fhe-math 0.1.1 pins tfhe-ntt 0.6, whose
//! AVX-512 code needs a nightly compiler (18 µs per transform through it);
//! the workspace patches 0.7 in its place (`vendor/tfhe-ntt-0.6-on-0.7`),
//! so fhe and fhe-math run the same code. Before that patch,
//! `tests::the_transform_is_fhe_maths` held 0.7's NTT form equal to 0.6's,
//! value for value; it now holds these rows equal to fhe-math's
//! conversions (the order of the residues, the normalization). So rows
//! transformed here mix freely with fhe-math's polynomials: the products,
//! the kept keys, the seeded `c1`s sampled in NTT form.
//!
//! The transforms do the same arithmetic whatever the values (no branch on
//! a coefficient), as fhe-math's do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use ndarray::Array2;
use rayon::prelude::*;
use tfhe_ntt::prime64::Plan;

use crate::HeError;

/// The transforms of one RNS basis: one plan per prime, in the basis's order.
#[derive(Debug, Clone)]
pub struct Ntt {
    plans: Vec<Arc<Plan>>,
    n: usize,
}

/// Plans by degree and prime, held weakly: a plan lives while a basis
/// uses it, so what a refused key set made is freed with it.
type Plans = HashMap<(usize, u64), Weak<Plan>>;

/// The plan for degree `n` and prime `p`, shared by every basis that uses
/// it (a plan holds its roots: 64 KiB at N = 4096).
fn plan(n: usize, p: u64) -> Result<Arc<Plan>, HeError> {
    static PLANS: OnceLock<Mutex<Plans>> = OnceLock::new();
    let mut plans = PLANS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(plan) = plans.get(&(n, p)).and_then(Weak::upgrade) {
        return Ok(plan);
    }
    plans.retain(|_, w| w.strong_count() > 0);
    let plan = Arc::new(
        Plan::try_new(n, p)
            .ok_or_else(|| HeError::Params(format!("no NTT of degree {n} modulo {p}")))?,
    );
    plans.insert((n, p), Arc::downgrade(&plan));
    Ok(plan)
}

impl Ntt {
    /// The transforms of `moduli` at degree `n`.
    pub fn new(moduli: &[u64], n: usize) -> Result<Self, HeError> {
        let plans = moduli
            .iter()
            .map(|&p| plan(n, p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ntt { plans, n })
    }

    /// The transforms of `ctx`'s basis.
    pub fn for_context(ctx: &Arc<Context>) -> Result<Self, HeError> {
        Self::new(ctx.moduli(), crate::rns::degree(ctx))
    }

    /// The ring degree.
    pub fn degree(&self) -> usize {
        self.n
    }

    /// Number of primes.
    pub fn primes(&self) -> usize {
        self.plans.len()
    }

    /// Checks that `residues` holds one row of `n` residues per prime.
    fn check(&self, residues: &[u64]) -> Result<(), HeError> {
        if residues.len() != self.plans.len() * self.n {
            return Err(HeError::Malformed(format!(
                "{} residues for {} primes of degree {}",
                residues.len(),
                self.plans.len(),
                self.n
            )));
        }
        Ok(())
    }

    /// Forward transform, in place, of the residues of every prime, prime
    /// after prime (each below its prime).
    pub fn forward(&self, residues: &mut [u64]) -> Result<(), HeError> {
        self.check(residues)?;
        for (row, plan) in residues.chunks_exact_mut(self.n).zip(&self.plans) {
            plan.fwd(row);
        }
        Ok(())
    }

    /// Inverse transform (normalized), in place, of the residues of every
    /// prime, prime after prime.
    pub fn inverse(&self, residues: &mut [u64]) -> Result<(), HeError> {
        self.check(residues)?;
        for (row, plan) in residues.chunks_exact_mut(self.n).zip(&self.plans) {
            plan.inv(row);
            plan.normalize(row);
        }
        Ok(())
    }

    /// [`Ntt::inverse`] with the primes' rows transformed in parallel: one
    /// output of a small layer has too few polynomials to keep every core
    /// busy, each has one row per prime.
    pub fn inverse_par(&self, residues: &mut [u64]) -> Result<(), HeError> {
        self.check(residues)?;
        residues
            .par_chunks_exact_mut(self.n)
            .zip(self.plans.par_iter())
            .for_each(|(row, plan)| {
                plan.inv(row);
                plan.normalize(row);
            });
        Ok(())
    }

    /// [`Ntt::forward`] of an array with a row per prime.
    pub fn forward_rows(&self, a: &mut Array2<u64>) -> Result<(), HeError> {
        self.forward(slice_mut(a)?)
    }

    /// [`Ntt::inverse`] of an array with a row per prime.
    pub fn inverse_rows(&self, a: &mut Array2<u64>) -> Result<(), HeError> {
        self.inverse(slice_mut(a)?)
    }

    /// [`Ntt::inverse_par`] of an array with a row per prime.
    pub fn inverse_rows_par(&self, a: &mut Array2<u64>) -> Result<(), HeError> {
        self.inverse_par(slice_mut(a)?)
    }

    /// `p` (over this basis, either form) in `to` form, as a new polynomial
    /// over `ctx` (`p`'s context); `variable_time` as fhe-math's flag.
    pub fn converted(
        &self,
        p: &Poly,
        ctx: &Arc<Context>,
        to: Representation,
        variable_time: bool,
    ) -> Result<Poly, HeError> {
        let mut a = p.coefficients().to_owned();
        match (p.representation(), &to) {
            (Representation::PowerBasis, Representation::Ntt) => self.forward_rows(&mut a)?,
            (Representation::Ntt, Representation::PowerBasis) => self.inverse_rows(&mut a)?,
            (from, to) if from == to => {}
            _ => {
                return Err(HeError::Malformed(
                    "only the power basis and the NTT form convert here".into(),
                ))
            }
        }
        Ok(Poly::try_convert_from(a, ctx, variable_time, to)?)
    }
}

/// The contiguous residues of `a`.
fn slice_mut(a: &mut Array2<u64>) -> Result<&mut [u64], HeError> {
    a.as_slice_mut()
        .ok_or_else(|| HeError::Malformed("non-contiguous residues".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe_math::zq::primes::generate_prime;

    /// Every prime the bundled parameters use (60- and 62-bit, N = 4096
    /// and 8192) transforms to exactly fhe-math's NTT form and back.
    #[test]
    fn the_transform_is_fhe_maths() {
        let mut rng = rand::rng();
        for n in [4096usize, 8192] {
            let mut moduli = Vec::new();
            for bits in [60, 62] {
                let mut upper = 1u64 << bits;
                for _ in 0..3 {
                    let p = generate_prime(bits, 2 * n as u64, upper).unwrap();
                    moduli.push(p);
                    upper = p;
                }
            }
            let ctx = Arc::new(Context::new(&moduli, n).unwrap());
            let ntt = Ntt::new(&moduli, n).unwrap();
            let a = Poly::random(&ctx, Representation::PowerBasis, &mut rng);
            let mut theirs = a.clone();
            theirs.change_representation(Representation::Ntt);
            let ours = ntt.converted(&a, &ctx, Representation::Ntt, false).unwrap();
            assert_eq!(ours, theirs, "forward, N = {n}");
            let back = ntt
                .converted(&ours, &ctx, Representation::PowerBasis, false)
                .unwrap();
            assert_eq!(back, a, "inverse, N = {n}");
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let ntt = Ntt::new(&[generate_prime(62, 8192, 1 << 62).unwrap()], 4096).unwrap();
        assert!(ntt.forward(&mut [0u64; 4095]).is_err());
        assert!(ntt.inverse(&mut vec![0u64; 8192]).is_err());
        assert!(ntt.forward(&mut vec![0u64; 4096]).is_ok());
    }
}
