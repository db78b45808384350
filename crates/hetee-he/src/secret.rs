//! Secret-key decryption and encryption with the key's NTT form kept.
//!
//! `fhe`'s own `SecretKey` converts and transforms the secret key on every
//! call, builds a full `Plaintext` (one more NTT) after each decryption and
//! scales through its general RNS scaler. The enclave decrypts and
//! encrypts a few ciphertexts per layer of every query, so it keeps NTT(s)
//! and NTT(s²) per ciphertext context once per key set and does only the
//! work each operation needs:
//!
//! - decrypt a stage result (degree 2, at the one-prime level the host
//!   switches every result down to): `c0 + c1·s + c2·s²` in NTT form, one
//!   inverse NTT, then `round(t·x/q) mod t` as an exact multiply by a
//!   precomputed reciprocal, without branches or division; anything else
//!   (a data provider's input, once per query) goes through `fhe`;
//! - encrypt (top level): see [`crate::encrypt`].
//!
//! Both are tested equal to `fhe`'s decryption on random ciphertexts.
//! Arithmetic on secret values (the key, phases, messages) is branch-free.

use std::sync::{Arc, OnceLock};

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, SecretKey};
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::{scaler::Scaler, traits::TryConvertFrom, Context, Poly, Representation};
use fhe_traits::{DeserializeParametrized, FheDecoder, FheDecrypter};
use num_bigint::BigUint;
use zeroize::Zeroizing;

use crate::HeError;

/// The error variance of fresh encryptions: `fhe`'s default, which
/// [`crate::HeConfig::build`] keeps (and the noise test measures).
pub(crate) const ERROR_VARIANCE: usize = 10;

/// The secret key prepared for the level of stage results.
struct LevelKey {
    ctx: Arc<Context>,
    s: Zeroizing<Poly>,
    s2: Zeroizing<Poly>,
    half: u64,
    mult: u128,
    shift: u32,
}

/// Decryption and encryption under one BFV secret key.
pub struct SecretOps {
    pub(crate) par: Arc<BfvParameters>,
    pub(crate) t: u64,
    sk: SecretKey,
    /// NTT(s) at the top level, for encryption.
    pub(crate) top: (Arc<Context>, Zeroizing<Poly>),
    /// The fast path of the level stage results arrive at, when it has one
    /// prime small enough for the exact reciprocal.
    results: Option<LevelKey>,
    /// `⌊Q/t⌋ mod q_i` for every prime of the top level.
    pub(crate) delta_mod_q: Vec<u64>,
    /// The top level's rounding `x ↦ round(t·x/Q) mod t`, for degree-1
    /// ciphertexts there (a data provider's input, once per query); made at
    /// the first such decryption (its tables are an NTT context for `t`).
    top_round: OnceLock<Scaler>,
}

fn math(e: fhe_math::Error) -> HeError {
    HeError::from(e)
}

fn ntt_of(coeffs: &[i64], ctx: &Arc<Context>) -> Result<Zeroizing<Poly>, HeError> {
    let mut s = Zeroizing::new(
        Poly::try_convert_from(coeffs, ctx, false, Representation::PowerBasis).map_err(math)?,
    );
    s.change_representation(Representation::Ntt);
    Ok(s)
}

