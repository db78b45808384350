//! The HE inference scheme of hetee: BFV parameters, the coefficient packing
//! of convolutions and dense layers (any channels, kernel, stride, padding,
//! with tiling), the ct x ct evaluator of the untrusted host, and safe
//! (de)serialization of ciphertexts, and secret-key decryption and
//! encryption with the key prepared once ([`secret`]). Pure computation, no
//! I/O.

mod arith;
pub mod codec;
pub mod decrypt;
pub mod encrypt;
pub mod eval;
mod extract;
pub mod layout;
pub mod ntt;
pub mod packing;
pub mod params;
mod phase;
pub mod planner;
pub mod rns;
pub mod sample;
pub mod secret;
mod simd;

pub use eval::Evaluator;
pub use layout::ConvSpec;
pub use packing::{ConvPacking, ConvShape, Tiling};
pub use params::HeConfig;

/// Errors of the HE layer.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    /// Parameters cannot hold the computation.
    #[error("HE parameters: {0}")]
    Params(String),
    /// Parameters below 128-bit security.
    #[error("insecure HE parameters refused: {0}")]
    Insecure(String),
    /// A ciphertext or key could not be decoded or has the wrong form.
    #[error("malformed ciphertext: {0}")]
    Malformed(String),
    /// An error from the fhe library.
    #[error("fhe: {0}")]
    Fhe(String),
}

impl From<fhe::Error> for HeError {
    fn from(e: fhe::Error) -> Self {
        HeError::Fhe(e.to_string())
    }
}

impl From<fhe_math::Error> for HeError {
    fn from(e: fhe_math::Error) -> Self {
        HeError::Fhe(e.to_string())
    }
}
