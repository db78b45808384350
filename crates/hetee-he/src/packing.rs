//! Coefficient packing (Cheetah-style) of a stride-1 "valid" convolution,
//! with tiling over input channels, output channels and space.
//!
//! Every linear layer reaches this module in one normal form: an input
//! tensor `[C, H, W]` (padding and stride phases already laid out by
//! [`crate::layout`]), a kernel `[M, C, kh, kw]`, and the output region
//! `[M, oh, ow]` that is wanted (`oh <= H - kh + 1`, `ow <= W - kw + 1`).
//! A dense layer is the case `H = W = kh = kw = 1`.
//!
//! For a tile of `ct` channels and `ht x wt` positions (`T = ct*ht*wt`):
//! - input polynomial  `x = sum x[c,i,j] X^(c*ht*wt + i*wt + j)`;
//! - kernel polynomial `k = sum_m sum K[m,c,l,n] X^(m*T + O - c*ht*wt - l*wt - n)`,
//!   with `O = (ct-1)*ht*wt + (kh-1)*wt + (kw-1)`;
//! - then coefficient `m*T + O + i*wt + j` of `x*k` is output `(m, i, j)` of
//!   the tile, provided `mt*T <= N` (no wrap-around reaches a useful
//!   coefficient). Products over channel tiles are summed before decryption.

use serde::{Deserialize, Serialize};

/// A stride-1, unpadded convolution problem in normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShape {
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
    /// Output rows wanted (at most `h - kh + 1`).
    pub oh: usize,
    /// Output columns wanted (at most `w - kw + 1`).
    pub ow: usize,
    /// Convolution groups: output channel `m` reads only the input channels
    /// of its group (a grouped or depthwise conv; 1 for a dense one).
    /// Products whose weight block lies across groups are structurally
    /// zero and are skipped.
    #[serde(default = "one")]
    pub groups: usize,
    /// Consecutive input channels made from one channel of the layer (its
    /// stride phases), for [`ConvShape::groups`].
    #[serde(default = "one")]
    pub phases: usize,
}

fn one() -> usize {
    1
}

impl ConvShape {
    /// A dense layer `[m x n]` as a convolution over `n` channels of `1x1`.
    pub fn dense(n: usize, m: usize) -> Self {
        ConvShape {
            c: n,
            h: 1,
            w: 1,
            m,
            kh: 1,
            kw: 1,
            oh: 1,
            ow: 1,
            groups: 1,
            phases: 1,
        }
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.c == 0 || self.m == 0 || self.kh == 0 || self.kw == 0 {
            return Err(format!("empty convolution {self:?}"));
        }
        let (g, p) = (self.groups, self.phases);
        if g == 0
            || p == 0
            || !self.c.is_multiple_of(p)
            || !(self.c / p).is_multiple_of(g)
            || !self.m.is_multiple_of(g)
        {
            return Err(format!(
                "{g} groups of {p}-phase channels do not divide {self:?}"
            ));
        }
        if self.h < self.kh || self.w < self.kw {
            return Err(format!("kernel larger than input in {self:?}"));
        }
        if self.oh == 0
            || self.ow == 0
            || self.oh > self.h - self.kh + 1
            || self.ow > self.w - self.kw + 1
        {
            return Err(format!("output region out of range in {self:?}"));
        }
        Ok(())
    }

    /// Multiply-adds per output value (the fan-in).
    pub fn fan_in(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

/// How a [`ConvShape`] is cut into polynomial products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiling {
    /// Input channels per tile.
    pub ct: usize,
    /// Input rows per spatial tile (including the `kh - 1` overlap).
    pub ht: usize,
    /// Input columns per spatial tile (including the `kw - 1` overlap).
    pub wt: usize,
    /// Output channels per product.
    pub mt: usize,
}

/// The packed layout of one convolution: shape, tiling and the ring degree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvPacking {
    /// The convolution.
    pub shape: ConvShape,
    /// The tiling.
    pub tiling: Tiling,
    /// Polynomial degree N.
    pub degree: usize,
}

/// One output ciphertext: the sum of these (input index, weight index) products.
pub type ProductSum = Vec<(usize, usize)>;