impl SecretOps {
    /// Prepares the secret key with coefficients `coeffs` (centred, as
    /// sampled): NTT(s) at the top level, and NTT(s), NTT(s²) and the
    /// rounding at the level of stage results ([`crate::eval::output_level`]).
    pub fn new(par: &Arc<BfvParameters>, coeffs: Zeroizing<Vec<i64>>) -> Result<Self, HeError> {
        if coeffs.len() != par.degree() {
            return Err(HeError::Params(format!(
                "a secret key of {} coefficients for degree {}",
                coeffs.len(),
                par.degree()
            )));
        }
        let t = par.plaintext();
        let sk = SecretKey::from_bytes(&encode_key(&coeffs), par)?;
        let top_ctx = par.context_at_level(0)?.clone();
        let top = (top_ctx.clone(), ntt_of(&coeffs, &top_ctx)?);
        let ctx = par
            .context_at_level(crate::eval::output_level(par))?
            .clone();
        let results = match ctx.moduli() {
            &[q] if (q as u128)
                .checked_mul(t as u128 + 1)
                .is_some_and(|b| b < 1 << RECIPROCAL_BITS) =>
            {
                let s = ntt_of(&coeffs, &ctx)?;
                let s2 = Zeroizing::new(&*s * &*s);
                let (half, mult, shift) = reciprocal(q);
                Some(LevelKey {
                    ctx,
                    s,
                    s2,
                    half,
                    mult,
                    shift,
                })
            }
            _ => None,
        };
        let delta = top_ctx.modulus() / BigUint::from(t);
        let delta_mod_q = top_ctx
            .moduli()
            .iter()
            .map(|&q| (&delta % q).to_u64_digits().first().copied().unwrap_or(0))
            .collect();
        Ok(SecretOps {
            par: par.clone(),
            t,
            sk,
            top,
            results,
            delta_mod_q,
            top_round: OnceLock::new(),
        })
    }

    /// Parses `fhe`'s serialized secret key (protobuf `repeated sint64
    /// coeffs = 1`, packed). Every coefficient of a key `fhe` samples is
    /// small (`|s_i| < 64`), so each is one zigzag byte and the parse does
    /// not branch on the key; anything else is refused.
    pub fn from_secret_key_bytes(par: &Arc<BfvParameters>, bytes: &[u8]) -> Result<Self, HeError> {
        let bad = || HeError::Params("not a secret key of small coefficients".into());
        let n = par.degree();
        let header = key_header(n);
        if bytes.len() != header.len() + n || bytes[..header.len()] != header[..] {
            return Err(bad());
        }
        let body = &bytes[header.len()..];
        let mut coeffs = Zeroizing::new(vec![0i64; n]);
        let mut high = 0u8;
        for (c, &z) in coeffs.iter_mut().zip(body) {
            high |= z;
            // Zigzag: (z >> 1) ^ -(z & 1).
            *c = ((z >> 1) as i64) ^ -((z & 1) as i64);
        }
        if high & 0x80 != 0 {
            return Err(bad());
        }
        Self::new(par, coeffs)
    }

    /// Decrypts a ciphertext of degree 1 or 2 to its plaintext coefficients
    /// as residues in `[0, t)`: by the fast path at the level of stage
    /// results, with the kept NTT(s) and one RNS rounding for degree 1 at
    /// the top level (a data provider's input, once per query), by `fhe`
    /// elsewhere.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Zeroizing<Vec<u64>>, HeError> {
        if !(2..=3).contains(&ct.len()) {
            return Err(HeError::Malformed(format!(
                "a ciphertext of {} polynomials; expected 2 or 3",
                ct.len()
            )));
        }
        let fast = self
            .results
            .as_ref()
            .filter(|lk| Arc::ptr_eq(&lk.ctx, ct[0].ctx()) || *lk.ctx == **ct[0].ctx());
        let top = &self.top.0;
        if fast.is_none()
            && ct.len() == 2
            && (Arc::ptr_eq(top, ct[0].ctx()) || top.moduli() == ct[0].ctx().moduli())
        {
            return self.decrypt_top(ct);
        }
        let Some(lk) = fast else {
            let pt = Zeroizing::new(self.sk.try_decrypt(ct)?);
            return Ok(Zeroizing::new(Vec::<u64>::try_decode(
                &*pt,
                Encoding::poly_at_level(pt.level()),
            )?));
        };
        // phase = c0 + c1·s (+ c2·s²), coefficient-wise in NTT form on the
        // one prime's residues, constant time, without intermediate polynomials.
        let q = lk
            .ctx
            .moduli_operators()
            .first()
            .ok_or_else(|| HeError::Malformed("a level without primes".into()))?;
        // One prime at this level: a polynomial's residues are its only row.
        let ntt_rows: Vec<std::borrow::Cow<'_, [u64]>> =
            ct.iter().map(ntt_residues).collect::<Result<_, _>>()?;
        let mut acc = Zeroizing::new(ntt_rows[1].to_vec());
        q.mul_vec(&mut acc, row0(&lk.s)?);
        q.add_vec(&mut acc, &ntt_rows[0]);
        if let Some(c2) = ntt_rows.get(2) {
            let mut term = Zeroizing::new(c2.to_vec());
            q.mul_vec(&mut term, row0(&lk.s2)?);
            q.add_vec(&mut acc, &term);
        }
        let mut phase = Zeroizing::new(
            Poly::try_convert_from(
                std::mem::take(&mut *acc),
                &lk.ctx,
                false,
                Representation::Ntt,
            )
            .map_err(math)?,
        );
        phase.change_representation(Representation::PowerBasis);
        let coeffs = phase.coefficients();
        let x = coeffs
            .row(0)
            .to_slice()
            .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))?;
        Ok(Zeroizing::new(
            x.iter()
                .map(|&xi| {
                    // y < q·(t+1) < 2^96: the reciprocal is exact.
                    let y = xi as u128 * self.t as u128 + lk.half as u128;
                    reduce_once(mul_shift(y, lk.mult, lk.shift) as u64, self.t)
                })
                .collect(),
        ))
    }
}

