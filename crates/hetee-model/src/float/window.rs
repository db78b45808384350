//! The float model's windowed ops on `[C, H, W]` maps: zero-padded
//! convolution and pooling (max pooling ignores padded positions; average
//! pooling follows ONNX's `count_include_pad`), with strides and, for
//! pooling, dilations.

use crate::ir::Window;

/// Input index range `[lo, hi)` covered by kernel taps for output position
/// `o`, clipped to the unpadded map of size `n`; returns `(first tap, lo, hi)`.
fn taps(o: usize, stride: usize, pad: usize, k: usize, n: usize) -> (usize, usize, usize) {
    let start = o * stride; // in padded coordinates
    let lo = start.max(pad);
    let hi = (start + k).min(pad + n);
    if hi <= lo {
        return (0, 0, 0); // the window lies entirely in the padding
    }
    (lo - start, lo - pad, hi - pad)
}

/// Zero-padded 2-D convolution, `weight` is `[M, C, kh, kw]`.
pub(super) fn conv2d(
    x: &[f32],
    in_shape: &[usize],
    out_shape: &[usize],
    weight: &[f32],
    bias: &[f32],
    win: &Window,
) -> Vec<f32> {
    let (c_in, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let (m, oh, ow) = (out_shape[0], out_shape[1], out_shape[2]);
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.strides;
    let mut y = vec![0f32; m * oh * ow];
    for oc in 0..m {
        for oy in 0..oh {
            let (ky0, iy0, iy1) = taps(oy, sh, win.pads.top, kh, h);
            for ox in 0..ow {
                let (kx0, ix0, ix1) = taps(ox, sw, win.pads.left, kw, w);
                let mut s = bias[oc] as f64;
                for c in 0..c_in {
                    let wbase = (oc * c_in + c) * kh * kw;
                    for (dy, iy) in (iy0..iy1).enumerate() {
                        let wrow = &weight[wbase + (ky0 + dy) * kw + kx0..];
                        let xrow = &x[(c * h + iy) * w + ix0..(c * h + iy) * w + ix1];
                        for (&wv, &xv) in wrow.iter().zip(xrow) {
                            s += wv as f64 * xv as f64;
                        }
                    }
                }
                y[(oc * oh + oy) * ow + ox] = s as f32;
            }
        }
    }
    y
}

/// Max pooling (`avg = None`, padding ignored) or average pooling
/// (`avg = Some(count_include_pad)`, zero padding).
pub(super) fn pool(
    x: &[f32],
    in_shape: &[usize],
    out_shape: &[usize],
    win: &Window,
    avg: Option<bool>,
) -> Vec<f32> {
    let (c_n, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    let (oh, ow) = (out_shape[1], out_shape[2]);
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.strides;
    let padded_h = h + win.pads.top + win.pads.bottom;
    let padded_w = w + win.pads.left + win.pads.right;
    let (dh, dw) = win.dilations;
    let mut y = Vec::with_capacity(c_n * oh * ow);
    for c in 0..c_n {
        for oy in 0..oh {
            for ox in 0..ow {
                // The taps inside the map (padding is skipped).
                let mut vals = Vec::with_capacity(kh * kw);
                for l in 0..kh {
                    let Some(iy) = (oy * sh + l * dh)
                        .checked_sub(win.pads.top)
                        .filter(|&r| r < h)
                    else {
                        continue;
                    };
                    for n in 0..kw {
                        if let Some(ix) = (ox * sw + n * dw)
                            .checked_sub(win.pads.left)
                            .filter(|&q| q < w)
                        {
                            vals.push(x[(c * h + iy) * w + ix]);
                        }
                    }
                }
                let v = match avg {
                    None => vals.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
                    Some(include_pad) => {
                        let s: f64 = vals.iter().map(|&v| v as f64).sum();
                        let count = if include_pad {
                            // ONNX counts the padded window, clipped to the padded map.
                            let ry = (oy * sh + kh).min(padded_h) - oy * sh;
                            let rx = (ox * sw + kw).min(padded_w) - ox * sw;
                            ry * rx
                        } else {
                            vals.len()
                        };
                        (s / count.max(1) as f64) as f32
                    }
                };
                y.push(v);
            }
        }
    }
    y
}
