//! `hetee demo` (default): the real deployment on this machine. The server
//! and its enclave process listen on loopback; the model provider uploads
//! the bundled model; the data provider queries it; each result is checked
//! against the plaintext integer reference.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::median;
use crate::client::data_provider::Target;
use crate::client::http::Api;
use crate::client::model_provider::{upload, Terms};
use crate::client::trust::Trust;
use crate::data::{idx_images, idx_labels};
use crate::serve::{ServeOptions, Server};
use hetee_model::{quantize, reference};
use hetee_onnx::import_onnx_bytes;

/// What the deployment demo prints.
#[derive(Debug, Serialize)]
pub struct DeploymentReport {
    /// Images queried.
    pub images: usize,
    /// Accuracy of the secure results.
    pub accuracy: f64,
    /// Fraction bit-identical to the plaintext integer reference.
    pub reference_agreement: f64,
    /// Model provider: compile, encrypt, upload, register (ms).
    pub upload_ms: f64,
    /// Encrypted weights uploaded (bytes).
    pub weight_bytes: usize,
    /// Median end-to-end latency of one query (ms), client side.
    pub median_latency_ms: f64,
    /// Median host time per query (ms).
    pub median_host_ms: f64,
    /// Median enclave time per query (ms).
    pub median_enclave_ms: f64,
    /// The enclave measurement the clients pinned.
    pub measurement: String,
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// Runs the deployment demo on the first `n` test images.
pub fn demo(name: &str, n: usize, json: bool) -> Result<()> {
    if n == 0 || n > 10_000 {
        bail!("--images must be between 1 and 10000");
    }
    let dir = tempfile::tempdir()?;
    let server = Server::bind(&ServeOptions::loopback(dir.path()))?;
    let addr = server.addr.to_string();
    // What a client pins: the published measurement of this build.
    let measurement = server.measurement.clone();
    std::thread::spawn(move || server.run());
    eprintln!("server on http://{addr}, enclave measurement {measurement}");
    eprintln!("(simulated TEE: the clients run with --allow-sim)");

    let b = crate::bundled::find(name).with_context(|| {
        format!(
            "no bundled model is called {name} (bundled: {})",
            crate::bundled::names()
        )
    })?;
    let model = import_onnx_bytes(b.onnx, name)?;
    let calib = idx_images(b.calib_images)?;
    let test = idx_images(b.test_images)?;
    let labels = idx_labels(b.test_labels)?;
    let q = quantize(&model, &calib.data)?;
    let trust = Trust::new(&measurement, true)?;
    let api = Api::new(&addr)?;

    eprintln!("model provider: compiling, encrypting and uploading the model...");
    let t = Instant::now();
    let terms = Terms {
        max_batch: 1,
        ..Terms::default()
    };
    let owner = hetee_attest::StaticKeypair::generate()?;
    let up = upload(&api, &trust, &owner, &q, &terms)?;
    let upload_ms = t.elapsed().as_secs_f64() * 1e3;
    let model_id = hetee_proto::ids::id_hex(&up.model_id);
    eprintln!("model provider: model {model_id} registered");

    let target = Target::connect(std::sync::Arc::new(api), &trust, &model_id, None)?;
    let bar = crate::progress::bar(n as u64, "images");
    let per: usize = model.input_shape.iter().product();
    let (mut ok, mut agree) = (0usize, 0usize);
    let (mut lat, mut host, mut encl) = (Vec::new(), Vec::new(), Vec::new());
    for (x, &label) in test.data.chunks(per).zip(&labels).take(n) {
        let t = Instant::now();
        let a = target.query(&[x])?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        host.push(a.host_ms);
        encl.push(a.enclave_ms);
        let secure = &a.logits[0];
        let plain = reference::run_quantized(&q, x)?;
        ok += (argmax(secure) == label as usize) as usize;
        agree += secure
            .iter()
            .map(|v| v.to_bits())
            .eq(plain.iter().map(|v| v.to_bits())) as usize;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let r = DeploymentReport {
        images: n,
        accuracy: ok as f64 / n as f64,
        reference_agreement: agree as f64 / n as f64,
        upload_ms,
        weight_bytes: up.weight_bytes,
        median_latency_ms: median(lat),
        median_host_ms: median(host),
        median_enclave_ms: median(encl),
        measurement,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("hetee demo: three parties, server + enclave process on loopback");
        println!("  images                 {}", r.images);
        println!("  secure accuracy        {:.2} %", r.accuracy * 100.0);
        println!(
            "  bit-exact vs reference {:.2} %",
            r.reference_agreement * 100.0
        );
        println!(
            "  model upload           {:.0} ms, {:.1} MiB of ciphertexts",
            r.upload_ms,
            r.weight_bytes as f64 / (1 << 20) as f64
        );
        println!(
            "  latency per query      {:.1} ms median (host {:.1} ms, enclave {:.1} ms)",
            r.median_latency_ms, r.median_host_ms, r.median_enclave_ms
        );
    }
    if agree != n {
        bail!(
            "{} of {n} secure results differ from the plaintext reference",
            n - agree
        );
    }
    Ok(())
}
