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
//! table ([`Lut`]): the values are requantized to an 8-bit grid calibrated
//! on the run's input, and the table maps the grid to an 8-bit output grid
//! that covers everything the function takes on it. After a table the
//! stage's values are 8-bit already, so the stage ends with the identity
//! requantization (or, for the last stage, logits at the table's scale).

use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::float::{layer_shapes, run_float_trace};
use crate::intops::{PostOp, Requant};
use crate::ir::{Layer, Model, Window};
use crate::quant_post::{quantize_post, Domain, PostPlan};

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
        let lut_scale = self.post.iter().rev().find_map(|op| match op {
            PostOp::Lut(l) => Some(l.out_scale),
            _ => None,
        });
        if let Some(s) = lut_scale {
            return acc.iter().map(|&v| (v as f64 * s) as f32).collect();
        }
        let per = (acc.len() / self.acc_scale.len().max(1)).max(1);
        acc.iter()
            .enumerate()
            .map(|(i, &v)| {
                (v as f64 * self.acc_scale[(i / per).min(self.acc_scale.len() - 1)]) as f32
            })
            .collect()
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

/// How the data provider turns float inputs into integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputQuant {
    /// Real value of one input unit.
    pub scale: f64,
    /// Smallest integer (0 or -127).
    pub min: i64,
    /// Largest integer (255 or 127).
    pub max: i64,
}

impl InputQuant {
    /// Quantizes one sample; refuses NaN and infinities.
    pub fn quantize(&self, x: &[f32]) -> Result<Vec<i64>> {
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

/// A quantized model: input quantization and stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    /// Input shape as imported (`[C, H, W]` or `[F]`).
    pub input_shape: Vec<usize>,
    /// Input quantization.
    pub input: InputQuant,
    /// Stages in order.
    pub stages: Vec<QuantStage>,
}

impl QuantModel {
    /// Number of outputs (classes).
    pub fn classes(&self) -> usize {
        self.stages
            .last()
            .map(|s| s.output_shape.iter().product())
            .unwrap_or(0)
    }

    /// Largest |accumulator| over all stages: sizes the plaintext modulus.
    pub fn acc_bound(&self) -> u64 {
        self.stages.iter().map(|s| s.acc_bound).max().unwrap_or(1)
    }