impl SecretOps {
    /// `round(t·(c0 + c1·s)/Q) mod t` at the top level: the phase in NTT
    /// form prime by prime with the kept NTT(s), one inverse NTT per
    /// prime, then `fhe-math`'s RNS rounding (the one `fhe` decrypts with).
    fn decrypt_top(&self, ct: &Ciphertext) -> Result<Zeroizing<Vec<u64>>, HeError> {
        let (ctx, s) = &self.top;
        let n = self.par.degree();
        let c0 = ntt_residues(&ct[0])?;
        let c1 = ntt_residues(&ct[1])?;
        let s = ntt_residues(s)?;
        let mut phase = Zeroizing::new(Vec::with_capacity(n * ctx.moduli().len()));
        for (i, q) in ctx.moduli_operators().iter().enumerate() {
            let mut acc = Zeroizing::new(c1[i * n..(i + 1) * n].to_vec());
            q.mul_vec(&mut acc, &s[i * n..(i + 1) * n]);
            q.add_vec(&mut acc, &c0[i * n..(i + 1) * n]);
            phase.extend_from_slice(&acc);
        }
        let mut p = Zeroizing::new(
            Poly::try_convert_from(std::mem::take(&mut *phase), ctx, false, Representation::Ntt)
                .map_err(math)?,
        );
        p.change_representation(Representation::PowerBasis);
        let round = match self.top_round.get() {
            Some(r) => r,
            None => {
                let t_ctx = Context::new_arc(&[self.t], n).map_err(math)?;
                let r = Scaler::new(
                    ctx,
                    &t_ctx,
                    ScalingFactor::new(&BigUint::from(self.t), ctx.modulus()),
                )
                .map_err(math)?;
                self.top_round.get_or_init(|| r)
            }
        };
        let m = Zeroizing::new(p.scale(round).map_err(math)?);
        Ok(Zeroizing::new(row0(&m)?.to_vec()))
    }
}

/// All residues of `p` in NTT form, prime after prime: borrowed when `p` is
/// in NTT form already (ciphertexts from the codec, the kept keys).
fn ntt_residues(p: &Poly) -> Result<std::borrow::Cow<'_, [u64]>, HeError> {
    fn all(p: &Poly) -> Result<&[u64], HeError> {
        p.coefficients()
            .to_slice()
            .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))
    }
    if *p.representation() == Representation::Ntt {
        return Ok(std::borrow::Cow::Borrowed(all(p)?));
    }
    let mut p = p.clone();
    p.change_representation(Representation::Ntt);
    Ok(std::borrow::Cow::Owned(all(&p)?.to_vec()))
}

/// The first row of a polynomial's coefficients, contiguous.
fn row0(p: &Poly) -> Result<&[u64], HeError> {
    p.coefficients()
        .index_axis_move(ndarray::Axis(0), 0)
        .to_slice()
        .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))
}

