//! Decryption with the secret key's NTT form kept, at the levels the
//! enclave decrypts at, straight from the codec's bytes.
//!
//! The enclave decrypts two kinds of ciphertext: a stage result (degree 2,
//! at the one-prime level the host switches every result down to, a few
//! per layer of every query) and a data provider's input (degree 1 at the
//! top level, two primes for the `N = 4096` parameters, once per query).
//! For both, a `LevelKey` holds NTT(s) and NTT(s²) per prime in
//! Montgomery form (one word per residue) and the level's rounding:
//!
//! 1. the phase `c0 + c1·s (+ c2·s²)` in NTT form, prime by prime, read
//!    from the wire bytes (NTT form already: nothing is transformed
//!    forward) with Montgomery products;
//! 2. one inverse NTT per prime (the context's own operators);
//! 3. `round(t·x/Q) mod t`, with `x` lifted from its residues by Garner's
//!    formula for two primes, as a quotient estimated with a precomputed
//!    fixed-point `t/Q` and corrected by its exact remainder (at most two
//!    steps, taken as masks).
//!
//! Every step is branch-free on the phase: `fhe-math`'s constant-time
//! Shoup products, sums and Barrett reduction, the data-independent NTT,
//! and masks in the rounding. Tested equal to `fhe`'s decryption on random
//! ciphertexts ([`crate::secret`]'s tests) and to exact integer rounding on
//! edge values (below).

use std::sync::Arc;

use fhe_math::rq::{Context, Poly};
use fhe_math::zq::Modulus;
use zeroize::Zeroizing;

use crate::arith::{
    at_least, at_least_128, lazy_shoup, mont_mul, neg_inverse, reduce_once, shoup, sub_if_at_least,
};
use crate::extract::Extraction;
use crate::ntt::Ntt;
use crate::phase::phase_from_wire;
use crate::simd;
use crate::HeError;

/// `round(t·x/Q) mod t` for the one or two primes of a level.
enum Rounding {
    /// `Q = p`: `c = ⌊t·2^64/p⌋`.
    One { p: u64, half: u64, c: u64 },
    /// `Q = q1·q2 < 2^120`: Garner's lift `x = x1 + q1·((x2 − x1)·q1⁻¹ mod q2)`,
    /// then `c = ⌊t·2^128/Q⌋ < 2^64`.
    Two {
        q1: u64,
        q2: u64,
        /// A multiple of `q2` at least `q1`: `x2 + cover − x1 > 0`.
        cover: u64,
        q1_inv: u64,
        q1_inv_shoup: u64,
        q: u128,
        half: u128,
        c: u64,
    },
}

/// The secret key prepared for decryption at one level.
pub(crate) struct LevelKey {
    /// The level's context (to recognize its ciphertexts).
    pub(crate) ctx: Arc<Context>,
    n: usize,
    /// The level's primes.
    primes: Vec<u64>,
    /// NTT(s^j)·2^64 mod q_i for `j = 1..=powers.len()`, all residues
    /// prime after prime (Montgomery form).
    powers: Vec<Zeroizing<Vec<u64>>>,
    /// `−q_i⁻¹ mod 2^64` per prime.
    neg_inv: Vec<u64>,
    rounding: Rounding,
    t: u64,
    /// The level's transforms (shared plans, nothing per key set).
    ntt: Ntt,
}

/// The residues of `p` (NTT form), prime after prime, contiguous.
fn residues(p: &Poly) -> Result<&[u64], HeError> {
    p.coefficients()
        .to_slice()
        .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))
}

