//! Convolution and pooling import: groups (depthwise and grouped conv),
//! dilations, `auto_pad` (SAME_UPPER, SAME_LOWER, VALID), asymmetric pads
//! and `ceil_mode`.
//!
//! The IR's convolution is dense and undilated, so a grouped conv becomes
//! the block-diagonal dense conv (zero weights across groups) and a dilated
//! kernel the kernel with zero taps between its rows and columns: the same
//! function. The schedule finds the groups again from the block-diagonal
//! kernel and the packing skips the blocks across groups.

use hetee_model::error::Result;
use hetee_model::ir::{Layer, Pads, Window};

use crate::node::{Ctx, MAX_ATTR};
use crate::ops::Family;
use crate::{Importer, Step};

/// Conv.
pub(crate) const CONV: Family = Family {
    name: "convolution",
    ops: &["Conv"],
    import: |imp, cx, _x, shape| {
        Ok(Step {
            layer: Some(imp.conv(cx, shape)?),
        })
    },
};

/// MaxPool, AveragePool, GlobalAveragePool.
pub(crate) const POOL: Family = Family {
    name: "pooling",
    ops: &["MaxPool", "AveragePool", "GlobalAveragePool"],
    import: |imp, cx, _x, shape| {
        let layer = match cx.node.op_type.as_str() {
            "GlobalAveragePool" => Layer::GlobalAvgPool,
            _ => imp.pool(cx, shape)?,
        };
        Ok(Step { layer: Some(layer) })
    },
};

/// Largest weight tensor the expansion may build.
const MAX_EXPANDED: usize = 1 << 26;

impl Importer<'_> {
    /// A `Conv` node on an activation of shape `shape` (`[C, H, W]`).
    pub(crate) fn conv(&self, cx: &Ctx, shape: &[usize]) -> Result<Layer> {
        let (wd, w) = self.floats(cx, 1)?;
        let [m, cg, kh, kw] = match wd[..] {
            [m, cg, kh, kw] => [m, cg, kh, kw],
            [m, cg, k] => [m, cg, 1, k],
            _ => {
                return Err(cx.unsup(format!(
                    "weight shape {wd:?} is not supported (1-D or 2-D convolution, weight [M, C/group, (kh,) kw])"
                )))
            }
        };
        let one_d = wd.len() == 3;
        let [c, h, wid] = shape[..] else {
            return Err(cx.shape_err(format!("needs a [N, C, H, W] input, got [N, {shape:?}]")));
        };
        let group = cx.int("group", 1);
        if !(1..=MAX_ATTR).contains(&group) {
            return Err(cx.unsup(format!("group={group} is out of range")));
        }
        let g = group as usize;
        if [m, cg, kh, kw].contains(&0) {
            return Err(cx.shape_err(format!("weight shape {wd:?} has an empty dimension")));
        }
        if cg.checked_mul(g) != Some(c) || m % g != 0 {
            return Err(cx.shape_err(format!(
                "group={g}: {c} input channels and {m} output channels must be {g} x {cg} and a multiple of {g}"
            )));
        }
        let d = cx.spatial("dilations", one_d, 1, 1)?;
        let dilate = |k: usize, d: usize| (k - 1).checked_mul(d).and_then(|x| x.checked_add(1));
        let (Some(ekh), Some(ekw)) = (dilate(kh, d[0]), dilate(kw, d[1])) else {
            return Err(cx.unsup(format!("dilations {d:?} are too large")));
        };
        if [m, c, ekh, ekw]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .is_none_or(|n| n > MAX_EXPANDED)
        {
            return Err(cx.unsup(format!(
                "group={g} with dilations {d:?} expands to a dense {m}x{c}x{ekh}x{ekw} kernel, which is too large"
            )));
        }
        // Dense, undilated weights: out channel o reads only its group.
        let mpg = m / g;
        let mut weight = vec![0f32; m * c * ekh * ekw];
        for o in 0..m {
            let grp = o / mpg;
            for ci in 0..cg {
                let cin = grp * cg + ci;
                for i in 0..kh {
                    for j in 0..kw {
                        weight[((o * c + cin) * ekh + i * d[0]) * ekw + j * d[1]] =
                            w[((o * cg + ci) * kh + i) * kw + j];
                    }
                }
            }
        }
        let bias = self.opt_floats(cx, 2, m)?;
        let window = cx.window_on((ekh, ekw), Some((kh, kw)), (h, wid), one_d)?;
        Ok(Layer::Conv2d {
            weight,
            bias,
            out_channels: m,
            in_channels: c,
            window,
        })
    }

    /// A `MaxPool` or `AveragePool` node on an activation of shape `shape`.
    pub(crate) fn pool(&self, cx: &Ctx, shape: &[usize]) -> Result<Layer> {
        let [_, h, w] = shape[..] else {
            return Err(cx.shape_err(format!("needs a [N, C, H, W] input, got [N, {shape:?}]")));
        };
        let max = cx.node.op_type == "MaxPool";
        if max {
            cx.int_in("storage_order", 0, &[0])?;
        }
        let cip = if max {
            0
        } else {
            cx.int_in("count_include_pad", 0, &[0, 1])?
        };
        let ceil = cx.int_in("ceil_mode", 0, &[0, 1])? == 1;
        let one_d = cx.attr("kernel_shape").is_some_and(|a| a.ints.len() == 1);
        let k = cx.spatial("kernel_shape", one_d, 0, 1)?;
        let d = cx.spatial("dilations", one_d, 1, 1)?;
        if d.iter().any(|&x| x > MAX_ATTR as usize) {
            return Err(cx.unsup(format!("dilations {d:?} are too large")));
        }
        if d != [1, 1] && cip == 1 {
            return Err(cx.unsup(
                "dilations with count_include_pad=1 are not supported (supported: count_include_pad=0, or MaxPool)",
            ));
        }
        // Sizes and auto_pad follow the dilated extent of the kernel.
        let extent = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1);
        let mut window = cx.window_on(extent, None, (h, w), one_d)?;
        window.kernel = (k[0], k[1]);
        window.dilations = (d[0], d[1]);
        if ceil {
            if cip == 1 {
                return Err(cx.unsup(
                    "ceil_mode=1 with count_include_pad=1 is not supported (supported: ceil_mode with count_include_pad=0, or MaxPool)",
                ));
            }
            // The extra windows of ceil mode: pad the end so they fit. The
            // padding is ignored by max pooling and not counted by average
            // pooling without count_include_pad, exactly as ONNX does.
            let (p, k, st) = (window.pads, extent, window.strides);
            window.pads.bottom += ceil_extra(h, p.top, p.bottom, k.0, st.0);
            window.pads.right += ceil_extra(w, p.left, p.right, k.1, st.1);
        }
        Ok(if max {
            Layer::MaxPool(window)
        } else {
            Layer::AvgPool {
                window,
                count_include_pad: cip == 1,
            }
        })
    }
}

