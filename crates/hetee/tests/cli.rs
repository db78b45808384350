//! End-to-end tests of the `hetee` binary: `hetee run` on every supported
//! test model (secure vs. plaintext reference, bit for bit, and against the
//! float reference outputs in `testdata/onnx/manifest.json`), and on the
//! e2dm model with real MNIST digits. Clean failures on bad inputs are in
//! `cli_errors.rs`, `hetee demo` in `cli_demo.rs`, the other commands in
//! `cli_tools.rs`.

mod common;

use std::path::Path;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;

/// The deterministic input of `gen.py` for `ref_output`: a `[2, *shape]`
/// batch with `x[i] = ((i * 7919) % 1009) / 1009` over the flat index.
fn gen_py_input(shape: &[usize]) -> Vec<f32> {
    let total = 2 * shape.iter().product::<usize>();
    (0..total)
        .map(|i| ((i as u64 * 7919) % 1009) as f32 / 1009f32)
        .collect()
}

/// Runs `hetee run` (secure, with a report) and `hetee run --plaintext` on
/// the same files; asserts success, output shape `[n, classes]`, bit-identical
/// logits, and a well-formed secure report. Returns the secure logits.
fn run_both(
    dir: &Path,
    tag: &str,
    model: &str,
    x: &Path,
    calib: &Path,
    n: usize,
    out_shape: &[usize],
) -> Vec<f32> {
    let want_shape = [vec![n], out_shape.to_vec()].concat();
    let y = dir.join(format!("{tag}_secure.npy"));
    let y2 = dir.join(format!("{tag}_plain.npy"));
    let r = dir.join(format!("{tag}_report.json"));
    let r2 = dir.join(format!("{tag}_report_plain.json"));
    let common = [
        "run",
        "--model",
        model,
        "--input",
        p(x),
        "--calib",
        p(calib),
    ];

    let mut args = common.to_vec();
    args.extend(["--output", p(&y), "--report", p(&r)]);
    let out = hetee(&args);
    assert!(
        out.status.success(),
        "secure run of {model} ({tag} inputs) failed:\n{}",
        describe(&out)
    );

    let mut args = common.to_vec();
    args.extend(["--output", p(&y2), "--report", p(&r2), "--plaintext"]);
    let out = hetee(&args);
    assert!(
        out.status.success(),
        "plaintext run of {model} ({tag} inputs) failed:\n{}",
        describe(&out)
    );

    let (shape, secure) = read_f32(&y);
    assert_eq!(shape, want_shape, "secure output shape of {model}");
    let (shape2, plain) = read_f32(&y2);
    assert_eq!(shape2, want_shape, "plaintext output shape of {model}");
    assert!(
        secure.iter().all(|v| v.is_finite()),
        "non-finite logits from {model}: {secure:?}"
    );
    for (i, (a, b)) in secure.iter().zip(&plain).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{model} ({tag}): secure and plaintext logits differ at flat index {i}: {a} vs {b}\nsecure: {secure:?}\nplain:  {plain:?}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).expect("report is not JSON");
    assert_eq!(report["mode"], "secure");
    assert_eq!(report["images"].as_u64(), Some(n as u64));
    let layers = report["layers"]
        .as_array()
        .expect("report has no layers array");
    assert!(!layers.is_empty(), "report of {model} lists no layers");
    for (k, l) in layers.iter().enumerate() {
        assert_eq!(
            l["stage"].as_u64(),
            Some(k as u64),
            "layer entries out of order: {l}"
        );
        assert!(
            l["products"].as_u64().is_some_and(|v| v > 0),
            "layer {k} of {model} lacks products: {l}"
        );
        assert!(
            l["packing"].is_object(),
            "layer {k} of {model} lacks packing: {l}"
        );
        assert!(
            l["nodes"].as_array().is_some_and(|v| !v.is_empty()),
            "layer {k} lists no nodes: {l}"
        );
    }
    let plain_report: Value = serde_json::from_str(&std::fs::read_to_string(&r2).unwrap()).unwrap();
    assert_eq!(plain_report["mode"], "plaintext-reference");
    assert_eq!(
        plain_report["layers"].as_array().map(Vec::len),
        Some(layers.len()),
        "secure and plaintext reports list different layer counts"
    );
    secure
}

