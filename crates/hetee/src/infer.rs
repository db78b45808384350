//! `hetee infer`: a data provider's batch of images through a served
//! model, several queries in flight, spread over one or more servers
//! (replicas, with failover: [`hetee_client::failover`]); from an `.npy`
//! file ([`infer_file`]) or a tensor in memory ([`infer_tensor`]).

use hetee_client::data_provider::{Answer, Receipt};
use hetee_client::failover::Replicas;
use hetee_client::{channel, trust};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::data::Tensor;

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
    /// Input `.npy`.
    pub input: &'a Path,
    /// Output `.npy`: `[N, classes]` float32 logits, or `[N, k]` int32 labels.
    pub output: &'a Path,
    /// Where to write the receipts.
    pub receipt: Option<&'a Path>,
}

/// The answers to a batch, in input order.
pub enum Outputs {
    /// `[N, classes]` dequantized logits (policy `logits`).
    Logits {
        /// `[N, classes]`.
        shape: [usize; 2],
        /// Row-major values.
        data: Vec<f32>,
    },
    /// `[N, k]` labels, best first (policies `label` and `top-K`).
    Labels {
        /// `[N, k]`.
        shape: [usize; 2],
        /// Row-major labels.
        data: Vec<i32>,
    },
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
    let client = q.client_key.map(channel::load_or_create_key).transpose()?;
    let replicas = Replicas::connect(q.servers, q.ca, q.trust, q.model_id, client)?;
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
    let retried = replicas.retried();
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
    let receipts = answers.iter().map(|a| a.receipt.clone()).collect();
    let labels: Vec<Vec<u32>> = answers.iter().flat_map(|a| a.labels.clone()).collect();
    if !labels.is_empty() {
        let k = labels[0].len();
        let data = labels.into_iter().flatten().map(|l| l as i32).collect();
        return Ok((
            Outputs::Labels {
                shape: [n, k],
                data,
            },
            receipts,
        ));
    }
    let logits: Vec<Vec<f32>> = answers.into_iter().flat_map(|a| a.logits).collect();
    let classes = logits.first().map(Vec::len).unwrap_or(0);
    let data = logits.into_iter().flatten().collect();
    Ok((
        Outputs::Logits {
            shape: [n, classes],
            data,
        },
        receipts,
    ))
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

/// `hetee infer`: every image of the input file through the model; writes
/// the outputs (and the receipts if asked).
pub fn infer_file(job: &InferJob) -> Result<()> {
    let x = crate::data::read_npy(job.input).context("input")?;
    let (outputs, receipts) = infer_tensor(&job.query, &x)?;
    if let Some(path) = job.receipt {
        std::fs::write(path, serde_json::to_string_pretty(&receipts)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let out = job.output;
    match outputs {
        Outputs::Labels { shape, data } => {
            crate::data::write_npy_i32(out, &shape, &data)?;
            eprintln!(
                "wrote {} x {} labels to {}",
                shape[0],
                shape[1],
                out.display()
            );
        }
        Outputs::Logits { shape, data } => {
            crate::data::write_npy(out, &shape, &data)?;
            eprintln!(
                "wrote {} x {} logits to {}",
                shape[0],
                shape[1],
                out.display()
            );
        }
    }
    Ok(())
}
