//! Float32 reference executor of the model IR, for one sample at a time.
//!
//! Semantics follow ONNX exactly: convolution and average pooling pad with
//! zeros, max pooling ignores padded positions, and a `Dense` (or `Flatten`)
//! after a `[C, H, W]` activation flattens it row-major.
//!
//! Sums (convolution, dense, average pooling) are accumulated in `f64` and
//! rounded to `f32` once per output element, so results are at least as
//! accurate as a plain `f32` implementation.

use crate::error::{ModelError, Result};
use crate::ir::{Layer, Model, Window};

mod window;
use window::{conv2d, pool};

/// Output shape of one layer applied to an activation of shape `input`
/// (batch excluded), after checking that weights and shapes fit together.
///
/// Errors are plain descriptions; callers prefix them with the layer name.
pub fn layer_output_shape(
    layer: &Layer,
    input: &[usize],
) -> std::result::Result<Vec<usize>, String> {
    let numel: usize = input.iter().product();
    match layer {
        Layer::Conv2d {
            weight,
            bias,
            out_channels,
            in_channels,
            window,
        } => {
            let [c, h, w] = chw(input, "Conv2d")?;
            if c != *in_channels {
                return Err(format!(
                    "convolution expects {in_channels} input channels, got activation {input:?}"
                ));
            }
            let (kh, kw) = window.kernel;
            let expected = [*out_channels, *in_channels, kh, kw]
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d));
            if expected != Some(weight.len()) {
                return Err(format!(
                    "weight has {} values, expected {out_channels}x{in_channels}x{kh}x{kw}",
                    weight.len()
                ));
            }
            if bias.len() != *out_channels {
                return Err(format!(
                    "bias has {} values, expected {out_channels}",
                    bias.len()
                ));
            }
            let (oh, ow) = fit(window, h, w)?;
            Ok(vec![*out_channels, oh, ow])
        }
        Layer::Dense {
            weight,
            bias,
            out_features,
            in_features,
        } => {
            if numel != *in_features {
                return Err(format!(
                    "dense layer expects {in_features} input features, got activation {input:?} ({numel} values)"
                ));
            }
            if in_features.checked_mul(*out_features) != Some(weight.len()) {
                return Err(format!(
                    "weight has {} values, expected {out_features}x{in_features}",
                    weight.len()
                ));
            }
            if bias.len() != *out_features {
                return Err(format!(
                    "bias has {} values, expected {out_features}",
                    bias.len()
                ));
            }
            Ok(vec![*out_features])
        }
        Layer::BatchNorm { scale, shift } => {
            let channels = match input.len() {
                3 | 1 => input[0],
                _ => return Err(format!("batch norm needs [C,H,W] or [F], got {input:?}")),
            };
            if scale.len() != channels || shift.len() != channels {
                return Err(format!(
                    "batch norm has {} scales and {} shifts, activation {input:?} has {channels} channels",
                    scale.len(),
                    shift.len()
                ));
            }
            Ok(input.to_vec())
        }
        Layer::Relu => Ok(input.to_vec()),
        Layer::Act(a) => {
            a.check(input.first().copied().unwrap_or(0))?;
            Ok(input.to_vec())
        }
        Layer::MaxPool(window) | Layer::AvgPool { window, .. } => {
            let [c, h, w] = chw(input, layer.name())?;
            let p = window.pads;
            let (eh, ew) = window
                .extent()
                .ok_or_else(|| format!("pooling dilations {:?} are invalid", window.dilations))?;
            if p.top >= eh || p.bottom >= eh || p.left >= ew || p.right >= ew {
                return Err(format!(
                    "pooling padding {p:?} must be smaller than the kernel {:?}",
                    window.kernel
                ));
            }
            let (oh, ow) = fit(window, h, w)?;
            Ok(vec![c, oh, ow])
        }
        Layer::GlobalAvgPool => {
            let [c, h, w] = chw(input, "GlobalAvgPool")?;
            if h == 0 || w == 0 {
                return Err(format!("global average pool over an empty map {input:?}"));
            }
            Ok(vec![c, 1, 1])
        }
        Layer::Flatten => Ok(vec![numel]),
        Layer::Reshape(to) => {
            if to.iter().product::<usize>() != numel || to.is_empty() || to.len() > 3 {
                return Err(format!("cannot reshape {input:?} to {to:?}"));
            }
            Ok(to.clone())
        }
        Layer::Transpose(perm) => {
            let [c, h, w] = chw(input, "Transpose")?;
            if !crate::ir::is_perm3(*perm) {
                return Err(format!("{perm:?} is not a permutation of the axes"));
            }
            let s = [c, h, w];
            Ok(perm.iter().map(|&a| s[a]).collect())
        }
        Layer::Add | Layer::Concat => Err(format!("{} needs two or more inputs", layer.name())),
        Layer::Softmax => match input {
            [_] => Ok(input.to_vec()),
            _ => Err(format!(
                "softmax needs a flat [N, F] input, got [N, {input:?}]"
            )),
        },
    }
}

