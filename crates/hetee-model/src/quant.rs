//! Integer quantization of a float model, calibrated on user data.
//!
//! The model is cut into *stages*: one linear layer (conv or dense, with a
//! following BatchNorm folded in) and the ReLU / pooling ops up to the next
//! linear layer. Weights are int8 per output channel (symmetric), the input
//! and every stage output are 8-bit per tensor (`[0, 255]` after a ReLU,
//! `[-127, 127]` otherwise), biases are integers in accumulator units and
//! requantization is an integer multiply + shift ([`Requant`]).
//!
//! A run of consecutive activations other than a leading ReLU becomes one
//! table ([`Lut`](crate::lut::Lut)): the values are requantized to an 8-bit grid calibrated
//! on the run's input, and the table maps the grid to an 8-bit output grid
//! that covers everything the function takes on it. After a table the
//! stage's values are 8-bit already, so the stage ends with the identity
//! requantization (or, for the last stage, logits at the table's scale).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::float::{layer_shapes, run_float_trace};
use crate::graph::{Join, JoinInput, JoinKind, TensorRef};
use crate::group::{as3, group, FloatKind, Src};
use crate::intops::{PostOp, Requant};
use crate::ir::{Layer, Model, Window};
use crate::quant_post::{quantize_post, Domain};

/// The linear part of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinearKind {
    /// Convolution with this window; weights `[M, C, kh, kw]`.
    Conv(Window),
    /// Dense layer on the flattened input; weights `[M, C*H*W]`.
    Dense,
}

/// What a stage produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageOutput {
    /// 8-bit activations for the next stage.
    Requant(Requant),
    /// Final logits: accumulator values, dequantized by `acc_scale`.
    Logits,
}

/// One quantized stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantStage {
    /// The value this stage reads.
    pub reads: TensorRef,
    /// Input activation shape `[C, H, W]` (flat inputs are `[F, 1, 1]`).
    pub input_shape: [usize; 3],
    /// Linear op.
    pub linear: LinearKind,
    /// Output channels of the linear op.
    pub out_channels: usize,
    /// int8 weights, row-major as described by [`LinearKind`].
    pub weight: Vec<i8>,
    /// Bias per output channel, in accumulator units.
    pub bias: Vec<i64>,
    /// Ops after the linear one, in order.
    pub post: Vec<PostOp>,
    /// Shape after the post ops.
    pub output_shape: [usize; 3],
    /// Requantization or final logits.
    pub output: StageOutput,
    /// Real value of one accumulator unit, per output channel. (Logits
    /// after an activation table are in the table's units instead; see
    /// [`QuantStage::dequantize`].)
    pub acc_scale: Vec<f64>,
    /// Largest possible |accumulator| (weights x input range x fan-in).
    pub acc_bound: u64,
    /// Source node names, for reports.
    pub nodes: Vec<String>,
}

impl QuantStage {
    /// Kernel height and width (1x1 for dense).
    pub fn kernel(&self) -> (usize, usize) {
        match self.linear {
            LinearKind::Conv(w) => w.kernel,
            LinearKind::Dense => (1, 1),
        }
    }

    /// Dequantizes this stage's final values (`[M, ...]`) into floats: at
    /// the last activation table's output scale if the stage has one, else
    /// per channel at `acc_scale`.
    pub fn dequantize(&self, acc: &[i64]) -> Vec<f32> {
        dequantize_tail(&self.post, &self.acc_scale, acc)
    }

    /// Shape after the post ops, derived from the input shape and the ops,
    /// or `None` if a pooling window does not fit.
    pub fn post_output_shape(&self) -> Option<[usize; 3]> {
        self.post
            .iter()
            .try_fold(self.linear_output_shape(), |s, op| op.output_shape(s))
    }

    /// Shape of the linear output `[M, oh, ow]`.
    pub fn linear_output_shape(&self) -> [usize; 3] {
        match self.linear {
            LinearKind::Conv(w) => {
                let (oh, ow) = w
                    .output_hw(self.input_shape[1], self.input_shape[2])
                    .unwrap_or((0, 0));
                [self.out_channels, oh, ow]
            }
            LinearKind::Dense => [self.out_channels, 1, 1],
        }
    }
}