impl ConvPacking {
    /// Builds and validates a packing.
    pub fn new(shape: ConvShape, tiling: Tiling, degree: usize) -> Result<Self, String> {
        shape.validate()?;
        let t = tiling;
        if t.ct == 0 || t.mt == 0 || t.ht < shape.kh || t.wt < shape.kw {
            return Err(format!("invalid tiling {t:?} for {shape:?}"));
        }
        if t.ct > shape.c || t.mt > shape.m || t.ht > shape.h || t.wt > shape.w {
            return Err(format!("tiling {t:?} larger than {shape:?}"));
        }
        let need = [t.mt, t.ct, t.ht, t.wt]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if need > degree {
            return Err(format!(
                "tiling {t:?} needs {need} coefficients > N = {degree}"
            ));
        }
        Ok(ConvPacking {
            shape,
            tiling,
            degree,
        })
    }

    /// Coefficients of one channel tile, `T = ct * ht * wt`.
    fn tile_len(&self) -> usize {
        self.tiling.ct * self.tiling.ht * self.tiling.wt
    }

    /// Output rows per spatial tile.
    fn out_rows_per_tile(&self) -> usize {
        self.tiling.ht - self.shape.kh + 1
    }

    /// Output columns per spatial tile.
    fn out_cols_per_tile(&self) -> usize {
        self.tiling.wt - self.shape.kw + 1
    }

    /// Coefficients of an input polynomial that [`ConvPacking::pack_input`]
    /// may set (the rest are zero by the layout): its tile's length.
    pub fn input_len(&self) -> usize {
        self.tile_len().min(self.degree)
    }

    /// Number of channel tiles.
    pub fn channel_tiles(&self) -> usize {
        self.shape.c.div_ceil(self.tiling.ct)
    }

    /// Number of spatial tiles (rows, columns).
    pub fn spatial_tiles(&self) -> (usize, usize) {
        (
            self.shape.oh.div_ceil(self.out_rows_per_tile()),
            self.shape.ow.div_ceil(self.out_cols_per_tile()),
        )
    }

    /// Number of output-channel groups.
    pub fn groups(&self) -> usize {
        self.shape.m.div_ceil(self.tiling.mt)
    }

    /// Ciphertexts of the input activation.
    pub fn input_count(&self) -> usize {
        let (r, c) = self.spatial_tiles();
        self.channel_tiles() * r * c
    }

    /// Ciphertexts of the weights: one per used block (see
    /// [`ConvPacking::weight_blocks`]).
    pub fn weight_count(&self) -> usize {
        self.weight_blocks().len()
    }

    /// The weight blocks `(output tile, input channel tile)` that hold
    /// weights, in order: the weight ciphertexts. Blocks across a grouped
    /// conv's groups are zero by structure: not packed, sent or multiplied.
    pub fn weight_blocks(&self) -> Vec<(usize, usize)> {
        let nct = self.channel_tiles();
        (0..self.groups())
            .flat_map(|g| (0..nct).map(move |ci| (g, ci)))
            .filter(|&(g, ci)| self.block_used(g, ci))
            .collect()
    }

    /// Ciphertexts of the output (decrypted by the enclave).
    pub fn output_count(&self) -> usize {
        let (r, c) = self.spatial_tiles();
        self.groups() * r * c
    }

    /// The coefficients of an output ciphertext that hold outputs, when
    /// each is one per output channel (one output row and column per
    /// spatial tile: dense layers, maps of one pixel) and the tile's
    /// length has a power-of-two factor of at least 4: `mm·T + o` for
    /// every channel `mm` of a group, the same for every output
    /// ciphertext. These are one residue class modulo that power of two,
    /// which the enclave decrypts without an inverse NTT
    /// ([`crate::secret::SecretOps::decrypt_bytes_at`]); `None` otherwise.
    pub fn strided_output_positions(&self) -> Option<Vec<usize>> {
        let t = &self.tiling;
        if self.out_rows_per_tile() != 1 || self.out_cols_per_tile() != 1 {
            return None;
        }
        let tl = self.tile_len();
        let o = (t.ct - 1) * t.ht * t.wt + (self.shape.kh - 1) * t.wt + (self.shape.kw - 1);
        let positions: Vec<usize> = (0..t.mt).map(|mm| mm * tl + o).collect();
        let fits = positions.iter().all(|&x| x < self.degree);
        let (m, _) = crate::extract::class_of(&positions, self.degree)?;
        (fits && crate::extract::worth_extracting(positions.len(), m, self.degree))
            .then_some(positions)
    }