/// `v·2^64 mod q_i` for every residue `v` of `rows` (prime after prime,
/// `n` each): Montgomery form, for [`mont_mul`]. Computed as
/// `REDC(v · (2^128 mod q_i))`, so no division touches the (secret) values.
pub(crate) fn montgomery_rows(
    moduli: &[u64],
    neg_inv: &[u64],
    n: usize,
    rows: &[u64],
) -> Zeroizing<Vec<u64>> {
    let mut mont = Zeroizing::new(Vec::with_capacity(rows.len()));
    for ((&p, &ni), row) in moduli.iter().zip(neg_inv).zip(rows.chunks_exact(n)) {
        let r2 = (((1u128 << 64) % p as u128).pow(2) % p as u128) as u64;
        mont.extend(
            row.iter()
                .map(|&v| sub_if_at_least(mont_mul(v, r2, p, ni), p)),
        );
    }
    mont
}

impl LevelKey {
    /// The key at `ctx` for ciphertexts of degree up to `degree`, given
    /// NTT(s) there; `None` when the level has more than two primes or
    /// its primes are too large for the rounding (then `fhe` decrypts).
    pub(crate) fn new(
        ctx: &Arc<Context>,
        s: &Poly,
        degree: usize,
        t: u64,
    ) -> Result<Option<Self>, HeError> {
        let rounding = match *ctx.moduli() {
            [p] if p < PRIME_LIMIT && t < p => {
                let c = ((t as u128) << 64) / p as u128;
                Rounding::One {
                    p,
                    half: p / 2,
                    c: c as u64,
                }
            }
            [q1, q2] if q1 < PRIME_LIMIT && q2 < PRIME_LIMIT => {
                let q = q1 as u128 * q2 as u128;
                if (t as u128) >= q >> 64 {
                    return Ok(None);
                }
                // Public values: fhe-math's (variable-time) helpers are fine.
                let m2 = Modulus::new(q2)?;
                let q1_inv = m2.inv(m2.reduce(q1)).ok_or_else(|| {
                    HeError::Params("the primes of a level are not coprime".into())
                })?;
                Rounding::Two {
                    q1,
                    q2,
                    cover: q1.div_ceil(q2) * q2,
                    q1_inv_shoup: shoup(q1_inv, q2),
                    q1_inv,
                    q,
                    half: q / 2,
                    c: fixed_point(t, q),
                }
            }
            _ => return Ok(None),
        };
        let n = s.coefficients().ncols();
        let moduli = ctx
            .moduli()
            .iter()
            .map(|&q| Modulus::new(q))
            .collect::<Result<Vec<_>, _>>()?;
        let s1 = residues(s)?;
        let neg_inv: Vec<u64> = ctx.moduli().iter().map(|&p| neg_inverse(p)).collect();
        let mut powers: Vec<Zeroizing<Vec<u64>>> = Vec::new();
        let mut cur = Zeroizing::new(s1.to_vec());
        for j in 1..=degree {
            if j > 1 {
                for (i, m) in moduli.iter().enumerate() {
                    m.mul_vec(&mut cur[i * n..(i + 1) * n], &s1[i * n..(i + 1) * n]);
                }
            }
            powers.push(montgomery_rows(ctx.moduli(), &neg_inv, n, &cur));
        }
        Ok(Some(LevelKey {
            ctx: ctx.clone(),
            n,
            primes: ctx.moduli().to_vec(),
            powers,
            neg_inv,
            rounding,
            t,
            ntt: Ntt::for_context(ctx)?,
        }))
    }

    /// Highest ciphertext degree this key decrypts (polynomials − 1).
    pub(crate) fn degree(&self) -> usize {
        self.powers.len()
    }

    /// Refuses a ciphertext of `polys` polynomials that this key does not
    /// decrypt (fewer than two, or of a higher degree).
    fn check_polys(&self, polys: usize) -> Result<(), HeError> {
        if polys < 2 || polys > self.powers.len() + 1 {
            return Err(HeError::Malformed(format!(
                "a ciphertext of {polys} polynomials at a level prepared for {}",
                self.powers.len() + 1
            )));
        }
        Ok(())
    }