/// Dequantizes final values after the post ops `post` of a stage or join
/// with accumulator scales `acc_scale`.
pub(crate) fn dequantize_tail(post: &[PostOp], acc_scale: &[f64], acc: &[i64]) -> Vec<f32> {
    let lut_scale = post.iter().rev().find_map(|op| match op {
        PostOp::Lut(l) => Some(l.out_scale),
        _ => None,
    });
    if let Some(s) = lut_scale {
        return acc.iter().map(|&v| (v as f64 * s) as f32).collect();
    }
    if acc_scale.is_empty() {
        return acc.iter().map(|&v| v as f32).collect();
    }
    let per = (acc.len() / acc_scale.len()).max(1);
    acc.iter()
        .enumerate()
        .map(|(i, &v)| (v as f64 * acc_scale[(i / per).min(acc_scale.len() - 1)]) as f32)
        .collect()
}

/// How the data provider turns float inputs into integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputQuant {
    /// Real value of one input unit.
    pub scale: f64,
    /// Smallest integer (0 or -127).
    pub min: i64,
    /// Largest integer (255 or 127).
    pub max: i64,
    /// A permutation applied to each sample as given (a Transpose on the
    /// model input, e.g. NHWC to NCHW), before quantization.
    #[serde(default)]
    pub layout: Option<InputLayout>,
}

/// The axis permutation of the model input: a sample as given has shape
/// `shape`; what the model reads is its transpose by `perm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLayout {
    /// Shape of a sample as given, `[A, B, C]`.
    pub shape: [usize; 3],
    /// Output axis `i` is input axis `perm[i]`.
    pub perm: [usize; 3],
}

impl InputLayout {
    /// Shape of the permuted sample, or `None` if `perm` is not a permutation.
    pub fn output_shape(&self) -> Option<[usize; 3]> {
        crate::ir::is_perm3(self.perm).then(|| self.perm.map(|a| self.shape[a]))
    }
}

impl InputQuant {
    /// Quantizes one sample (after its layout's permutation); refuses NaN
    /// and infinities, and a sample of the wrong size for the layout.
    pub fn quantize(&self, x: &[f32]) -> Result<Vec<i64>> {
        let permuted;
        let x = match &self.layout {
            None => x,
            Some(l) => {
                if l.output_shape().is_none() || x.len() != l.shape.iter().product::<usize>() {
                    return Err(ModelError::Data(format!(
                        "a sample of {} values does not fit the input layout {:?}",
                        x.len(),
                        l.shape
                    )));
                }
                permuted = crate::ir::transpose3(x, l.shape, l.perm);
                &permuted[..]
            }
        };
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if !v.is_finite() {
                    return Err(ModelError::Data(format!(
                        "input value #{i} is {v}; inputs must be finite numbers"
                    )));
                }
                let q = (v as f64 / self.scale).round();
                Ok((q.max(self.min as f64).min(self.max as f64)) as i64)
            })
            .collect()
    }
}

/// A quantized model: input quantization, HE stages and enclave joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    /// Input shape as imported (`[C, H, W]` or `[F]`).
    pub input_shape: Vec<usize>,
    /// Input quantization.
    pub input: InputQuant,
    /// HE stages in order.
    pub stages: Vec<QuantStage>,
    /// Enclave-only nodes between the stages (empty for a plain chain).
    #[serde(default)]
    pub joins: Vec<Join>,
    /// The model's output shape as imported (batch excluded).
    #[serde(default)]
    pub output_shape: Vec<usize>,
    /// Whether the model ends with a Softmax over the logits (applied by
    /// the enclave to the dequantized logits before the output policy).
    #[serde(default)]
    pub softmax: bool,
}

/// The value holding a graph's result: the last join if it releases
/// logits, else the last stage.
pub fn output_ref(stages: usize, joins: &[Join]) -> TensorRef {
    match joins.last() {
        Some(j) if j.output == StageOutput::Logits => TensorRef::Join(joins.len() - 1),
        _ => TensorRef::Stage(stages.saturating_sub(1)),
    }
}

/// Dequantizes one image's output integers into floats: by the last join
/// if it releases the logits, else by the last stage (`last_stage`), then
/// the final Softmax if `softmax`. The reference and the enclave both call
/// this, so they release the same floats.
pub fn dequantize_output(
    last_stage: Option<&QuantStage>,
    joins: &[Join],
    softmax: bool,
    acc: &[i64],
) -> Vec<f32> {
    let stages = usize::from(last_stage.is_some());
    let mut y = match output_ref(stages, joins) {
        TensorRef::Join(j) => joins[j].dequantize(acc),
        _ => last_stage.map(|l| l.dequantize(acc)).unwrap_or_default(),
    };
    if softmax {
        crate::activation::softmax(&mut y);
    }
    y
}

