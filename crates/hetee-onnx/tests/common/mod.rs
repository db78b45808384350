//! Shared helpers of the ONNX import tests: builders of small ONNX models in
//! memory ([`onnx_build`]) and the check of an import against tract
//! ([`tract_check`]). Not every test file uses every helper.
#![allow(dead_code)]

pub mod onnx_build;
pub mod tract_check;
