//! `hetee infer`: a data provider's batch of images through a served
//! model, several queries in flight, spread over one or more servers
//! (replicas, with failover: [`hetee_client::failover`]); from an `.npy`
//! file, a PNG or JPEG image or a folder of them ([`infer_file`]), or a
//! tensor in memory ([`infer_tensor`]).

use hetee_client::data_provider::{Answer, Receipt};
use hetee_client::failover::Replicas;
use hetee_client::{channel, trust};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::data::Tensor;
use crate::images::Preprocess;

/// Where and how `hetee infer` queries.
pub struct Query<'a> {
    /// Server addresses (replicas of one deployment; an entry may hold
    /// several, comma separated).
    pub servers: &'a [String],
    /// For https: the CA certificates to trust (PEM), instead of the
    /// system's roots.
    pub ca: Option<&'a Path>,
    /// Model id (hex).
    pub model_id: &'a str,
    /// Accepted enclave.
    pub trust: &'a trust::Trust,
    /// Queries in flight (sessions at once, spread over the servers).
    pub parallel: usize,
    /// Thin client mode.
    pub thin: bool,
    /// Long-term client key file (created if missing).
    pub client_key: Option<&'a Path>,
}

/// What `hetee infer` runs.
pub struct InferJob<'a> {
    /// Where and how to query.
    pub query: Query<'a>,
    /// Input: `.npy`, a PNG or JPEG image, or a folder of them.
    pub input: &'a Path,
    /// Preprocessing of image inputs; `None`: the one the model's provider
    /// declared at upload, else [`Preprocess::default`].
    pub preprocess: Option<&'a Preprocess>,
    /// Output `.npy`: float32 outputs in the model's own shape (as its
    /// provider declared it; `[N, classes]` otherwise), or `[N, k]` int32
    /// labels.
    pub output: &'a Path,
    /// Where to write the receipts.
    pub receipt: Option<&'a Path>,
    /// Print the figures and per-input results as JSON on stdout.
    pub json: bool,
}

/// The answers to a batch, in input order.
pub enum Outputs {
    /// Dequantized outputs (policy `logits`): `[N, ...]` in the model's own
    /// output shape when its provider declared it, else `[N, classes]`.
    Logits {
        /// `[N, ...]`.
        shape: Vec<usize>,
        /// Row-major values.
        data: Vec<f32>,
    },
    /// `[N, k]` labels, best first (policies `label` and `top-K`).
    Labels {
        /// `[N, k]`.
        shape: Vec<usize>,
        /// Row-major labels.
        data: Vec<i32>,
    },
}

/// A batch's answers with the figures of its queries.
pub struct Inferred {
    /// The outputs, in input order.
    pub outputs: Outputs,
    /// The enclave-signed receipt of every query.
    pub receipts: Vec<Receipt>,
    /// Queries run.
    pub queries: usize,
    /// Host time summed over queries (ms), as the server reports it.
    pub host_ms: f64,
    /// Enclave time summed over queries (ms), as the server reports it.
    pub enclave_ms: f64,
    /// Bytes sent by this client.
    pub bytes_up: usize,
    /// Bytes received by this client.
    pub bytes_down: usize,
}

/// Connects to the model on the servers (`q.servers`, replicas of one
/// deployment): attests the first that answers and gets the enclave's
/// query plan and the model's public metadata.
pub fn connect(q: &Query) -> Result<Replicas> {
    let client = q.client_key.map(channel::load_or_create_key).transpose()?;
    Replicas::connect(q.servers, q.ca, q.trust, q.model_id, client)
}

/// Some queries failed for good (after failover); added as context to the
/// first failure's error, so its cause stays in the chain.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {total} inputs got no result (inputs {inputs}); nothing was written. \
     The first failure"
)]
pub struct InputsFailed {
    /// Inputs without a result.
    pub failed: usize,
    /// Inputs in the batch.
    pub total: usize,
    /// Their indices as ranges, e.g. `0-7, 16-23`.
    pub inputs: String,
}

/// A query not sent because an earlier one was refused for good.
#[derive(Debug, thiserror::Error)]
#[error("not sent after another query was refused")]
struct NotSent;

