//! Errors of model import, quantization and reference execution.

use thiserror::Error;

/// What went wrong with a model, in words that name the problem and the fix.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The ONNX file could not be read or parsed.
    #[error("cannot read ONNX model {path}: {reason}. Check that the file is a complete ONNX (protobuf) model, e.g. re-export it with torch.onnx.export")]
    Onnx {
        /// File path.
        path: String,
        /// Underlying cause.
        reason: String,
    },
    /// An op that hetee does not support.
    #[error("node '{node}': op {op} is not supported. Supported ops: Conv, BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape (a flatten, or into the input of a Conv), Transpose (of the model input), Gemm, MatMul, Add (of two activations: a residual join), Concat (channels), Add/Sub/Mul/Div by a per-channel constant, Identity, Dropout, Softmax (as the last op), and the activations LeakyRelu, PRelu, Clip, Sigmoid, HardSigmoid, Tanh, HardSwish, Elu, Selu, Celu, Softplus, Softsign, ThresholdedRelu, Gelu, Erf, Mish")]
    UnsupportedOp {
        /// Node name.
        node: String,
        /// ONNX op type.
        op: String,
    },
    /// A supported op with an attribute value or structure we do not support.
    #[error("node '{node}' ({op}): {what}")]
    Unsupported {
        /// Node name.
        node: String,
        /// ONNX op type.
        op: String,
        /// What exactly is unsupported and what is.
        what: String,
    },
    /// Shapes do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// Bad calibration set or input data.
    #[error("bad data: {0}")]
    Data(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