impl QuantModel {
    /// The value holding the result.
    pub fn output_ref(&self) -> TensorRef {
        output_ref(self.stages.len(), &self.joins)
    }

    /// Number of outputs (classes).
    pub fn classes(&self) -> usize {
        let shape = match self.output_ref() {
            TensorRef::Join(j) => self.joins.get(j).map(|j| j.output_shape),
            _ => self.stages.last().map(|s| s.output_shape),
        };
        shape.map(|s| s.iter().product()).unwrap_or(0)
    }

    /// Largest |accumulator| over all stages: sizes the plaintext modulus.
    pub fn acc_bound(&self) -> u64 {
        self.stages.iter().map(|s| s.acc_bound).max().unwrap_or(1)
    }

    /// Dequantizes one image's final accumulators into float outputs
    /// (then the final Softmax, if the model has one).
    pub fn dequantize(&self, acc: &[i64]) -> Vec<f32> {
        dequantize_output(self.stages.last(), &self.joins, self.softmax, acc)
    }
}

fn max_abs(v: impl Iterator<Item = f32>) -> f64 {
    v.fold(0f64, |m, x| m.max((x as f64).abs()))
}

/// Bits of headroom of a join's accumulator unit below its inputs' scales.
const JOIN_BITS: i32 = 20;

/// Calibrated `(min, max)` of every model tensor (index = tensor id) over
/// the samples, spread over the cores.
fn calibrate(model: &Model, samples: &[&[f32]]) -> Result<Vec<(f64, f64)>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_thread = samples.len().div_ceil(threads);
    let tensors = model.layers.len() + 1;
    let partial: Vec<Result<Vec<(f64, f64)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(per_thread.max(1))
            .map(|part| {
                scope.spawn(move || {
                    let mut m = vec![(0f64, 0f64); tensors];
                    let widen = |r: &mut (f64, f64), t: &[f32]| {
                        *r = t
                            .iter()
                            .fold(*r, |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
                    };
                    for sample in part {
                        widen(&mut m[0], sample);
                        let trace = run_float_trace(model, sample)?;
                        for (r, t) in m[1..].iter_mut().zip(&trace) {
                            widen(r, t);
                        }
                    }
                    Ok(m)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ModelError::Data("calibration thread failed".into())))
            })
            .collect()
    });
    let mut ranges = vec![(0f64, 0f64); tensors];
    for p in partial {
        for (r, (lo, hi)) in ranges.iter_mut().zip(p?) {
            *r = (r.0.min(lo), r.1.max(hi));
        }
    }
    Ok(ranges)
}

