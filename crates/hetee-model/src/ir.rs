//! The float model IR: layers in topological order, as imported from ONNX.
//! Each layer reads one or more earlier tensors (a DAG); a plain chain reads
//! the previous layer's output.
//!
//! Tensors are row-major, batch dimension excluded. A convolutional
//! activation is `[C, H, W]`; a flat activation is `[F]`. Tensor `0` is the
//! model input and tensor `i + 1` is layer `i`'s output.

use serde::{Deserialize, Serialize};

use crate::activation::Activation;

/// Spatial padding of a 2-D window: top, left, bottom, right (ONNX order
/// `[x1_begin, x2_begin, x1_end, x2_end]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Pads {
    /// Rows of padding above.
    pub top: usize,
    /// Columns of padding on the left.
    pub left: usize,
    /// Rows of padding below.
    pub bottom: usize,
    /// Columns of padding on the right.
    pub right: usize,
}

impl Pads {
    /// Symmetric padding `p` on every side.
    pub fn same(p: usize) -> Self {
        Pads {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }
}

/// A 2-D window: kernel size, stride, padding and (for pooling) dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal stride.
    pub strides: (usize, usize),
    /// Zero (conv, avg) or ignored (max) padding.
    pub pads: Pads,
    /// Spacing of the taps (pooling only; a dilated conv imports as a conv
    /// whose kernel has zero taps). `(1, 1)`: contiguous.
    #[serde(default = "undilated")]
    pub dilations: (usize, usize),
}

fn undilated() -> (usize, usize) {
    (1, 1)
}

impl Window {
    /// Output height and width of this window over an `h x w` map, or `None`
    /// if the window does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let hp = h
            .checked_add(self.pads.top)?
            .checked_add(self.pads.bottom)?;
        let wp = w
            .checked_add(self.pads.left)?
            .checked_add(self.pads.right)?;
        let (kh, kw) = self.extent()?;
        let (sh, sw) = self.strides;
        if hp < kh || wp < kw || sh == 0 || sw == 0 || kh == 0 || kw == 0 {
            return None;
        }
        Some(((hp - kh) / sh + 1, (wp - kw) / sw + 1))
    }

    /// Rows and columns the (dilated) kernel spans, or `None` on overflow
    /// or a zero dilation.
    pub fn extent(&self) -> Option<(usize, usize)> {
        let span = |k: usize, d: usize| {
            if d == 0 {
                return None;
            }
            k.checked_sub(1)?.checked_mul(d)?.checked_add(1)
        };
        Some((
            span(self.kernel.0, self.dilations.0)?,
            span(self.kernel.1, self.dilations.1)?,
        ))
    }
}

/// One layer of the float model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Layer {
    /// 2-D convolution, groups = 1, dilation = 1. `weight` is `[M, C, kh, kw]`.
    Conv2d {
        /// Weights, row-major `[out_channels, in_channels, kh, kw]`.
        weight: Vec<f32>,
        /// Bias per output channel.
        bias: Vec<f32>,
        /// Output channels.
        out_channels: usize,
        /// Input channels.
        in_channels: usize,
        /// Kernel, stride, padding.
        window: Window,
    },
    /// Fully connected layer `y = W x + b`, `weight` is `[out, in]`.
    Dense {
        /// Weights, row-major `[out_features, in_features]`.
        weight: Vec<f32>,
        /// Bias per output feature.
        bias: Vec<f32>,
        /// Output features.
        out_features: usize,
        /// Input features.
        in_features: usize,
    },
    /// Inference-mode batch normalization, per channel `y = x * scale + shift`
    /// (already combined from gamma, beta, mean, var, epsilon).
    BatchNorm {
        /// Multiplier per channel.
        scale: Vec<f32>,
        /// Offset per channel.
        shift: Vec<f32>,
    },
    /// Rectified linear unit.
    Relu,
    /// Any other elementwise activation (quantized to a lookup table).
    Act(Activation),
    /// Max pooling (padding is ignored, i.e. minus infinity).
    MaxPool(Window),
    /// Average pooling.
    AvgPool {
        /// Kernel, stride, padding.
        window: Window,
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Average over each whole channel map; output `[C, 1, 1]`.
    GlobalAvgPool,
    /// Flatten `[C, H, W]` to `[C*H*W]` (row-major).
    Flatten,
    /// The same values in another shape (`[C, H, W]`, `[C, L]` or `[F]`),
    /// row-major; only as the input of a Conv or Dense layer.
    Reshape(Vec<usize>),
    /// Axis permutation of a `[C, H, W]` tensor: output axis `i` is input
    /// axis `perm[i]`. Only on the model input (e.g. an NHWC image), where
    /// it becomes part of the input's layout.
    Transpose([usize; 3]),
    /// Elementwise sum of two tensors of the same shape (a residual join).
    Add,
    /// Concatenation of two or more tensors along the channels (the first
    /// dimension); the other dimensions must agree.
    Concat,
    /// Softmax over the features of a flat tensor; only as the model's last
    /// layer, where the enclave applies it to the dequantized logits.
    Softmax,
}

