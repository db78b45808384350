//! `hetee run` as a library: load a model (bundled or ONNX) with its
//! calibration set, quantize it, and run a batch of inputs either through
//! the in-process harness (every party in this process, the real protocol)
//! or the plaintext integer reference. The CLI and the Python package call
//! these functions.

use std::path::Path;

use anyhow::{bail, Context, Result};
use hetee_model::{quantize, reference, Model, QuantModel};
use rayon::prelude::*;

use crate::data::{self, Tensor};
use crate::harness::{Harness, QueryStats};

/// Largest batch the planner considers for `hetee run`.
pub const MAX_BATCH: usize = 32;

/// The ONNX bytes of a bundled model (see [`crate::bundled`]).
pub fn bundled_onnx(name: &str) -> Option<&'static [u8]> {
    crate::bundled::find(name).map(|b| b.onnx)
}

/// Imports a bundled model by name, or an ONNX file at the path `name`.
pub fn import_model(name: &str) -> Result<Model> {
    if let Some(b) = crate::bundled::find(name) {
        return Ok(hetee_onnx::import_onnx_bytes(b.onnx, name)?);
    }
    let path = Path::new(name);
    if !path.exists() && !name.contains('.') && !name.contains('/') {
        bail!(
            "no bundled model is called '{name}' (bundled: {}), and no file has that name",
            crate::bundled::names()
        );
    }
    Ok(hetee_onnx::import_onnx(path)?)
}

/// The calibration set of a bundled model (`None` for any other name).
pub fn bundled_calibration(name: &str) -> Option<Result<Tensor>> {
    crate::bundled::find(name).map(|b| data::idx_images(b.calib_images))
}

/// Where a model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// A bundled model's name, or the path of an ONNX file.
    Named(&'a str),
    /// The bytes of an ONNX model.
    Onnx(&'a [u8]),
}

/// A model with its calibration set: `calib` if given, else the bundled
/// model's own.
pub fn load_model_from(src: ModelSource, calib: Option<Tensor>) -> Result<(Model, Tensor)> {
    let (model, bundled) = match src {
        ModelSource::Named(name) => (import_model(name)?, bundled_calibration(name)),
        ModelSource::Onnx(bytes) => (
            hetee_onnx::import_onnx_bytes(bytes, "the ONNX bytes")?,
            None,
        ),
    };
    let calib = match (calib, bundled) {
        (Some(c), _) => c,
        (None, Some(c)) => c?,
        (None, None) => bail!("--calib is required for a model file"),
    };
    Ok((model, calib))
}

/// A bundled model with its calibration set, or an ONNX file with the
/// given calibration file.
pub fn load_model(name: &str, calib: Option<&Path>) -> Result<(Model, Tensor)> {
    let calib = match calib {
        Some(p) => Some(data::read_npy(p).context("calibration set")?),
        None => None,
    };
    load_model_from(ModelSource::Named(name), calib)
}

/// Input that cannot be used as it is (wrong shape, non-finite values):
/// the caller must fix its data. Carried inside the `anyhow` errors of
/// [`check_shape`] and [`check_finite`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Checks that every value of `t` is finite.
pub fn check_finite(what: &str, t: &Tensor) -> Result<()> {
    match t.data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(BadInput(format!(
            "{what} holds a non-finite value (NaN or Inf) at flat index {i}; clean the data first"
        ))
        .into()),
        None => Ok(()),
    }
}

/// Checks that a batch tensor holds samples of shape `want` (a 1-D
/// model's `[C, L]` input may come as `[C, 1, L]` or the reverse) and only
/// finite values; returns the sample count.
pub fn check_shape(what: &str, t: &Tensor, want: &[usize]) -> Result<usize> {
    // A 1-D model's [C, L] input is held as [C, 1, L].
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    let same = t.shape.len() == want.len() + 1 && &t.shape[1..] == want;
    let one_d = want.len() == 3 && want[1] == 1 && t.shape.len() == 3;
    let one_d_same = one_d && squeeze(&t.shape[1..]) == squeeze(want);
    if !(same || one_d_same) {
        return Err(BadInput(format!(
            "{what} has shape {:?}, but the model takes [N, {}]; reshape it to match",
            t.shape,
            want.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let n: usize = t.shape.iter().product();
    if t.data.len() != n {
        return Err(BadInput(format!(
            "{what} holds {} values but its shape {:?} needs {n}",
            t.data.len(),
            t.shape
        ))
        .into());
    }
    check_finite(what, t)?;
    Ok(t.shape[0])
}

/// Checks that a batch tensor matches the model input and returns the sample count.
pub fn check_batch(what: &str, t: &Tensor, model: &Model) -> Result<usize> {
    check_shape(what, t, &model.input_shape)
}

/// Imports and quantizes a model with a calibration tensor.
pub fn prepare(model: &Model, calib: &Tensor) -> Result<QuantModel> {
    let n = check_batch("the calibration set", calib, model)?;
    if n == 0 {
        return Err(BadInput(
            "the calibration set is empty; pass at least one representative input".into(),
        )
        .into());
    }
    let spin = crate::progress::spinner(&format!("calibrating on {n} samples"));
    let q = quantize(model, &calib.data);
    spin.finish_and_clear();
    Ok(q?)
}

/// What [`run_batch`] produced.
pub struct RunOutput {
    /// The dequantized outputs in the model's own output shape, batch
    /// first (`[N, classes]` for a classifier), in input order.
    pub output: Tensor,
    /// The in-process deployment (`None` for the plaintext reference).
    pub harness: Option<Harness>,
    /// The figures of every secure query.
    pub stats: Vec<QueryStats>,
}

/// Runs the `model` (quantized as `q`) on every sample of `x`: securely
/// through the in-process harness, or with the plaintext integer reference
/// (`plaintext`), whose outputs are identical. Draws a progress bar on
/// stderr when it is a terminal.
pub fn run_batch(model: &Model, q: &QuantModel, x: &Tensor, plaintext: bool) -> Result<RunOutput> {
    let n = check_batch("the input", x, model)?;
    if n == 0 {
        return Err(crate::run::BadInput("the input holds no samples".into()).into());
    }
    let per: usize = model.input_shape.iter().product();
    let classes = q.classes();
    let samples: Vec<&[f32]> = x.data.chunks(per).take(n).collect();
    let mut out = Vec::with_capacity(n * classes);
    let mut stats = Vec::new();
    let mut harness = None;
    if plaintext {
        let outs = samples
            .par_iter()
            .map(|s| Ok(reference::run_quantized(q, s)?))
            .collect::<Result<Vec<_>>>()?;
        out.extend(outs.into_iter().flatten());
    } else {
        // Many inputs: the planner may stack several images per product.
        let d = Harness::new(q, n.min(MAX_BATCH))?;
        let bar = crate::progress::bar(n as u64, "images");
        let results = samples
            .par_chunks(d.schedule.batch)
            .map(|chunk| {
                let r = d.infer_batch(chunk);
                bar.inc(chunk.len() as u64);
                r
            })
            .collect::<Result<Vec<_>>>()?;
        bar.finish_and_clear();
        for (logits, s) in results {
            out.extend(logits.into_iter().flatten());
            stats.push(s);
        }
        harness = Some(d);
    }
    // The model's own output shape ([N, classes] for a classifier).
    let mut shape = vec![n];
    if q.output_shape.iter().product::<usize>() == classes && !q.output_shape.is_empty() {
        shape.extend(&q.output_shape);
    } else {
        shape.push(classes);
    }
    Ok(RunOutput {
        output: Tensor { shape, data: out },
        harness,
        stats,
    })
}
