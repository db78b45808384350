//! From a general convolution (any stride, any padding) to the stride-1
//! valid normal form of [`crate::packing`].
//!
//! Padding is written as zeros into the input. A stride `(sh, sw)` splits the
//! padded input into `sh*sw` phase sub-images and the kernel into matching
//! sub-kernels; the phases become extra input channels, so one stride-1
//! product computes exactly the strided output and nothing is thrown away.
//! Phases whose sub-kernel is empty (kernel smaller than the stride) are
//! dropped. A dense layer is the 1x1 case over `n` channels.

use serde::{Deserialize, Serialize};

use crate::packing::ConvShape;

/// Largest dimension, stride or padding [`ConvSpec::validate`] accepts.
pub const MAX_DIM: usize = 1 << 20;
/// Most values of a layer's (padded) input, output or kernel that
/// [`ConvSpec::validate`] accepts.
pub const MAX_VALUES: usize = 1 << 26;

/// A linear layer as the HE scheme sees it: a convolution with stride and
/// padding over an integer tensor `[c, h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub m: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Convolution groups (1: dense): output channel `m` reads only the
    /// input channels of its group; the rest of its kernel is zero.
    #[serde(default = "one_group")]
    pub groups: usize,
}

fn one_group() -> usize {
    1
}

impl ConvSpec {
    /// A dense layer `[m x n]` on a flat input of length `n`.
    pub fn dense(n: usize, m: usize) -> Self {
        ConvSpec {
            c: n,
            h: 1,
            w: 1,
            m,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            pads: [0; 4],
            groups: 1,
        }
    }

    /// Padded input height and width.
    fn padded(&self) -> (usize, usize) {
        (
            self.h + self.pads[0] + self.pads[2],
            self.w + self.pads[1] + self.pads[3],
        )
    }

    /// Checks that the layer is well formed, and small enough that no size
    /// derived from it (padded input, phases, kernel, output) overflows.
    pub fn validate(&self) -> Result<(), String> {
        let dims = [
            self.c, self.h, self.w, self.m, self.kh, self.kw, self.sh, self.sw,
        ];
        if dims.iter().chain(&self.pads).any(|&d| d > MAX_DIM) {
            return Err(format!("a dimension exceeds {MAX_DIM} in {self:?}"));
        }
        let (hp, wp) = self.padded();
        let fits = |ds: &[usize]| {
            ds.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some_and(|n| n <= MAX_VALUES)
        };
        if !fits(&[self.c, hp, wp]) || !fits(&[self.m, hp, wp]) {
            return Err(format!(
                "layer tensors exceed {MAX_VALUES} values in {self:?}"
            ));
        }
        if !fits(&[self.m, self.c, self.kh, self.kw]) {
            return Err(format!("kernel exceeds {MAX_VALUES} values in {self:?}"));
        }
        if self.c == 0
            || self.m == 0
            || self.kh == 0
            || self.kw == 0
            || self.sh == 0
            || self.sw == 0
        {
            return Err(format!("empty dimension or zero stride in {self:?}"));
        }
        if hp < self.kh || wp < self.kw {
            return Err(format!("kernel larger than the padded input in {self:?}"));
        }
        if self.groups == 0
            || !self.c.is_multiple_of(self.groups)
            || !self.m.is_multiple_of(self.groups)
        {
            return Err(format!("{} groups do not divide {self:?}", self.groups));
        }
        Ok(())
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        ((hp - self.kh) / self.sh + 1, (wp - self.kw) / self.sw + 1)
    }

    /// The stride phases `(p, q)` that carry at least one kernel tap.
    pub fn phases(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for p in 0..self.sh.min(self.kh) {
            for q in 0..self.sw.min(self.kw) {
                v.push((p, q));
            }
        }
        v
    }

    /// Sub-kernel height and width.
    fn sub_kernel(&self) -> (usize, usize) {
        (self.kh.div_ceil(self.sh), self.kw.div_ceil(self.sw))
    }

    /// The stride-1 valid normal form.
    pub fn normal_shape(&self) -> ConvShape {
        let (oh, ow) = self.output_hw();
        let (hs, ws) = self.sub_kernel();
        ConvShape {
            c: self.c * self.phases().len(),
            h: oh + hs - 1,
            w: ow + ws - 1,
            m: self.m,
            kh: hs,
            kw: ws,
            oh,
            ow,
            groups: self.groups,
            phases: self.phases().len(),
        }
    }

    /// The normal form for `b` images stacked along the height: image `i`
    /// occupies rows `i*hs .. (i+1)*hs` of every channel. Windows that
    /// straddle two images give junk rows, which are never read.
    pub fn batched_shape(&self, b: usize) -> ConvShape {
        let s = self.normal_shape();
        ConvShape {
            h: s.h * b,
            oh: s.h * (b - 1) + s.oh,
            ..s
        }
    }

    /// Lays out `b` inputs stacked as in [`ConvSpec::batched_shape`].
    pub fn layout_batch(&self, xs: &[&[i64]]) -> Vec<i64> {
        let s = self.normal_shape();
        let b = xs.len();
        let mut out = vec![0i64; s.c * s.h * b * s.w];
        for (i, x) in xs.iter().enumerate() {
            let one = self.layout_input(x);
            for c in 0..s.c {
                let src = &one[c * s.h * s.w..(c + 1) * s.h * s.w];
                let dst = (c * b * s.h + i * s.h) * s.w;
                out[dst..dst + s.h * s.w].copy_from_slice(src);
            }
        }
        out
    }

