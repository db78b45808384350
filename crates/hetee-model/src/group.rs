//! Cuts a float model graph into *values* before quantization: HE stages (a
//! linear layer, the BatchNorm folded into it, and the chain of elementwise
//! and pooling ops after it while each tensor has that one consumer) and
//! enclave joins (Add, Concat, a BatchNorm that cannot be folded, and any
//! op whose input several layers read).

use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::intops::PostOp;
use crate::ir::{Layer, Model};
use crate::quant::LinearKind;
use crate::quant_post::PostPlan;

/// Where a value's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// The model input.
    Input,
    /// Value number `v` (creation order).
    Value(usize),
}

/// How a value's accumulator is formed.
pub(crate) enum FloatKind {
    /// An HE linear layer (BatchNorm folded in).
    Linear {
        reads: Src,
        input_shape: [usize; 3],
        linear: LinearKind,
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
    /// `Σ_i gain_i[c] · x_i + shift[c]` over inputs of one shape.
    Sum {
        reads: Vec<Src>,
        gain: Vec<Vec<f64>>,
        shift: Vec<f64>,
    },
    /// The inputs stacked along the channels.
    Concat { reads: Vec<Src> },
}

/// One value of the float graph.
pub(crate) struct FloatValue {
    pub kind: FloatKind,
    /// Accumulator shape (before the post ops).
    pub shape: [usize; 3],
    pub post: Vec<PostPlan>,
    /// Whether the last post op is a run of activations that the next
    /// activation joins.
    pub open_acts: bool,
    pub has_relu: bool,
    /// Model tensor holding the value as built so far.
    pub current: usize,
    pub nodes: Vec<String>,
}

impl FloatValue {
    fn new(kind: FloatKind, shape: [usize; 3], out: usize, node: String) -> Self {
        FloatValue {
            kind,
            shape,
            post: Vec::new(),
            open_acts: false,
            has_relu: false,
            current: out,
            nodes: vec![node],
        }
    }

