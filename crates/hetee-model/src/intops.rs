//! The exact integer semantics of everything between two linear layers:
//! bias, ReLU, activation tables, max / average pooling and requantization. The enclave and the
//! plaintext reference both run this code, so they agree bit for bit.
//!
//! Values are `i64` accumulators laid out `[C, H, W]`. Comparisons are
//! written without data-dependent branches (ReLU and max via masks).

use serde::{Deserialize, Serialize};

use crate::ir::Window;
use crate::lut::Lut;

/// A nonlinear or pooling op applied to a stage's accumulators, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PostOp {
    /// `max(x, 0)` (exact on accumulators and on 8-bit values alike: every
    /// quantization grid has its zero at 0).
    Relu,
    /// Any other elementwise activation: requantize to 8 bits, then a
    /// constant-time table lookup ([`Lut`]). Its output is 8-bit.
    Lut(Lut),
    /// Max pooling; padded positions are ignored.
    MaxPool(Window),
    /// Average pooling: window sum, then rounded division by the count.
    AvgPool {
        /// Kernel, stride, padding.
        window: Window,
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Rounded mean of each channel map.
    GlobalAvgPool,
}

impl PostOp {
    /// Output shape of this op on `[c, h, w]`, or `None` if the window does not fit.
    pub fn output_shape(&self, s: [usize; 3]) -> Option<[usize; 3]> {
        match self {
            PostOp::Relu | PostOp::Lut(_) => Some(s),
            PostOp::MaxPool(w) | PostOp::AvgPool { window: w, .. } => {
                w.output_hw(s[1], s[2]).map(|(h, ww)| [s[0], h, ww])
            }
            PostOp::GlobalAvgPool => Some([s[0], 1, 1]),
        }
    }

    /// Checks the op's own parameters against its input shape `s` (the
    /// shape itself is checked by [`PostOp::output_shape`]).
    pub fn check(&self, s: [usize; 3]) -> Result<(), String> {
        match self {
            PostOp::Lut(lut) => lut.check(s[0]),
            _ => Ok(()),
        }
    }
}

/// Fixed-point requantization to 8 bits: `q = clamp(round(v * mult / 2^shift))`
/// with one `(mult, shift)` per channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requant {
    /// Multiplier per channel.
    pub multiplier: Vec<i64>,
    /// Right shift per channel (at least 1).
    pub shift: Vec<u32>,
    /// Smallest output value (0 after ReLU, else -127).
    pub min: i64,
    /// Largest output value (255 after ReLU, else 127).
    pub max: i64,
}

impl Requant {
    /// The identity on values already in `[min, max]` (clamps the rest):
    /// `(v * 2^30 + 2^29) >> 30 = v` for every integer `v`.
    pub fn identity(channels: usize, min: i64, max: i64) -> Self {
        Requant {
            multiplier: vec![1 << 30; channels],
            shift: vec![30; channels],
            min,
            max,
        }
    }

    /// Fixed-point form of the real multipliers `r[c] > 0`.
    pub fn from_real(r: &[f64], min: i64, max: i64) -> Self {
        let mut multiplier = Vec::with_capacity(r.len());
        let mut shift = Vec::with_capacity(r.len());
        for &x in r {
            // Normalize the multiplier into [2^30, 2^31).
            let e = if x > 0.0 && x.is_finite() {
                x.log2().floor() as i32
            } else {
                0
            };
            let s = (30 - e).clamp(1, 62) as u32;
            let m = (x * (2f64).powi(s as i32)).round() as i64;
            multiplier.push(m.max(0));
            shift.push(s);
        }
        Requant {
            multiplier,
            shift,
            min,
            max,
        }
    }

    /// Requantizes `[c, h*w]` values in place.
    pub fn apply(&self, x: &mut [i64], channels: usize) {
        let per = x.len() / channels.max(1);
        for (c, chunk) in x.chunks_mut(per.max(1)).enumerate() {
            let (m, s) = (self.multiplier[c] as i128, self.shift[c]);
            let half = 1i128 << (s - 1);
            for v in chunk {
                let q = ((*v as i128 * m + half) >> s) as i64;
                *v = clamp(q, self.min, self.max);
            }
        }
    }
}

/// Branch-free `min(max(v, lo), hi)`.
#[inline]
pub fn clamp(v: i64, lo: i64, hi: i64) -> i64 {
    select_min(select_max(v, lo), hi)
}

/// Branch-free `min(a, b)`.
#[inline]
pub fn select_min(a: i64, b: i64) -> i64 {
    let m = gt_mask(a, b);
    (b & m) | (a & !m)
}

/// All ones if `a > b`, else zero (no branch).
#[inline]
fn gt_mask(a: i64, b: i64) -> i64 {
    ((b as i128 - a as i128) >> 127) as i64
}

/// Branch-free `max(a, b)`.
#[inline]
pub fn select_max(a: i64, b: i64) -> i64 {
    let m = gt_mask(a, b);
    (a & m) | (b & !m)
}