    /// Splits the batched output `[m, oh', ow]` into one `[m, oh, ow]` per image.
    pub fn split_batch_output(&self, y: &[i64], b: usize) -> Vec<Vec<i64>> {
        let s = self.normal_shape();
        let bs = self.batched_shape(b);
        (0..b)
            .map(|i| {
                let mut out = Vec::with_capacity(s.m * s.oh * s.ow);
                for m in 0..s.m {
                    let start = (m * bs.oh + i * s.h) * s.ow;
                    out.extend_from_slice(&y[start..start + s.oh * s.ow]);
                }
                out
            })
            .collect()
    }

    /// Lays out the input `[c, h, w]` as the normal form's input
    /// (padding and stride phases applied).
    pub fn layout_input(&self, x: &[i64]) -> Vec<i64> {
        assert_eq!(x.len(), self.c * self.h * self.w, "input length");
        if self.sh == 1 && self.sw == 1 && self.pads == [0; 4] {
            return x.to_vec();
        }
        let ns = self.normal_shape();
        let phases = self.phases();
        let mut out = vec![0i64; ns.c * ns.h * ns.w];
        for c in 0..self.c {
            for (pi, &(p, q)) in phases.iter().enumerate() {
                let co = c * phases.len() + pi;
                for i in 0..ns.h {
                    // Row in the padded input, then in the real input.
                    let r = self.sh * i + p;
                    let Some(r) = r.checked_sub(self.pads[0]).filter(|&r| r < self.h) else {
                        continue;
                    };
                    for j in 0..ns.w {
                        let s = self.sw * j + q;
                        let Some(s) = s.checked_sub(self.pads[1]).filter(|&s| s < self.w) else {
                            continue;
                        };
                        out[(co * ns.h + i) * ns.w + j] = x[(c * self.h + r) * self.w + s];
                    }
                }
            }
        }
        out
    }

    /// Lays out the kernel `[m, c, kh, kw]` as the normal form's kernel.
    pub fn layout_kernel(&self, k: &[i64]) -> Vec<i64> {
        assert_eq!(
            k.len(),
            self.m * self.c * self.kh * self.kw,
            "kernel length"
        );
        if self.sh == 1 && self.sw == 1 {
            return k.to_vec();
        }
        let ns = self.normal_shape();
        let phases = self.phases();
        let mut out = vec![0i64; ns.m * ns.c * ns.kh * ns.kw];
        for m in 0..self.m {
            for c in 0..self.c {
                for (pi, &(p, q)) in phases.iter().enumerate() {
                    let co = c * phases.len() + pi;
                    for l in 0..ns.kh {
                        let kl = self.sh * l + p;
                        if kl >= self.kh {
                            continue;
                        }
                        for n in 0..ns.kw {
                            let kn = self.sw * n + q;
                            if kn >= self.kw {
                                continue;
                            }
                            out[((m * ns.c + co) * ns.kh + l) * ns.kw + n] =
                                k[((m * self.c + c) * self.kh + kl) * self.kw + kn];
                        }
                    }
                }
            }
        }
        out
    }

    /// Direct strided, padded convolution: the plaintext reference.
    pub fn direct(&self, x: &[i64], k: &[i64]) -> Vec<i64> {
        let (oh, ow) = self.output_hw();
        let mut y = vec![0i64; self.m * oh * ow];
        for m in 0..self.m {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0i64;
                    for c in 0..self.c {
                        for l in 0..self.kh {
                            let Some(r) = (i * self.sh + l).checked_sub(self.pads[0]) else {
                                continue;
                            };
                            if r >= self.h {
                                continue;
                            }
                            for n in 0..self.kw {
                                let Some(s) = (j * self.sw + n).checked_sub(self.pads[1]) else {
                                    continue;
                                };
                                if s >= self.w {
                                    continue;
                                }
                                acc += k[((m * self.c + c) * self.kh + l) * self.kw + n]
                                    * x[(c * self.h + r) * self.w + s];
                            }
                        }
                    }
                    y[(m * oh + i) * ow + j] = acc;
                }
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_sizes_that_would_overflow() {
        // Found by fuzz/ (channel_messages): padding and products overflowed.
        let ok = ConvSpec {
            c: 3,
            h: 28,
            w: 28,
            m: 8,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 2,
            pads: [1; 4],
            groups: 1,
        };
        assert!(ok.validate().is_ok());
        let huge = [
            ConvSpec {
                pads: [usize::MAX, 0, usize::MAX, 0],
                ..ok
            },
            ConvSpec {
                c: 1 << 20,
                h: 1 << 20,
                w: 1 << 20,
                ..ok
            },
            ConvSpec {
                m: usize::MAX,
                ..ok
            },
            ConvSpec {
                sh: usize::MAX,
                ..ok
            },
            ConvSpec::dense(1 << 20, 1 << 20),
        ];
        for s in huge {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