    /// Decrypts the ciphertext whose polynomials (NTT form, all residues
    /// prime after prime) `poly(j)` gives, `j = 0..=degree`, to its
    /// plaintext coefficients in `[0, t)`.
    pub(crate) fn decrypt_rows<'a>(
        &self,
        polys: usize,
        poly: impl Fn(usize) -> Result<&'a [u64], HeError>,
    ) -> Result<Zeroizing<Vec<u64>>, HeError> {
        self.check_polys(polys)?;
        let n = self.n;
        let len = n * self.primes.len();
        let mut phase = Zeroizing::new(poly(0)?.to_vec());
        if phase.len() != len {
            return Err(HeError::Malformed("a polynomial of the wrong size".into()));
        }
        let rows = (1..polys).map(&poly).collect::<Result<Vec<_>, _>>()?;
        if rows.iter().any(|c| c.len() != len) {
            return Err(HeError::Malformed("a polynomial of the wrong size".into()));
        }
        for (i, &p) in self.primes.iter().enumerate() {
            let r = i * n..(i + 1) * n;
            let neg_inv = self.neg_inv[i];
            // c0 + Σ c_j·s^j with lazy Montgomery products (each below 2p):
            // the sum stays below 5p and is reduced once.
            for (k, acc) in phase[r.clone()].iter_mut().enumerate() {
                let mut x = *acc;
                for (c, key) in rows.iter().zip(&self.powers) {
                    let at = r.start + k;
                    x += mont_mul(c[at], key[at], p, neg_inv);
                }
                *acc = sub_if_at_least(sub_if_at_least(sub_if_at_least(x, 2 * p), 2 * p), p);
            }
        }
        self.finish(phase)
    }

    /// [`LevelKey::decrypt_rows`] straight from the codec's body (`polys`
    /// polynomials, each prime after prime, `n` little-endian residues of
    /// `widths[i]` bytes for prime `i`): each residue is read, checked
    /// below its prime and multiplied where it lies, without unpacking the
    /// ciphertext first.
    pub(crate) fn decrypt_wire(
        &self,
        polys: usize,
        body: &[u8],
        widths: &[usize],
    ) -> Result<Zeroizing<Vec<u64>>, HeError> {
        self.finish(self.phase_of_wire(polys, body, widths)?)
    }

    /// [`LevelKey::decrypt_wire`] of only the coefficients at `ext`'s
    /// positions (one per position, in `[0, t)`), at a one-prime level:
    /// the phase, then [`Extraction::apply`] instead of the inverse NTT,
    /// and the rounding of those coefficients only. `None` at a level of
    /// two primes.
    pub(crate) fn decrypt_wire_at(
        &self,
        polys: usize,
        body: &[u8],
        widths: &[usize],
        ext: &Extraction,
    ) -> Result<Option<Zeroizing<Vec<u64>>>, HeError> {
        let Rounding::One { p, half, c } = self.rounding else {
            return Ok(None);
        };
        let phase = self.phase_of_wire(polys, body, widths)?;
        let mut values = Zeroizing::new(vec![0u64; ext.positions().len()]);
        ext.apply(&phase, &mut values);
        for v in values.iter_mut() {
            *v = round_one(*v, self.t, p, half, c);
        }
        Ok(Some(values))
    }

    /// The transforms of this level (for [`Extraction::new`]).
    pub(crate) fn ntt(&self) -> &Ntt {
        &self.ntt
    }

    /// The phase `c0 + Σ c_j·s^j` (NTT form, prime after prime, each below
    /// its prime) of the codec's body, as [`LevelKey::decrypt_wire`] reads it.
    fn phase_of_wire(
        &self,
        polys: usize,
        body: &[u8],
        widths: &[usize],
    ) -> Result<Zeroizing<Vec<u64>>, HeError> {
        self.check_polys(polys)?;
        let n = self.n;
        let per_poly: usize = widths.iter().map(|w| w * n).sum();
        if widths.len() != self.primes.len() || body.len() != polys * per_poly {
            return Err(HeError::Malformed("a polynomial of the wrong size".into()));
        }
        let mut phase = Zeroizing::new(vec![0u64; n * self.primes.len()]);
        let mut bad = false;
        let mut at = 0;
        for (i, (&p, &w)) in self.primes.iter().zip(widths).enumerate() {
            let rows: Vec<&[u8]> = (0..polys)
                .map(|j| &body[j * per_poly + at..j * per_poly + at + n * w])
                .collect();
            let keys: Vec<&[u64]> = self.powers.iter().map(|k| &k[i * n..(i + 1) * n]).collect();
            let out = &mut phase[i * n..(i + 1) * n];
            let neg_inv = self.neg_inv[i];
            if let Some(b) = simd::phase(&rows, w, &keys, p, neg_inv, out) {
                bad |= b;
                at += n * w;
                continue;
            }
            bad |= match w {
                8 => phase_from_wire::<8>(&rows, &keys, p, neg_inv, out),
                7 => phase_from_wire::<7>(&rows, &keys, p, neg_inv, out),
                6 => phase_from_wire::<6>(&rows, &keys, p, neg_inv, out),
                5 => phase_from_wire::<5>(&rows, &keys, p, neg_inv, out),
                4 => phase_from_wire::<4>(&rows, &keys, p, neg_inv, out),
                3 => phase_from_wire::<3>(&rows, &keys, p, neg_inv, out),
                2 => phase_from_wire::<2>(&rows, &keys, p, neg_inv, out),
                _ => phase_from_wire::<1>(&rows, &keys, p, neg_inv, out),
            };
            at += n * w;
        }
        if bad {
            return Err(HeError::Malformed(
                "coefficient out of range for its prime".into(),
            ));
        }
        Ok(phase)
    }

    /// The inverse NTT of the phase (NTT form, prime after prime) and its
    /// rounding to the plaintext.
    fn finish(&self, mut phase: Zeroizing<Vec<u64>>) -> Result<Zeroizing<Vec<u64>>, HeError> {
        let n = self.n;
        self.ntt.inverse(&mut phase)?;
        let phase = phase.as_slice();
        let t = self.t;
        let out = match &self.rounding {
            Rounding::One { p, half, c } => {
                let mut out = vec![0u64; phase.len()];
                if !simd::round_one(phase, t, *p, *half, *c, &mut out) {
                    for (o, &x) in out.iter_mut().zip(phase) {
                        *o = round_one(x, t, *p, *half, *c);
                    }
                }
                out
            }
            Rounding::Two {
                q1,
                q2,
                cover,
                q1_inv,
                q1_inv_shoup,
                q,
                half,
                c,
            } => {
                let (x1, x2) = phase.split_at(n);
                x1.iter()
                    .zip(x2)
                    .map(|(&a, &b)| {
                        // Garner: x = a + q1·k, k = (b − a)·q1⁻¹ mod q2.
                        let k = lazy_shoup(b + cover - a, *q1_inv, *q1_inv_shoup, *q2);
                        let k = sub_if_at_least(k, *q2);
                        let x = a as u128 + *q1 as u128 * k as u128;
                        round_two(x, t, *q, *half, *c)
                    })
                    .collect()
            }
        };
        Ok(Zeroizing::new(out))
    }
}

