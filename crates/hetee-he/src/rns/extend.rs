//! The extension of a fresh ciphertext's polynomials to the
//! multiplication basis (see the module doc of [`super`]).

use std::borrow::Cow;
use std::sync::Arc;

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use ndarray::{s, Array2};

use super::{big_mod, degree, row_slices, Decomposition, FixedSplit, MAX_PRIMES};
use crate::ntt::Ntt;
use crate::HeError;

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
    /// The transforms of the ciphertext basis and of the extra primes.
    from_ntt: Ntt,
    extra_ntt: Ntt,
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
            from_ntt: Ntt::for_context(from)?,
            extra_ntt: Ntt::for_context(&extra)?,
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
                let n = self
                    .from_ntt
                    .converted(p, p.ctx(), Representation::Ntt, true)?;
                (Cow::Borrowed(p), Cow::Owned(n))
            }
            _ => {
                let c = self
                    .from_ntt
                    .converted(p, p.ctx(), Representation::PowerBasis, true)?;
                (Cow::Owned(c), Cow::Borrowed(p))
            }
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
        self.extra_ntt.forward_rows(&mut out)?;
        let mut all = Array2::<u64>::zeros((k + e, n));
        all.slice_mut(s![..k, ..]).assign(&ntt.coefficients());
        all.slice_mut(s![k.., ..]).assign(&out);
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
        let split = FixedSplit::<K>::new(&self.from, rows, n);
        let hat: [[u64; K]; E] =
            std::array::from_fn(|j| std::array::from_fn(|i| self.hat_mod_p[j][i]));
        let neg_q: [u64; E] = std::array::from_fn(|j| self.neg_q_mod_p[j]);
        let ops = self.extra.moduli_operators();
        for c in 0..n {
            let (y, v) = split.split(c);
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