    /// Dequantizes final accumulators into float logits.
    pub fn dequantize(&self, acc: &[i64]) -> Vec<f32> {
        self.stages
            .last()
            .map(|l| l.dequantize(acc))
            .unwrap_or_default()
    }
}

fn as3(s: &[usize]) -> [usize; 3] {
    match s {
        [c, h, w] => [*c, *h, *w],
        [f] => [*f, 1, 1],
        _ => [s.iter().product(), 1, 1],
    }
}

/// A stage of the float model before quantization (BatchNorm folded).
struct FloatStage {
    input_shape: [usize; 3],
    linear: LinearKind,
    m: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    post: Vec<PostPlan>,
    /// Whether the last post op is a run of activations that the next
    /// activation joins.
    open_acts: bool,
    has_relu: bool,
    /// Index in the folded model of the stage's last layer.
    last_layer: usize,
    nodes: Vec<String>,
}

/// Folds BatchNorm into the preceding linear layer and groups the layers
/// into stages. Returns the folded model (for calibration) and the stages.
fn fold_and_group(model: &Model) -> Result<(Model, Vec<FloatStage>)> {
    let shapes = layer_shapes(model)?;
    let mut folded = Model {
        input_shape: model.input_shape.clone(),
        layers: Vec::new(),
        node_names: Vec::new(),
    };
    let mut stages: Vec<FloatStage> = Vec::new();
    let name = |i: usize| {
        model
            .node_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    };
    for (i, layer) in model.layers.iter().enumerate() {
        let in_shape = if i == 0 {
            model.input_shape.clone()
        } else {
            shapes[i - 1].clone()
        };
        match layer {
            Layer::Conv2d { .. } | Layer::Dense { .. } => {
                let (linear, m, weight, bias) = match layer {
                    Layer::Conv2d {
                        weight,
                        bias,
                        out_channels,
                        window,
                        ..
                    } => (LinearKind::Conv(*window), *out_channels, weight, bias),
                    Layer::Dense {
                        weight,
                        bias,
                        out_features,
                        ..
                    } => (LinearKind::Dense, *out_features, weight, bias),
                    _ => unreachable!("matched above"),
                };
                stages.push(FloatStage {
                    input_shape: as3(&in_shape),
                    linear,
                    m,
                    weight: weight.clone(),
                    bias: bias.clone(),
                    post: Vec::new(),
                    open_acts: false,
                    has_relu: false,
                    last_layer: 0,
                    nodes: vec![name(i)],
                });
            }
            Layer::BatchNorm { scale, shift } => {
                let prev_is_linear = matches!(
                    model.layers.get(i.wrapping_sub(1)),
                    Some(Layer::Conv2d { .. } | Layer::Dense { .. })
                );
                let Some(st) = stages.last_mut().filter(|_| prev_is_linear) else {
                    return Err(ModelError::Unsupported {
                        node: name(i),
                        op: "BatchNormalization".into(),
                        what: "BatchNormalization must directly follow a Conv or Gemm/MatMul so that it can be folded into it".into(),
                    });
                };
                let per = st.weight.len() / st.m.max(1);
                for o in 0..st.m {
                    st.weight[o * per..(o + 1) * per]
                        .iter_mut()
                        .for_each(|w| *w *= scale[o]);
                    st.bias[o] = st.bias[o] * scale[o] + shift[o];
                }
                st.nodes.push(name(i));
                // Rewrite the folded linear layer in place.
                let last = folded.layers.len() - 1;
                if let Layer::Conv2d { weight, bias, .. } | Layer::Dense { weight, bias, .. } =
                    &mut folded.layers[last]
                {
                    weight.clone_from(&st.weight);
                    bias.clone_from(&st.bias);
                }
                st.last_layer = last;
                continue;
            }
            Layer::Flatten => {
                if let Some(st) = stages.last_mut() {
                    st.open_acts = false;
                }
            }
            Layer::Relu
            | Layer::Act(_)
            | Layer::MaxPool(_)
            | Layer::AvgPool { .. }
            | Layer::GlobalAvgPool => {
                let input_layer = folded.layers.len().wrapping_sub(1);
                let Some(st) = stages.last_mut() else {
                    return Err(ModelError::Unsupported {
                        node: name(i),
                        op: layer.name().into(),
                        what: "the model must start with a Conv or Gemm/MatMul; ops before the first linear layer are not supported".into(),
                    });
                };
                let act = match layer {
                    Layer::Act(a) => Some(a.clone()),
                    Layer::Relu if st.open_acts => Some(Activation::Relu),
                    _ => None,
                };
                if let Some(a) = act {
                    match st.post.last_mut() {
                        Some(PostPlan::Acts { acts, .. }) if st.open_acts => acts.push(a),
                        _ => st.post.push(PostPlan::Acts {
                            acts: vec![a],
                            input_layer,
                            node: name(i),
                        }),
                    }
                    st.open_acts = true;
                    st.nodes.push(name(i));
                    folded.layers.push(layer.clone());
                    folded.node_names.push(name(i));
                    st.last_layer = folded.layers.len() - 1;
                    continue;
                }
                st.open_acts = false;
                st.post.push(PostPlan::Op(match layer {
                    Layer::Relu => {
                        st.has_relu = true;
                        PostOp::Relu
                    }
                    Layer::MaxPool(w) => PostOp::MaxPool(*w),
                    Layer::AvgPool {
                        window,
                        count_include_pad,
                    } => PostOp::AvgPool {
                        window: *window,
                        count_include_pad: *count_include_pad,
                    },
                    _ => PostOp::GlobalAvgPool,
                }));
                st.nodes.push(name(i));
            }
        }
        folded.layers.push(layer.clone());
        folded.node_names.push(name(i));
        if let Some(st) = stages.last_mut() {
            st.last_layer = folded.layers.len() - 1;
        }
    }
    if stages.is_empty() {
        return Err(ModelError::Shape(
            "the model has no Conv or Gemm/MatMul layer".into(),
        ));
    }
    Ok((folded, stages))
}

fn max_abs(v: impl Iterator<Item = f32>) -> f64 {
    v.fold(0f64, |m, x| m.max((x as f64).abs()))
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
    let (folded, fstages) = fold_and_group(model)?;
    // Calibrate: max |value| of the input, and the range of every layer's
    // output (stage outputs and the inputs of activation tables).
    let in_max = max_abs(calib.iter().copied());
    let signed_input = calib.iter().any(|&v| v < 0.0);
    // Calibration runs the float model on every sample: spread over cores.
    let samples: Vec<&[f32]> = calib.chunks(in_len).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_thread = samples.len().div_ceil(threads);
    let partial: Vec<Result<Vec<(f64, f64)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(per_thread.max(1))
            .map(|part| {
                let folded = &folded;
                scope.spawn(move || {
                    let mut m = vec![(0f64, 0f64); folded.layers.len()];
                    for sample in part {
                        let trace = run_float_trace(folded, sample)?;
                        for (r, t) in m.iter_mut().zip(&trace) {
                            *r = t
                                .iter()
                                .fold(*r, |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
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
    let mut ranges = vec![(0f64, 0f64); folded.layers.len()];
    for p in partial {
        for (r, (lo, hi)) in ranges.iter_mut().zip(p?) {
            *r = (r.0.min(lo), r.1.max(hi));
        }
    }
    let out_max: Vec<f64> = fstages
        .iter()
        .map(|st| {
            let (lo, hi) = ranges[st.last_layer];
            hi.max(-lo)
        })
        .collect();
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
        }
    } else {
        InputQuant {
            scale: in_max / 255.0,
            min: 0,
            max: 255,
        }
    };
    let mut s_in = input.scale;
    let mut in_abs_max = input.max.max(-input.min) as u64;
    let mut stages = Vec::with_capacity(fstages.len());
    let last = fstages.len() - 1;
    for (k, fs) in fstages.into_iter().enumerate() {
        let per = fs.weight.len() / fs.m.max(1);
        let mut weight = Vec::with_capacity(fs.weight.len());
        let mut acc_scale = Vec::with_capacity(fs.m);
        let mut bias = Vec::with_capacity(fs.m);
        let mut acc_bound = 1u64;
        for o in 0..fs.m {
            let row = &fs.weight[o * per..(o + 1) * per];
            let wmax = max_abs(row.iter().copied());
            let sw = if wmax > 0.0 { wmax / 127.0 } else { 1.0 };
            let mut l1 = 0u64;
            for &w in row {
                let q = (w as f64 / sw).round().clamp(-127.0, 127.0) as i8;
                l1 += q.unsigned_abs() as u64;
                weight.push(q);
            }
            acc_bound = acc_bound.max(l1 * in_abs_max);
            let a = s_in * sw;
            acc_scale.push(a);
            bias.push((fs.bias[o] as f64 / a).round() as i64);
        }
        let linear_shape = match fs.linear {
            LinearKind::Conv(w) => {
                let [_, h, wd] = fs.input_shape;
                let (oh, ow) = w.output_hw(h, wd).unwrap_or((0, 0));
                [fs.m, oh, ow]
            }
            LinearKind::Dense => [fs.m, 1, 1],
        };
        let (post, domain) = quantize_post(fs.post, linear_shape, &acc_scale, &ranges, k)?;
        let output = if k == last {
            StageOutput::Logits
        } else if let Domain::Int8 { scale, min, max } = domain {
            s_in = scale;
            in_abs_max = min.unsigned_abs().max(max.unsigned_abs());
            StageOutput::Requant(Requant::identity(fs.m, min, max))
        } else {
            let (min, max) = if fs.has_relu { (0, 255) } else { (-127, 127) };
            let s_out = if out_max[k] > 0.0 {
                out_max[k] / max as f64
            } else {
                1.0
            };
            let r: Vec<f64> = acc_scale.iter().map(|a| a / s_out).collect();
            s_in = s_out;
            in_abs_max = max as u64;
            StageOutput::Requant(Requant::from_real(&r, min, max))
        };
        let mut stage = QuantStage {
            input_shape: fs.input_shape,
            linear: fs.linear,
            out_channels: fs.m,
            weight,
            bias,
            post,
            output_shape: [0; 3],
            output,
            acc_scale,
            acc_bound,
            nodes: fs.nodes,
        };
        stage.output_shape = stage.post_output_shape().ok_or_else(|| {
            ModelError::Shape(format!("pooling window does not fit in stage {k}"))
        })?;
        stages.push(stage);
    }
    Ok(QuantModel {
        input_shape: model.input_shape.clone(),
        input,
        stages,
    })
}
