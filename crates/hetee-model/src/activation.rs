//! Elementwise activations: their float semantics (ONNX definitions) and the
//! 256-entry integer tables that replace them in the quantized model.
//!
//! A quantized activation is a [`crate::lut::Lut`]: the stage's values are
//! requantized to an 8-bit grid `q` (scale `s_in`), and the table maps each
//! `q` to `clamp(round(f(q * s_in) / s_out))`. The float function is
//! evaluated only here, when the model provider quantizes the model; the
//! table ships in the schedule, so the enclave and the plaintext reference
//! run the same integers and agree bit for bit.
//!
//! Supported: Relu (fused into a table only when it follows another
//! activation), LeakyRelu, PRelu (one slope, or one per channel), Clip
//! (ReLU6 included), Sigmoid, HardSigmoid, Tanh, HardSwish, Elu, Selu, Celu,
//! Softplus, Softsign, ThresholdedRelu, Gelu (exact and `tanh`), Erf and
//! Mish (the single ONNX op).

use serde::{Deserialize, Serialize};

/// One elementwise activation with its parameters (ONNX defaults applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// `max(x, 0)`; only appears fused after another activation.
    Relu,
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// `x` if `x >= 0`, else `slope[c] * x`.
    PRelu {
        /// One slope shared by every channel, or one per channel.
        slope: Vec<f32>,
    },
    /// `min(max(x, min), max)`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// `x * max(0, min(1, x / 6 + 1 / 2))`.
    HardSwish,
    /// `x` if `x >= 0`, else `alpha * (exp(x) - 1)`.
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// `gamma * x` if `x > 0`, else `gamma * alpha * (exp(x) - 1)`.
    Selu {
        /// Scale of the negative part.
        alpha: f32,
        /// Overall scale.
        gamma: f32,
    },
    /// `max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`.
    Celu {
        /// Scale (nonzero).
        alpha: f32,
    },
    /// `ln(1 + exp(x))`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x` if `x > alpha`, else 0.
    ThresholdedRelu {
        /// Threshold.
        alpha: f32,
    },
    /// `x / 2 * (1 + erf(x / sqrt 2))`, or its `tanh` approximation.
    Gelu {
        /// ONNX `approximate="tanh"`.
        tanh: bool,
    },
    /// The error function.
    Erf,
    /// `x * tanh(softplus(x))`.
    Mish,
}