fn ranges(v: &[Range<usize>]) -> String {
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in v {
        match merged.last_mut() {
            Some(m) if m.end == r.start => m.end = r.end,
            _ => merged.push(r.clone()),
        }
    }
    let parts: Vec<String> = merged
        .iter()
        .map(|r| match r.len() {
            1 => r.start.to_string(),
            _ => format!("{}-{}", r.start, r.end - 1),
        })
        .collect();
    parts.join(", ")
}

/// Every image of `x` (`[N, ...]` in the model's input shape) through the
/// model, `parallel` queries at a time spread over the servers. The shape
/// and the values (finite) are checked against the enclave's query plan
/// before anything is sent. A query that fails on a replica is retried on
/// another; if some still fail, the error names their inputs. Returns the
/// outputs (in input order) and the enclave-signed receipt of every query.
pub fn infer_tensor(q: &Query, x: &Tensor) -> Result<(Outputs, Vec<Receipt>)> {
    let r = infer_on(&connect(q)?, q, x)?;
    Ok((r.outputs, r.receipts))
}

/// [`infer_tensor`] on connected replicas, with the figures.
pub fn infer_on(replicas: &Replicas, q: &Query, x: &Tensor) -> Result<Inferred> {
    let n = crate::run::check_shape("the input", x, &replicas.input_shape)?;
    if n == 0 {
        return Err(crate::run::BadInput("the input holds no samples".into()).into());
    }
    let per = x.data.len() / n;
    let images: Vec<&[f32]> = x.data.chunks(per).collect();
    let batch = replicas.batch.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(q.parallel.clamp(1, 64))
        .build()?;
    let bar = crate::progress::bar(n as u64, "images");
    let refused = AtomicBool::new(false);
    let results: Vec<Result<Answer>> = pool.install(|| {
        images
            .par_chunks(batch)
            .map(|chunk| {
                if refused.load(Ordering::Relaxed) {
                    return Err(NotSent.into());
                }
                let a = replicas.query(chunk, q.thin);
                match &a {
                    Ok(_) => bar.inc(chunk.len() as u64),
                    Err(_) => refused.store(true, Ordering::Relaxed),
                }
                a
            })
            .collect()
    });
    bar.finish_and_clear();
    // This call's retries only (a Python client's replicas serve many).
    let retried = replicas.take_retried();
    if !retried.is_empty() {
        eprintln!(
            "{} attempts failed on a server and were retried in a new session",
            retried.len()
        );
        for r in &retried {
            eprintln!("  {}: {}", r.server, r.error);
        }
    }
    let answers = collect_answers(results, batch, n)?;
    let mut r = Inferred {
        outputs: Outputs::Labels {
            shape: vec![],
            data: vec![],
        },
        receipts: answers.iter().map(|a| a.receipt.clone()).collect(),
        queries: answers.len(),
        host_ms: answers.iter().map(|a| a.host_ms).sum(),
        enclave_ms: answers.iter().map(|a| a.enclave_ms).sum(),
        bytes_up: answers.iter().map(|a| a.bytes_up).sum(),
        bytes_down: answers.iter().map(|a| a.bytes_down).sum(),
    };
    let labels: Vec<Vec<u32>> = answers.iter().flat_map(|a| a.labels.clone()).collect();
    if !labels.is_empty() {
        let k = labels[0].len();
        let data = labels.into_iter().flatten().map(|l| l as i32).collect();
        r.outputs = Outputs::Labels {
            shape: vec![n, k],
            data,
        };
        return Ok(r);
    }
    let logits: Vec<Vec<f32>> = answers.into_iter().flat_map(|a| a.logits).collect();
    let classes = logits.first().map(Vec::len).unwrap_or(0);
    // The model's own shape, if its provider declared one that fits.
    let mut shape = vec![n];
    match &replicas.public.output_shape {
        Some(s) if !s.is_empty() && s.iter().product::<usize>() == classes => shape.extend(s),
        _ => shape.push(classes),
    }
    r.outputs = Outputs::Logits {
        shape,
        data: logits.into_iter().flatten().collect(),
    };
    Ok(r)
}