    /// ct x ct products (weight blocks across groups are skipped).
    pub fn product_count(&self) -> usize {
        let (r, c) = self.spatial_tiles();
        self.weight_count() * r * c
    }

    /// Whether the weight block of output tile `g` and input channel tile
    /// `ci` holds any weight of the layer's groups (otherwise it is zero by
    /// the layer's structure and its products are skipped).
    pub fn block_used(&self, g: usize, ci: usize) -> bool {
        let s = &self.shape;
        if s.groups <= 1 {
            return true;
        }
        let (t, per_in, per_out) = (&self.tiling, s.c / s.groups, s.m / s.groups);
        // Groups are contiguous in channel order on both sides.
        let out_lo = g * t.mt;
        let out_hi = ((g + 1) * t.mt).min(s.m) - 1;
        let in_lo = ci * t.ct;
        let in_hi = ((ci + 1) * t.ct).min(s.c) - 1;
        let (go_lo, go_hi) = (out_lo / per_out, out_hi / per_out);
        let (gi_lo, gi_hi) = (in_lo / per_in, in_hi / per_in);
        go_lo <= gi_hi && gi_lo <= go_hi
    }

    fn input_index(&self, ci: usize, ri: usize, cj: usize) -> usize {
        let (r, c) = self.spatial_tiles();
        (ci * r + ri) * c + cj
    }

    fn output_index(&self, g: usize, ri: usize, cj: usize) -> usize {
        let (r, c) = self.spatial_tiles();
        (g * r + ri) * c + cj
    }

    /// Packs the input tensor `x` (`[c, h, w]`, row-major) into polynomials.
    pub fn pack_input(&self, x: &[i64]) -> Vec<Vec<i64>> {
        let s = &self.shape;
        let t = &self.tiling;
        assert_eq!(x.len(), s.c * s.h * s.w, "input length");
        let (rt, ctl) = self.spatial_tiles();
        let mut out = vec![vec![0i64; self.degree]; self.input_count()];
        for ci in 0..self.channel_tiles() {
            for ri in 0..rt {
                for cj in 0..ctl {
                    let poly = &mut out[self.input_index(ci, ri, cj)];
                    let r0 = ri * self.out_rows_per_tile();
                    let c0 = cj * self.out_cols_per_tile();
                    for c in 0..t.ct {
                        let ch = ci * t.ct + c;
                        if ch >= s.c {
                            break;
                        }
                        for i in 0..t.ht.min(s.h.saturating_sub(r0)) {
                            let src = (ch * s.h + r0 + i) * s.w + c0;
                            let dst = (c * t.ht + i) * t.wt;
                            let n = t.wt.min(s.w - c0);
                            poly[dst..dst + n].copy_from_slice(&x[src..src + n]);
                        }
                    }
                }
            }
        }
        out
    }

    /// Packs the kernel `k` (`[m, c, kh, kw]`, row-major) into polynomials.
    pub fn pack_weights(&self, k: &[i64]) -> Vec<Vec<i64>> {
        let s = &self.shape;
        let t = &self.tiling;
        assert_eq!(k.len(), s.m * s.c * s.kh * s.kw, "kernel length");
        let tl = self.tile_len();
        let o = (t.ct - 1) * t.ht * t.wt + (s.kh - 1) * t.wt + (s.kw - 1);
        let blocks = self.weight_blocks();
        let mut out = vec![vec![0i64; self.degree]; blocks.len()];
        for (poly, &(g, ci)) in out.iter_mut().zip(&blocks) {
            for mm in 0..t.mt {
                let m = g * t.mt + mm;
                if m >= s.m {
                    break;
                }
                for c in 0..t.ct {
                    let ch = ci * t.ct + c;
                    if ch >= s.c {
                        break;
                    }
                    for l in 0..s.kh {
                        for n in 0..s.kw {
                            let pos = mm * tl + o - (c * t.ht * t.wt + l * t.wt + n);
                            poly[pos] = k[((m * s.c + ch) * s.kh + l) * s.kw + n];
                        }
                    }
                }
            }
        }
        out
    }

    /// The most products summed into one output ciphertext (what the
    /// host's multiplication basis must hold).
    pub fn longest_sum(&self) -> usize {
        self.product_plan().iter().map(Vec::len).max().unwrap_or(1)
    }