/// `round(t·x/p) mod t` for `x < p < 2^61`, `t < p`, `c = ⌊t·2^64/p⌋`:
/// `e = ⌊x·c/2^64⌋` is `⌊t·x/p⌋` or one less, so the exact
/// `⌊(t·x + ⌊p/2⌋)/p⌋` is `e` plus 0, 1 or 2, read off the remainder
/// `t·x + ⌊p/2⌋ − e·p ∈ [0, 2.5p)` (exact modulo 2^64). No branches.
fn round_one(x: u64, t: u64, p: u64, half: u64, c: u64) -> u64 {
    let e = ((x as u128 * c as u128) >> 64) as u64;
    let rem = x
        .wrapping_mul(t)
        .wrapping_add(half)
        .wrapping_sub(e.wrapping_mul(p));
    let r = e + at_least(rem, p) + at_least(rem, 2 * p);
    reduce_once(r, t)
}

/// `round(t·x/Q) mod t` for `x < Q < 2^120`, `t < Q/2^64`,
/// `c = ⌊t·2^128/Q⌋`: as [`round_one`], with the estimate
/// `⌊x·c/2^128⌋` computed from `x`'s two 64-bit halves and the remainder
/// exact modulo 2^128.
fn round_two(x: u128, t: u64, q: u128, half: u128, c: u64) -> u64 {
    let (xh, xl) = (x >> 64, x as u64 as u128);
    let e = (xh * c as u128 + ((xl * c as u128) >> 64)) >> 64;
    let rem = x
        .wrapping_mul(t as u128)
        .wrapping_add(half)
        .wrapping_sub(e.wrapping_mul(q));
    let r = e as u64 + at_least_128(rem, q) + at_least_128(rem, 2 * q);
    reduce_once(r, t)
}

