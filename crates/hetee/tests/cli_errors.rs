//! Clean failures of the `hetee` binary on bad inputs: input and
//! calibration files that are not float32 `.npy`, have the wrong shape or
//! non-finite values, models it cannot import, and bad demo arguments. Each
//! run exits with status 2, does not panic, names the problem, and leaves no
//! output file behind.

mod common;

use std::path::Path;

use common::cli::*;
use tempfile::TempDir;

/// Runs hetee expecting a clean failure: exit code 2, no panic, and a
/// message on stderr containing every one of `needles`.
fn expect_failure(args: &[&str], needles: &[&str]) {
    let out = hetee(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked"),
        "hetee panicked on {args:?}:\n{}",
        describe(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "wrong exit status for {args:?}:\n{}",
        describe(&out)
    );
    for n in needles {
        assert!(
            err.contains(n),
            "stderr for {args:?} does not mention {n:?}:\n{}",
            describe(&out)
        );
    }
}

/// `hetee run` with `model`, `input`, `calib`; must fail with `needles` and
/// must not leave an output file behind.
fn run_must_fail(dir: &Path, model: &str, input: &Path, calib: &Path, needles: &[&str]) {
    let y = dir.join("y.npy");
    expect_failure(
        &[
            "run",
            "--model",
            model,
            "--input",
            p(input),
            "--calib",
            p(calib),
            "--output",
            p(&y),
        ],
        needles,
    );
    assert!(!y.exists(), "a failed run wrote {}", y.display());
}

#[test]
fn bad_input_not_npy() {
    let (dir, _, c) = mnist_files();
    let x = dir.path().join("text.npy");
    std::fs::write(&x, "0.1, 0.2, 0.3\n").unwrap();
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["text.npy", "not a usable .npy file", "NumPy magic"],
    );
}

#[test]
fn bad_input_float64() {
    let (dir, _, c) = mnist_files();
    let x = dir.path().join("f64.npy");
    write_f64(&x, &[2, 1, 28, 28], &vec![0.5; 2 * 784]);
    run_must_fail(dir.path(), MNIST_ONNX, &x, &c, &["float32"]);
}

#[test]
fn bad_input_wrong_shape() {
    let (dir, _, c) = mnist_files();
    let x = dir.path().join("x27.npy");
    write_f32(&x, &[3, 1, 27, 28], &random(3, 3 * 27 * 28, 0.0, 1.0));
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["[3, 1, 27, 28]", "[N, 1, 28, 28]"],
    );
}

#[test]
fn bad_input_nan() {
    let (dir, _, c) = mnist_files();
    let mut v = random(4, 2 * 784, 0.0, 1.0);
    v[900] = f32::NAN;
    let x = dir.path().join("nan.npy");
    write_f32(&x, &[2, 1, 28, 28], &v);
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["input", "non-finite", "900"],
    );
}

#[test]
fn bad_calibration_inf() {
    let (dir, x, _) = mnist_files();
    let mut v = random(5, 4 * 784, 0.0, 1.0);
    v[17] = f32::INFINITY;
    let c = dir.path().join("inf.npy");
    write_f32(&c, &[4, 1, 28, 28], &v);
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["calibration", "non-finite"],
    );
}

/// Every manifest model with `expect_error` is refused with a message
/// naming the op (an unknown op, or a Transpose after a conv).
#[test]
fn bad_model_unsupported_op() {
    let refused: Vec<_> = manifest()
        .into_iter()
        .filter(|(_, e)| e.expect_error.is_some())
        .collect();
    assert!(refused.len() >= 2);
    for (file, e) in refused {
        refused_by_name(&file, e);
    }
}

fn refused_by_name(file: &str, e: ManifestEntry) {
    let op = e.expect_error.expect("manifest names the unsupported op");
    let dir = TempDir::new().unwrap();
    let per: usize = e.input_shape.iter().product();
    let shape = |n: usize| [vec![n], e.input_shape.clone()].concat();
    let x = dir.path().join("x.npy");
    let c = dir.path().join("calib.npy");
    write_f32(&x, &shape(2), &random(6, 2 * per, 0.0, 1.0));
    write_f32(&c, &shape(4), &random(7, 4 * per, 0.0, 1.0));
    let model = format!("{TESTDATA}/{file}");
    run_must_fail(dir.path(), &model, &x, &c, &[&op, "supported"]);
}

#[test]
fn bad_model_truncated() {
    let (dir, x, c) = mnist_files();
    let bytes = std::fs::read(MNIST_ONNX).unwrap();
    let m = dir.path().join("half.onnx");
    std::fs::write(&m, &bytes[..bytes.len() / 2]).unwrap();
    run_must_fail(dir.path(), p(&m), &x, &c, &["half.onnx", "ONNX"]);
}

#[test]
fn bad_calibration_empty() {
    let (dir, x, _) = mnist_files();
    let c = dir.path().join("empty.npy");
    write_f32(&c, &[0, 1, 28, 28], &[]);
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["calibration set is empty"],
    );
}

#[test]
fn bad_input_missing_file() {
    let (dir, _, c) = mnist_files();
    let x = dir.path().join("does_not_exist.npy");
    run_must_fail(
        dir.path(),
        MNIST_ONNX,
        &x,
        &c,
        &["cannot read", "does_not_exist.npy"],
    );
}

#[test]
fn bad_demo_zero_images() {
    expect_failure(
        &["demo", "--images", "0"],
        &["--images must be between 1 and 10000"],
    );
}