impl Activation {
    /// ONNX op name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::LeakyRelu { .. } => "LeakyRelu",
            Activation::PRelu { .. } => "PRelu",
            Activation::Clip { .. } => "Clip",
            Activation::Sigmoid => "Sigmoid",
            Activation::HardSigmoid { .. } => "HardSigmoid",
            Activation::Tanh => "Tanh",
            Activation::HardSwish => "HardSwish",
            Activation::Elu { .. } => "Elu",
            Activation::Selu { .. } => "Selu",
            Activation::Celu { .. } => "Celu",
            Activation::Softplus => "Softplus",
            Activation::Softsign => "Softsign",
            Activation::ThresholdedRelu { .. } => "ThresholdedRelu",
            Activation::Gelu { .. } => "Gelu",
            Activation::Erf => "Erf",
            Activation::Mish => "Mish",
        }
    }

    /// Checks the parameters against an activation with `channels`
    /// channels: finite numbers, and a PRelu slope of 1 or `channels` values.
    pub fn check(&self, channels: usize) -> Result<(), String> {
        let params: Vec<f32> = match self {
            Activation::LeakyRelu { alpha }
            | Activation::Elu { alpha }
            | Activation::ThresholdedRelu { alpha } => vec![*alpha],
            Activation::Celu { alpha } => {
                if *alpha == 0.0 {
                    return Err("Celu alpha must be nonzero".into());
                }
                vec![*alpha]
            }
            Activation::PRelu { slope } => {
                if slope.len() != 1 && slope.len() != channels {
                    return Err(format!(
                        "PRelu has {} slopes; expected 1 or one per channel ({channels})",
                        slope.len()
                    ));
                }
                slope.clone()
            }
            Activation::Clip { min, max } => vec![*min, *max],
            Activation::HardSigmoid { alpha, beta } => vec![*alpha, *beta],
            Activation::Selu { alpha, gamma } => vec![*alpha, *gamma],
            _ => Vec::new(),
        };
        // Clip bounds may be infinite (an absent bound); nothing may be NaN.
        let ok = |v: &f32| v.is_finite() || matches!(self, Activation::Clip { .. }) && !v.is_nan();
        if params.iter().all(ok) {
            Ok(())
        } else {
            Err(format!(
                "{} has a parameter that is not finite",
                self.name()
            ))
        }
    }

    /// The function on channel `c` (ONNX semantics), in `f64`.
    pub fn eval(&self, x: f64, c: usize) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu { alpha } => neg_scaled(x, *alpha as f64),
            Activation::PRelu { slope } => {
                let s = slope.get(c).or(slope.first()).copied().unwrap_or(0.0);
                neg_scaled(x, s as f64)
            }
            Activation::Clip { min, max } => x.max(*min as f64).min(*max as f64),
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoid { alpha, beta } => {
                (*alpha as f64 * x + *beta as f64).clamp(0.0, 1.0)
            }
            Activation::Tanh => x.tanh(),
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    *alpha as f64 * x.exp_m1()
                }
            }
            Activation::Selu { alpha, gamma } => {
                let g = *gamma as f64;
                if x > 0.0 {
                    g * x
                } else {
                    g * *alpha as f64 * x.exp_m1()
                }
            }
            Activation::Celu { alpha } => {
                let a = *alpha as f64;
                x.max(0.0) + (a * (x / a).exp_m1()).min(0.0)
            }
            Activation::Softplus => softplus(x),
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::ThresholdedRelu { alpha } => {
                if x > *alpha as f64 {
                    x
                } else {
                    0.0
                }
            }
            Activation::Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Activation::Gelu { tanh: true } => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Erf => erf(x),
            Activation::Mish => x * softplus(x).tanh(),
        }
    }

    /// Inputs outside `[lo, hi]` give the same value as the nearer bound
    /// (the function is continuous and constant beyond it), so the
    /// quantization grid need not cover them.
    pub fn flat_outside(&self) -> (f64, f64) {
        match self {
            Activation::Clip { min, max } => (*min as f64, (*max as f64).max(*min as f64)),
            Activation::HardSigmoid { alpha, beta } if *alpha != 0.0 => {
                let (a, b) = (*alpha as f64, *beta as f64);
                let (x0, x1) = (-b / a, (1.0 - b) / a);
                (x0.min(x1), x0.max(x1))
            }
            Activation::HardSwish => (-3.0, f64::INFINITY),
            _ => (f64::NEG_INFINITY, f64::INFINITY),
        }
    }
}

/// Applies a chain of activations in order.
pub fn eval_chain(acts: &[Activation], x: f64, c: usize) -> f64 {
    acts.iter().fold(x, |v, a| a.eval(v, c))
}