/// Output shape of a layer reading the tensors of shapes `inputs`: unary
/// layers go to [`layer_output_shape`]; `Add` needs equal shapes and
/// `Concat` equal shapes but for the first (channel) dimension.
pub fn node_output_shape(
    layer: &Layer,
    inputs: &[&[usize]],
) -> std::result::Result<Vec<usize>, String> {
    match (layer, inputs) {
        (Layer::Add, [a, b]) => {
            if a != b {
                return Err(format!("Add of tensors of shapes {a:?} and {b:?} (broadcasting between activations is not supported)"));
            }
            Ok(a.to_vec())
        }
        (Layer::Concat, [first, rest @ ..]) if !rest.is_empty() => {
            let mut c = 0usize;
            for s in inputs {
                if s.len() != first.len() || s.get(1..) != first.get(1..) {
                    return Err(format!(
                        "Concat along channels of tensors of shapes {inputs:?}: all but the first dimension must agree"
                    ));
                }
                c = c.checked_add(s[0]).ok_or("Concat: too many channels")?;
            }
            let mut out = first.to_vec();
            out[0] = c;
            Ok(out)
        }
        (Layer::Add | Layer::Concat, _) => Err(format!(
            "{} reads {} tensors; it needs {}",
            layer.name(),
            inputs.len(),
            if matches!(layer, Layer::Add) {
                "2"
            } else {
                "2 or more"
            }
        )),
        (_, [x]) => layer_output_shape(layer, x),
        (_, _) => Err(format!(
            "{} reads {} tensors; it needs 1",
            layer.name(),
            inputs.len()
        )),
    }
}

/// Splits a `[C, H, W]` shape or explains why it is not one.
fn chw(input: &[usize], what: &str) -> std::result::Result<[usize; 3], String> {
    match input {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(format!("{what} needs a [C,H,W] activation, got {input:?}")),
    }
}

/// Output size of a window over `h x w`, or why the window does not fit.
fn fit(window: &Window, h: usize, w: usize) -> std::result::Result<(usize, usize), String> {
    window.output_hw(h, w).ok_or_else(|| {
        format!(
            "window (kernel {:?}, strides {:?}, pads {:?}) does not fit a {h}x{w} map",
            window.kernel, window.strides, window.pads
        )
    })
}

/// Output shape of every layer, in order, after checking the whole model.
pub fn layer_shapes(model: &Model) -> Result<Vec<Vec<usize>>> {
    let s = &model.input_shape;
    if !(s.len() == 1 || s.len() == 3) || s.contains(&0) {
        return Err(ModelError::Shape(format!(
            "model input shape must be [C,H,W] or [F] with nonzero sizes, got {s:?}"
        )));
    }
    if !model.inputs.is_empty() && model.inputs.len() != model.layers.len() {
        return Err(ModelError::Shape(format!(
            "the model lists the inputs of {} layers but has {} layers",
            model.inputs.len(),
            model.layers.len()
        )));
    }
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(model.layers.len());
    for (i, layer) in model.layers.iter().enumerate() {
        let err = |e: String| {
            ModelError::Shape(format!(
                "layer {i} ({} from node '{}'): {e}",
                layer.name(),
                model.node_name(i)
            ))
        };
        let reads = model.reads(i);
        let mut ins: Vec<&[usize]> = Vec::with_capacity(reads.len());
        for &t in &reads {
            match t {
                0 => ins.push(&model.input_shape),
                t if t <= i => ins.push(&shapes[t - 1]),
                _ => {
                    return Err(err(format!(
                        "reads tensor {t}, which is not computed before it"
                    )))
                }
            }
        }
        let out = node_output_shape(layer, &ins).map_err(err)?;
        shapes.push(out);
    }
    Ok(shapes)
}

/// Output shape of the whole model (batch excluded).
pub fn output_shape(model: &Model) -> Result<Vec<usize>> {
    Ok(layer_shapes(model)?
        .pop()
        .unwrap_or_else(|| model.input_shape.clone()))
}

