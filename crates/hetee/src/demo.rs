//! `hetee demo --in-process`: a bundled model on its bundled test images,
//! encrypted end to end, checked image by image against the integer
//! reference.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::median;
use crate::data::{idx_images, idx_labels};
use crate::harness::Harness;
use hetee_model::{float, quantize, reference};
use hetee_onnx::import_onnx_bytes;

/// The figures `hetee demo` prints.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// The bundled model and its dataset.
    pub model: String,
    /// Images evaluated.
    pub images: usize,
    /// Secure (encrypted) accuracy.
    pub accuracy: f64,
    /// Float model accuracy on the same images.
    pub float_accuracy: f64,
    /// Integer reference accuracy on the same images.
    pub reference_accuracy: f64,
    /// Fraction of images whose secure logits equal the reference bit for bit.
    pub reference_agreement: f64,
    /// Median end-to-end latency per image (ms).
    pub median_latency_ms: f64,
    /// Median host time per image (ms).
    pub median_host_ms: f64,
    /// Median enclave time per image (ms).
    pub median_enclave_ms: f64,
    /// ct x ct products per image.
    pub ct_products: usize,
    /// Ciphertexts decrypted by the enclave per image.
    pub enclave_decrypts: usize,
    /// Ciphertexts encrypted by the enclave per image.
    pub enclave_encrypts: usize,
    /// Bytes the data provider uploads per image.
    pub bytes_up: usize,
    /// Bytes the data provider receives per image.
    pub bytes_down: usize,
    /// Bytes host <-> enclave per image.
    pub bytes_host_enclave: usize,
    /// Encrypted model size (bytes uploaded by the model provider).
    pub model_ciphertext_bytes: usize,
    /// Size of the model's keys and schedule sealed by the enclave.
    pub sealed_model_bytes: usize,
    /// Host memory held by the pre-extended encrypted weights.
    pub host_weight_memory_bytes: usize,
    /// BFV ring degree and plaintext modulus.
    pub he_params: String,
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

/// Runs the demo on the first `n` test images.
pub fn demo(name: &str, n: usize, json: bool) -> Result<()> {
    if n == 0 || n > 10_000 {
        bail!("--images must be between 1 and 10000");
    }
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
    eprintln!("compiling and encrypting the model...");
    let dep = Harness::new(&q, 1)?;
    let per: usize = model.input_shape.iter().product();
    let bar = crate::progress::bar(n as u64, "images");
    let (mut ok, mut ok_float, mut ok_ref, mut agree) = (0usize, 0usize, 0usize, 0usize);
    let mut stats = Vec::with_capacity(n);
    for (x, &label) in test.data.chunks(per).zip(&labels).take(n) {
        let label = label as usize;
        let (secure, s) = dep.infer(x)?;
        let plain = reference::run_quantized(&q, x)?;
        let fl = float::run_float(&model, x)?;
        ok += (argmax(&secure) == label) as usize;
        ok_ref += (argmax(&plain) == label) as usize;
        ok_float += (argmax(&fl) == label) as usize;
        agree += (secure
            .iter()
            .map(|v| v.to_bits())
            .eq(plain.iter().map(|v| v.to_bits()))) as usize;
        stats.push(s);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let first = &stats[0];
    let sum = |f: &dyn Fn(&hetee_proto::api::StageStats) -> usize| {
        first.stages.iter().map(f).sum::<usize>()
    };
    let r = DemoReport {
        model: format!("{} ({})", b.name, b.dataset),
        images: n,
        accuracy: ok as f64 / n as f64,
        float_accuracy: ok_float as f64 / n as f64,
        reference_accuracy: ok_ref as f64 / n as f64,
        reference_agreement: agree as f64 / n as f64,
        median_latency_ms: median(stats.iter().map(|s| s.total_ms).collect()),
        median_host_ms: median(stats.iter().map(|s| s.host_ms()).collect()),
        median_enclave_ms: median(stats.iter().map(|s| s.enclave_ms()).collect()),
        ct_products: sum(&|s| s.products),
        enclave_decrypts: sum(&|s| s.enclave_decrypts),
        enclave_encrypts: sum(&|s| s.enclave_encrypts),
        bytes_up: first.bytes_up,
        bytes_down: first.bytes_down,
        bytes_host_enclave: sum(&|s| s.bytes_to_enclave + s.bytes_from_enclave),
        model_ciphertext_bytes: dep.weight_bytes,
        sealed_model_bytes: dep.sealed_model_bytes,
        host_weight_memory_bytes: dep.weight_memory,
        he_params: format!(
            "N={}, t={} ({} bits), log2 q={}",
            dep.schedule.he.degree,
            dep.schedule.he.plaintext_modulus,
            64 - dep.schedule.he.plaintext_modulus.leading_zeros(),
            dep.schedule.he.log2_q()
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_table(&r);
    }
    if agree != n {
        bail!(
            "{} of {n} images differ from the integer reference",
            n - agree
        );
    }
    Ok(())
}

fn print_table(r: &DemoReport) {
    let pct = |x: f64| format!("{:.2} %", 100.0 * x);
    let kb = |b: usize| format!("{:.1} KB", b as f64 / 1e3);
    println!(
        "hetee demo: bundled {}, {} test images, encrypted end to end",
        r.model, r.images
    );
    println!("  HE parameters               {}", r.he_params);
    println!("  accuracy (secure)           {}", pct(r.accuracy));
    println!("  accuracy (float model)      {}", pct(r.float_accuracy));
    println!(
        "  accuracy (integer ref.)     {}",
        pct(r.reference_accuracy)
    );
    println!(
        "  agreement with integer ref. {}",
        pct(r.reference_agreement)
    );
    println!(
        "  median latency per image    {:.1} ms",
        r.median_latency_ms
    );
    println!("  median host time            {:.1} ms", r.median_host_ms);
    println!(
        "  median enclave time         {:.1} ms",
        r.median_enclave_ms
    );
    println!("  ct x ct products per image  {}", r.ct_products);
    println!(
        "  enclave decrypts / encrypts {} / {}",
        r.enclave_decrypts, r.enclave_encrypts
    );
    println!(
        "  bytes up / down per image   {} / {}",
        kb(r.bytes_up),
        kb(r.bytes_down)
    );
    println!("  bytes host <-> enclave      {}", kb(r.bytes_host_enclave));
    println!(
        "  encrypted model size        {}",
        kb(r.model_ciphertext_bytes)
    );
    println!(
        "  host memory, ready weights  {}",
        kb(r.host_weight_memory_bytes)
    );
    println!("  sealed model (keys+sched.)  {}", kb(r.sealed_model_bytes));
}