/// Extra end padding that makes floor mode produce ceil mode's output
/// size on a map of `n` with `pb + pe` padding: `ceil((n + pads - k) / s) + 1`
/// windows, less a last one that would start in the end padding.
fn ceil_extra(n: usize, pb: usize, pe: usize, k: usize, s: usize) -> usize {
    let s = s.max(1);
    let span = (n + pb + pe).saturating_sub(k);
    let mut out = span.div_ceil(s) + 1;
    if out > 1 && (out - 1) * s >= n + pb {
        out -= 1;
    }
    ((out - 1) * s + k).saturating_sub(n + pb + pe)
}

impl Ctx<'_> {
    /// A per-axis attribute of a 2-D op, or of a 1-D op (one value per
    /// axis, read as height 1: the value `1` on the height for sizes and
    /// strides, `0` for pads).
    pub(crate) fn spatial(
        &self,
        name: &str,
        one_d: bool,
        default: i64,
        min: i64,
    ) -> Result<Vec<usize>> {
        if !one_d {
            return self.ints(name, 2, default, min);
        }
        let v = self.ints(name, 1, default, min)?;
        Ok(vec![if default == 0 && min == 0 { 0 } else { 1 }, v[0]])
    }

    /// Kernel `k` (the effective, dilated one), strides and pads of a conv
    /// or pool on an `h x w` map, with `auto_pad` resolved. `declared` is
    /// the undilated kernel the weights have, to check `kernel_shape`.
    pub(crate) fn window_on(
        &self,
        k: (usize, usize),
        declared: Option<(usize, usize)>,
        (h, w): (usize, usize),
        one_d: bool,
    ) -> Result<Window> {
        if let (Some(a), Some(dk)) = (self.attr("kernel_shape"), declared) {
            let want: &[i64] = if one_d {
                &[dk.1 as i64]
            } else {
                &[dk.0 as i64, dk.1 as i64]
            };
            if a.ints != want {
                return Err(self.shape_err(format!(
                    "kernel_shape {:?} does not match the weight {dk:?}",
                    a.ints
                )));
            }
        }
        let s = self.spatial("strides", one_d, 1, 1)?;
        let auto = self
            .attr("auto_pad")
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_default();
        let pads = match auto.as_str() {
            "" | "NOTSET" if one_d => {
                let p = self.ints("pads", 2, 0, 0)?;
                Pads {
                    top: 0,
                    left: p[0],
                    bottom: 0,
                    right: p[1],
                }
            }
            "" | "NOTSET" => {
                let p = self.ints("pads", 4, 0, 0)?;
                Pads {
                    top: p[0],
                    left: p[1],
                    bottom: p[2],
                    right: p[3],
                }
            }
            "VALID" => Pads::default(),
            "SAME_UPPER" | "SAME_LOWER" => {
                let total = |n: usize, k: usize, s: usize| {
                    let out = n.div_ceil(s);
                    ((out - 1) * s + k).saturating_sub(n)
                };
                let (th, tw) = (total(h, k.0, s[0]), total(w, k.1, s[1]));
                let upper = auto == "SAME_UPPER";
                let split = |t: usize| {
                    if upper {
                        (t / 2, t - t / 2)
                    } else {
                        (t - t / 2, t / 2)
                    }
                };
                let ((top, bottom), (left, right)) = (split(th), split(tw));
                Pads {
                    top,
                    left,
                    bottom,
                    right,
                }
            }
            o => {
                return Err(self.unsup(format!(
                "auto_pad={o} is not supported (supported: NOTSET, VALID, SAME_UPPER, SAME_LOWER)"
            )))
            }
        };
        Ok(Window {
            kernel: k,
            strides: (s[0], s[1]),
            pads,
            dilations: (1, 1),
        })
    }
}
