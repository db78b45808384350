//! Decryption of a few coefficients of a stage result, without its
//! inverse NTT.
//!
//! A dense layer's output ciphertext holds one useful coefficient per
//! output channel, at positions `mm·T + o` (`T` the packing's tile, `mm`
//! the channel in its group): a few dozen of `N`. When `T` has a large
//! power of two `m` as a factor, every such position lies in one residue
//! class `r` modulo `m`, and those coefficients come out of the phase's
//! NTT form (its values `a(ζ_i)` at the `N` roots `ζ_i`, `ζ_i^N = −1`)
//! without the full inverse transform. With `L = N/m` and
//! `y = ζ^m` (which takes `L` values, each at `m` roots):
//!
//! ```text
//! a_{r + m·t} = (1/N) Σ_i ζ_i^{−(r + m·t)} a(ζ_i)
//!             = Σ_l (y_l^{−t} / N) · S_l,   S_l = Σ_{i : ζ_i^m = y_l} ζ_i^{−r} a(ζ_i)
//! ```
//!
//! `N` products fold the phase into the `L` sums, then `L` products per
//! wanted coefficient finish it: for 32 coefficients with `L = 32`, about
//! 5,000 products where the inverse NTT and the rounding of every
//! coefficient cost about five times as much ([`worth_extracting`]). The roots are read off the
//! transform itself (the NTT form of `X`), so the result is exactly the
//! full decryption's at those positions (tested against it on random
//! ciphertexts). The positions and every table are public; the products
//! and sums on the (secret) phase are branch-free.

use crate::arith::{lazy_shoup, shoup, sub_if_at_least};
use crate::ntt::Ntt;
use crate::HeError;

/// The smallest stride worth extracting: with `m < 4` the fold and the
/// last step together cost about as much as the inverse NTT.
const MIN_STRIDE: usize = 4;

/// Whether extracting `wanted` coefficients of a stride `m` (so `N/m`
/// classes) is cheaper than decrypting all `n`: the fold's `N` products
/// and the last step's `wanted·N/m`, against the inverse NTT's
/// `(N/2)·log2 N` butterflies and the `N` roundings.
pub(crate) fn worth_extracting(wanted: usize, m: usize, n: usize) -> bool {
    // Measured at N = 4096: 10 coefficients of stride 4 (10,240 products
    // in the last step) took 73 µs against the full 85 µs; 32 of stride
    // 128 (1,024) took 36-42 µs. So the last step gets half the butterflies.
    m >= MIN_STRIDE && m <= n && wanted * (n / m) <= n / 4 * n.trailing_zeros() as usize
}

/// What decrypting the coefficients at `positions` of a one-prime level's
/// ciphertexts needs (public, independent of the key).
pub(crate) struct Extraction {
    p: u64,
    /// The positions, as asked.
    positions: Vec<usize>,
    /// Per NTT index `i`: the class `l` of `ζ_i^m`.
    class: Vec<u32>,
    /// Per NTT index: `ζ_i^{−r}` and its Shoup companion.
    rot: Vec<(u64, u64)>,
    /// Classes `L`.
    classes: usize,
    /// Per wanted position `q`, per class `l`: `y_l^{−t_q}/N` and its
    /// Shoup companion, row after row.
    finish: Vec<(u64, u64)>,
}

/// `b^e mod p` (public values).
fn pow_mod(mut b: u64, mut e: u64, p: u64) -> u64 {
    let mut r = 1u64;
    b %= p;
    while e > 0 {
        if e & 1 == 1 {
            r = (r as u128 * b as u128 % p as u128) as u64;
        }
        b = (b as u128 * b as u128 % p as u128) as u64;
        e >>= 1;
    }
    r
}

/// The residue class modulo a power of two `m` holding every position, the
/// largest such `m` (at most `n`): `(m, r)`.
pub(crate) fn class_of(positions: &[usize], n: usize) -> Option<(usize, usize)> {
    let (&first, rest) = positions.split_first()?;
    let spread = rest.iter().fold(0usize, |g, &x| g | x.abs_diff(first));
    let m = if spread == 0 {
        n
    } else {
        (1usize << spread.trailing_zeros()).min(n)
    };
    Some((m, first % m))
}

