//! Freivalds checks of the host's linear layers.
//!
//! For a linear stage `y = W x` (convolution or dense, without bias: the
//! enclave adds the bias itself), the model provider draws a secret random
//! vector `r` over the outputs and precomputes `v = Wᵀ r` over the inputs,
//! all modulo the Mersenne prime `P = 2^61 - 1`. The enclave then accepts a
//! decrypted output `y'` for its own input `x` only if `rᵀ y' = vᵀ x (mod P)`.
//! Any wrong `y' ≠ y` (every coefficient differs by less than the plaintext
//! modulus `t < P`, so `y' - y ≠ 0 mod P`) passes with probability at most
//! `1/P < 2^-60` over the choice of `r`. The check costs one multiply-add
//! per input and per output value, against one per weight for the layer.
//!
//! Arithmetic on secret values is branch-free.

use hetee_model::quant::{LinearKind, QuantStage};
use serde::{Deserialize, Serialize};

/// The prime modulus of the checks: `2^61 - 1`.
pub const P: u64 = (1 << 61) - 1;

/// The secret check vectors of one stage (per image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCheck {
    /// `r`, one value mod `P` per linear output `[m, oh, ow]`.
    pub r: Vec<u64>,
    /// `v = Wᵀ r`, one value mod `P` per input `[c, h, w]`.
    pub v: Vec<u64>,
}

/// `a * b mod P` for `a, b < P`, without branches.
fn mul_mod(a: u64, b: u64) -> u64 {
    let p = a as u128 * b as u128;
    let folded = (p as u64 & P) + (p >> 61) as u64; // < 2P
    reduce(folded)
}

/// `x mod P` for `x < 2P`, without branches.
fn reduce(x: u64) -> u64 {
    let d = x.wrapping_sub(P);
    let keep = (d >> 63).wrapping_neg(); // all ones if x < P
    (x & keep) | (d & !keep)
}

/// `x mod P` for a signed `|x| < P`, without branches.
fn from_signed(x: i64) -> u64 {
    let neg = (x >> 63) as u64; // all ones if negative
    (x as u64).wrapping_add(P & neg)
}

/// `Σ a_i b_i mod P` for a secret `b`: each product folded below `2^62`
/// and summed in 128 bits (no carried dependence from one term's
/// reduction to the next), reduced once at the end. Branch-free.
fn dot(a: &[u64], b: &[i64]) -> u64 {
    let sum: u128 = a
        .iter()
        .zip(b)
        .map(|(&ai, &bi)| {
            let p = ai as u128 * from_signed(bi) as u128;
            ((p as u64 & P) + (p >> 61) as u64) as u128
        })
        .sum();
    // Below 2^61 + 2^67, then below 2P (2^61 ≡ 1 mod P).
    let s = (sum & P as u128) + (sum >> 61);
    reduce((s as u64 & P) + (s >> 61) as u64)
}

impl StageCheck {
    /// Draws a check for `stage` (the model provider holds its weights).
    pub fn draw(stage: &QuantStage, rng: &mut impl rand::Rng) -> Self {
        let out: usize = stage.linear_output_shape().iter().product();
        let r: Vec<u64> = (0..out).map(|_| rng.random_range(0..P)).collect();
        let v = transpose_apply(stage, &r);
        StageCheck { r, v }
    }

    /// Whether `y` is `W x` for this stage, up to probability `2^-60`.
    pub fn holds(&self, x: &[i64], y: &[i64]) -> bool {
        if x.len() != self.v.len() || y.len() != self.r.len() {
            return false;
        }
        dot(&self.r, y) == dot(&self.v, x)
    }
}

/// `Wᵀ r mod P` over the stage's input `[c, h, w]`.
fn transpose_apply(stage: &QuantStage, r: &[u64]) -> Vec<u64> {
    let [c, h, w] = stage.input_shape;
    let m = stage.out_channels;
    let wt = |i: usize| from_signed(stage.weight[i] as i64);
    let mut v = vec![0u64; c * h * w];
    match stage.linear {
        LinearKind::Dense => {
            let n = c * h * w;
            for (o, &ro) in r.iter().enumerate().take(m) {
                for (i, vi) in v.iter_mut().enumerate() {
                    *vi = reduce(*vi + mul_mod(ro, wt(o * n + i)));
                }
            }
        }
        LinearKind::Conv(win) => {
            let [_, oh, ow] = stage.linear_output_shape();
            let (kh, kw) = win.kernel;
            let (sh, sw) = win.strides;
            for o in 0..m {
                for i in 0..oh {
                    for j in 0..ow {
                        let ro = r[(o * oh + i) * ow + j];
                        for ch in 0..c {
                            for l in 0..kh {
                                let Some(rr) =
                                    (i * sh + l).checked_sub(win.pads.top).filter(|&rr| rr < h)
                                else {
                                    continue;
                                };
                                for n in 0..kw {
                                    let Some(q) =
                                        (j * sw + n).checked_sub(win.pads.left).filter(|&q| q < w)
                                    else {
                                        continue;
                                    };
                                    let idx = (ch * h + rr) * w + q;
                                    let k = ((o * c + ch) * kh + l) * kw + n;
                                    v[idx] = reduce(v[idx] + mul_mod(ro, wt(k)));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modular_helpers_match_u128_arithmetic() {
        for (a, b) in [(0, 5), (P - 1, P - 1), (123456789, 987654321), (P - 2, 2)] {
            assert_eq!(mul_mod(a, b) as u128, (a as u128 * b as u128) % P as u128);
        }
        for x in [-5i64, 0, 7, -(P as i64 - 1), P as i64 - 1] {
            assert_eq!(from_signed(x) as i128, (x as i128).rem_euclid(P as i128));
        }
        for x in [0, 1, P - 1, P, P + 1, 2 * P - 1] {
            assert_eq!(reduce(x), x % P);
        }
    }

    /// The dot product equals the exact sum modulo `P`, for the largest
    /// terms (which test the folds) and for random ones of every length.
    #[test]
    fn dot_products_are_exact() {
        use rand::Rng;
        let exact = |a: &[u64], b: &[i64]| {
            let s = a.iter().zip(b).fold(0i128, |acc, (&x, &y)| {
                (acc + x as i128 * y as i128).rem_euclid(P as i128)
            });
            s as u64
        };
        let mut rng = rand::rng();
        let big = i64::MAX >> 3;
        for len in [0usize, 1, 2, 7, 1000, 20_000] {
            let a = vec![P - 1; len];
            let b: Vec<i64> = (0..len)
                .map(|i| if i % 2 == 0 { big } else { -big })
                .collect();
            assert_eq!(dot(&a, &b), exact(&a, &b), "extremes, length {len}");
            let a: Vec<u64> = (0..len).map(|_| rng.random_range(0..P)).collect();
            let b: Vec<i64> = (0..len).map(|_| rng.random_range(-big..big)).collect();
            assert_eq!(dot(&a, &b), exact(&a, &b), "random, length {len}");
        }
    }
}
