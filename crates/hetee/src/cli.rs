//! Command-line interface.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rayon::prelude::*;

use crate::data::{self, Tensor};
use crate::parties::Deployment;
use hetee_model::{quantize, reference, Model, QuantModel};

/// Confidential neural-network inference: BFV on the untrusted host, exact
/// nonlinear steps in a trusted enclave.
#[derive(Parser, Debug)]
#[command(name = "hetee", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum EnclaveCommand {
    /// Serve the enclave on stdin/stdout (length-prefixed frames); started by the host.
    Run,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the bundled MNIST CNN on bundled test images, fully encrypted,
    /// with all three parties in this process.
    Demo {
        /// How many test images (up to 10000).
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// Print the figures as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Run the enclave as a separate process (`hetee enclave run`).
        #[arg(long)]
        enclave_process: bool,
    },
    /// The enclave side.
    Enclave {
        #[command(subcommand)]
        cmd: EnclaveCommand,
    },
    /// Runs any supported ONNX model on a batch of inputs.
    Run {
        /// ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Inputs: float32 .npy `[N, C, H, W]` or `[N, F]`, preprocessed.
        #[arg(long)]
        input: PathBuf,
        /// Calibration inputs, same layout.
        #[arg(long)]
        calib: PathBuf,
        /// Output: float32 .npy `[N, classes]` of dequantized logits.
        #[arg(long)]
        output: PathBuf,
        /// Per-layer JSON report.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Run the plaintext integer reference instead (same quantization).
        #[arg(long)]
        plaintext: bool,
    },
    /// Benchmarks the bundled models: latency and batch throughput, side by
    /// side with the plaintext integer reference; medians over runs.
    Bench {
        /// Write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw an SVG chart.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Thread counts, comma separated (default: 1 and all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Runs per configuration.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Images per latency run.
        #[arg(long, default_value_t = 20)]
        images: usize,
        /// Images per batch run.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Models, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "mnist,e2dm")]
        models: Vec<String>,
    },
    /// Prints the per-layer packing plan of a model.
    Plan {
        /// Plan for this many images per query (stacked in the same products).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// ONNX model, or `mnist` / `e2dm` for a bundled one.
        #[arg(long, default_value = "mnist")]
        model: String,
        /// Calibration inputs (float32 .npy); bundled models use their own.
        #[arg(long)]
        calib: Option<PathBuf>,
    },
}

/// Largest batch the planner considers for `hetee run`.
const MAX_BATCH: usize = 32;

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Demo {
            images,
            json,
            enclave_process,
        } => crate::demo::demo(images, json, enclave_process),
        Command::Enclave {
            cmd: EnclaveCommand::Run,
        } => crate::link::run_enclave_stdio(),
        Command::Run {
            model,
            input,
            calib,
            output,
            report,
            plaintext,
        } => run_model(
            &model,
            &input,
            &calib,
            &output,
            report.as_deref(),
            plaintext,
        ),
        Command::Bench {
            json,
            chart,
            threads,
            runs,
            images,
            batch,
            models,
        } => {
            let all = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let mut threads = if threads.is_empty() {
                vec![1, all]
            } else {
                threads
            };
            threads.dedup();
            crate::bench::bench(&crate::bench::BenchOptions {
                models,
                threads,
                runs,
                images,
                batch,
                json: json.as_deref(),
                chart: chart.as_deref(),
            })
            .map(|_| ())
        }
        Command::Plan {
            model,
            calib,
            batch,
        } => {
            let (m, c) = load_model(&model, calib.as_deref())?;
            crate::plan::print_plan(&prepare(&m, &c)?, batch)
        }
    }
}

/// A bundled model (`mnist`, `e2dm`) with its calibration set, or an ONNX
/// file with the given calibration file.
pub fn load_model(name: &str, calib: Option<&std::path::Path>) -> Result<(Model, Tensor)> {
    let bundled = match name {
        "mnist" => Some(data::bundled::MNIST_ONNX),
        "e2dm" => Some(data::bundled::E2DM_ONNX),
        _ => None,
    };
    let model = match bundled {
        Some(bytes) => hetee_model::onnx::import_onnx_bytes(bytes, name)?,
        None => hetee_model::onnx::import_onnx(std::path::Path::new(name))?,
    };
    let calib = match (calib, bundled) {
        (Some(p), _) => data::read_npy(p).context("calibration set")?,
        (None, Some(_)) => data::idx_images(data::bundled::CALIB_IMAGES)?,
        (None, None) => bail!("--calib is required for a model file"),
    };
    Ok((model, calib))
}

/// Checks that a batch tensor matches the model input and returns the sample count.
pub fn check_batch(what: &str, t: &Tensor, model: &Model) -> Result<usize> {
    let want = &model.input_shape;
    if t.shape.len() != want.len() + 1 || &t.shape[1..] != want.as_slice() {
        bail!(
            "{what} has shape {:?}, but the model takes [N, {}]; reshape it to match",
            t.shape,
            want.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{what} holds a non-finite value (NaN or Inf) at flat index {i}; clean the data first"
        );
    }
    Ok(t.shape[0])
}

/// Imports and quantizes a model with a calibration tensor.
pub fn prepare(model: &Model, calib: &Tensor) -> Result<QuantModel> {
    let n = check_batch("the calibration set", calib, model)?;
    if n == 0 {
        bail!("the calibration set is empty; pass at least one representative input");
    }
    Ok(quantize(model, &calib.data)?)
}

fn run_model(
    model_path: &std::path::Path,
    input: &std::path::Path,
    calib: &std::path::Path,
    output: &std::path::Path,
    report: Option<&std::path::Path>,
    plaintext: bool,
) -> Result<()> {
    let model = hetee_model::onnx::import_onnx(model_path)?;
    let x = data::read_npy(input).context("input")?;
    let c = data::read_npy(calib).context("calibration set")?;
    let n = check_batch("the input", &x, &model)?;
    let q = prepare(&model, &c)?;
    let per: usize = model.input_shape.iter().product();
    let classes = q.classes();
    let samples: Vec<&[f32]> = x.data.chunks(per).take(n).collect();
    let mut out = Vec::with_capacity(n * classes);
    let mut all = Vec::new();
    let mut dep = None;
    if plaintext {
        let outs = samples
            .par_iter()
            .map(|s| Ok(reference::run_quantized(&q, s)?))
            .collect::<Result<Vec<_>>>()?;
        out.extend(outs.into_iter().flatten());
    } else {
        // Many inputs: the planner may stack several images per product.
        let d = Deployment::new(&q, n.min(MAX_BATCH))?;
        let results = samples
            .par_chunks(d.schedule.batch)
            .map(|chunk| d.infer_batch(chunk))
            .collect::<Result<Vec<_>>>()?;
        for (logits, s) in results {
            out.extend(logits.into_iter().flatten());
            all.push(s);
        }
        dep = Some(d);
    }
    data::write_npy(output, &[n, classes], &out)?;
    if let Some(r) = report {
        let json = crate::report::layer_report(&q, dep.as_ref(), &all, n, plaintext);
        std::fs::write(r, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", r.display()))?;
    }
    eprintln!("wrote {n} x {classes} logits to {}", output.display());
    Ok(())
}

/// Median (upper median for even counts); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