    /// Which products are summed into each output ciphertext.
    pub fn product_plan(&self) -> Vec<ProductSum> {
        let (rt, ctl) = self.spatial_tiles();
        let mut plan = vec![Vec::new(); self.output_count()];
        for (w, (g, ci)) in self.weight_blocks().into_iter().enumerate() {
            for ri in 0..rt {
                for cj in 0..ctl {
                    plan[self.output_index(g, ri, cj)].push((self.input_index(ci, ri, cj), w));
                }
            }
        }
        plan
    }

    /// Extracts the output `[m, oh, ow]` from the decrypted output polynomials.
    pub fn unpack_output(&self, polys: &[Vec<i64>]) -> Vec<i64> {
        let s = &self.shape;
        let t = &self.tiling;
        assert_eq!(polys.len(), self.output_count(), "output count");
        let tl = self.tile_len();
        let o = (t.ct - 1) * t.ht * t.wt + (s.kh - 1) * t.wt + (s.kw - 1);
        let (orp, ocp) = (self.out_rows_per_tile(), self.out_cols_per_tile());
        let mut y = vec![0i64; s.m * s.oh * s.ow];
        for m in 0..s.m {
            let (g, mm) = (m / t.mt, m % t.mt);
            for i in 0..s.oh {
                for j in 0..s.ow {
                    let poly = &polys[self.output_index(g, i / orp, j / ocp)];
                    y[(m * s.oh + i) * s.ow + j] = poly[mm * tl + o + (i % orp) * t.wt + (j % ocp)];
                }
            }
        }
        y
    }
}

/// Negacyclic product of two polynomials modulo `X^N + 1` over the integers
/// (wrapping `i64`), used to test packings without encryption.
pub fn negacyclic_mul(a: &[i64], b: &[i64]) -> Vec<i64> {
    let n = a.len();
    assert_eq!(n, b.len());
    let mut out = vec![0i64; n];
    for (i, &ai) in a.iter().enumerate() {
        if ai == 0 {
            continue;
        }
        for (j, &bj) in b.iter().enumerate() {
            let p = ai.wrapping_mul(bj);
            let k = i + j;
            if k < n {
                out[k] = out[k].wrapping_add(p);
            } else {
                out[k - n] = out[k - n].wrapping_sub(p);
            }
        }
    }
    out
}

/// Direct stride-1 valid convolution, the plaintext reference for packings.
pub fn direct_conv(s: &ConvShape, x: &[i64], k: &[i64]) -> Vec<i64> {
    let mut y = vec![0i64; s.m * s.oh * s.ow];
    for m in 0..s.m {
        for i in 0..s.oh {
            for j in 0..s.ow {
                let mut acc = 0i64;
                for c in 0..s.c {
                    for l in 0..s.kh {
                        for n in 0..s.kw {
                            acc += k[((m * s.c + c) * s.kh + l) * s.kw + n]
                                * x[(c * s.h + i + l) * s.w + j + n];
                        }
                    }
                }
                y[(m * s.oh + i) * s.ow + j] = acc;
            }
        }
    }
    y
}

/// Evaluates a packing in the clear (negacyclic products, summed), the way
/// the encrypted pipeline does it; for tests and the planner's self-check.
pub fn evaluate_plain(p: &ConvPacking, x: &[i64], k: &[i64]) -> Vec<i64> {
    let xin = p.pack_input(x);
    let wk = p.pack_weights(k);
    let outs: Vec<Vec<i64>> = p
        .product_plan()
        .iter()
        .map(|sum| {
            let mut acc = vec![0i64; p.degree];
            for &(a, b) in sum {
                for (o, v) in acc.iter_mut().zip(negacyclic_mul(&xin[a], &wk[b])) {
                    *o = o.wrapping_add(v);
                }
            }
            acc
        })
        .collect();
    p.unpack_output(&outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_refuses_a_tiling_whose_size_overflows() {
        // Found by fuzz/ (channel_messages): `mt * ct * ht * wt` overflowed.
        let big = 1usize << 32;
        let shape = ConvShape {
            c: big,
            h: big,
            w: big,
            m: big,
            kh: 1,
            kw: 1,
            oh: 1,
            ow: 1,
            groups: 1,
            phases: 1,
        };
        let tiling = Tiling {
            ct: big,
            ht: big,
            wt: big,
            mt: big,
        };
        assert!(ConvPacking::new(shape, tiling, 4096).is_err());
    }
}