/// A random batch of 3 (calibrated on 8 other random samples) through one
/// manifest model: secure == plaintext reference, bit for bit.
fn check_random(file: &str, lo: f32, hi: f32) {
    let e = entry(file);
    assert!(e.expect_error.is_none(), "{file} is expected to fail");
    let model = format!("{TESTDATA}/{file}");
    let dir = TempDir::new().unwrap();
    let per: usize = e.input_shape.iter().product();
    let seed = file
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let shape = |n: usize| [vec![n], e.input_shape.clone()].concat();
    let x = dir.path().join("x.npy");
    let c = dir.path().join("calib.npy");
    write_f32(&x, &shape(3), &random(seed, 3 * per, lo, hi));
    write_f32(&c, &shape(8), &random(seed ^ 0xCA11B, 8 * per, lo, hi));
    run_both(dir.path(), "random", &model, &x, &c, 3, &e.out_shape());
}

/// The gen.py input batch (calibrated on itself) through one manifest model:
/// secure == plaintext, and the logits are within
/// `rel_tol * (1 + max |ref|)` of the float model's (onnxruntime) outputs.
fn check_reference(file: &str, rel_tol: f32) {
    let e = entry(file);
    let model = format!("{TESTDATA}/{file}");
    let dir = TempDir::new().unwrap();
    let shape = [vec![2], e.input_shape.clone()].concat();
    let xr = dir.path().join("ref.npy");
    write_f32(&xr, &shape, &gen_py_input(&e.input_shape));
    let got = run_both(dir.path(), "ref", &model, &xr, &xr, 2, &e.out_shape());
    let want: Vec<f32> = e.ref_output.concat();
    assert_eq!(want.len(), got.len());
    let ref_max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let tol = rel_tol * (1.0 + ref_max);
    assert!(
        diff <= tol,
        "{file}: quantized logits are too far from the float model: max |diff| = {diff} > {tol}\n got: {got:?}\nwant: {want:?}"
    );
}

// Measured max |diff| / tolerance at rel_tol = 0.1 (plaintext reference):
// reshape_flatten 0.48, gap 0.22, avgpool 0.18, stride3_pad3 0.16, all
// others <= 0.10; so 0.1 is loose but far from vacuous.
macro_rules! model_tests {
    ($($run:ident, $reference:ident: $file:literal, [$lo:literal, $hi:literal];)*) => {$(
        #[test]
        fn $run() {
            check_random($file, $lo, $hi);
        }

        #[test]
        fn $reference() {
            check_reference($file, 0.1);
        }
    )*};
}

model_tests! {
    run_conv_pad_stride, ref_conv_pad_stride: "conv_pad_stride.onnx", [0.0, 1.0];
    run_stride3_pad3, ref_stride3_pad3: "stride3_pad3.onnx", [0.0, 1.0];
    run_gap, ref_gap: "gap.onnx", [0.0, 1.0];
    run_reshape_flatten, ref_reshape_flatten: "reshape_flatten.onnx", [0.0, 1.0];
    run_avgpool, ref_avgpool: "avgpool.onnx", [0.0, 1.0];
    // Signed inputs exercise the [-127, 127] input quantization.
    run_mlp, ref_mlp: "mlp.onnx", [-1.0, 1.0];
    run_matmul_add, ref_matmul_add: "matmul_add.onnx", [-1.0, 1.0];
    run_gemm_alpha_beta, ref_gemm_alpha_beta: "gemm_alpha_beta.onnx", [-1.0, 1.0];
    run_deep_conv, ref_deep_conv: "deep_conv.onnx", [0.0, 1.0];
    // Sigmoid through its exact 256-entry table, against onnxruntime.
    run_sigmoid, ref_sigmoid: "sigmoid.onnx", [-1.0, 1.0];
    // Model graphs: residual adds with 1x1 projections, a channel concat
    // with a ceil-mode pool, depthwise / grouped / dilated convs with
    // ReLU6, per-channel constant arithmetic, and a conv-only model whose
    // output keeps its [C, H, W] shape.
    run_residual, ref_residual: "residual.onnx", [0.0, 1.0];
    run_inception, ref_inception: "inception.onnx", [0.0, 1.0];
    run_mobile, ref_mobile: "mobile.onnx", [0.0, 1.0];
    run_affine, ref_affine: "affine.onnx", [0.0, 1.0];
    run_conv_only, ref_conv_only: "conv_only.onnx", [0.0, 1.0];
    // A final Softmax, applied by the enclave to the dequantized logits.
    run_softmax, ref_softmax: "softmax.onnx", [-1.0, 1.0];
    // 1-D convs and pools on a [N, C, L] input, grouped and dilated.
    run_conv1d, ref_conv1d: "conv1d.onnx", [0.0, 1.0];
    // auto_pad SAME_UPPER, SAME_LOWER (stride 2, even kernel) and VALID.
    run_auto_pad, ref_auto_pad: "auto_pad.onnx", [0.0, 1.0];
    // Ops before the first linear layer, run by the enclave on the input
    // (the queries go thin): BatchNorm, MaxPool and Tanh on the image.
    run_pre_ops, ref_pre_ops: "pre_ops.onnx", [0.0, 1.0];
    // An NHWC input transposed to NCHW (the input's layout).
    run_nhwc, ref_nhwc: "nhwc.onnx", [0.0, 1.0];
    // A flat input reshaped into the first conv's image.
    run_unflatten, ref_unflatten: "unflatten.onnx", [-1.0, 1.0];
    // Max pooling with dilations.
    run_dilated_pool, ref_dilated_pool: "dilated_pool.onnx", [0.0, 1.0];
}