/// The answers in input order, or an error naming every input without one
/// (its cause: the first failure that was not a skipped query).
fn collect_answers(results: Vec<Result<Answer>>, batch: usize, n: usize) -> Result<Vec<Answer>> {
    let mut answers = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    let mut first: Option<anyhow::Error> = None;
    for (k, r) in results.into_iter().enumerate() {
        match r {
            Ok(a) => answers.push(a),
            Err(e) => {
                failed.push(k * batch..((k + 1) * batch).min(n));
                let skipped = e.downcast_ref::<NotSent>().is_some();
                if first.is_none() || (!skipped && first_is_skip(&first)) {
                    first = Some(e);
                }
            }
        }
    }
    match first {
        None => Ok(answers),
        Some(e) => Err(e.context(InputsFailed {
            failed: failed.iter().map(Range::len).sum(),
            total: n,
            inputs: ranges(&failed),
        })),
    }
}

fn first_is_skip(e: &Option<anyhow::Error>) -> bool {
    e.as_ref()
        .is_some_and(|e| e.downcast_ref::<NotSent>().is_some())
}

/// The preprocessing for image inputs: `given`, else the one declared at
/// upload, else the default.
fn spec_for(given: Option<&Preprocess>, target: &Replicas) -> Result<Preprocess> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    match &target.public.preprocess {
        Some(text) => text
            .parse()
            .context("the preprocessing declared with the model (override it with --preprocess)"),
        None => Ok(Preprocess::default()),
    }
}

/// An input file read for a connected model.
pub struct Input {
    /// The batch.
    pub tensor: Tensor,
    /// For image inputs: the file names in batch order.
    pub files: Option<Vec<String>>,
    /// For image inputs: the preprocessing applied.
    pub preprocess: Option<Preprocess>,
}

/// Reads `path` for `target`: a `.npy` array as it is, or a PNG or JPEG
/// image or a folder of them preprocessed with `given`, else with the
/// spec declared at upload, else with the default.
pub fn read_for(target: &Replicas, path: &Path, given: Option<&Preprocess>) -> Result<Input> {
    if !crate::images::is_image_input(path) {
        return Ok(Input {
            tensor: crate::data::read_npy(path).context("input")?,
            files: None,
            preprocess: None,
        });
    }
    let spec = spec_for(given, target)?;
    let images = crate::images::load_images(path, &spec, &target.input_shape)?;
    Ok(Input {
        tensor: images.tensor,
        files: Some(images.files),
        preprocess: Some(spec),
    })
}

/// `hetee infer`: every image of the input file through the model; writes
/// the outputs (and the receipts, and the JSON document, if asked).
pub fn infer_file(job: &InferJob) -> Result<()> {
    let start = Instant::now();
    let target = connect(&job.query)?;
    let input = read_for(&target, job.input, job.preprocess)?;
    if let (Some(files), Some(spec)) = (&input.files, &input.preprocess) {
        eprintln!(
            "read {} from {} with preprocessing {spec}",
            crate::results::describe_files(files),
            job.input.display()
        );
    }
    let (files, spec) = (input.files, input.preprocess.map(|p| p.to_string()));
    let r = infer_on(&target, &job.query, &input.tensor)?;
    if let Some(path) = job.receipt {
        std::fs::write(path, serde_json::to_string_pretty(&r.receipts)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let out = job.output;
    let (shape, results) = match &r.outputs {
        Outputs::Labels { shape, data } => {
            crate::data::write_npy_i32(out, shape, data)?;
            let res = crate::results::label_results(files.as_deref(), shape[0], data);
            (shape, res)
        }
        Outputs::Logits { shape, data } => {
            crate::data::write_npy(out, shape, data)?;
            let res = crate::results::float_results(files.as_deref(), shape[0], data);
            (shape, res)
        }
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let kind = match r.outputs {
        Outputs::Labels { .. } => "labels",
        Outputs::Logits { .. } => "logits",
    };
    eprintln!("wrote {} {kind} to {}", dims.join(" x "), out.display());
    if job.json {
        let doc = serde_json::json!({
            "model_id": job.query.model_id,
            "mode": if job.query.thin { "thin" } else { "encrypted" },
            "images": shape[0],
            "queries": r.queries,
            "batch": target.batch,
            "input": job.input.display().to_string(),
            "preprocess": spec,
            "output": out.display().to_string(),
            "output_kind": kind,
            "output_shape": shape,
            "seconds": start.elapsed().as_secs_f64(),
            "host_ms": r.host_ms,
            "enclave_ms": r.enclave_ms,
            "bytes_up": r.bytes_up,
            "bytes_down": r.bytes_down,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
