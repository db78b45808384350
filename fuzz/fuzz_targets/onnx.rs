//! `hetee_onnx::import_onnx_bytes`: the model provider's ONNX files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hetee_onnx::import_onnx_bytes(data, "fuzz");
});