impl Extraction {
    /// The extraction of `positions` (each below `n`) for the one prime
    /// `p` of `ntt`; `None` when they are not one residue class modulo a
    /// power of two with few enough classes to be worth it.
    pub(crate) fn new(ntt: &Ntt, p: u64, positions: &[usize]) -> Result<Option<Self>, HeError> {
        let n = ntt.degree();
        if ntt.primes() != 1 || positions.iter().any(|&x| x >= n) {
            return Ok(None);
        }
        let Some((m, r)) = class_of(positions, n) else {
            return Ok(None);
        };
        if !worth_extracting(positions.len(), m, n) {
            return Ok(None);
        }
        let classes = n / m;
        // The roots, in the transform's own order: the NTT form of X.
        let mut zeta = vec![0u64; n];
        zeta[1] = 1;
        ntt.forward(&mut zeta)?;
        let two_n = 2 * n as u64;
        let mut ys: Vec<u64> = Vec::with_capacity(classes);
        let mut class = Vec::with_capacity(n);
        let mut rot = Vec::with_capacity(n);
        for &z in &zeta {
            let y = pow_mod(z, m as u64, p);
            let l = match ys.iter().position(|&v| v == y) {
                Some(l) => l,
                None => {
                    ys.push(y);
                    ys.len() - 1
                }
            };
            class.push(l as u32);
            let inv_r = pow_mod(z, (two_n - r as u64) % two_n, p);
            rot.push((inv_r, shoup(inv_r, p)));
        }
        if ys.len() != classes {
            return Err(HeError::Params(format!(
                "the transform's roots make {} classes modulo {m}, not {classes}",
                ys.len()
            )));
        }
        let n_inv = pow_mod(n as u64, p - 2, p);
        let two_l = 2 * classes as u64;
        let mut finish = Vec::with_capacity(positions.len() * classes);
        for &x in positions {
            let t = ((x - r) / m) as u64;
            for &y in &ys {
                let v = pow_mod(y, (two_l - t % two_l) % two_l, p);
                let v = (v as u128 * n_inv as u128 % p as u128) as u64;
                finish.push((v, shoup(v, p)));
            }
        }
        Ok(Some(Extraction {
            p,
            positions: positions.to_vec(),
            class,
            rot,
            classes,
            finish,
        }))
    }

    /// The positions this extraction gives.
    pub(crate) fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// The coefficients at the positions (modulo `p`, in `[0, p)`) of the
    /// polynomial whose NTT form is `phase` (each value below `p`), into
    /// `out` (one per position).
    pub(crate) fn apply(&self, phase: &[u64], out: &mut [u64]) {
        let p = self.p;
        let mut sums = vec![0u64; self.classes];
        for ((&a, &(w, ws)), &l) in phase.iter().zip(&self.rot).zip(&self.class) {
            let v = sub_if_at_least(lazy_shoup(a, w, ws, p), p);
            let s = &mut sums[l as usize];
            *s = sub_if_at_least(*s + v, p);
        }
        for (o, row) in out.iter_mut().zip(self.finish.chunks_exact(self.classes)) {
            *o = row.iter().zip(&sums).fold(0u64, |acc, (&(w, ws), &s)| {
                sub_if_at_least(acc + sub_if_at_least(lazy_shoup(s, w, ws, p), p), p)
            });
        }
        zeroize::Zeroize::zeroize(&mut sums);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe_math::zq::primes::generate_prime;
    use rand::Rng;

    #[test]
    fn classes_are_the_largest_power_of_two() {
        assert_eq!(class_of(&[127, 255, 383], 4096), Some((128, 127)));
        assert_eq!(class_of(&[63, 127, 191, 639], 4096), Some((64, 63)));
        assert_eq!(class_of(&[5], 4096), Some((4096, 5)));
        assert_eq!(class_of(&[99, 199], 4096), Some((4, 3)));
        assert_eq!(class_of(&[170, 341], 4096), Some((1, 0)));
        assert_eq!(class_of(&[], 4096), None);
    }

    /// The extracted coefficients are the inverse transform's, on random
    /// polynomials, for several classes (one position, a few, a full row
    /// of classes), and refused where not worth it.
    #[test]
    fn extracted_coefficients_are_the_inverse_transforms() {
        let n = 4096;
        let p = generate_prime(60, 2 * n as u64, 1 << 60).unwrap();
        let ntt = Ntt::new(&[p], n).unwrap();
        let mut rng = rand::rng();
        let cases: Vec<Vec<usize>> = vec![
            (0..32).map(|j| j * 128 + 127).collect(),
            (0..10).map(|j| j * 64 + 63).collect(),
            (0..16).map(|j| j * 256 + 3).collect(),
            vec![4095],
            vec![0],
            vec![7, 7 + 1024, 7 + 3072],
            vec![99, 199],
        ];
        for positions in cases {
            let ext = Extraction::new(&ntt, p, &positions)
                .unwrap()
                .unwrap_or_else(|| panic!("{positions:?} should extract"));
            for _ in 0..3 {
                let coeffs: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
                let mut phase = coeffs.clone();
                ntt.forward(&mut phase).unwrap();
                let mut got = vec![0u64; positions.len()];
                ext.apply(&phase, &mut got);
                let want: Vec<u64> = positions.iter().map(|&x| coeffs[x]).collect();
                assert_eq!(got, want, "positions {positions:?}");
            }
        }
        // Not one class modulo a power of two >= 4, or too many products.
        for positions in [
            vec![170, 341],
            (0..100).map(|j| j * 2).collect::<Vec<_>>(),
            vec![4096],
        ] {
            assert!(Extraction::new(&ntt, p, &positions).unwrap().is_none());
        }
    }
}