/// Runs the model on one sample and returns the output of every layer, in
/// order (the input itself is not included).
pub fn run_float_trace(model: &Model, input: &[f32]) -> Result<Vec<Vec<f32>>> {
    let shapes = layer_shapes(model)?;
    let n: usize = model.input_shape.iter().product();
    if input.len() != n {
        return Err(ModelError::Data(format!(
            "input has {} values, model input shape {:?} needs {n}",
            input.len(),
            model.input_shape
        )));
    }
    let mut outs: Vec<Vec<f32>> = Vec::with_capacity(model.layers.len());
    for (i, layer) in model.layers.iter().enumerate() {
        let reads = model.reads(i);
        let tensor = |t: usize| {
            if t == 0 {
                input
            } else {
                outs[t - 1].as_slice()
            }
        };
        let shape = |t: usize| {
            if t == 0 {
                model.input_shape.as_slice()
            } else {
                shapes[t - 1].as_slice()
            }
        };
        let y = match layer {
            Layer::Add => tensor(reads[0])
                .iter()
                .zip(tensor(reads[1]))
                .map(|(a, b)| a + b)
                .collect(),
            Layer::Concat => reads
                .iter()
                .flat_map(|&t| tensor(t).iter().copied())
                .collect(),
            _ => run_layer(layer, shape(reads[0]), &shapes[i], tensor(reads[0])),
        };
        outs.push(y);
    }
    Ok(outs)
}

/// Runs the model on one sample (`input.len()` must equal the product of
/// `model.input_shape`) and returns the flat output.
pub fn run_float(model: &Model, input: &[f32]) -> Result<Vec<f32>> {
    let mut trace = run_float_trace(model, input)?;
    match trace.pop() {
        Some(y) => Ok(y),
        None => Ok(input.to_vec()),
    }
}