/// Bits of the values the one-prime rounding divides.
const RECIPROCAL_BITS: u32 = 96;

/// `(⌊q/2⌋, mult, shift)` such that `floor(y / q) = (y · mult) >> shift` for
/// every `y < 2^96`: `ℓ = ⌈log2 q⌉`, `shift = 96 + ℓ`, `mult = ⌈2^shift / q⌉
/// ≤ 2^97` (Granlund and Montgomery 1994, theorem 4.2).
fn reciprocal(q: u64) -> (u64, u128, u32) {
    let l = 64 - (q - 1).leading_zeros();
    let shift = RECIPROCAL_BITS + l;
    // 2^shift / q, rounded up, in 256-bit arithmetic on two u128 halves:
    // 2^shift = hi·2^128 with hi = 2^(shift-128) when shift ≥ 128.
    let mult = if shift >= 128 {
        let hi = 1u128 << (shift - 128);
        // (hi·2^128) / q = (hi / q)·2^128 + ((hi % q)·2^128) / q; hi < q·2^97
        // keeps the quotient below 2^128 (shift ≤ 160, q ≥ 2^(ℓ-1)).
        let (qh, rh) = (hi / q as u128, hi % q as u128);
        let (lo, rem) = div_2_128(rh, q as u128);
        let m = (qh << 64 << 64) + lo;
        m + u128::from(rem != 0)
    } else {
        (1u128 << shift).div_ceil(q as u128)
    };
    (q / 2, mult, shift)
}

/// `(r·2^128) / d` and its remainder for `r < d < 2^64`, by long division
/// in 64-bit steps (public values only).
fn div_2_128(r: u128, d: u128) -> (u128, u128) {
    let mut rem = r;
    let mut quot = 0u128;
    for _ in 0..2 {
        let cur = rem << 64;
        quot = (quot << 64) | (cur / d);
        rem = cur % d;
    }
    (quot, rem)
}

/// `(y · m) >> shift` with the full 256-bit product, without branches on `y`.
fn mul_shift(y: u128, m: u128, shift: u32) -> u128 {
    const LO: u128 = u64::MAX as u128;
    let (y0, y1, m0, m1) = (y & LO, y >> 64, m & LO, m >> 64);
    let p0 = y0 * m0;
    let p1 = y0 * m1;
    let p2 = y1 * m0;
    let p3 = y1 * m1;
    let mid = (p0 >> 64) + (p1 & LO) + (p2 & LO);
    let hi = p3 + (p1 >> 64) + (p2 >> 64) + (mid >> 64);
    let lo = (mid << 64) | (p0 & LO);
    if shift >= 128 {
        hi >> (shift - 128)
    } else {
        (hi << (128 - shift)) | (lo >> shift)
    }
}

/// `fhe`'s serialization header of a secret key of `n` one-byte
/// coefficients: field 1, wire type 2, then `n` as a varint.
fn key_header(n: usize) -> Vec<u8> {
    let mut h = vec![0x0a];
    let mut left = n;
    loop {
        let b = (left & 0x7f) as u8;
        left >>= 7;
        if left == 0 {
            h.push(b);
            return h;
        }
        h.push(b | 0x80);
    }
}

/// `fhe`'s serialization of small coefficients (`|c| < 64`).
fn encode_key(coeffs: &[i64]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(key_header(coeffs.len()));
    out.extend(coeffs.iter().map(|&c| ((c << 1) ^ (c >> 63)) as u8));
    out
}

