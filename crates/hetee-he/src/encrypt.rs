//! Secret-key encryption in two halves: an encryption of zero made ahead
//! of time, and the message added when it is known.
//!
//! A fresh symmetric BFV encryption of `m` is `(c0, c1) = (Δ·m + e − a·s, a)`
//! with `a` uniform (here expanded from a public seed, as `fhe` does) and `e`
//! a small error. Everything but `Δ·m` is independent of the message:
//! [`SecretOps::zero_encryption`] draws `a` and `e` and computes
//! `z = e − a·s` in the coefficient domain (the sampling, one product and
//! one inverse NTT per prime: most of the cost), and
//! [`SecretOps::encrypt_with`] later forms `c0 = Δ·m + z` (a conversion,
//! a scalar product and an addition). The enclave keeps a small reserve
//! of zero encryptions that an idle thread refills, so a query pays only
//! the second half.
//!
//! Security rests on each zero encryption being used once: `z` masks the
//! message as a one-time pad would, and two messages sent with the same
//! `z` would leak their difference. [`ZeroEncryption`] is therefore
//! neither `Clone` nor `Copy`, [`SecretOps::encrypt_with`] consumes it, and
//! it is zeroized when dropped. `c0` stays in the coefficient domain: it
//! travels that way ([`crate::codec::seeded_to_bytes`]) and the host, which
//! has the cores, applies the forward NTT when it decodes it.

use fhe::bfv::Ciphertext;
use std::sync::Arc;

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use rand::{CryptoRng, Rng, RngCore};
use zeroize::Zeroizing;

use crate::arith::{lazy_shoup, mont_mul, shoup, sub_if_at_least};
use crate::secret::{SecretOps, ERROR_VARIANCE};
use crate::HeError;

fn math(e: fhe_math::Error) -> HeError {
    HeError::from(e)
}

/// `e − a·s` for a fresh error `e` and `a` expanded from `seed`: an
/// encryption of zero under the secret key, waiting for its message.
/// Secret until used (it masks the message); used once.
pub struct ZeroEncryption {
    /// `z`'s residues in the coefficient domain, prime after prime.
    z: Zeroizing<Vec<u64>>,
    ctx: Arc<Context>,
    seed: [u8; 32],
}

impl std::fmt::Debug for ZeroEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZeroEncryption(..)")
    }
}

/// A fresh symmetric encryption whose `c1` is the uniform polynomial in
/// NTT form that `seed` names ([`crate::sample::uniform_ntt`]): `c0` (coefficient form) and the
/// seed. Only [`SecretOps::encrypt_with`] makes one, so the form holds by
/// construction.
pub struct Seeded {
    pub(crate) c0: Poly,
    pub(crate) seed: [u8; 32],
}

impl Seeded {
    /// The full ciphertext (expands `c1` from the seed), both polynomials in
    /// NTT form.
    pub fn expand(
        &self,
        par: &std::sync::Arc<fhe::bfv::BfvParameters>,
    ) -> Result<Ciphertext, HeError> {
        let mut c0 = self.c0.clone();
        c0.change_representation(Representation::Ntt);
        let a = crate::sample::uniform_ntt(self.c0.ctx(), &self.seed)?;
        Ok(Ciphertext::new(vec![c0, a], par)?)
    }

    /// The seed of `c1`.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }
}

