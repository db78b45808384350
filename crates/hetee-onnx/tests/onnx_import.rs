//! Import of every bundled ONNX file (testdata/onnx and models), checked
//! against tract's float execution and the onnxruntime outputs recorded in
//! testdata/onnx/manifest.json; plus malformed files that must fail cleanly.

use std::path::{Path, PathBuf};

use hetee_model::float::{output_shape, run_float, run_float_trace};
use hetee_model::ModelError;
use hetee_onnx::{import_onnx, import_onnx_bytes, tract_float_reference};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// All `.onnx` files in testdata/onnx and models, sorted.
fn onnx_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in ["testdata/onnx", "models"] {
        let Ok(rd) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "onnx") {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

/// The manifest entries, if the manifest exists.
fn manifest() -> Vec<Value> {
    match std::fs::read_to_string(root().join("testdata/onnx/manifest.json")) {
        Ok(s) => serde_json::from_str::<Vec<Value>>(&s).expect("manifest.json is a JSON list"),
        Err(_) => Vec::new(),
    }
}

fn entry_for(manifest: &[Value], path: &Path) -> Option<Value> {
    let name = path.file_name()?.to_str()?;
    manifest.iter().find(|e| e["file"] == name).cloned()
}

/// Deterministic pseudo-random values in [-1, 1) (sometimes scaled up).
fn random_inputs(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output lengths differ");
    let scale = 1.0 + want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
    assert!(
        diff <= 1e-3 * scale,
        "{what}: max abs diff {diff} > 1e-3 * {scale}"
    );
}

#[test]
fn bundled_models_match_tract_and_onnxruntime() {
    let files = onnx_files();
    let manifest = manifest();
    let mut checked = 0;
    for path in &files {
        let entry = entry_for(&manifest, path);
        if entry.as_ref().is_some_and(|e| !e["expect_error"].is_null()) {
            continue; // see unsupported_models_fail_with_the_expected_error
        }
        let what = path.display().to_string();
        let model = import_onnx(path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let n: usize = model.input_shape.iter().product();
        let out_len: usize = output_shape(&model).unwrap().iter().product();
        // The file's own input shape (a 1-D [C, L] is held as [C, 1, L]).
        let mut onnx_shape = model.input_shape.clone();
        if let Some(e) = &entry {
            let shape: Vec<usize> = serde_json::from_value(e["input_shape"].clone()).unwrap();
            let held = match shape[..] {
                [c, l] => vec![c, 1, l],
                _ => shape.clone(),
            };
            assert_eq!(model.input_shape, held, "{what}: input shape");
            onnx_shape = shape;
            assert_eq!(
                out_len as u64,
                e["classes"].as_u64().unwrap(),
                "{what}: classes"
            );
            // onnxruntime reference on the manifest's deterministic batch of 2
            let x: Vec<f32> = (0..2 * n as u64)
                .map(|i| ((i * 7919) % 1009) as f32 / 1009.0)
                .collect();
            let want: Vec<f32> = serde_json::from_value::<Vec<Vec<f32>>>(e["ref_output"].clone())
                .unwrap()
                .concat();
            let got: Vec<f32> = x
                .chunks(n)
                .flat_map(|s| run_float(&model, s).unwrap())
                .collect();
            assert_close(&got, &want, &format!("{what} vs onnxruntime"));
        }
        // tract on a few random inputs, some of them with a larger range
        let mut batch = random_inputs(checked + 1, 3 * n);
        batch[n..2 * n]
            .iter_mut()
            .for_each(|v| *v = (*v + 1.0) / 2.0);
        batch[2 * n..].iter_mut().for_each(|v| *v *= 4.0);
        let want = tract_float_reference(path, &onnx_shape, &batch, 3).unwrap();
        let got: Vec<f32> = batch
            .chunks(n)
            .flat_map(|s| run_float(&model, s).unwrap())
            .collect();
        assert_close(&got, &want, &format!("{what} vs tract"));
        // the trace ends with the output and has one entry per layer
        let trace = run_float_trace(&model, &batch[..n]).unwrap();
        assert_eq!(trace.len(), model.layers.len());
        assert_eq!(trace.last().unwrap(), &got[..out_len]);
        checked += 1;
    }
    eprintln!("checked {checked} of {} ONNX files", files.len());
    assert!(checked > 0 || files.is_empty());
}

#[test]
fn unsupported_models_fail_with_the_expected_error() {
    for e in manifest() {
        let Some(want) = e["expect_error"].as_str() else {
            continue;
        };
        let path = root()
            .join("testdata/onnx")
            .join(e["file"].as_str().unwrap());
        let err = import_onnx(&path).expect_err("import must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "{}: '{msg}' lacks '{want}'",
            path.display()
        );
        if let ModelError::UnsupportedOp { node, op } = &err {
            assert_eq!(op, want);
            assert!(!node.is_empty() && msg.contains(node.as_str()), "{msg}");
        }
    }
}

#[test]
fn bundled_mnist_models_have_the_documented_layers() {
    for (file, layers) in [
        (
            "mnist.onnx",
            "Conv2d BatchNorm Relu MaxPool Conv2d Relu AvgPool Flatten Dense Relu Dense",
        ),
        ("e2dm.onnx", "Conv2d Relu Flatten Dense Relu Dense"),
    ] {
        let path = root().join("models").join(file);
        if !path.exists() {
            continue;
        }
        let m = import_onnx(&path).unwrap();
        let names: Vec<&str> = m.layers.iter().map(|l| l.name()).collect();
        assert_eq!(names.join(" "), layers, "{file}");
        assert_eq!(m.input_shape, vec![1, 28, 28]);
        assert_eq!(m.node_names.len(), m.layers.len());
    }
}

#[test]
fn truncated_and_random_bytes_are_onnx_errors() {
    let mut sources: Vec<Vec<u8>> = onnx_files()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    if sources.is_empty() {
        sources.push(Vec::new());
    }
    for bytes in &sources {
        for cut in [
            bytes.len() / 2,
            bytes.len() / 3,
            bytes.len().saturating_sub(7),
            1,
        ] {
            match import_onnx_bytes(&bytes[..cut.min(bytes.len())], "cut.onnx") {
                Err(ModelError::Onnx { path, .. }) => assert_eq!(path, "cut.onnx"),
                other => panic!("cut at {cut}: expected ModelError::Onnx, got {other:?}"),
            }
        }
        // flipped bits must not panic (any result is fine); one flip per
        // copy, then a copy with many flips
        let mut many = bytes.clone();
        for (i, r) in random_inputs(bytes.len() as u64, 200).iter().enumerate() {
            if bytes.is_empty() {
                break;
            }
            let at = ((r.abs() * bytes.len() as f32) as usize).min(bytes.len() - 1);
            let mut b = bytes.clone();
            b[at] ^= 1 << (i % 8);
            many[at] ^= 1 << (i % 8);
            let imported = import_onnx_bytes(&b, "flipped.onnx");
            if let Some(m) = imported
                .ok()
                .filter(|m| m.input_shape.iter().product::<usize>() < 1 << 16)
            {
                let _ = run_float(&m, &vec![0.5; m.input_shape.iter().product()]);
            }
        }
        let _ = import_onnx_bytes(&many, "flipped.onnx");
    }
    for seed in 0..50 {
        let bytes: Vec<u8> = random_inputs(seed, 300)
            .iter()
            .map(|v| (v.to_bits() >> 13) as u8)
            .collect();
        match import_onnx_bytes(&bytes, "random.onnx") {
            Err(ModelError::Onnx { .. }) => {}
            other => panic!("seed {seed}: expected ModelError::Onnx, got {other:?}"),
        }
    }
    let missing = root().join("testdata/onnx/does-not-exist.onnx");
    assert!(matches!(
        import_onnx(&missing),
        Err(ModelError::Onnx { .. })
    ));
    let empty = import_onnx_bytes(&[], "empty.onnx").unwrap_err();
    assert!(matches!(empty, ModelError::Onnx { .. }), "{empty:?}");
}
