//! Image inputs through `hetee serve`: the model provider declares the
//! preprocessing at upload (public metadata in `GET /v1/models/{id}`),
//! `hetee infer` applies it to a folder of PNGs and gives bit for bit what
//! the same values give as `.npy`; `--preprocess` overrides it; `--json`
//! on `model upload`, `infer` and `model allow`.

mod common;

use std::path::Path;

use common::images::write_mnist;
use common::{describe, hetee, infer, measurement, mnist_images, write_f32, Server};
use serde_json::Value;

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_spec_declared_at_upload_is_applied_to_pngs_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (addr, m) = (server.addr.clone(), measurement());
    let owner = dir.path().join("owner.key");
    // Not the default: (p / 255 - 0.25) / 0.5.
    let spec = "size=28x28,channels=gray,scale=1/255,mean=0.25,std=0.5";
    let up = json_of(&hetee(&[
        "model",
        "upload",
        "--server",
        &addr,
        "--model",
        "mnist",
        "--max-batch",
        "2",
        "--preprocess",
        spec,
        "--json",
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]));
    let id = up["model_id"].as_str().unwrap().to_string();
    assert_eq!(up["batch"], 2);
    assert!(up["weight_bytes"].as_u64().unwrap() > 0);
    // Public metadata, served with the model's info.
    let api = hetee::client::http::Api::new(&addr).unwrap();
    let info: Value = api.get(&format!("/v1/models/{id}")).unwrap();
    assert_eq!(info["preprocess"], format!("{spec},layout=nchw"));
    assert_eq!(info["output_shape"], serde_json::json!([10]));

    let imgs = dir.path().join("imgs");
    let (sorted, order) = write_mnist(&imgs, &["b.png", "a.png", "c.png"]);
    let px = mnist_images(3);
    let values = |f: &dyn Fn(f32) -> f32| -> Vec<f32> {
        order
            .iter()
            .flat_map(|&i| px[i * 784..(i + 1) * 784].iter().map(|&v| f(v)))
            .collect()
    };
    let declared = dir.path().join("declared.npy");
    write_f32(&declared, &[3, 1, 28, 28], &values(&|v| (v - 0.25) / 0.5));
    let plain = dir.path().join("plain.npy");
    write_f32(&plain, &[3, 1, 28, 28], &values(&|v| v));

    let y = |n: &str| dir.path().join(n);
    let out = infer(&addr, &m, &id, &imgs, &y("img.npy"), &["--json"]);
    let doc = json_of(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in file-name order"));
    let out = infer(&addr, &m, &id, &declared, &y("declared.npy"), &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        same_file(&y("img.npy"), &y("declared.npy")),
        "PNGs with the declared spec differ from the same values as .npy"
    );
    assert_eq!(doc["images"], 3);
    assert_eq!(doc["queries"], 2);
    assert_eq!(doc["output_kind"], "logits");
    assert_eq!(doc["output_shape"], serde_json::json!([3, 10]));
    assert_eq!(doc["preprocess"], format!("{spec},layout=nchw"));
    assert!(doc["bytes_up"].as_u64().unwrap() > 0 && doc["host_ms"].as_f64().unwrap() > 0.0);
    let files: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, sorted);

    // The command line's spec wins over the declared one.
    let out = infer(
        &addr,
        &m,
        &id,
        &imgs,
        &y("override.npy"),
        &[
            "--preprocess",
            "scale=1/255",
            "--thin",
            "--receipt",
            y("receipts.json").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let checked = json_of(&hetee(&[
        "verify-receipt",
        "--receipt",
        y("receipts.json").to_str().unwrap(),
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--json",
    ]));
    assert_eq!(checked["verified"], 2);
    assert_eq!(checked["receipts"][0]["model_id"], id.as_str());
    assert_eq!(checked["receipts"][1]["images"], 1);
    let out = infer(&addr, &m, &id, &plain, &y("plain_out.npy"), &["--thin"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(same_file(&y("override.npy"), &y("plain_out.npy")));
    assert!(!same_file(&y("override.npy"), &y("img.npy")));
    let out = infer(
        &addr,
        &m,
        &id,
        &imgs,
        &y("x.npy"),
        &["--preprocess", "size=20x20"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes 28x28"));

    // --json on the owner's state changes.
    let state = json_of(&hetee(&[
        "model",
        "allow",
        "--open",
        "--json",
        "--server",
        &addr,
        "--model-id",
        &id,
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]));
    assert_eq!(state["model_id"], id.as_str());
    assert_eq!(state["allow"], "open");
    let state = json_of(&hetee(&[
        "model",
        "unlock",
        "--json",
        "--server",
        &addr,
        "--model-id",
        &id,
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]));
    assert_eq!(state["locked"], false);
    assert_eq!(state["failures"], 0);
}

#[test]
fn infer_writes_the_model_s_own_output_shape_and_a_refused_spec_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (addr, m) = (server.addr.clone(), measurement());
    let owner = dir.path().join("owner.key");
    let up = |model: &str, extra: &[&str]| {
        let mut args = vec![
            "model",
            "upload",
            "--server",
            &addr,
            "--model",
            model,
            "--expect-measurement",
            &m,
            "--allow-sim",
            "--client-key",
            owner.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        hetee(&args)
    };
    // A spec that cannot fit the model is refused before anything is sent.
    let out = up("mnist", &["--preprocess", "channels=rgb"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--preprocess") && err.contains("has 1"),
        "{err}"
    );
    assert_eq!(server.health()["models"], 0);

    // A conv-only model: its output is [N, C, H, W], not [N, classes].
    let onnx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/onnx/conv_only.onnx"
    );
    let wave =
        |n: usize, k: f32| -> Vec<f32> { (0..n * 128).map(|i| ((i as f32) * k).sin()).collect() };
    let (calib, x) = (dir.path().join("calib.npy"), dir.path().join("x.npy"));
    write_f32(&calib, &[8, 2, 8, 8], &wave(8, 0.37));
    write_f32(&x, &[2, 2, 8, 8], &wave(2, 0.11));
    let id = common::model_id_of(&up(onnx, &["--calib", calib.to_str().unwrap()]));
    let (secure, plain) = (dir.path().join("s.npy"), dir.path().join("p.npy"));
    let doc = json_of(&infer(&addr, &m, &id, &x, &secure, &["--json"]));
    let out = hetee(&[
        "run",
        "--model",
        onnx,
        "--calib",
        calib.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        plain.to_str().unwrap(),
        "--plaintext",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let shape = doc["output_shape"].as_array().unwrap();
    assert_eq!(shape.len(), 4, "{doc}");
    assert_eq!(doc["results"][0]["file"], Value::Null);
    assert!(
        same_file(&secure, &plain),
        "infer and run --plaintext differ"
    );
}