fn neg_scaled(x: f64, s: f64) -> f64 {
    if x >= 0.0 {
        x
    } else {
        s * x
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + exp(x))` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The error function, to about 1e-14 absolute: the Maclaurin series for
/// `|x| < 3` and the continued fraction of `erfc` beyond.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let v = if a < 3.0 {
        // erf(a) = 2/sqrt(pi) * sum (-1)^n a^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, a2) = (a, a, a * a);
        for n in 1..200 {
            term *= -a2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a < 7.0 {
        // erfc(a) = exp(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))
        let mut f = a;
        for k in (1..80).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    } else {
        1.0
    };
    v.copysign(x)
}

/// A 256-entry table for `acts` on an 8-bit input grid, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// 256 entries per table: one table, or one per channel.
    pub entries: Vec<i16>,
    /// Real value of one output unit.
    pub out_scale: f64,
    /// Smallest output value (0 or -127).
    pub out_min: i64,
    /// Largest output value (255 or 127).
    pub out_max: i64,
}

/// Builds the table of `acts` for inputs `q` in `[in_min, in_max]` (at most
/// 256 values) of real value `q * in_scale`. Entry `i` is for `q = in_min +
/// i`. The output grid is 8-bit over the range the function takes on the
/// reachable inputs: `[0, 255]` if it never goes negative, else
/// `[-127, 127]`, so no reachable value saturates. `channels` tables are
/// built when an activation depends on the channel (PRelu), else one.
pub fn build_table(
    acts: &[Activation],
    channels: usize,
    in_scale: f64,
    in_min: i64,
    in_max: i64,
) -> Table {
    let per_channel = acts
        .iter()
        .any(|a| matches!(a, Activation::PRelu { slope } if slope.len() > 1));
    let tables = if per_channel { channels.max(1) } else { 1 };
    let real = |q: i64, c: usize| eval_chain(acts, q as f64 * in_scale, c);
    let (mut lo, mut hi) = (0f64, 0f64);
    for c in 0..tables {
        for q in in_min..=in_max.min(in_min + 255) {
            let v = real(q, c);
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    let (out_min, out_max, range) = if lo >= 0.0 {
        (0, 255, hi)
    } else {
        (-127, 127, hi.max(-lo))
    };
    let out_scale = if range > 0.0 && range.is_finite() {
        range / out_max as f64
    } else {
        1.0
    };
    let mut entries = Vec::with_capacity(tables * 256);
    for c in 0..tables {
        for i in 0..256 {
            let v = (real(in_min + i, c) / out_scale).round();
            // NaN (not reachable for finite parameters) maps to 0.
            let v = if v.is_nan() { 0.0 } else { v };
            entries.push(v.clamp(out_min as f64, out_max as f64) as i16);
        }
    }
    Table {
        entries,
        out_scale,
        out_min,
        out_max,
    }
}

/// Softmax of `x` in place, computed in `f64` (shifted by the maximum).
/// The enclave and the plaintext reference both call this function on the
/// same dequantized logits, so they agree bit for bit.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    for (v, ev) in x.iter_mut().zip(e) {
        *v = (ev / s) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        let known = [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.9, 0.9999589021219005),
            (3.0, 0.9999779095030014),
            (3.5, 0.9999992569016276),
            (5.0, 0.9999999999984626),
        ];
        for (x, want) in known {
            assert!((erf(x) - want).abs() < 1e-13, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-13);
        }
    }

    #[test]
    fn activations_follow_onnx_definitions() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(Activation::Sigmoid.eval(0.0, 0), 0.5));
        assert!(close(Activation::Sigmoid.eval(-800.0, 0), 0.0));
        assert!(close(Activation::Softplus.eval(800.0, 0), 800.0));
        assert!(close(Activation::HardSwish.eval(-3.5, 0), 0.0));
        assert!(close(
            Activation::HardSwish.eval(1.0, 0),
            1.0 * (1.0 / 6.0 + 0.5)
        ));
        let pr = Activation::PRelu {
            slope: vec![0.5, 2.0],
        };
        assert!(close(pr.eval(-1.0, 1), -2.0) && close(pr.eval(-1.0, 0), -0.5));
        assert!(close(pr.eval(3.0, 1), 3.0));
        let clip = Activation::Clip { min: 0.0, max: 6.0 };
        assert_eq!(clip.flat_outside(), (0.0, 6.0));
        assert!(close(clip.eval(7.0, 0), 6.0));
        assert!(close(
            Activation::Gelu { tanh: false }.eval(1.0, 0),
            0.8413447460685429
        ));
        assert!((Activation::Mish.eval(1.0, 0) - 0.8650983882673103).abs() < 1e-12);
    }

    #[test]
    fn tables_cover_the_reachable_outputs() {
        let t = build_table(&[Activation::Sigmoid], 4, 8.0 / 127.0, -127, 127);
        assert_eq!((t.out_min, t.out_max, t.entries.len()), (0, 255, 256));
        assert_eq!(t.entries[127], 128); // sigmoid(0) = 0.5 of ~1.0 -> 128
        assert_eq!(t.entries[254], 255); // the largest reachable input
        let t = build_table(
            &[Activation::PRelu {
                slope: vec![0.25, 1.0, -1.0],
            }],
            3,
            0.5,
            -127,
            127,
        );
        assert_eq!((t.out_min, t.out_max, t.entries.len()), (-127, 127, 768));
        assert_eq!(t.entries[0], -32); // -63.5 * 0.25 = -15.875 at scale 0.5
        assert_eq!(t.entries[256], -127);
        assert_eq!(t.entries[512], 127);
    }
}
