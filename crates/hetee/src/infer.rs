//! `hetee infer`: a data provider's batch of images through a served
//! model, several queries in flight; from an `.npy` file ([`infer_file`])
//! or a tensor in memory ([`infer_tensor`]).

use hetee_client::data_provider::Receipt;
use hetee_client::{channel, data_provider, http, relay, trust};
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::data::Tensor;

/// Where and how `hetee infer` queries.
pub struct Query<'a> {
    /// Server address.
    pub server: &'a str,
    /// For https: the CA certificates to trust (PEM), instead of the
    /// system's roots.
    pub ca: Option<&'a Path>,
    /// Model id (hex).
    pub model_id: &'a str,
    /// Accepted enclave.
    pub trust: &'a trust::Trust,
    /// Queries in flight.
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

/// Every image of `x` (`[N, ...]` in the model's input shape) through the
/// model, `parallel` queries at a time. The shape and the values (finite)
/// are checked against the enclave's query plan before anything is sent.
/// Returns the outputs and the enclave-signed receipt of every query.
pub fn infer_tensor(q: &Query, x: &Tensor) -> Result<(Outputs, Vec<Receipt>)> {
    let api: std::sync::Arc<dyn relay::Relay> =
        std::sync::Arc::new(http::Api::connect(q.server, q.ca)?);
    let client = q.client_key.map(channel::load_or_create_key).transpose()?;
    let target = data_provider::Target::connect(api, q.trust, q.model_id, client)?;
    let n = crate::run::check_shape("the input", x, &target.input_shape)?;
    if n == 0 {
        return Err(crate::run::BadInput("the input holds no samples".into()).into());
    }
    let per = x.data.len() / n;
    let images: Vec<&[f32]> = x.data.chunks(per).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(q.parallel.clamp(1, 64))
        .build()?;
    let bar = crate::progress::bar(n as u64, "images");
    let answers = pool.install(|| {
        images
            .par_chunks(target.batch)
            .map(|chunk| {
                let a = if q.thin {
                    target.query_thin(chunk)
                } else {
                    target.query(chunk)
                };
                bar.inc(chunk.len() as u64);
                a
            })
            .collect::<Result<Vec<_>>>()
    });
    bar.finish_and_clear();
    let answers = answers?;
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
