//! `hetee run` on files: a `.npy` array, a PNG or JPEG image or a folder of
//! them in, a `.npy` of the model's own output shape out, and the figures
//! as a per-layer report file and/or one JSON document on stdout.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::data;
use crate::images::{read_input, Preprocess};
use crate::run::{check_batch, load_model, prepare, run_batch};

/// What `hetee run` runs.
pub struct RunJob<'a> {
    /// Bundled model name or ONNX path.
    pub model: &'a str,
    /// `.npy`, image, or folder of images.
    pub input: &'a Path,
    /// Calibration `.npy` (bundled models use their own).
    pub calib: Option<&'a Path>,
    /// Output `.npy`.
    pub output: &'a Path,
    /// Per-layer JSON report file.
    pub report: Option<&'a Path>,
    /// Run the plaintext integer reference instead.
    pub plaintext: bool,
    /// Preprocessing of image inputs (default [`Preprocess::default`]).
    pub preprocess: Option<&'a Preprocess>,
    /// Print the figures and results as JSON on stdout.
    pub json: bool,
}

/// `hetee run`: reads the input, runs it, writes the outputs (and the
/// per-layer report, and the JSON document, if asked).
pub fn run_files(job: &RunJob) -> Result<()> {
    let start = Instant::now();
    let (model, c) = load_model(job.model, job.calib)?;
    let (x, files) = read_input(job.input, job.preprocess, &model.input_shape)?;
    if let Some(f) = &files {
        eprintln!(
            "read {} from {}",
            crate::results::describe_files(f),
            job.input.display()
        );
    }
    check_batch("the input", &x, &model)?;
    let q = prepare(&model, &c)?;
    let r = run_batch(&model, &q, &x, job.plaintext)?;
    let (shape, n) = (&r.output.shape, r.output.shape[0]);
    data::write_npy(job.output, shape, &r.output.data)?;
    let report = crate::report::layer_report(&q, r.harness.as_ref(), &r.stats, n, job.plaintext);
    if let Some(path) = job.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    eprintln!(
        "wrote {} outputs to {}",
        dims.join(" x "),
        job.output.display()
    );
    if job.json {
        let spec = files
            .is_some()
            .then(|| job.preprocess.cloned().unwrap_or_default().to_string());
        let doc = json!({
            "model": job.model,
            "mode": report["mode"],
            "images": n,
            "input": job.input.display().to_string(),
            "preprocess": spec,
            "output": job.output.display().to_string(),
            "output_shape": shape,
            "seconds": start.elapsed().as_secs_f64(),
            "report": report,
            "results": crate::results::float_results(files.as_deref(), n, &r.output.data),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