impl SecretOps {
    /// Draws an encryption of zero at the top level: the message-free
    /// (and costly) half of [`SecretOps::encrypt_seeded`]. Prime by
    /// prime: `a` expanded from a fresh seed ([`crate::sample`]), times
    /// NTT(s) (Montgomery's product, no branch), the inverse transform,
    /// and the error subtracted from, all in one row buffer.
    pub fn zero_encryption<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
    ) -> Result<ZeroEncryption, HeError> {
        let n = self.par.degree();
        let moduli = self.top.0.moduli();
        let seed: [u8; 32] = rng.random();
        let e = crate::sample::centred_binomial(n, ERROR_VARIANCE, rng)?;
        // a, then a·s: secret from the product on.
        let mut z = Zeroizing::new(crate::sample::uniform_ntt_rows(moduli, n, &seed));
        for (i, (row, &q)) in z.chunks_exact_mut(n).zip(moduli).enumerate() {
            let key = &self.top_key.mont[i * n..(i + 1) * n];
            let neg_inv = self.top_key.neg_inv[i];
            for (x, &k) in row.iter_mut().zip(key) {
                *x = sub_if_at_least(mont_mul(*x, k, q, neg_inv), q);
            }
        }
        self.top_ntt.inverse(&mut z)?;
        // z = e − a·s, with e's residue e + q when negative.
        for (row, &q) in z.chunks_exact_mut(n).zip(moduli) {
            for (x, &ei) in row.iter_mut().zip(e.iter()) {
                let ei = (ei as u64).wrapping_add(q & ((ei >> 63) as u64));
                *x = sub_if_at_least(ei + q - *x, q);
            }
        }
        Ok(ZeroEncryption {
            z,
            ctx: self.top.0.clone(),
            seed,
        })
    }

    /// Encrypts the centred plaintext coefficients `m` (`|m_i| < t/2`) with
    /// `zero`, which is used up: `c0 = Δ·m + z` (`c0_rows`).
    pub fn encrypt_with(&self, m: &[i64], zero: ZeroEncryption) -> Result<Seeded, HeError> {
        let ctx = &self.top.0;
        let mut c0 = Vec::with_capacity(self.par.degree() * ctx.moduli().len());
        self.c0_rows(m, &zero, |_, row| c0.extend_from_slice(row))?;
        Ok(Seeded {
            c0: Poly::try_convert_from(c0, ctx, false, Representation::PowerBasis).map_err(math)?,
            seed: zero.seed,
        })
    }

    /// Encrypts the centred plaintext coefficients `m` with `zero`, which
    /// is used up, straight to the seeded wire form: the same bytes as
    /// [`crate::codec::seeded_to_bytes`] of [`Self::encrypt_with`], each
    /// row of `c0` packed as it is made, without the intermediate
    /// polynomial.
    pub fn encrypt_to_bytes(&self, m: &[i64], zero: ZeroEncryption) -> Result<Vec<u8>, HeError> {
        let mut out = crate::codec::seeded_header(self.top.0.moduli().len());
        out.reserve(crate::codec::encoded_len(&self.par, 0, 1)? + crate::codec::SEED_LEN);
        if !self.c0_packed_avx512(m, &zero, &mut out)? {
            self.c0_packed(m, &zero, &mut out)?;
        }
        out.extend_from_slice(&zero.seed);
        Ok(out)
    }

    /// [`Self::c0_rows`] packed straight into `out` by the AVX-512 kernel
    /// ([`crate::simd::encrypt_row`]); `false` when it cannot run here
    /// (nothing appended, nothing checked). Checks the message first.
    fn c0_packed_avx512(
        &self,
        m: &[i64],
        zero: &ZeroEncryption,
        out: &mut Vec<u8>,
    ) -> Result<bool, HeError> {
        if !crate::simd::available() {
            return Ok(false);
        }
        self.check_message(m, zero)?;
        let start = out.len();
        for (qi, delta, zrow) in self.rows_of(zero) {
            let w = crate::codec::width(qi);
            if !crate::simd::encrypt_row(m, zrow, qi, delta, w, out) {
                out.truncate(start);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Self::c0_rows`] packed straight into `out`, each residue computed
    /// and stored in one step ([`pack_c0`]). Checks the message first.
    fn c0_packed(
        &self,
        m: &[i64],
        zero: &ZeroEncryption,
        out: &mut Vec<u8>,
    ) -> Result<(), HeError> {
        self.check_message(m, zero)?;
        for (qi, k, zrow) in self.rows_of(zero) {
            match crate::codec::width(qi) {
                1 => pack_c0::<1>(m, zrow, qi, k, out),
                2 => pack_c0::<2>(m, zrow, qi, k, out),
                3 => pack_c0::<3>(m, zrow, qi, k, out),
                4 => pack_c0::<4>(m, zrow, qi, k, out),
                5 => pack_c0::<5>(m, zrow, qi, k, out),
                6 => pack_c0::<6>(m, zrow, qi, k, out),
                7 => pack_c0::<7>(m, zrow, qi, k, out),
                _ => pack_c0::<8>(m, zrow, qi, k, out),
            }
        }
        Ok(())
    }

    /// `c0 = Δ·m + z` prime by prime, each row handed to `each` with its
    /// prime: residue by residue, Shoup's product by the public
    /// `Δ mod q_i`, the zero added, two masked subtractions
    /// ([`crate::arith`]), no branch on the message. Checks the message
    /// first ([`Self::check_message`]).
    fn c0_rows(
        &self,
        m: &[i64],
        zero: &ZeroEncryption,
        mut each: impl FnMut(u64, &[u64]),
    ) -> Result<(), HeError> {
        self.check_message(m, zero)?;
        let mut row = Zeroizing::new(vec![0u64; self.par.degree()]);
        for (qi, (d, d_shoup), zrow) in self.rows_of(zero) {
            let message = m.iter().copied().chain(std::iter::repeat(0));
            for ((r, x), &zi) in row.iter_mut().zip(message).zip(zrow) {
                *r = c0_residue(x, zi, qi, d, d_shoup);
            }
            // Δ·m + z: the ciphertext, public from here on.
            each(qi, &row);
        }
        Ok(())
    }

    /// Per prime of the top level: the prime, `Δ mod q_i` with its Shoup
    /// companion, and `zero`'s row.
    fn rows_of<'a>(
        &'a self,
        zero: &'a ZeroEncryption,
    ) -> impl Iterator<Item = (u64, (u64, u64), &'a [u64])> + 'a {
        let n = self.par.degree();
        (self.top.0.moduli().iter())
            .zip(&self.delta_mod_q)
            .zip(zero.z.chunks_exact(n))
            .map(|((&q, &d), z)| (q, (d, shoup(d, q)), z))
    }

    /// The checks before an encryption with `zero`: the message's length
    /// and range (without a branch on any coefficient) and the zero's
    /// parameters.
    fn check_message(&self, m: &[i64], zero: &ZeroEncryption) -> Result<(), HeError> {
        let n = self.par.degree();
        if m.len() > n {
            return Err(HeError::Params(format!(
                "{} coefficients for degree {n}",
                m.len()
            )));
        }
        let half = self.t / 2;
        let out = m.iter().fold(0u64, |acc, &x| {
            acc | half.wrapping_sub(x.unsigned_abs()) >> 63
        });
        if out != 0 {
            return Err(HeError::Params(
                "a message coefficient is outside (-t/2, t/2)".into(),
            ));
        }
        if zero.ctx != self.top.0 || zero.z.len() != n * self.top.0.moduli().len() {
            return Err(HeError::Params(
                "an encryption of zero made under other parameters".into(),
            ));
        }
        Ok(())
    }

    /// Encrypts `m` at the top level in the seeded form, both halves at
    /// once: `c0` and the public seed of `c1`, which travels as such
    /// ([`crate::codec::seeded_to_bytes`]) without `c1` being expanded.
    pub fn encrypt_seeded<R: RngCore + CryptoRng>(
        &self,
        m: &[i64],
        rng: &mut R,
    ) -> Result<Seeded, HeError> {
        let zero = self.zero_encryption(rng)?;
        self.encrypt_with(m, zero)
    }

    /// Encrypts `m` at the top level: a fresh symmetric encryption whose
    /// `c1` is derived from a random seed.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &self,
        m: &[i64],
        rng: &mut R,
    ) -> Result<Ciphertext, HeError> {
        self.encrypt_seeded(m, rng)?.expand(&self.par)
    }
}

/// Residue `Δ·x + z_i mod q` of `c0`, for a centred message coefficient
/// `|x| < t/2 < q` and `z_i < q`: `x`'s residue (`x`, or `x + q` when
/// negative), Shoup's product by the public `Δ mod q` (`d`, with its
/// companion), the zero added, two masked subtractions; no branch.
fn c0_residue(x: i64, zi: u64, q: u64, d: u64, d_shoup: u64) -> u64 {
    let xi = (x as u64).wrapping_add(q & ((x >> 63) as u64));
    let v = lazy_shoup(xi, d, d_shoup, q) + zi;
    sub_if_at_least(sub_if_at_least(v, 2 * q), q)
}

/// One prime's row of `c0` appended to `out` in the codec's `W`-byte
/// residues: each residue stored as 8 bytes over the next one's place
/// (which the next store overwrites), the slack cut off at the end.
fn pack_c0<const W: usize>(
    m: &[i64],
    zrow: &[u64],
    q: u64,
    (d, d_shoup): (u64, u64),
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + zrow.len() * W + 8, 0);
    let dst = &mut out[start..];
    // Past the message (whose length is public: the schedule's), `c0` is
    // the zero's row itself, already below `q`: only packed.
    let (zm, tail) = zrow.split_at(m.len().min(zrow.len()));
    let mut k = 0;
    for (&x, &zi) in m.iter().zip(zm) {
        let v = c0_residue(x, zi, q, d, d_shoup);
        dst[k..k + 8].copy_from_slice(&v.to_le_bytes());
        k += W;
    }
    for &zi in tail {
        dst[k..k + 8].copy_from_slice(&zi.to_le_bytes());
        k += W;
    }
    out.truncate(start + zrow.len() * W);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeConfig;
    use fhe::bfv::SecretKey;
    use fhe_traits::Serialize;

    fn setup(bound: u64) -> (std::sync::Arc<fhe::bfv::BfvParameters>, SecretOps) {
        let par = HeConfig::for_accumulator_bound(bound)
            .unwrap()
            .build()
            .unwrap();
        let sk = SecretKey::random(&par, &mut rand::rng());
        let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
        (par, ops)
    }

    #[test]
    fn zero_encryptions_made_ahead_decrypt_to_their_message() {
        for bound in [1000, 1 << 28] {
            let (par, ops) = setup(bound);
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            let zeros: Vec<ZeroEncryption> = (0..3)
                .map(|_| ops.zero_encryption(&mut rng).unwrap())
                .collect();
            for zero in zeros {
                let m: Vec<i64> = (0..par.degree())
                    .map(|_| rng.random_range(-(t / 2)..t / 2))
                    .collect();
                let ct = ops.encrypt_with(&m, zero).unwrap().expand(&par).unwrap();
                let got: Vec<u64> = ops.decrypt(&ct).unwrap().to_vec();
                let want: Vec<u64> = m.iter().map(|&v| v.rem_euclid(t) as u64).collect();
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn encrypt_with_equals_the_polynomial_arithmetic() {
        // c0 = Δ·m + z computed with fhe-math's polynomials.
        for bound in [1000, 1 << 35] {
            let (par, ops) = setup(bound);
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            let zero = ops.zero_encryption(&mut rng).unwrap();
            let z = Poly::try_convert_from(
                zero.z.to_vec(),
                &ops.top.0,
                false,
                Representation::PowerBasis,
            )
            .unwrap();
            let m: Vec<i64> = (0..par.degree() - 3)
                .map(|_| rng.random_range(-(t / 2)..t / 2))
                .collect();
            let got = ops.encrypt_with(&m, zero).unwrap();
            let mut full = vec![0i64; par.degree()];
            full[..m.len()].copy_from_slice(&m);
            let mut want = Poly::try_convert_from(
                full.as_slice(),
                &ops.top.0,
                false,
                Representation::PowerBasis,
            )
            .unwrap();
            want *= &(ops.top.0.modulus() / num_bigint::BigUint::from(ops.t));
            want += &z;
            assert_eq!(got.c0, want);
        }
    }

    /// Straight to bytes (the AVX-512 kernel where this CPU has it) and
    /// through the polynomial (the scalar rows) give the same bytes, for
    /// messages ending inside and at the end of a vector.
    #[test]
    fn encryption_straight_to_bytes_equals_the_polynomial_path() {
        use rand::SeedableRng;
        for bound in [1000, 1 << 28, 1 << 35] {
            let (par, ops) = setup(bound);
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            for len in [0, 5, 13, par.degree() - 3, par.degree()] {
                let mut m: Vec<i64> = (0..len)
                    .map(|_| rng.random_range(-(t / 2)..t / 2))
                    .collect();
                if len > 2 {
                    (m[0], m[1]) = (t / 2, -(t / 2));
                }
                // The same zero twice, from the same seeded generator.
                let seed: [u8; 32] = rng.random();
                let zero = |s| {
                    ops.zero_encryption(&mut rand_chacha::ChaCha8Rng::from_seed(s))
                        .unwrap()
                };
                let want =
                    crate::codec::seeded_to_bytes(&ops.encrypt_with(&m, zero(seed)).unwrap());
                assert_eq!(
                    ops.encrypt_to_bytes(&m, zero(seed)).unwrap(),
                    want,
                    "bound {bound}, {len} coefficients"
                );
            }
            let half = (ops.t / 2) as i64;
            let zero = ops.zero_encryption(&mut rng).unwrap();
            assert!(ops.encrypt_to_bytes(&[0, half + 1], zero).is_err());
        }
    }

    /// `z + a·s` (the phase of an encryption of zero, computed with
    /// fhe-math's polynomials) is the error: small, centred, of the
    /// variance fhe uses. Fails if the error is left out or `a·s` is
    /// formed with another `a` than the seed's.
    #[test]
    fn a_zero_encryption_is_an_error_of_the_right_variance_under_a_times_s() {
        let (par, ops) = setup(1000);
        let mut errors = Vec::new();
        for _ in 0..4 {
            let zero = ops.zero_encryption(&mut rand::rng()).unwrap();
            let ctx = &ops.top.0;
            let mut phase =
                Poly::try_convert_from(zero.z.to_vec(), ctx, false, Representation::PowerBasis)
                    .unwrap();
            let mut a_s = crate::sample::uniform_ntt(ctx, &zero.seed).unwrap();
            a_s *= &*ops.top.1;
            a_s.change_representation(Representation::PowerBasis);
            phase += &a_s;
            let q0 = ctx.moduli()[0];
            for &v in phase.coefficients().row(0) {
                let centred = if v > q0 / 2 {
                    v as i64 - q0 as i64
                } else {
                    v as i64
                };
                assert!(centred.abs() <= 20, "an error coefficient of {centred}");
                errors.push(centred);
            }
        }
        let n = errors.len() as f64;
        let var = errors.iter().map(|&e| (e * e) as f64).sum::<f64>() / n;
        assert!((var - ERROR_VARIANCE as f64).abs() < 0.6, "variance {var}");
        assert_eq!(par.degree() * 4, errors.len());
    }

    /// The host as attacker, with a ciphertext whose message it knows
    /// (the enclave re-encrypts all-zero tensors, and packing leaves known
    /// zeros): `c0 + c1·s = Δm + e`, so without the error the key is
    /// `(Δm − c0) / c1`, slot by slot in NTT form. The attack recovers the
    /// key from an error-free encryption (so the test can fail) and no
    /// slot of it from the enclave's.
    #[test]
    fn attack_the_key_solved_from_a_known_message_is_wrong_in_every_slot() {
        use fhe_math::zq::Modulus;
        let (par, ops) = setup(1000);
        let n = par.degree();
        let ctx = &ops.top.0;
        let key = ops.top.1.coefficients().to_owned();
        // s_i = −c0_i / c1_i per slot (the message is zero).
        let solve = |c0: &Poly, c1: &Poly| -> usize {
            let (c0, c1) = (c0.coefficients(), c1.coefficients());
            let mut right = 0;
            for (i, &q) in ctx.moduli().iter().enumerate() {
                let m = Modulus::new(q).unwrap();
                for j in 0..n {
                    let Some(inv) = m.inv(c1[[i, j]]) else {
                        continue;
                    };
                    right += usize::from(m.mul(m.neg(c0[[i, j]]), inv) == key[[i, j]]);
                }
            }
            right
        };
        let zero = ops.zero_encryption(&mut rand::rng()).unwrap();
        let seed = zero.seed;
        let ct = ops
            .encrypt_with(&vec![0; n], zero)
            .unwrap()
            .expand(&par)
            .unwrap();
        assert_eq!(solve(&ct[0], &ct[1]), 0, "a slot of the key recovered");
        // The same seed without the error: c0 = −a·s.
        let a = crate::sample::uniform_ntt(ctx, &seed).unwrap();
        let mut c0 = a.clone();
        c0 *= &*ops.top.1;
        let c0 = -&c0;
        assert_eq!(solve(&c0, &a), n * ctx.moduli().len());
    }

    #[test]
    fn each_zero_encryption_masks_with_fresh_randomness() {
        // The same message twice: different seeds, different c0.
        let (par, ops) = setup(1000);
        let m = vec![7i64; par.degree()];
        let a = ops.encrypt_seeded(&m, &mut rand::rng()).unwrap();
        let b = ops.encrypt_seeded(&m, &mut rand::rng()).unwrap();
        assert_ne!(a.seed(), b.seed());
        assert_ne!(a.c0, b.c0);
    }

    #[test]
    fn other_parameters_and_out_of_range_messages_are_refused() {
        let (_, ops) = setup(1000);
        let (par2, ops2) = setup(1 << 35);
        let zero = ops2.zero_encryption(&mut rand::rng()).unwrap();
        assert!(ops.encrypt_with(&[1, 2, 3], zero).is_err());
        let zero = ops.zero_encryption(&mut rand::rng()).unwrap();
        assert!(ops
            .encrypt_with(&vec![0; par2.degree() * 2 + 1], zero)
            .is_err());
        // Coefficients outside (-t/2, t/2) are refused, not wrapped.
        let half = (ops.t / 2) as i64;
        for bad in [half + 1, -half - 1, i64::MIN, i64::MAX] {
            let zero = ops.zero_encryption(&mut rand::rng()).unwrap();
            assert!(ops.encrypt_with(&[0, bad, 0], zero).is_err(), "{bad}");
        }
        for edge in [half, -half] {
            let zero = ops.zero_encryption(&mut rand::rng()).unwrap();
            assert!(ops.encrypt_with(&[edge], zero).is_ok(), "{edge}");
        }
    }
}