/// Applies one layer whose shapes have already been checked.
fn run_layer(layer: &Layer, in_shape: &[usize], out_shape: &[usize], x: &[f32]) -> Vec<f32> {
    match layer {
        Layer::Conv2d {
            weight,
            bias,
            window,
            ..
        } => conv2d(x, in_shape, out_shape, weight, bias, window),
        Layer::Dense {
            weight,
            bias,
            in_features,
            ..
        } => bias
            .iter()
            .zip(weight.chunks_exact(*in_features))
            .map(|(&b, row)| {
                let s: f64 = row.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum();
                (s + b as f64) as f32
            })
            .collect(),
        Layer::BatchNorm { scale, shift } => {
            let per = x.len() / scale.len().max(1);
            x.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = i / per.max(1);
                    v * scale[c] + shift[c]
                })
                .collect()
        }
        Layer::Relu => x.iter().map(|&v| v.max(0.0)).collect(),
        Layer::Act(a) => {
            // Channel = first dimension ([C, H, W] or the features of [F]).
            let per = (x.len() / in_shape.first().copied().unwrap_or(1).max(1)).max(1);
            x.iter()
                .enumerate()
                .map(|(i, &v)| a.eval(v as f64, i / per) as f32)
                .collect()
        }
        Layer::MaxPool(window) => pool(x, in_shape, out_shape, window, None),
        Layer::AvgPool {
            window,
            count_include_pad,
        } => pool(x, in_shape, out_shape, window, Some(*count_include_pad)),
        Layer::GlobalAvgPool => {
            let hw = in_shape[1] * in_shape[2];
            x.chunks_exact(hw)
                .map(|ch| (ch.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
                .collect()
        }
        Layer::Flatten | Layer::Reshape(_) => x.to_vec(),
        Layer::Transpose(perm) => match in_shape {
            [c, h, w] => crate::ir::transpose3(x, [*c, *h, *w], *perm),
            _ => x.to_vec(),
        },
        // Several inputs: handled by the caller.
        Layer::Add | Layer::Concat => x.to_vec(),
        Layer::Softmax => {
            let mut y = x.to_vec();
            crate::activation::softmax(&mut y);
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Pads;

    fn model(input_shape: Vec<usize>, layers: Vec<Layer>) -> Model {
        let node_names = (0..layers.len()).map(|i| format!("n{i}")).collect();
        Model {
            input_shape,
            layers,
            node_names,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn conv_with_padding_matches_hand_computation() {
        // 1x3x3 input, 1x1x2x2 kernel of ones, pad 1, stride 1 -> 4x4 sums.
        let m = model(
            vec![1, 3, 3],
            vec![Layer::Conv2d {
                weight: vec![1.0; 4],
                bias: vec![0.5],
                out_channels: 1,
                in_channels: 1,
                window: Window {
                    kernel: (2, 2),
                    strides: (1, 1),
                    pads: Pads::same(1),
                    dilations: (1, 1),
                },
            }],
        );
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let y = run_float(&m, &x).unwrap();
        assert_eq!(output_shape(&m).unwrap(), vec![1, 4, 4]);
        let expect = [
            1., 3., 5., 3., 5., 12., 16., 9., 11., 24., 28., 15., 7., 15., 17., 9.,
        ];
        for (a, b) in y.iter().zip(expect) {
            assert_eq!(*a, b + 0.5);
        }
    }

    #[test]
    fn pools_follow_onnx_padding_rules() {
        let win = Window {
            kernel: (2, 2),
            strides: (2, 2),
            pads: Pads::same(1),
            dilations: (1, 1),
        };
        let x = vec![-1.0f32, -2.0, -3.0, -4.0]; // 1x2x2
        let max = run_float(&model(vec![1, 2, 2], vec![Layer::MaxPool(win)]), &x).unwrap();
        assert_eq!(max, vec![-1.0, -2.0, -3.0, -4.0]);
        let avg_in = model(
            vec![1, 2, 2],
            vec![Layer::AvgPool {
                window: win,
                count_include_pad: true,
            }],
        );
        assert_eq!(
            run_float(&avg_in, &x).unwrap(),
            vec![-0.25, -0.5, -0.75, -1.0]
        );
        let avg_ex = model(
            vec![1, 2, 2],
            vec![Layer::AvgPool {
                window: win,
                count_include_pad: false,
            }],
        );
        assert_eq!(run_float(&avg_ex, &x).unwrap(), x);
    }

    #[test]
    fn dense_flattens_and_shapes_are_checked() {
        let m = model(
            vec![2, 1, 1],
            vec![
                Layer::GlobalAvgPool,
                Layer::Dense {
                    weight: vec![1.0, 2.0],
                    bias: vec![1.0],
                    out_features: 1,
                    in_features: 2,
                },
                Layer::Relu,
            ],
        );
        assert_eq!(run_float(&m, &[3.0, -4.0]).unwrap(), vec![0.0]);
        assert_eq!(run_float(&m, &[3.0, 4.0]).unwrap(), vec![12.0]);
        let trace = run_float_trace(&m, &[3.0, 4.0]).unwrap();
        assert_eq!(trace.len(), 3);
        assert!(run_float(&m, &[1.0]).is_err());
        let bad = model(
            vec![3],
            vec![Layer::BatchNorm {
                scale: vec![1.0; 2],
                shift: vec![0.0; 2],
            }],
        );
        let err = output_shape(&bad).unwrap_err().to_string();
        assert!(err.contains("n0"), "{err}");
    }

    proptest::proptest! {
        /// Any window either is rejected by shape inference or runs without
        /// panicking and yields exactly the inferred number of values; a conv
        /// with an all-ones 1x1 kernel and no padding is the channel sum.
        #[test]
        fn windows_never_panic(
            h in 1usize..7, w in 1usize..7, kh in 1usize..5, kw in 1usize..5,
            sh in 1usize..4, sw in 1usize..4, p in proptest::array::uniform4(0usize..4),
            which in 0usize..3,
        ) {
            let window = Window {
                kernel: (kh, kw),
                strides: (sh, sw),
                pads: Pads { top: p[0], left: p[1], bottom: p[2], right: p[3] },
                dilations: (1, 1),
            };
            let layer = match which {
                0 => Layer::Conv2d {
                    weight: vec![1.0; 2 * 2 * kh * kw],
                    bias: vec![0.0; 2],
                    out_channels: 2,
                    in_channels: 2,
                    window,
                },
                1 => Layer::MaxPool(window),
                _ => Layer::AvgPool { window, count_include_pad: p[0] % 2 == 0 },
            };
            let m = model(vec![2, h, w], vec![layer]);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 - 5.0).collect();
            if let Ok(shape) = output_shape(&m) {
                let y = run_float(&m, &x).unwrap();
                proptest::prop_assert_eq!(y.len(), shape.iter().product::<usize>());
                proptest::prop_assert!(y.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn one_by_one_conv_sums_channels() {
        let m = model(
            vec![3, 2, 2],
            vec![Layer::Conv2d {
                weight: vec![1.0; 3],
                bias: vec![0.0],
                out_channels: 1,
                in_channels: 3,
                window: Window {
                    kernel: (1, 1),
                    strides: (1, 1),
                    pads: Pads::default(),
                    dilations: (1, 1),
                },
            }],
        );
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(run_float(&m, &x).unwrap(), vec![12.0, 15.0, 18.0, 21.0]);
    }
}
