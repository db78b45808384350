//! tfhe-ntt 0.7 under the 0.6 name (see `Cargo.toml`): fhe-math 0.1.1 pins
//! `tfhe-ntt = "^0.6.1"`, whose AVX-512 code needs a nightly compiler;
//! 0.7 runs it on stable Rust. The API fhe-math uses (`prime64::Plan`:
//! `try_new`, `fwd`, `inv`, `normalize`, `ntt_size`) is the same, and so is
//! the transform, value for value (`hetee-he`'s
//! `ntt::tests::the_transform_is_fhe_maths` held it against 0.6 before
//! this shim, and its fhe equality tests hold it end to end).
pub use ntt07::*;
