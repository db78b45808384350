//! The host's copy of a model: encrypted weights, decoded and extended to
//! the multiplication basis once, and the public per-stage packing. The
//! host evaluates every linear stage here, ciphertext × ciphertext, on all
//! cores.

use std::sync::Arc;

use fhe::bfv::BfvParameters;
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::eval::ExtendedCiphertext;
use hetee_he::{ConvPacking, Evaluator, HeConfig};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What the host stores for one model besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Key set (the enclave's id).
    pub key_id: [u8; 16],
    /// Commitment to the weights.
    pub commitment: [u8; 32],
    /// BFV parameters.
    pub he: HeConfig,
    /// Packing of each stage (public structure).
    pub packings: Vec<ConvPacking>,
    /// The model's secrets sealed by the enclave (registered models only;
    /// `None` for an upload).
    pub sealed: Option<Vec<u8>>,
    /// For a registered model: the upload holding its weights.
    #[serde(default)]
    pub weights_of: Option<[u8; 16]>,
}

/// Failures of the host's evaluation (bad ciphertexts from a client).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A ciphertext or count does not fit.
    #[error("{0}")]
    Input(String),
    /// An HE failure.
    #[error("HE evaluation failed: {0}")]
    He(#[from] hetee_he::HeError),
}

/// A model loaded for evaluation.
pub struct HostModel {
    par: Arc<BfvParameters>,
    evaluator: Evaluator,
    packings: Vec<ConvPacking>,
    weights: Vec<Vec<ExtendedCiphertext>>,
    /// Bytes the encrypted weights took on the wire.
    pub weight_bytes: usize,
    /// Bytes the extended weights take in memory.
    pub weight_memory: usize,
}

impl HostModel {
    /// Decodes and extends the weights; checks counts against the packings.
    pub fn load(
        he: &HeConfig,
        packings: &[ConvPacking],
        weights: &[Vec<Vec<u8>>],
    ) -> Result<Self, EvalError> {
        let par = he.build()?;
        if packings.len() != weights.len() || packings.is_empty() {
            return Err(EvalError::Input(format!(
                "{} packings for {} weight stages",
                packings.len(),
                weights.len()
            )));
        }
        let evaluator = Evaluator::new(&par)?;
        let mut ext = Vec::with_capacity(weights.len());
        for (k, (p, w)) in packings.iter().zip(weights).enumerate() {
            let checked = ConvPacking::new(p.shape, p.tiling, he.degree)
                .map_err(|e| EvalError::Input(format!("stage {k}: {e}")))?;
            if checked != *p || w.len() != p.weight_count() {
                return Err(EvalError::Input(format!(
                    "stage {k}: {} weight ciphertexts, the packing needs {}",
                    w.len(),
                    p.weight_count()
                )));
            }
            let cts = w
                .par_iter()
                .map(|b| ciphertext_from_bytes(b, &par, 2))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EvalError::Input(format!("stage {k} weights: {e}")))?;
            ext.push(evaluator.extend_all(&cts)?);
        }
        Ok(HostModel {
            weight_bytes: weights.iter().flatten().map(Vec::len).sum(),
            weight_memory: ext.iter().flatten().map(|w| w.memory_bytes()).sum(),
            par,
            evaluator,
            packings: packings.to_vec(),
            weights: ext,
        })
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.packings.len()
    }

    /// Packing of stage `k`.
    pub fn packing(&self, k: usize) -> Option<&ConvPacking> {
        self.packings.get(k)
    }

    /// Evaluates linear stage `k` on serialized input ciphertexts; returns
    /// the serialized degree-2 outputs for the enclave.
    pub fn evaluate(&self, k: usize, input: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, EvalError> {
        let (p, w) = self
            .packings
            .get(k)
            .zip(self.weights.get(k))
            .ok_or_else(|| EvalError::Input(format!("no stage {k}")))?;
        if input.len() != p.input_count() {
            return Err(EvalError::Input(format!(
                "stage {k} takes {} input ciphertexts, got {}",
                p.input_count(),
                input.len()
            )));
        }
        let cts = input
            .par_iter()
            .map(|b| ciphertext_from_bytes(b, &self.par, 2))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EvalError::Input(format!("stage {k} input: {e}")))?;
        let ext = self.evaluator.extend_all(&cts)?;
        let outs = self.evaluator.evaluate_plan(&p.product_plan(), &ext, w)?;
        Ok(outs.par_iter().map(ciphertext_to_bytes).collect())
    }
}