    /// The values this one reads.
    pub fn reads(&self) -> Vec<Src> {
        match &self.kind {
            FloatKind::Linear { reads, .. } => vec![*reads],
            FloatKind::Sum { reads, .. } | FloatKind::Concat { reads } => reads.clone(),
        }
    }
}

pub(crate) fn as3(s: &[usize]) -> [usize; 3] {
    match s {
        [c, h, w] => [*c, *h, *w],
        [f] => [*f, 1, 1],
        _ => [s.iter().product(), 1, 1],
    }
}

/// The float graph cut into values, and the model input's layout.
pub(crate) struct Grouped {
    /// Values in creation order, which is a topological order.
    pub values: Vec<FloatValue>,
    /// A Transpose applied to the model input (it becomes part of the
    /// input's quantization: every reader sees the permuted input).
    pub input_perm: Option<[usize; 3]>,
    /// Shape `[C, H, W]` of the input as the values read it.
    pub input_shape: [usize; 3],
}

/// Groups the layers of `model` (with output shapes `shapes`) into values,
/// in creation order, which is a topological order.
pub(crate) fn group(model: &Model, shapes: &[Vec<usize>]) -> Result<Grouped> {
    // A final Softmax is applied to the released logits, not quantized.
    let n_layers = match model.layers.last() {
        Some(Layer::Softmax) => model.layers.len() - 1,
        _ => model.layers.len(),
    };
    let consumers = model.consumer_counts();
    let mut values: Vec<FloatValue> = Vec::new();
    let mut input_perm = None;
    let mut input_shape = as3(&model.input_shape);
    let mut val_of: Vec<Option<Src>> = vec![None; model.layers.len() + 1];
    val_of[0] = Some(Src::Input);
    let shape_of = |t: usize| -> [usize; 3] {
        if t == 0 {
            as3(&model.input_shape)
        } else {
            as3(&shapes[t - 1])
        }
    };
    for (i, layer) in model.layers.iter().enumerate().take(n_layers) {
        let out = i + 1;
        let name = model.node_name(i);
        let reads = model.reads(i);
        let src = |t: usize| -> Result<Src> {
            val_of.get(t).copied().flatten().ok_or_else(|| {
                ModelError::Shape(format!(
                    "node '{name}' reads tensor {t}, which no layer made"
                ))
            })
        };
        // The value this op can extend: the one whose latest tensor is the
        // op's only input, read by nothing else.
        let fusable = match reads.as_slice() {
            [t] => match val_of.get(*t).copied().flatten() {
                Some(Src::Value(v)) if values[v].current == *t && consumers[*t] == 1 => Some(v),
                _ => None,
            },
            _ => None,
        };
        let v = match layer {
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
                let kind = FloatKind::Linear {
                    reads: src(reads[0])?,
                    input_shape: shape_of(reads[0]),
                    linear,
                    weight: weight.clone(),
                    bias: bias.clone(),
                };
                values.push(FloatValue::new(kind, shape_of(out), out, name));
                debug_assert_eq!(shape_of(out)[0], m);
                values.len() - 1
            }
            Layer::Add | Layer::Concat => {
                let srcs = reads.iter().map(|&t| src(t)).collect::<Result<Vec<_>>>()?;
                let kind = if matches!(layer, Layer::Add) {
                    let c = shape_of(out)[0];
                    FloatKind::Sum {
                        gain: vec![vec![1.0; c]; srcs.len()],
                        shift: vec![0.0; c],
                        reads: srcs,
                    }
                } else {
                    FloatKind::Concat { reads: srcs }
                };
                values.push(FloatValue::new(kind, shape_of(out), out, name));
                values.len() - 1
            }
            Layer::BatchNorm { scale, shift } => {
                let target = fusable.filter(|&v| {
                    values[v].post.is_empty()
                        && matches!(
                            values[v].kind,
                            FloatKind::Linear { .. } | FloatKind::Sum { .. }
                        )
                });
                match target {
                    Some(v) => {
                        fold_affine(&mut values[v], scale, shift);
                        values[v].nodes.push(name);
                        values[v].current = out;
                        v
                    }
                    None => {
                        let c = shape_of(out)[0];
                        let kind = FloatKind::Sum {
                            reads: vec![src(reads[0])?],
                            gain: vec![vec![1.0; c]],
                            shift: vec![0.0; c],
                        };
                        let mut fv = FloatValue::new(kind, shape_of(out), out, name);
                        fold_affine(&mut fv, scale, shift);
                        values.push(fv);
                        values.len() - 1
                    }
                }
            }
            Layer::Flatten => {
                if let Some(v) = fusable {
                    values[v].current = out;
                    values[v].open_acts = false;
                }
                val_of[out] = val_of[reads[0]];
                continue;
            }
            Layer::Reshape(to) => {
                let linear_readers = (0..n_layers)
                    .filter(|&l| model.reads(l).contains(&out))
                    .all(|l| matches!(model.layers[l], Layer::Conv2d { .. } | Layer::Dense { .. }));
                if !linear_readers {
                    return Err(ModelError::Unsupported {
                        node: name,
                        op: "Reshape".into(),
                        what: format!(
                            "a reshape to [N, {}] is supported only as the input of a Conv or Gemm/MatMul (or as a flatten)",
                            to.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                val_of[out] = val_of[reads[0]];
                continue;
            }
            Layer::Transpose(perm) => {
                if reads[0] != 0 || consumers[0] != 1 || input_perm.is_some() {
                    return Err(ModelError::Unsupported {
                        node: name,
                        op: "Transpose".into(),
                        what: "a Transpose is supported only on the model input, as its only reader (e.g. an NHWC image to NCHW)".into(),
                    });
                }
                input_perm = Some(*perm);
                input_shape = shape_of(out);
                val_of[out] = Some(Src::Input);
                continue;
            }
            Layer::Softmax => {
                return Err(ModelError::Unsupported {
                    node: name,
                    op: "Softmax".into(),
                    what: "Softmax is supported as the model's last op only".into(),
                })
            }
            Layer::Relu
            | Layer::Act(_)
            | Layer::MaxPool(_)
            | Layer::AvgPool { .. }
            | Layer::GlobalAvgPool => {
                let v = match fusable {
                    Some(v) => v,
                    None => {
                        // An identity join: the op runs on the enclave's copy.
                        let t = reads[0];
                        let c = shape_of(t)[0];
                        let kind = FloatKind::Sum {
                            reads: vec![src(t)?],
                            gain: vec![vec![1.0; c]],
                            shift: vec![0.0; c],
                        };
                        values.push(FloatValue::new(kind, shape_of(t), t, name.clone()));
                        values.len() - 1
                    }
                };
                append_post(&mut values[v], layer, name);
                values[v].current = out;
                v
            }
        };
        val_of[out] = Some(Src::Value(v));
    }
    let last = n_layers;
    if n_layers < model.layers.len() && model.reads(n_layers) != vec![last] {
        return Err(ModelError::Unsupported {
            node: model.node_name(n_layers),
            op: "Softmax".into(),
            what: "the final Softmax must read the layer before it".into(),
        });
    }
    match val_of[last] {
        Some(Src::Value(v)) if v + 1 == values.len() => {}
        _ => {
            return Err(ModelError::Shape(
                "the model's output must come from its last layer after a Conv or Gemm/MatMul"
                    .into(),
            ))
        }
    }
    // Every value but the last must be read by a later one.
    for (v, fv) in values.iter().enumerate().rev().skip(1) {
        let used = values[v + 1..]
            .iter()
            .any(|w| w.reads().contains(&Src::Value(v)));
        if !used {
            return Err(ModelError::Unsupported {
                node: fv.nodes.last().cloned().unwrap_or_default(),
                op: "graph".into(),
                what:
                    "this node's output is not used by the model's output; remove the dead branch"
                        .into(),
            });
        }
    }
    Ok(Grouped {
        values,
        input_perm,
        input_shape,
    })
}

/// Folds a per-channel `y = x · scale + shift` into a value whose post ops
/// are empty (a linear layer's weights or a sum's gains).
fn fold_affine(fv: &mut FloatValue, scale: &[f32], shift: &[f32]) {
    match &mut fv.kind {
        FloatKind::Linear { weight, bias, .. } => {
            let m = bias.len();
            let per = weight.len() / m.max(1);
            for o in 0..m {
                weight[o * per..(o + 1) * per]
                    .iter_mut()
                    .for_each(|w| *w *= scale[o]);
                bias[o] = bias[o] * scale[o] + shift[o];
            }
        }
        FloatKind::Sum { gain, shift: h, .. } => {
            for g in gain.iter_mut() {
                for (c, gc) in g.iter_mut().enumerate() {
                    *gc *= scale[c] as f64;
                }
            }
            for (c, hc) in h.iter_mut().enumerate() {
                *hc = *hc * scale[c] as f64 + shift[c] as f64;
            }
        }
        FloatKind::Concat { .. } => {}
    }
}

/// Appends an elementwise or pooling layer to a value's post ops.
fn append_post(fv: &mut FloatValue, layer: &Layer, name: String) {
    let act = match layer {
        Layer::Act(a) => Some(a.clone()),
        Layer::Relu if fv.open_acts => Some(Activation::Relu),
        _ => None,
    };
    if let Some(a) = act {
        match fv.post.last_mut() {
            Some(PostPlan::Acts { acts, .. }) if fv.open_acts => acts.push(a),
            _ => fv.post.push(PostPlan::Acts {
                acts: vec![a],
                input_layer: fv.current,
                node: name.clone(),
            }),
        }
        fv.open_acts = true;
        fv.nodes.push(name);
        return;
    }
    fv.open_acts = false;
    fv.post.push(PostPlan::Op(match layer {
        Layer::Relu => {
            fv.has_relu = true;
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
    fv.nodes.push(name);
}
