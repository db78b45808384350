//! The plaintext integer reference executor. It computes every linear layer
//! by direct integer convolution (independently of the HE packing code) and
//! the rest with [`crate::intops`]; secure inference must match it exactly.

use crate::error::{ModelError, Result};
use crate::intops::{add_bias, apply_post};
use crate::quant::{LinearKind, QuantModel, QuantStage, StageOutput};

/// Direct integer linear layer of a stage on input `x` (`input_shape`).
pub fn linear(stage: &QuantStage, x: &[i64]) -> Vec<i64> {
    let [c, h, w] = stage.input_shape;
    let m = stage.out_channels;
    match stage.linear {
        LinearKind::Dense => {
            let n = c * h * w;
            (0..m)
                .map(|o| {
                    stage.weight[o * n..(o + 1) * n]
                        .iter()
                        .zip(x)
                        .map(|(&wq, &xv)| wq as i64 * xv)
                        .sum()
                })
                .collect()
        }
        LinearKind::Conv(win) => {
            let [_, oh, ow] = stage.linear_output_shape();
            let (kh, kw) = win.kernel;
            let (sh, sw) = win.strides;
            let mut y = vec![0i64; m * oh * ow];
            for o in 0..m {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0i64;
                        for ch in 0..c {
                            for l in 0..kh {
                                let Some(r) =
                                    (i * sh + l).checked_sub(win.pads.top).filter(|&r| r < h)
                                else {
                                    continue;
                                };
                                for n in 0..kw {
                                    let Some(q) =
                                        (j * sw + n).checked_sub(win.pads.left).filter(|&q| q < w)
                                    else {
                                        continue;
                                    };
                                    acc += stage.weight[((o * c + ch) * kh + l) * kw + n] as i64
                                        * x[(ch * h + r) * w + q];
                                }
                            }
                        }
                        y[(o * oh + i) * ow + j] = acc;
                    }
                }
            }
            y
        }
    }
}

/// Everything after the linear layer: bias, post ops, requantization.
/// Returns the next stage's input (or the final accumulators).
pub fn finish_stage(stage: &QuantStage, mut acc: Vec<i64>) -> Vec<i64> {
    add_bias(&mut acc, &stage.bias);
    let mut shape = stage.linear_output_shape();
    for op in &stage.post {
        let (y, s) = apply_post(op, acc, shape);
        acc = y;
        shape = s;
    }
    if let StageOutput::Requant(rq) = &stage.output {
        rq.apply(&mut acc, shape[0]);
    }
    acc
}

/// Runs the quantized model on one quantized input; returns the final
/// accumulators (dequantize with [`QuantModel::dequantize`]).
pub fn run_int(model: &QuantModel, input_q: &[i64]) -> Result<Vec<i64>> {
    let mut x = input_q.to_vec();
    for (k, st) in model.stages.iter().enumerate() {
        let need: usize = st.input_shape.iter().product();
        if x.len() != need {
            return Err(ModelError::Shape(format!(
                "stage {k} expects {need} inputs, got {}",
                x.len()
            )));
        }
        x = finish_stage(st, linear(st, &x));
    }
    Ok(x)
}

/// Quantizes a float sample and runs [`run_int`]; returns float logits.
pub fn run_quantized(model: &QuantModel, input: &[f32]) -> Result<Vec<f32>> {
    let q = model.input.quantize(input)?;
    Ok(model.dequantize(&run_int(model, &q)?))
}