/// Quantizes `model`, calibrating activation ranges on `calib` (samples
/// concatenated, each of the model's input size).
pub fn quantize(model: &Model, calib: &[f32]) -> Result<QuantModel> {
    let in_len: usize = model.input_shape.iter().product();
    if calib.is_empty() || in_len == 0 || !calib.len().is_multiple_of(in_len) {
        return Err(ModelError::Data(format!(
            "the calibration set must hold at least one sample of {in_len} values (got {} values)",
            calib.len()
        )));
    }
    if let Some(i) = calib.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Data(format!(
            "calibration value #{i} is not finite; remove NaN/Inf samples"
        )));
    }
    let shapes = layer_shapes(model)?;
    if !model
        .layers
        .iter()
        .any(|l| matches!(l, Layer::Conv2d { .. } | Layer::Dense { .. }))
    {
        return Err(ModelError::Shape(
            "the model has no Conv or Gemm/MatMul layer; hetee runs models whose linear layers are evaluated under HE (a model without any would run entirely in the enclave, which defeats the design)".into(),
        ));
    }
    let grouped = group(model, &shapes)?;
    let fvalues = grouped.values;
    let layout = grouped.input_perm.map(|perm| InputLayout {
        shape: as3(&model.input_shape),
        perm,
    });
    let in_max = max_abs(calib.iter().copied());
    let signed_input = calib.iter().any(|&v| v < 0.0);
    let samples: Vec<&[f32]> = calib.chunks(in_len).collect();
    let ranges = calibrate(model, &samples)?;
    if in_max == 0.0 {
        return Err(ModelError::Data(
            "the calibration inputs are all zero; pass representative samples".into(),
        ));
    }
    let input = if signed_input {
        InputQuant {
            scale: in_max / 127.0,
            min: -127,
            max: 127,
            layout,
        }
    } else {
        InputQuant {
            scale: in_max / 255.0,
            min: 0,
            max: 255,
            layout,
        }
    };
    // The TensorRef of each value, and the 8-bit domain (scale, min, max) of each.
    let mut refs: Vec<TensorRef> = Vec::with_capacity(fvalues.len());
    let mut domains: Vec<(f64, i64, i64)> = Vec::with_capacity(fvalues.len());
    let domain_of = |s: Src, domains: &[(f64, i64, i64)]| match s {
        Src::Input => (input.scale, input.min, input.max),
        Src::Value(v) => domains[v],
    };
    let ref_of = |s: Src, refs: &[TensorRef]| match s {
        Src::Input => TensorRef::Input,
        Src::Value(v) => refs[v],
    };
    let mut stages: Vec<QuantStage> = Vec::new();
    let mut joins: Vec<Join> = Vec::new();
    let last = fvalues.len() - 1;
    for (k, fv) in fvalues.into_iter().enumerate() {
        let m = fv.shape[0];
        // The accumulator: HE linear layer or enclave combination.
        let (acc_scale, acc_bound, linear) = match &fv.kind {
            FloatKind::Linear {
                reads,
                input_shape,
                linear,
                weight: w,
                bias: b,
            } => {
                let (s_in, lo, hi) = domain_of(*reads, &domains);
                let in_abs_max = lo.unsigned_abs().max(hi.unsigned_abs());
                let per = w.len() / m.max(1);
                let mut weight = Vec::with_capacity(w.len());
                let mut acc_scale = Vec::with_capacity(m);
                let mut bias = Vec::with_capacity(m);
                let mut acc_bound = 1u64;
                for o in 0..m {
                    let row = &w[o * per..(o + 1) * per];
                    let wmax = max_abs(row.iter().copied());
                    let sw = if wmax > 0.0 { wmax / 127.0 } else { 1.0 };
                    let mut l1 = 0u64;
                    for &x in row {
                        let q = (x as f64 / sw).round().clamp(-127.0, 127.0) as i8;
                        l1 += q.unsigned_abs() as u64;
                        weight.push(q);
                    }
                    acc_bound = acc_bound.max(l1 * in_abs_max);
                    let a = s_in * sw;
                    acc_scale.push(a);
                    bias.push((b[o] as f64 / a).round() as i64);
                }
                let lin = (ref_of(*reads, &refs), *input_shape, *linear, weight, bias);
                (acc_scale, acc_bound, Some(lin))
            }
            FloatKind::Sum { reads, gain, shift } => {
                let doms: Vec<_> = reads.iter().map(|&r| domain_of(r, &domains)).collect();
                let mut unit = vec![0f64; m];
                for (c, u) in unit.iter_mut().enumerate() {
                    let big = doms
                        .iter()
                        .zip(gain)
                        .map(|(d, g)| d.0 * g[c].abs())
                        .fold(0f64, f64::max);
                    let base = if big > 0.0 { big } else { doms[0].0 };
                    *u = base / (1u64 << JOIN_BITS) as f64;
                }
                let mut inputs = Vec::with_capacity(reads.len());
                let mut bound = 0u64;
                for ((&r, d), g) in reads.iter().zip(&doms).zip(gain) {
                    let mult: Vec<i64> = (0..m)
                        .map(|c| (d.0 * g[c] / unit[c]).round() as i64)
                        .collect();
                    let in_abs = d.1.unsigned_abs().max(d.2.unsigned_abs());
                    bound += mult.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0) * in_abs;
                    inputs.push(JoinInput {
                        tensor: ref_of(r, &refs),
                        multiplier: mult,
                    });
                }
                let offset: Vec<i64> = (0..m)
                    .map(|c| (shift[c] / unit[c]).round() as i64)
                    .collect();
                bound += offset.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
                joins.push(Join {
                    kind: JoinKind::Sum,
                    inputs,
                    shape: fv.shape,
                    offset,
                    post: Vec::new(),
                    output_shape: [0; 3],
                    output: StageOutput::Logits,
                    acc_scale: Vec::new(),
                    acc_bound: bound.max(1),
                    after_stage: stages.len().checked_sub(1),
                    nodes: Vec::new(),
                });
                (unit, bound.max(1), None)
            }
            FloatKind::Concat { reads } => {
                let doms: Vec<_> = reads.iter().map(|&r| domain_of(r, &domains)).collect();
                let big = doms.iter().map(|d| d.0).fold(0f64, f64::max);
                let u = big / (1u64 << JOIN_BITS) as f64;
                let mut inputs = Vec::with_capacity(reads.len());
                let mut bound = 0u64;
                for (&r, d) in reads.iter().zip(&doms) {
                    let ch = match r {
                        Src::Input => grouped.input_shape[0],
                        Src::Value(_) => out_channels_of(r, &stages, &joins, &refs),
                    };
                    let mult = (d.0 / u).round() as i64;
                    let in_abs = d.1.unsigned_abs().max(d.2.unsigned_abs());
                    bound = bound.max(mult.unsigned_abs() * in_abs);
                    inputs.push(JoinInput {
                        tensor: ref_of(r, &refs),
                        multiplier: vec![mult; ch],
                    });
                }
                joins.push(Join {
                    kind: JoinKind::Concat,
                    inputs,
                    shape: fv.shape,
                    offset: vec![0; m],
                    post: Vec::new(),
                    output_shape: [0; 3],
                    output: StageOutput::Logits,
                    acc_scale: Vec::new(),
                    acc_bound: bound.max(1),
                    after_stage: stages.len().checked_sub(1),
                    nodes: Vec::new(),
                });
                (vec![u; m], bound.max(1), None)
            }
        };
        let (post, domain) = quantize_post(fv.post, fv.shape, &acc_scale, &ranges, k)?;
        let (output, dom) = if k == last {
            (StageOutput::Logits, (0.0, 0, 0))
        } else if let Domain::Int8 { scale, min, max } = domain {
            (
                StageOutput::Requant(Requant::identity(m, min, max)),
                (scale, min, max),
            )
        } else {
            let (min, max) = if fv.has_relu { (0, 255) } else { (-127, 127) };
            let (lo, hi) = ranges[fv.current];
            let out_max = hi.max(-lo);
            let s_out = if out_max > 0.0 {
                out_max / max as f64
            } else {
                1.0
            };
            let r: Vec<f64> = acc_scale.iter().map(|a| a / s_out).collect();
            (
                StageOutput::Requant(Requant::from_real(&r, min, max)),
                (s_out, min, max),
            )
        };
        domains.push(dom);
        let first = fv.nodes.first().cloned().unwrap_or_default();
        let shape_err =
            || ModelError::Shape(format!("pooling window does not fit after node '{first}'"));
        match linear {
            Some((reads, input_shape, linear, weight, bias)) => {
                let mut stage = QuantStage {
                    reads,
                    input_shape,
                    linear,
                    out_channels: m,
                    weight,
                    bias,
                    post,
                    output_shape: [0; 3],
                    output,
                    acc_scale,
                    acc_bound,
                    nodes: fv.nodes,
                };
                stage.output_shape = stage.post_output_shape().ok_or_else(shape_err)?;
                refs.push(TensorRef::Stage(stages.len()));
                stages.push(stage);
            }
            None => {
                let j = joins.last_mut().expect("pushed above");
                j.output_shape = post
                    .iter()
                    .try_fold(fv.shape, |s, op| op.output_shape(s))
                    .ok_or_else(shape_err)?;
                j.post = post;
                j.output = output;
                j.acc_scale = acc_scale;
                j.nodes = fv.nodes;
                refs.push(TensorRef::Join(joins.len() - 1));
            }
        }
    }
    Ok(QuantModel {
        input_shape: model.input_shape.clone(),
        input,
        stages,
        joins,
        output_shape: shapes.last().cloned().unwrap_or_default(),
        softmax: matches!(model.layers.last(), Some(Layer::Softmax)),
    })
}

/// Output channels of an already quantized value.
fn out_channels_of(s: Src, stages: &[QuantStage], joins: &[Join], refs: &[TensorRef]) -> usize {
    match s {
        Src::Input => 0,
        Src::Value(v) => match refs[v] {
            TensorRef::Stage(k) => stages[k].output_shape[0],
            TensorRef::Join(j) => joins[j].output_shape[0],
            TensorRef::Input => 0,
        },
    }
}