impl Layer {
    /// Short op name for messages and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Dense { .. } => "Dense",
            Layer::BatchNorm { .. } => "BatchNorm",
            Layer::Relu => "Relu",
            Layer::Act(a) => a.name(),
            Layer::MaxPool(_) => "MaxPool",
            Layer::AvgPool { .. } => "AvgPool",
            Layer::GlobalAvgPool => "GlobalAvgPool",
            Layer::Flatten => "Flatten",
            Layer::Reshape(_) => "Reshape",
            Layer::Transpose(_) => "Transpose",
            Layer::Add => "Add",
            Layer::Concat => "Concat",
            Layer::Softmax => "Softmax",
        }
    }

    /// How many tensors the layer reads: `None` for any number (two or more).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Layer::Add => Some(2),
            Layer::Concat => None,
            _ => Some(1),
        }
    }
}

/// Permutes a row-major `[C, H, W]` tensor `x` of shape `shape`: output
/// axis `i` is input axis `perm[i]` (`perm` must be a permutation of 0..3).
pub fn transpose3(x: &[f32], shape: [usize; 3], perm: [usize; 3]) -> Vec<f32> {
    permute_index(shape, perm)
        .into_iter()
        .map(|i| x.get(i).copied().unwrap_or(0.0))
        .collect()
}

/// For each output position of the permutation `perm` of a row-major
/// tensor of shape `shape`, the input position it takes.
pub fn permute_index(shape: [usize; 3], perm: [usize; 3]) -> Vec<usize> {
    let strides = [shape[1] * shape[2], shape[2], 1];
    let out = perm.map(|a| shape.get(a).copied().unwrap_or(0));
    let mut idx = Vec::with_capacity(out.iter().product());
    for a in 0..out[0] {
        for b in 0..out[1] {
            for c in 0..out[2] {
                let mut i = 0;
                for (o, &p) in [a, b, c].iter().zip(perm.iter()) {
                    i += o * strides.get(p).copied().unwrap_or(0);
                }
                idx.push(i);
            }
        }
    }
    idx
}

/// Whether `perm` is a permutation of `0..3`.
pub fn is_perm3(perm: [usize; 3]) -> bool {
    let mut seen = [false; 3];
    perm.iter()
        .all(|&a| a < 3 && !std::mem::replace(&mut seen[a], true))
}

/// A float model: the input shape (no batch) and its layers in
/// topological order. The last layer's output is the model's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Input shape without the batch dimension: `[C, H, W]` or `[F]`.
    pub input_shape: Vec<usize>,
    /// Layers, applied in order.
    pub layers: Vec<Layer>,
    /// Name of each layer's source node (same length as `layers`), for messages.
    pub node_names: Vec<String>,
    /// The tensors each layer reads (`0` = the model input, `i + 1` = layer
    /// `i`'s output). Empty means a plain chain: layer `i` reads tensor `i`.
    #[serde(default)]
    pub inputs: Vec<Vec<usize>>,
}

impl Model {
    /// A plain chain of layers, each reading the previous one's output.
    pub fn chain(input_shape: Vec<usize>, layers: Vec<Layer>, node_names: Vec<String>) -> Self {
        Model {
            input_shape,
            layers,
            node_names,
            inputs: Vec::new(),
        }
    }

    /// The tensors layer `i` reads.
    pub fn reads(&self, i: usize) -> Vec<usize> {
        if self.inputs.is_empty() {
            vec![i]
        } else {
            self.inputs.get(i).cloned().unwrap_or_default()
        }
    }

    /// The name of layer `i`'s source node, for messages.
    pub fn node_name(&self, i: usize) -> String {
        self.node_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    }

    /// How many layers read each tensor (index = tensor id).
    pub fn consumer_counts(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.layers.len() + 1];
        for i in 0..self.layers.len() {
            for t in self.reads(i) {
                if let Some(c) = n.get_mut(t) {
                    *c += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_hw_refuses_padding_that_overflows() {
        // Found by fuzz/ (channel_messages): `h + top + bottom` overflowed.
        let mut w = Window {
            kernel: (2, 2),
            strides: (1, 1),
            pads: Pads {
                top: 1,
                left: 0,
                bottom: 1,
                right: 0,
            },
            dilations: (1, 1),
        };
        assert_eq!(w.output_hw(4, 4), Some((5, 3)));
        w.pads.top = usize::MAX;
        assert_eq!(w.output_hw(4, 4), None);
        w.pads.top = 0;
        w.pads.right = usize::MAX;
        assert_eq!(w.output_hw(4, 4), None);
    }
}