/// `x mod t` for `x < 2t`, without branches.
fn reduce_once(x: u64, t: u64) -> u64 {
    let d = x.wrapping_sub(t);
    let keep = (d >> 63).wrapping_neg(); // all ones if x < t
    (x & keep) | (d & !keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
    use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize};
    use rand::Rng;

    fn setup(bound: u64) -> (Arc<BfvParameters>, SecretKey, SecretOps) {
        let par = crate::HeConfig::for_accumulator_bound(bound)
            .unwrap()
            .build()
            .unwrap();
        let sk = SecretKey::random(&par, &mut rand::rng());
        let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
        (par, sk, ops)
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let mut rng = rand::rng();
        for q in [
            3u64,
            65537,
            (1 << 36) - 5,
            (1 << 37) + 3,
            (1 << 40) - 87,
            36028797018652673,
            18014398509309953,
            (1 << 62) + 135,
        ] {
            let (_, mult, shift) = reciprocal(q);
            let q = q as u128;
            for y in [0, 1, q - 1, q, q + 1, (1 << 96) - 1, (1 << 95) + 12345]
                .into_iter()
                .chain((0..4000).map(|i| {
                    let top = if i % 2 == 0 {
                        1u128 << RECIPROCAL_BITS
                    } else {
                        q * 40_000_000
                    };
                    rng.random_range(0..top)
                }))
            {
                assert_eq!(mul_shift(y, mult, shift), y / q, "{y} / {q}");
            }
        }
    }

    #[test]
    fn decrypt_equals_fhe_on_random_ciphertexts_at_every_level() {
        for bound in [1000, 1 << 20, 1 << 28, 1 << 35] {
            let (par, sk, ops) = setup(bound);
            // Stage results take the fast path when their level has one prime
            // (the bundled models' parameters do).
            let out = par
                .context_at_level(crate::eval::output_level(&par))
                .unwrap()
                .moduli()
                .len();
            assert_eq!(ops.results.is_some(), out == 1, "bound {bound}");
            if bound <= 1 << 23 {
                assert!(ops.results.is_some(), "no fast path for bound {bound}");
            }
            let pk = PublicKey::new(&sk, &mut rand::rng());
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            for level in 0..=par.max_level() {
                for degree2 in [false, true] {
                    let m: Vec<i64> = (0..par.degree())
                        .map(|_| rng.random_range(-(t / 2)..t / 2))
                        .collect();
                    let pt = Plaintext::try_encode(m.as_slice(), Encoding::poly(), &par).unwrap();
                    let mut ct: Ciphertext = pk.try_encrypt(&pt, &mut rng).unwrap();
                    if degree2 {
                        let one =
                            Plaintext::try_encode(&[1i64][..], Encoding::poly(), &par).unwrap();
                        let c1: Ciphertext = pk.try_encrypt(&one, &mut rng).unwrap();
                        ct = &ct * &c1;
                    }
                    ct.switch_to_level(level).unwrap();
                    let want =
                        Vec::<u64>::try_decode(&sk.try_decrypt(&ct).unwrap(), Encoding::poly())
                            .unwrap();
                    assert_eq!(
                        *ops.decrypt(&ct).unwrap(),
                        want,
                        "bound {bound}, level {level}, degree 2: {degree2}"
                    );
                }
            }
        }
    }

    #[test]
    fn encryptions_decrypt_with_fhe() {
        for bound in [1000, 1 << 28] {
            let (par, sk, ops) = setup(bound);
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            for _ in 0..5 {
                let m: Vec<i64> = (0..par.degree())
                    .map(|_| rng.random_range(-(t / 2)..t / 2))
                    .collect();
                let ct = ops.encrypt(&m, &mut rng).unwrap();
                let got = Vec::<i64>::try_decode(&sk.try_decrypt(&ct).unwrap(), Encoding::poly())
                    .unwrap();
                assert_eq!(got, m);
                let mine: Vec<u64> = ops.decrypt(&ct).unwrap().to_vec();
                let want: Vec<u64> = m.iter().map(|&v| v.rem_euclid(t) as u64).collect();
                assert_eq!(mine, want);
            }
        }
    }

    #[test]
    fn malformed_key_bytes_are_refused() {
        let (par, sk, _) = setup(1000);
        let mut b = sk.to_bytes();
        assert!(SecretOps::from_secret_key_bytes(&par, &b[..b.len() - 1]).is_err());
        b[0] = 0x12;
        assert!(SecretOps::from_secret_key_bytes(&par, &b).is_err());
        let mut b = sk.to_bytes();
        let last = b.len() - 1;
        b[last] = 0xff;
        assert!(SecretOps::from_secret_key_bytes(&par, &b).is_err());
    }
}
