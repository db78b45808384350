//! End-to-end tests of the `hetee` binary: `hetee run` on every supported
//! test model (secure vs. plaintext reference, bit for bit, and against the
//! float reference outputs in `testdata/onnx/manifest.json`), clean failures
//! on bad inputs, and `hetee demo --json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/onnx");
const MNIST_ONNX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist.onnx");
const E2DM_ONNX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/e2dm.onnx");
const MNIST_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist");

// ------------------------------------------------------------------ helpers

fn hetee(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hetee"))
        .args(args)
        .output()
        .expect("cannot start the hetee binary")
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("non-UTF-8 temp path")
}

/// `.npy` version 1.0 bytes for a C-order array with the given descr.
fn npy_bytes(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
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

fn write_f32(path: &Path, shape: &[usize], data: &[f32]) {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "test bug: shape/data mismatch"
    );
    let payload: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, npy_bytes("<f4", shape, &payload)).unwrap();
}

fn write_f64(path: &Path, shape: &[usize], data: &[f64]) {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "test bug: shape/data mismatch"
    );
    let payload: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, npy_bytes("<f8", shape, &payload)).unwrap();
}

/// Reads a `.npy` written by hetee, checking that it is float32.
fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
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
fn random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
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

/// The deterministic input of `gen.py` for `ref_output`: a `[2, *shape]`
/// batch with `x[i] = ((i * 7919) % 1009) / 1009` over the flat index.
fn gen_py_input(shape: &[usize]) -> Vec<f32> {
    let total = 2 * shape.iter().product::<usize>();
    (0..total)
        .map(|i| ((i as u64 * 7919) % 1009) as f32 / 1009f32)
        .collect()
}

struct ManifestEntry {
    input_shape: Vec<usize>,
    classes: usize,
    expect_error: Option<String>,
    ref_output: Vec<Vec<f32>>,
    /// The model's own output shape when it is not `[classes]`.
    output_shape: Option<Vec<usize>>,
}

impl ManifestEntry {
    /// Per-image output shape: the model's own, or `[classes]`.
    fn out_shape(&self) -> Vec<usize> {
        self.output_shape.clone().unwrap_or(vec![self.classes])
    }
}

fn manifest() -> Vec<(String, ManifestEntry)> {
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

fn entry(file: &str) -> ManifestEntry {
    manifest()
        .into_iter()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("{file} is not in manifest.json"))
        .1
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

// ----------------------------------------------------------- bad inputs

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

/// A temp dir with a valid MNIST-shaped input `x.npy` [2, 1, 28, 28] and
/// calibration set `calib.npy` [4, 1, 28, 28].
fn mnist_files() -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new().unwrap();
    let x = dir.path().join("x.npy");
    let c = dir.path().join("calib.npy");
    write_f32(&x, &[2, 1, 28, 28], &random(1, 2 * 784, 0.0, 1.0));
    write_f32(&c, &[4, 1, 28, 28], &random(2, 4 * 784, 0.0, 1.0));
    (dir, x, c)
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

// ------------------------------------------------------------------ demo

#[test]
fn demo_json() {
    let out = hetee(&["demo", "--images", "3", "--json"]);
    assert!(out.status.success(), "demo failed:\n{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("demo --json stdout is not JSON ({e}):\n{}", describe(&out)));
    assert_eq!(v["images"].as_u64(), Some(3));
    assert_eq!(v["reference_agreement"].as_f64(), Some(1.0), "{v}");
    assert!(
        v["accuracy"]
            .as_f64()
            .is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{v}"
    );
    assert!(v["weight_bytes"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(v["measurement"].as_str().map(str::len), Some(64), "{v}");
}

#[test]
fn demo_in_process_json() {
    let out = hetee(&["demo", "--images", "3", "--json", "--in-process"]);
    assert!(out.status.success(), "demo failed:\n{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reference_agreement"].as_f64(), Some(1.0), "{v}");
    assert!(v["ct_products"].as_u64().is_some_and(|n| n > 0), "{v}");
}

#[test]
fn completions_and_man_pages_are_generated() {
    let out = hetee(&["completions", "bash"]);
    assert!(out.status.success(), "{}", describe(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "infer", "run", "bench", "model"] {
        assert!(script.contains(sub), "the bash completion lacks {sub}");
    }
    let out = hetee(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
    let dir = TempDir::new().unwrap();
    let man = dir.path().join("man");
    let out = hetee(&["man", "--out", p(&man)]);
    assert!(out.status.success(), "{}", describe(&out));
    let page = std::fs::read_to_string(man.join("hetee-serve.1")).unwrap();
    assert!(
        page.contains(".TH") && page.contains("tls\\-cert"),
        "{page}"
    );
}

/// Progress bars go to stderr only on a terminal: a run whose stderr is a
/// pipe (as here) carries none, with or without `--quiet`, and still says
/// what it wrote.
#[test]
fn progress_bars_stay_out_of_a_pipe_and_quiet_is_accepted() {
    let (dir, x, c) = mnist_files();
    for quiet in [false, true] {
        let y = dir.path().join(format!("y{quiet}.npy"));
        let mut args = vec![
            "run",
            "--model",
            MNIST_ONNX,
            "--input",
            p(&x),
            "--calib",
            p(&c),
            "--output",
            p(&y),
        ];
        if quiet {
            args.insert(0, "--quiet");
        }
        let out = hetee(&args);
        assert!(out.status.success(), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        for bar in ["eta ", "elapsed", "calibrating on"] {
            assert!(!err.contains(bar), "a bar in a pipe ({bar}):\n{err}");
        }
        assert_eq!(read_f32(&y).0, vec![2, 10]);
    }
}

/// `hetee plan --json`: the same plan as the table, machine-readable; the
/// totals are the stages' sums.
#[test]
fn plan_prints_json() {
    let out = hetee(&["plan", "--model", "mnist", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = p["stages"].as_array().unwrap();
    assert!(!stages.is_empty());
    let host: f64 = stages.iter().map(|s| s["host_ms"].as_f64().unwrap()).sum();
    assert!((p["host_ms"].as_f64().unwrap() - host).abs() < 1e-9);
    assert!(stages.iter().all(|s| s["products"].as_u64().unwrap() >= 1));
    assert_eq!(p["batch"], 1);
    assert_eq!(p["degree"], 4096);
}
