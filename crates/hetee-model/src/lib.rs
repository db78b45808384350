//! Model IR, integer quantization and the plaintext integer reference
//! executor that secure inference must match bit for bit.
//!
//! No heavy dependencies: the enclave uses it for the integer semantics.
//! ONNX import lives in `hetee-onnx`, so no ONNX code can reach the
//! enclave binary.

pub mod activation;
pub mod error;
pub mod float;
pub mod graph;
mod group;
pub mod intops;
pub mod ir;
pub mod lut;
pub mod quant;
mod quant_post;
pub mod reference;

pub use activation::Activation;
pub use error::{ModelError, Result};
pub use graph::{Join, TensorRef};
pub use ir::{Layer, Model, Pads, Window};
pub use quant::{quantize, QuantModel, QuantStage};