// The dense models again with unsigned [0, 1) inputs, which quantize to
// [0, 255] instead of [-127, 127] (about twice the first layer's
// accumulator bound).

#[test]
fn run_mlp_unsigned() {
    check_random("mlp.onnx", 0.0, 1.0);
}

#[test]
fn run_matmul_add_unsigned() {
    check_random("matmul_add.onnx", 0.0, 1.0);
}

#[test]
fn run_gemm_alpha_beta_unsigned() {
    check_random("gemm_alpha_beta.onnx", 0.0, 1.0);
}

/// Every model in the manifest without `expect_error` has a test above.
#[test]
fn manifest_is_covered() {
    let covered = [
        "conv_pad_stride.onnx",
        "stride3_pad3.onnx",
        "gap.onnx",
        "reshape_flatten.onnx",
        "avgpool.onnx",
        "residual.onnx",
        "inception.onnx",
        "mobile.onnx",
        "affine.onnx",
        "conv_only.onnx",
        "softmax.onnx",
        "conv1d.onnx",
        "auto_pad.onnx",
        "pre_ops.onnx",
        "nhwc.onnx",
        "unflatten.onnx",
        "dilated_pool.onnx",
        "mlp.onnx",
        "matmul_add.onnx",
        "gemm_alpha_beta.onnx",
        "deep_conv.onnx",
        "sigmoid.onnx",
    ];
    for (file, e) in manifest() {
        match e.expect_error {
            None => assert!(covered.contains(&file.as_str()), "{file} has no test"),
            Some(_) => assert!(!covered.contains(&file.as_str())),
        }
    }
}

fn gunzip(path: &str) -> Vec<u8> {
    use std::io::Read;
    let gz = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The first `n` images of a gzip'd IDX file as `pixel / 255` floats.
fn mnist_images(file: &str, n: usize) -> Vec<f32> {
    let b = gunzip(&format!("{MNIST_DATA}/{file}"));
    assert_eq!(&b[..4], &[0, 0, 8, 3], "{file} is not an IDX image file");
    b[16..16 + n * 784]
        .iter()
        .map(|&v| v as f32 / 255.0)
        .collect()
}

#[test]
fn run_e2dm() {
    let dir = TempDir::new().unwrap();
    let per = 784;
    let x = dir.path().join("x.npy");
    let c = dir.path().join("calib.npy");
    write_f32(&x, &[3, 1, 28, 28], &random(2024, 3 * per, 0.0, 1.0));
    write_f32(&c, &[8, 1, 28, 28], &random(2025, 8 * per, 0.0, 1.0));
    run_both(dir.path(), "random", E2DM_ONNX, &x, &c, 3, &[10]);

    // No float reference outputs for e2dm in the manifest; instead, real
    // MNIST test digits (calibrated on real training digits) must be
    // classified correctly. The first four test digits (7, 2, 1, 0) are easy;
    // the float model gets 98.3 % of the test set right.
    let xm = dir.path().join("digits.npy");
    let cm = dir.path().join("digits_calib.npy");
    write_f32(
        &xm,
        &[4, 1, 28, 28],
        &mnist_images("t10k-images-idx3-ubyte.gz", 4),
    );
    write_f32(
        &cm,
        &[16, 1, 28, 28],
        &mnist_images("calib-images-idx3-ubyte.gz", 16),
    );
    let logits = run_both(dir.path(), "digits", E2DM_ONNX, &xm, &cm, 4, &[10]);
    let labels = gunzip(&format!("{MNIST_DATA}/t10k-labels-idx1-ubyte.gz"));
    for (i, row) in logits.chunks(10).enumerate() {
        let pred = (0..10).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        assert_eq!(
            pred,
            labels[8 + i] as usize,
            "test digit {i} misclassified: {row:?}"
        );
    }
}
