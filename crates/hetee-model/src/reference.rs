//! The plaintext integer reference executor. It computes every linear layer
//! by direct integer convolution (independently of the HE packing code) and
//! the rest with [`crate::intops`]; secure inference must match it exactly.

use crate::error::{ModelError, Result};
use crate::graph::{Join, TensorRef, Values};
use crate::intops::{add_bias, apply_post, PostOp};
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
    finish_tail(&stage.post, &stage.output, stage.linear_output_shape(), acc)
}

/// Post ops, then requantization (unless the values are final).
fn finish_tail(
    post: &[PostOp],
    output: &StageOutput,
    mut shape: [usize; 3],
    mut acc: Vec<i64>,
) -> Vec<i64> {
    for op in post {
        let (y, s) = apply_post(op, acc, shape);
        acc = y;
        shape = s;
    }
    if let StageOutput::Requant(rq) = output {
        rq.apply(&mut acc, shape[0]);
    }
    acc
}

/// Runs join `j` on one image's values: combination, post ops,
/// requantization. Errors if an input is missing or of the wrong size.
pub fn run_join(j: usize, join: &Join, values: &Values) -> Result<Vec<i64>> {
    let [c, h, w] = join.shape;
    let hw = h * w;
    let mut inputs = Vec::with_capacity(join.inputs.len());
    for inp in &join.inputs {
        let x = values.get(inp.tensor).ok_or_else(|| {
            ModelError::Shape(format!(
                "join {j} reads {:?}, which is not held",
                inp.tensor
            ))
        })?;
        if x.len() != inp.multiplier.len() * hw {
            return Err(ModelError::Shape(format!(
                "join {j}: input {:?} has {} values, expected {} x {hw}",
                inp.tensor,
                x.len(),
                inp.multiplier.len()
            )));
        }
        inputs.push(x);
    }
    let total: usize = join.inputs.iter().map(|i| i.multiplier.len()).sum();
    let ok = match join.kind {
        crate::graph::JoinKind::Sum => join.inputs.iter().all(|i| i.multiplier.len() == c),
        crate::graph::JoinKind::Concat => total == c,
    };
    if !ok || join.offset.len() != c {
        return Err(ModelError::Shape(format!(
            "join {j}: the inputs' channels do not make its shape"
        )));
    }
    Ok(finish_tail(
        &join.post,
        &join.output,
        join.shape,
        join.accumulate(&inputs),
    ))
}

/// Finishes stage `k` for one image (its linear output `acc`), then runs
/// the joins after it; every value is stored in `values`.
pub fn after_stage(
    k: usize,
    stage: &QuantStage,
    joins: &[Join],
    acc: Vec<i64>,
    values: &mut Values,
) -> Result<()> {
    values.set(TensorRef::Stage(k), finish_stage(stage, acc));
    run_joins(Some(k), joins, values)
}

/// Runs the joins with `after_stage == done` (`None`: the ops on the model
/// input before stage 0) for one image; every value is stored in `values`.
pub fn run_joins(done: Option<usize>, joins: &[Join], values: &mut Values) -> Result<()> {
    for (j, join) in joins
        .iter()
        .enumerate()
        .filter(|(_, j)| j.after_stage == done)
    {
        let y = run_join(j, join, values)?;
        values.set(TensorRef::Join(j), y);
    }
    Ok(())
}

/// Runs the quantized model on one quantized input; returns the final
/// accumulators (dequantize with [`QuantModel::dequantize`]).
pub fn run_int(model: &QuantModel, input_q: &[i64]) -> Result<Vec<i64>> {
    let mut values = Values::new(input_q.to_vec(), model.stages.len(), model.joins.len());
    run_joins(None, &model.joins, &mut values)?;
    for (k, st) in model.stages.iter().enumerate() {
        let need: usize = st.input_shape.iter().product();
        let x = values.get(st.reads).ok_or_else(|| {
            ModelError::Shape(format!("stage {k} reads {:?}, which is not held", st.reads))
        })?;
        if x.len() != need {
            return Err(ModelError::Shape(format!(
                "stage {k} expects {need} inputs, got {}",
                x.len()
            )));
        }
        let acc = linear(st, x);
        after_stage(k, st, &model.joins, acc, &mut values)?;
    }
    values
        .take(model.output_ref())
        .ok_or_else(|| ModelError::Shape("the model's output was not computed".into()))
}

/// Quantizes a float sample and runs [`run_int`]; returns float logits.
pub fn run_quantized(model: &QuantModel, input: &[f32]) -> Result<Vec<f32>> {
    let q = model.input.quantize(input)?;
    Ok(model.dequantize(&run_int(model, &q)?))
}
