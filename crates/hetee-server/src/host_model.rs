//! The host's copy of a model: encrypted weights, decoded and extended to
//! the multiplication basis once, and the public per-stage packing. The
//! host evaluates every linear stage here, ciphertext × ciphertext, on all
//! cores.

use std::sync::Arc;

use fhe::bfv::BfvParameters;
use hetee_he::codec::{ciphertext_from_bytes, polys_from_bytes};
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
    /// Public metadata the model provider declared at upload. Stored after
    /// the record's other fields ([`ModelMeta::to_bytes`]), so that records
    /// without it still decode, and readers that ignore it still work.
    #[serde(skip)]
    pub public: PublicMeta,
}

/// A model's public metadata, declared by its provider at upload and shown
/// to anyone with `GET /v1/models/{id}` (`null` fields: not declared). Not
/// a secret of the model and not attested: the host stores and serves it
/// as it is. (Stored with postcard: no field may be skipped.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublicMeta {
    /// How the model's image inputs are preprocessed (the client's spec
    /// text; the host does not interpret it).
    pub preprocess: Option<String>,
    /// The model's own output shape for one sample (e.g. `[10]` or
    /// `[C, H, W]`).
    pub output_shape: Option<Vec<u32>>,
}

impl PublicMeta {
    /// Longest preprocessing spec kept, bytes.
    pub const MAX_PREPROCESS: usize = 1024;

    /// Checks the sizes: a spec of printable ASCII up to
    /// [`Self::MAX_PREPROCESS`] bytes, an output shape of 1 to 8 dimensions
    /// of 1 to 2^24.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.preprocess {
            if p.len() > Self::MAX_PREPROCESS || !p.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(format!(
                    "preprocess must be printable ASCII of at most {} bytes",
                    Self::MAX_PREPROCESS
                ));
            }
        }
        if let Some(s) = &self.output_shape {
            if s.is_empty() || s.len() > 8 || s.iter().any(|&d| d == 0 || d > 1 << 24) {
                return Err("output_shape must have 1 to 8 dimensions of 1 to 16777216".into());
            }
        }
        Ok(())
    }
}

impl ModelMeta {
    /// The stored record: the postcard fields, then the public metadata
    /// (postcard `Option`) when there is any.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut b = postcard::to_allocvec(self)?;
        if self.public != PublicMeta::default() {
            b.extend(postcard::to_allocvec(&Some(&self.public))?);
        }
        Ok(b)
    }

    /// Decodes [`ModelMeta::to_bytes`] (and records written before the
    /// public metadata existed).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let (mut meta, rest): (Self, &[u8]) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            let public: Option<PublicMeta> = postcard::from_bytes(rest)?;
            meta.public = public.unwrap_or_default();
        }
        Ok(meta)
    }
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
        // The longest sum of any stage sets the multiplication basis; every
        // operand is a fresh ciphertext.
        let max_terms = packings
            .iter()
            .map(ConvPacking::longest_sum)
            .max()
            .unwrap_or(1);
        let evaluator = Evaluator::for_fresh_sums(&par, max_terms)?;
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
    ///
    /// The stage runs whole on a thread of the global rayon pool. Called
    /// from another thread (the server's request threads), each parallel
    /// step would otherwise be handed to the pool and waited for on its
    /// own, a wake-up of a sleeping thread each way per step (in this VM
    /// tens of microseconds each, a stage has four or five steps); on the
    /// pool it is one hand-off per stage, and each step starts on the
    /// thread that calls it.
    pub fn evaluate(&self, k: usize, input: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, EvalError> {
        rayon::scope(|_| self.evaluate_here(k, input))
    }

    /// [`HostModel::evaluate`] on the calling thread.
    fn evaluate_here(&self, k: usize, input: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, EvalError> {
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
        let t0 = std::time::Instant::now();
        let ext = input
            .par_iter()
            .map(|b| {
                let polys = polys_from_bytes(b, &self.par, 2)
                    .map_err(|e| EvalError::Input(format!("stage {k} input: {e}")))?;
                Ok(self
                    .evaluator
                    .extend_polys(&polys.iter().collect::<Vec<_>>())?)
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        let t1 = std::time::Instant::now();
        let bytes = self
            .evaluator
            .evaluate_plan_to_bytes(&p.product_plan(), &ext, w)?;
        let t2 = std::time::Instant::now();
        tracing::debug!(
            stage = k,
            inputs = input.len(),
            products = p.product_count(),
            outputs = bytes.len(),
            extend_ms = (t1 - t0).as_secs_f64() * 1e3,
            products_ms = (t2 - t1).as_secs_f64() * 1e3,
            "host stage"
        );
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(public: PublicMeta) -> ModelMeta {
        ModelMeta {
            key_id: [1; 16],
            commitment: [2; 32],
            he: HeConfig {
                degree: 4096,
                plaintext_modulus: 65537,
                moduli_sizes: vec![60, 60],
            },
            packings: vec![],
            sealed: Some(vec![3, 4]),
            weights_of: Some([5; 16]),
            public,
        }
    }

    #[test]
    fn public_metadata_follows_the_record_and_old_records_still_decode() {
        let public = PublicMeta {
            preprocess: Some("scale=1/255".into()),
            output_shape: Some(vec![10]),
        };
        let bytes = meta(public.clone()).to_bytes().unwrap();
        assert_eq!(ModelMeta::from_bytes(&bytes).unwrap().public, public);
        let shape_only = PublicMeta {
            preprocess: None,
            ..public.clone()
        };
        let b = meta(shape_only.clone()).to_bytes().unwrap();
        assert_eq!(ModelMeta::from_bytes(&b).unwrap().public, shape_only);
        // Readers that decode the plain record ignore the metadata after it.
        let plain: ModelMeta = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(plain.weights_of, Some([5; 16]));
        assert_eq!(plain.public, PublicMeta::default());
        // A record stored before the metadata existed has none.
        let old = postcard::to_allocvec(&meta(PublicMeta::default())).unwrap();
        assert_eq!(meta(PublicMeta::default()).to_bytes().unwrap(), old);
        let m = ModelMeta::from_bytes(&old).unwrap();
        assert_eq!(m.public, PublicMeta::default());
        assert_eq!(m.sealed, Some(vec![3, 4]));
    }

    #[test]
    fn public_metadata_limits() {
        let ok = PublicMeta {
            preprocess: Some("size=28x28".into()),
            output_shape: Some(vec![4, 6, 6]),
        };
        assert!(ok.check().is_ok());
        for bad in [
            PublicMeta {
                preprocess: Some("a\nb".into()),
                ..Default::default()
            },
            PublicMeta {
                preprocess: Some("x".repeat(1025)),
                ..Default::default()
            },
            PublicMeta {
                output_shape: Some(vec![]),
                ..Default::default()
            },
            PublicMeta {
                output_shape: Some(vec![0]),
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
