//! The in-process batch rows of `hetee bench`: images stacked by the
//! planner into queries of the harness's batch, all queries in flight at
//! once, beside the plaintext engines on the same images.

use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;

use crate::bench::{median_row, row, BenchRow, Plain};
use crate::harness::Harness;
use hetee_model::quant::QuantModel;
use hetee_model::reference;
use hetee_onnx::TractPlan;

/// One batch row to measure.
pub(crate) struct BatchRun<'a> {
    /// Model name.
    pub name: &'a str,
    /// Row mode: `batch`, or `batchS` at a concurrent row's stack size.
    pub mode: &'a str,
    /// Threads of the pool it runs on.
    pub threads: usize,
    /// The in-process deployment, planned for its batch.
    pub harness: &'a Harness,
    /// Tract's plan for the same batch (the plaintext floor).
    pub tract: &'a TractPlan,
    /// The quantized model (the integer reference).
    pub model: &'a QuantModel,
    /// Images, at least `images` of them.
    pub xs: &'a [&'a [f32]],
    /// Images per run.
    pub images: usize,
    /// Runs (the median run is kept).
    pub runs: usize,
}

/// Measures `run`: `images` images per run in queries of the harness's
/// batch, all in flight at once; then the integer reference and tract on
/// the same images.
pub(crate) fn batch_row(run: &BatchRun) -> Result<BenchRow> {
    let b = run.images.max(1);
    let xs = &run.xs[..b.min(run.xs.len())];
    let dep = run.harness;
    let mut run_rows = Vec::new();
    for _ in 0..run.runs.max(1) {
        let ahead = dep.ahead();
        let t0 = Instant::now();
        let stats = xs
            .par_chunks(dep.schedule.batch)
            .map(|chunk| dep.infer_batch(chunk).map(|r| r.1))
            .collect::<Result<Vec<_>>>()?;
        let wall = t0.elapsed().as_secs_f64();
        let tp = Instant::now();
        xs.par_iter()
            .try_for_each(|x| reference::run_quantized(run.model, x).map(|_| ()))?;
        let plain = tp.elapsed().as_secs_f64() * 1e3 / xs.len() as f64;
        let flat: Vec<f32> = xs.concat();
        let tf = Instant::now();
        std::hint::black_box(run.tract.run(&flat)?);
        let floor = tf.elapsed().as_secs_f64() * 1e3 / xs.len() as f64;
        run_rows.push(
            row(
                run.name,
                run.mode,
                run.threads,
                xs.len(),
                &stats,
                Plain {
                    tract_ms: floor,
                    reference_ms: plain,
                },
                Some(wall),
                dep.into(),
            )
            .with_ahead(ahead.ms_until(&dep.ahead())),
        );
    }
    Ok(median_row(run_rows))
}
