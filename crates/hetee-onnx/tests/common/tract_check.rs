//! The check of an import against tract's own float execution of the same
//! bytes.

use hetee_model::float::{layer_shapes, run_float};
use hetee_onnx::{import_onnx, import_onnx_bytes, tract_float_reference};

use super::onnx_build::Rng;

/// Imports the bytes and checks `run_float` against tract on random inputs.
pub fn check_against_tract(bytes: &[u8]) -> hetee_model::Model {
    let model = import_onnx_bytes(bytes, "mem").expect("import");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(import_onnx(&path).unwrap(), model);
    layer_shapes(&model).unwrap();
    let n: usize = model.input_shape.iter().product();
    let mut rng = Rng(42);
    let batch = rng.vec(3 * n);
    let want = tract_float_reference(&path, &model.input_shape, &batch, 3).unwrap();
    let got: Vec<f32> = batch
        .chunks(n)
        .flat_map(|x| run_float(&model, x).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    let scale = 1.0 + want.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-3 * scale, "got {g}, tract {w}");
    }
    model
}
