//! Shared helpers of the `hetee` binary's CLI tests (`cli.rs`,
//! `cli_errors.rs`, `cli_demo.rs`, `cli_tools.rs`): running the binary,
//! `.npy` files, seeded random inputs, and the test-model manifest
//! `testdata/onnx/manifest.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

pub const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/onnx");
pub const MNIST_ONNX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist.onnx");
pub const E2DM_ONNX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/e2dm.onnx");
pub const MNIST_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist");

/// Runs the `hetee` binary with `args`.
pub fn hetee(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hetee"))
        .args(args)
        .output()
        .expect("cannot start the hetee binary")
}

/// The status, stdout and stderr of a run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

/// `.npy` version 1.0 bytes for a C-order array with the given descr.
pub fn npy_bytes(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic (6) + version (2) + header length (2) + header, padded to 64 with '\n' last.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes a float32 `.npy`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "test bug: shape/data mismatch"
    );
    let payload: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, npy_bytes("<f4", shape, &payload)).unwrap();
}

/// Writes a float64 `.npy`.
pub fn write_f64(path: &Path, shape: &[usize], data: &[f64]) {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "test bug: shape/data mismatch"
    );
    let payload: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, npy_bytes("<f8", shape, &payload)).unwrap();
}

/// Reads a `.npy` written by hetee, checking that it is float32.
pub fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).expect("hetee wrote a malformed .npy");
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    assert_eq!(
        npy.dtype().descr(),
        "'<f4'",
        "output dtype must be little-endian float32"
    );
    assert_eq!(npy.order(), npyz::Order::C);
    let data: Vec<f32> = npy.into_vec().expect("truncated .npy data");
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// Deterministic pseudo-random floats in `[lo, hi)` (splitmix64).
pub fn random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1), exact in f32
            lo + (hi - lo) * u
        })
        .collect()
}

/// One model of `testdata/onnx/manifest.json`.
pub struct ManifestEntry {
    pub input_shape: Vec<usize>,
    pub classes: usize,
    pub expect_error: Option<String>,
    pub ref_output: Vec<Vec<f32>>,
    /// The model's own output shape when it is not `[classes]`.
    pub output_shape: Option<Vec<usize>>,
}

impl ManifestEntry {
    /// Per-image output shape: the model's own, or `[classes]`.
    pub fn out_shape(&self) -> Vec<usize> {
        self.output_shape.clone().unwrap_or(vec![self.classes])
    }
}

/// The manifest's entries: file name and entry.
pub fn manifest() -> Vec<(String, ManifestEntry)> {
    let text = std::fs::read_to_string(format!("{TESTDATA}/manifest.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let usizes = |v: &Value| -> Vec<usize> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect()
            };
            let floats = |v: &Value| -> Vec<f32> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_f64().unwrap() as f32)
                    .collect()
            };
            (
                e["file"].as_str().unwrap().to_string(),
                ManifestEntry {
                    input_shape: usizes(&e["input_shape"]),
                    classes: e["classes"].as_u64().unwrap() as usize,
                    output_shape: e.get("output_shape").map(usizes),
                    expect_error: e["expect_error"].as_str().map(str::to_string),
                    ref_output: e["ref_output"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(floats)
                        .collect(),
                },
            )
        })
        .collect()
}

/// The manifest entry of `file`.
pub fn entry(file: &str) -> ManifestEntry {
    manifest()
        .into_iter()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
        .1
}

/// A temp dir with a valid MNIST-shaped input `x.npy` [2, 1, 28, 28] and
/// calibration set `calib.npy` [4, 1, 28, 28].
pub fn mnist_files() -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new().unwrap();
    let x = dir.path().join("x.npy");
    let c = dir.path().join("calib.npy");
    write_f32(&x, &[2, 1, 28, 28], &random(1, 2 * 784, 0.0, 1.0));
    write_f32(&c, &[4, 1, 28, 28], &random(2, 4 * 784, 0.0, 1.0));
    (dir, x, c)
}
