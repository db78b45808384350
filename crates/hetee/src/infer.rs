//! `hetee infer`: a data provider's batch of images from an `.npy` file
//! through a served model, several queries in flight.

use hetee_client::{channel, data_provider, http, relay, trust};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

/// What `hetee infer` runs.
pub struct InferJob<'a> {
    /// Server address.
    pub server: &'a str,
    /// For https: the CA certificates to trust (PEM), instead of the
    /// system's roots.
    pub ca: Option<&'a std::path::Path>,
    /// Model id (hex).
    pub model_id: &'a str,
    /// Input `.npy`.
    pub input: &'a Path,
    /// Output `.npy`: `[N, classes]` float32 logits, or `[N, k]` int32 labels.
    pub output: &'a Path,
    /// Accepted enclave.
    pub trust: &'a trust::Trust,
    /// Queries in flight.
    pub parallel: usize,
    /// Thin client mode.
    pub thin: bool,
    /// Where to write the receipts.
    pub receipt: Option<&'a Path>,
    /// Long-term client key file (created if missing).
    pub client_key: Option<&'a Path>,
}

/// `hetee infer`: every image of `input` through the model, `parallel`
/// queries at a time.
pub fn infer_file(job: &InferJob) -> Result<()> {
    let api: std::sync::Arc<dyn relay::Relay> =
        std::sync::Arc::new(http::Api::connect(job.server, job.ca)?);
    let x = crate::data::read_npy(job.input).context("input")?;
    let client = job
        .client_key
        .map(channel::load_or_create_key)
        .transpose()?;
    let target = data_provider::Target::connect(api, job.trust, job.model_id, client)?;
    let n = *x.shape.first().unwrap_or(&0);
    if n == 0 {
        bail!("the input holds no samples");
    }
    let per = x.data.len() / n;
    let images: Vec<&[f32]> = x.data.chunks(per).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job.parallel.clamp(1, 64))
        .build()?;
    let answers = pool.install(|| {
        images
            .par_chunks(target.batch)
            .map(|chunk| {
                if job.thin {
                    target.query_thin(chunk)
                } else {
                    target.query(chunk)
                }
            })
            .collect::<Result<Vec<_>>>()
    })?;
    if let Some(path) = job.receipt {
        let receipts: Vec<_> = answers.iter().map(|a| &a.receipt).collect();
        std::fs::write(path, serde_json::to_string_pretty(&receipts)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let labels: Vec<Vec<u32>> = answers.iter().flat_map(|a| a.labels.clone()).collect();
    if !labels.is_empty() {
        let k = labels[0].len();
        let flat: Vec<i32> = labels.into_iter().flatten().map(|l| l as i32).collect();
        crate::data::write_npy_i32(job.output, &[n, k], &flat)?;
        eprintln!("wrote {n} x {k} labels to {}", job.output.display());
        return Ok(());
    }
    let logits: Vec<Vec<f32>> = answers.into_iter().flat_map(|a| a.logits).collect();
    let classes = logits.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = logits.into_iter().flatten().collect();
    crate::data::write_npy(job.output, &[n, classes], &flat)?;
    eprintln!("wrote {n} x {classes} logits to {}", job.output.display());
    Ok(())
}
