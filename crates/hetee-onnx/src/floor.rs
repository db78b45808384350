//! The plaintext floor: the float model run by tract's optimized plan, the
//! fastest plaintext engine available here. The benchmark times secure
//! inference against it, side by side.

use tract_onnx::prelude::*;

use hetee_model::error::{ModelError, Result};

/// An ONNX model compiled once by tract for a fixed batch size.
pub struct TractPlan {
    plan: std::sync::Arc<TypedRunnableModel>,
    shape: Vec<usize>,
    per: usize,
}

impl TractPlan {
    /// Compiles `onnx` (the model's bytes) for `batch` samples of `input_shape`.
    pub fn new(onnx: &[u8], input_shape: &[usize], batch: usize) -> Result<Self> {
        let err = |e: TractError| ModelError::Onnx {
            path: "(tract plan)".into(),
            reason: format!("tract: {e:#}"),
        };
        let mut shape = vec![batch.max(1)];
        shape.extend_from_slice(input_shape);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .and_then(|m| m.with_input_fact(0, f32::fact(&shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(err)?;
        Ok(TractPlan {
            plan,
            per: input_shape.iter().product(),
            shape,
        })
    }

    /// Images per run.
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Runs one batch (exactly [`TractPlan::batch`] samples, flattened);
    /// returns the model's first output, flattened.
    pub fn run(&self, xs: &[f32]) -> Result<Vec<f32>> {
        let err = |e: TractError| ModelError::Data(format!("tract: {e:#}"));
        if xs.len() != self.per * self.batch() {
            return Err(ModelError::Data(format!(
                "{} values are not {} samples of {}",
                xs.len(),
                self.batch(),
                self.per
            )));
        }
        let t = Tensor::from_shape(&self.shape, xs).map_err(err)?;
        let out = self.plan.run(tvec!(t.into())).map_err(err)?;
        let first = out
            .first()
            .ok_or_else(|| ModelError::Data("tract: the model has no output".into()))?;
        Ok(first
            .to_plain_array_view::<f32>()
            .map_err(err)?
            .iter()
            .copied()
            .collect())
    }
}