/// Adds a per-channel bias to `[c, rest]` values.
pub fn add_bias(x: &mut [i64], bias: &[i64]) {
    let per = x.len() / bias.len().max(1);
    for (chunk, b) in x.chunks_mut(per.max(1)).zip(bias) {
        chunk.iter_mut().for_each(|v| *v += b);
    }
}

/// Rounded division `round(s / c)`, halves rounded up, for a public
/// `0 < c < 2^40` and a secret `|s| < 2^60`: constant time (no hardware
/// division, whose latency depends on the operands).
#[inline]
pub fn div_round(s: i64, c: i64) -> i64 {
    div_floor_ct(2 * s + c, 2 * c)
}

/// `floor(n / d)` for `d > 0`, without branches or division instructions.
pub fn div_floor_ct(n: i64, d: i64) -> i64 {
    let neg = n >> 63; // all ones if n < 0
                       // floor(n/d) = -ceil(-n/d) = -floor((-n + d - 1) / d) for n < 0.
    let a = ((n ^ neg).wrapping_sub(neg) as u64).wrapping_add((d - 1) as u64 & neg as u64);
    let q = udiv_ct(a, d as u64) as i64;
    (q ^ neg).wrapping_sub(neg)
}

/// Restoring binary division of `a` by `0 < d < 2^62`, branch-free.
fn udiv_ct(a: u64, d: u64) -> u64 {
    let (mut q, mut r) = (0u64, 0u64);
    for i in (0..64).rev() {
        r = (r << 1) | ((a >> i) & 1);
        // r < 2d < 2^63, so the borrow shows in the top bit.
        let ge = ((r.wrapping_sub(d) >> 63) ^ 1).wrapping_neg();
        r = r.wrapping_sub(d & ge);
        q |= (ge & 1) << i;
    }
    q
}

#[cfg(test)]
mod ct_tests {
    #[test]
    fn constant_time_division_matches_div_euclid() {
        for d in [1i64, 2, 3, 7, 9, 16, 49, 196, 1 << 20, (1 << 39) + 3] {
            for n in [
                0i64,
                1,
                -1,
                5,
                -5,
                48,
                -48,
                49,
                -49,
                1 << 50,
                -(1 << 50),
                123456789,
                -987654321,
            ] {
                assert_eq!(super::div_floor_ct(n, d), n.div_euclid(d), "{n} / {d}");
            }
        }
        for s in -20..20 {
            for c in 1..6 {
                assert_eq!(super::div_round(s, c), (2 * s + c).div_euclid(2 * c));
            }
        }
    }
}

/// Applies one post-op to `x` of shape `s`, returning the new values and shape.
pub fn apply_post(op: &PostOp, x: Vec<i64>, s: [usize; 3]) -> (Vec<i64>, [usize; 3]) {
    match op {
        PostOp::Relu => (x.into_iter().map(|v| select_max(v, 0)).collect(), s),
        PostOp::Lut(lut) => (lut.apply(x, s[0]), s),
        PostOp::GlobalAvgPool => {
            let hw = s[1] * s[2];
            let y = x
                .chunks(hw.max(1))
                .map(|ch| div_round(ch.iter().sum(), hw as i64))
                .collect();
            (y, [s[0], 1, 1])
        }
        PostOp::MaxPool(w) => pool(&x, s, w, PoolKind::Max),
        PostOp::AvgPool {
            window,
            count_include_pad,
        } => pool(&x, s, window, PoolKind::Avg(*count_include_pad)),
    }
}

#[derive(Clone, Copy)]
enum PoolKind {
    Max,
    Avg(bool),
}

fn pool(x: &[i64], s: [usize; 3], w: &Window, kind: PoolKind) -> (Vec<i64>, [usize; 3]) {
    let [c, h, wd] = s;
    let Some((oh, ow)) = w.output_hw(h, wd) else {
        return (Vec::new(), [c, 0, 0]);
    };
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.strides;
    let (dh, dw) = w.dilations;
    let mut y = vec![0i64; c * oh * ow];
    for ch in 0..c {
        for i in 0..oh {
            for j in 0..ow {
                let mut acc = match kind {
                    PoolKind::Max => i64::MIN,
                    PoolKind::Avg(_) => 0,
                };
                let mut count = 0i64;
                for l in 0..kh {
                    let r = (i * sh + l * dh).checked_sub(w.pads.top).filter(|&r| r < h);
                    for n in 0..kw {
                        let q = (j * sw + n * dw)
                            .checked_sub(w.pads.left)
                            .filter(|&q| q < wd);
                        let (Some(r), Some(q)) = (r, q) else {
                            continue;
                        };
                        let v = x[(ch * h + r) * wd + q];
                        count += 1;
                        acc = match kind {
                            PoolKind::Max => select_max(acc, v),
                            PoolKind::Avg(_) => acc + v,
                        };
                    }
                }
                y[(ch * oh + i) * ow + j] = match kind {
                    PoolKind::Max => acc,
                    PoolKind::Avg(true) => div_round(acc, (kh * kw) as i64),
                    PoolKind::Avg(false) => div_round(acc, count.max(1)),
                };
            }
        }
    }
    (y, [c, oh, ow])
}
