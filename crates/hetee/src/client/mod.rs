//! The two clients of a deployment, talking to `hetee serve` over HTTP:
//! - [`model_provider`]: quantize, encrypt the weights, upload, register the secrets;
//! - [`data_provider`]: encrypt inputs, query, receive the result over the channel.
//!
//! Both first verify the enclave's evidence ([`trust`]) and speak to the
//! enclave only through a Noise channel bound to it ([`channel`]).

pub mod channel;
pub mod data_provider;
pub mod http;
pub mod model_provider;
pub mod trust;

use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

/// `hetee infer`: every image of `input` through the model, `parallel`
/// queries at a time; writes `[N, classes]` logits to `output`.
pub fn infer_file(
    server: &str,
    model_id: &str,
    input: &Path,
    output: &Path,
    trust: &trust::Trust,
    parallel: usize,
) -> Result<()> {
    let api = http::Api::new(server)?;
    let x = crate::data::read_npy(input).context("input")?;
    let target = data_provider::Target::connect(&api, trust, model_id)?;
    let n = *x.shape.first().unwrap_or(&0);
    if n == 0 {
        bail!("the input holds no samples");
    }
    let per = x.data.len() / n;
    let images: Vec<&[f32]> = x.data.chunks(per).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(parallel.clamp(1, 64))
        .build()?;
    let answers = pool.install(|| {
        images
            .par_chunks(target.batch)
            .map(|chunk| target.query(chunk))
            .collect::<Result<Vec<_>>>()
    })?;
    let logits: Vec<Vec<f32>> = answers.into_iter().flat_map(|a| a.logits).collect();
    let classes = logits.first().map(Vec::len).unwrap_or(0);
    let flat: Vec<f32> = logits.into_iter().flatten().collect();
    crate::data::write_npy(output, &[n, classes], &flat)?;
    eprintln!("wrote {n} x {classes} logits to {}", output.display());
    Ok(())
}
