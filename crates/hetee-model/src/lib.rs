//! Model IR, ONNX import, integer quantization and the plaintext integer
//! reference executor that secure inference must match bit for bit.
//!
//! With the default `onnx` feature off, this crate has no heavy
//! dependencies: the enclave uses it for the integer semantics only.

pub mod error;
pub mod float;
pub mod intops;
pub mod ir;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod quant;
pub mod reference;

pub use error::{ModelError, Result};
pub use ir::{Layer, Model, Pads, Window};
pub use quant::{quantize, QuantModel, QuantStage};