/// `⌊t·2^128/q⌋` for `t < q/2^64` (public values, once per key set).
fn fixed_point(t: u64, q: u128) -> u64 {
    let c = (num_bigint::BigUint::from(t) << 128u32) / num_bigint::BigUint::from(q);
    c.to_u64_digits().first().copied().unwrap_or(0)
}

/// Primes this module takes: sums of up to five residues fit in 63 bits.
const PRIME_LIMIT: u64 = 1 << 60;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// `⌊(t·x + ⌊Q/2⌋)/Q⌋ mod t` in exact big-integer arithmetic.
    fn exact(x: u128, t: u64, q: u128) -> u64 {
        use num_bigint::BigUint;
        let y = BigUint::from(x) * BigUint::from(t) + BigUint::from(q / 2);
        let r = (y / BigUint::from(q)) % BigUint::from(t);
        r.to_u64_digits().first().copied().unwrap_or(0)
    }

    /// The least `x` that rounds to `m`: `⌈(m·Q − ⌊Q/2⌋)/t⌉`.
    fn boundary(m: u64, t: u64, q: u128) -> u128 {
        use num_bigint::BigUint;
        let num = BigUint::from(m) * BigUint::from(q) - BigUint::from(q / 2);
        let b = (num + BigUint::from(t - 1)) / BigUint::from(t);
        b.to_u64_digits()
            .iter()
            .rev()
            .fold(0u128, |acc, &d| acc << 64 | d as u128)
    }

    /// The values a rounding is checked at, for `x < q`: the ends, the
    /// middle, both sides of 63 rounding boundaries and 20,000 random ones.
    fn probes(t: u64, q: u128) -> Vec<u128> {
        let mut rng = rand::rng();
        let edges = (1..64).flat_map(|k| {
            let b = boundary(k * (t / 64), t, q);
            [b - 1, b, (b + 1).min(q - 1)]
        });
        [0, 1, q / 2, q - 1]
            .into_iter()
            .chain(edges)
            .chain((0..20_000).map(|_| rng.random_range(0..q)))
            .collect()
    }

    #[test]
    fn one_prime_rounding_is_exact() {
        for (p, t) in [
            (36028797018652673u64, 1073692673u64),
            (36028797018652673, 12289),
            (18014398509309953, 65537),
            ((1 << 60) - 93, (1 << 30) - 35),
            (1_000_003, 999_983),
        ] {
            let c = (((t as u128) << 64) / p as u128) as u64;
            let mut xs: Vec<u64> = probes(t, p as u128).iter().map(|&x| x as u64).collect();
            xs.resize(xs.len().next_multiple_of(8), p - 1);
            let want: Vec<u64> = xs.iter().map(|&x| exact(x as u128, t, p as u128)).collect();
            for (&x, &w) in xs.iter().zip(&want) {
                assert_eq!(round_one(x, t, p, p / 2, c), w, "x {x}, p {p}, t {t}");
            }
            // The AVX-512 kernel, where this CPU has it.
            let mut got = vec![0u64; xs.len()];
            if simd::round_one(&xs, t, p, p / 2, c, &mut got) {
                assert_eq!(got, want, "AVX-512 rounding, p {p}, t {t}");
            }
        }
    }

    /// The AVX-512 phase equals the scalar one on random ciphertexts (with
    /// the extreme residues 0 and `p - 1` among them), read from residues
    /// of the prime's own width and of 8 bytes, and both refuse a residue
    /// at or above `p` in any polynomial.
    #[test]
    fn the_vector_phase_equals_the_scalar_phase() {
        let mut rng = rand::rng();
        let n = 4096;
        let bytes = |rows: &[Vec<u64>], w: usize| -> Vec<Vec<u8>> {
            rows.iter()
                .map(|r| {
                    r.iter()
                        .flat_map(|x| x.to_le_bytes()[..w].to_vec())
                        .collect()
                })
                .collect()
        };
        for p in [
            36028797018652673u64,
            18014398509309953,
            (1 << 60) - 93,
            1_000_003,
        ] {
            let neg_inv = neg_inverse(p);
            let keys: Vec<Vec<u64>> = (0..2)
                .map(|_| (0..n).map(|_| rng.random_range(0..p)).collect())
                .collect();
            let keys: Vec<&[u64]> = keys.iter().map(Vec::as_slice).collect();
            let mut rows: Vec<Vec<u64>> = (0..3)
                .map(|_| (0..n).map(|_| rng.random_range(0..p)).collect())
                .collect();
            for r in rows.iter_mut() {
                r[..8].copy_from_slice(&[0, p - 1, 0, p - 1, 1, p - 2, 0, 0]);
                r[n - 2..].copy_from_slice(&[p - 1, p - 1]);
            }
            // The rows with polynomial `j`'s residue `n - 1 - j` at `p + j`,
            // as `w`-byte residues.
            let tampered = |j: usize, w: usize| {
                let mut t = rows.clone();
                t[j][n - 1 - j] = p + j as u64;
                bytes(&t, w)
            };
            let wire = bytes(&rows, 8);
            let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
            let mut scalar = vec![0u64; n];
            assert!(!phase_from_wire::<8>(&wire, &keys, p, neg_inv, &mut scalar));
            let own = (64 - p.leading_zeros() as usize).div_ceil(8);
            for w in [own, 8] {
                let wire = bytes(&rows, w);
                let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
                let mut vector = vec![0u64; n];
                let Some(bad) = simd::phase(&wire, w, &keys, p, neg_inv, &mut vector) else {
                    eprintln!("no AVX-512 kernels here (or HETEE_SIMD=off): only the scalar phase is checked");
                    return;
                };
                assert!(!bad);
                assert_eq!(vector, scalar, "p {p}, {w}-byte residues");
                for j in 0..3 {
                    let wire = tampered(j, w);
                    let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
                    assert_eq!(
                        simd::phase(&wire, w, &keys, p, neg_inv, &mut vector),
                        Some(true),
                        "p {p}, {w}-byte residues, polynomial {j}"
                    );
                }
            }
            for j in 0..3 {
                let wire = tampered(j, 8);
                let wire: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
                assert!(phase_from_wire::<8>(&wire, &keys, p, neg_inv, &mut scalar));
            }
        }
    }

    #[test]
    fn two_prime_rounding_is_exact() {
        for (q1, q2, t) in [
            (36028797018652673u64, 18014398509309953u64, 1073692673u64),
            (36028797018652673, 18014398509309953, 12289),
            ((1 << 59) - 55, (1 << 58) - 27, (1 << 30) - 35),
        ] {
            let q = q1 as u128 * q2 as u128;
            let c = fixed_point(t, q);
            for x in probes(t, q) {
                assert_eq!(
                    round_two(x, t, q, q / 2, c),
                    exact(x, t, q),
                    "x {x}, q {q}, t {t}"
                );
            }
        }
    }
}
