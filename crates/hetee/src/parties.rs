//! The three parties of a deployment, in one process for now: the model
//! provider (compiles and encrypts the weights), the data provider (encrypts
//! its input, reads the result) and the untrusted host (evaluates the linear
//! layers, relays to the enclave). The enclave is reached only through
//! [`Request`]/[`Response`] messages.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_enclave::{Request, Response, Schedule};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::eval::ExtendedCiphertext;
use hetee_he::Evaluator;
use hetee_model::QuantModel;
use rayon::prelude::*;
use serde::Serialize;

use crate::alloc_meter;
use crate::link::{ChildProcess, EnclaveLink, InProcess};

/// Figures of one linear stage of one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageStats {
    /// ct x ct products on the host.
    pub products: usize,
    /// Host time: operand extension and products (ms).
    pub host_ms: f64,
    /// Enclave time: decrypt, nonlinear step, encrypt (ms).
    pub enclave_ms: f64,
    /// Ciphertexts the enclave decrypted.
    pub enclave_decrypts: usize,
    /// Ciphertexts the enclave encrypted.
    pub enclave_encrypts: usize,
    /// Bytes host -> enclave.
    pub bytes_to_enclave: usize,
    /// Bytes enclave -> host.
    pub bytes_from_enclave: usize,
    /// Peak bytes the enclave allocated while handling this stage.
    pub enclave_working_peak: usize,
}

/// Figures of one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryStats {
    /// Data provider: quantize, pack, encrypt (ms).
    pub client_encrypt_ms: f64,
    /// Bytes the data provider uploads.
    pub bytes_up: usize,
    /// Bytes the data provider receives.
    pub bytes_down: usize,
    /// End-to-end latency (ms).
    pub total_ms: f64,
    /// Per stage.
    pub stages: Vec<StageStats>,
}

impl QueryStats {
    /// Host time summed over stages.
    pub fn host_ms(&self) -> f64 {
        self.stages.iter().map(|s| s.host_ms).sum()
    }
    /// Enclave time summed over stages.
    pub fn enclave_ms(&self) -> f64 {
        self.stages.iter().map(|s| s.enclave_ms).sum()
    }
}

/// The model provider's side: compile the quantized model and encrypt its
/// packed weights under the enclave's public key.
pub fn encrypt_weights(
    model: &QuantModel,
    schedule: &Schedule,
    par: &Arc<BfvParameters>,
    pk: &PublicKey,
) -> Result<Vec<Vec<Vec<u8>>>> {
    model
        .stages
        .iter()
        .enumerate()
        .map(|(k, st)| {
            let polys = schedule.pack_stage_weights(k, &st.weight)?;
            polys
                .par_iter()
                .map(|p| encrypt_poly(p, par, pk))
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

fn encrypt_poly(p: &[i64], par: &Arc<BfvParameters>, pk: &PublicKey) -> Result<Vec<u8>> {
    let pt = Plaintext::try_encode(p, Encoding::poly(), par)?;
    let ct = pk.try_encrypt(&pt, &mut rand::rng())?;
    Ok(ciphertext_to_bytes(&ct))
}

/// The data provider's side: quantize, lay out and encrypt up to `batch`
/// inputs (padded with zero images to the schedule's batch).
pub fn encrypt_input(
    schedule: &Schedule,
    par: &Arc<BfvParameters>,
    pk: &PublicKey,
    xs: &[&[f32]],
) -> Result<Vec<Vec<u8>>> {
    if xs.is_empty() || xs.len() > schedule.batch {
        bail!(
            "a query holds 1 to {} images, got {}",
            schedule.batch,
            xs.len()
        );
    }
    let per: usize = schedule.input_shape.iter().product();
    let mut q = xs
        .iter()
        .map(|x| Ok(schedule.input.quantize(x)?))
        .collect::<Result<Vec<_>>>()?;
    q.resize(schedule.batch, vec![0; per]);
    let polys = schedule.pack_stage_input(0, &q)?;
    polys.par_iter().map(|p| encrypt_poly(p, par, pk)).collect()
}

/// The untrusted host with one registered model, holding the encrypted
/// weights pre-extended to the multiplication basis.
pub struct Deployment {
    enclave: Box<dyn EnclaveLink>,
    model_id: u64,
    /// The compiled model (public structure).
    pub schedule: Schedule,
    par: Arc<BfvParameters>,
    pk: PublicKey,
    evaluator: Evaluator,
    weights: Vec<Vec<ExtendedCiphertext>>,
    /// Bytes of encrypted weights uploaded by the model provider.
    pub weight_bytes: usize,
    /// Memory held by the pre-extended weights.
    pub weight_memory: usize,
    /// Bytes the enclave keeps allocated for this model (keys, schedule).
    pub enclave_resident: usize,
    /// The model's keys and schedule sealed by the enclave (what the host
    /// stores to restore the model after an enclave restart).
    pub sealed_model: Vec<u8>,
}

impl Deployment {
    /// Sets up all parties for `model`, planned for up to `max_batch` images
    /// per query: the enclave makes keys, the model provider encrypts the
    /// weights, the host loads them.
    pub fn new(model: &QuantModel, max_batch: usize) -> Result<Self> {
        Self::with_link(model, max_batch, Box::new(InProcess::new()))
    }

    /// Same as [`Deployment::new`] with the enclave in a child process.
    pub fn with_enclave_process(model: &QuantModel, max_batch: usize) -> Result<Self> {
        Self::with_link(model, max_batch, Box::new(ChildProcess::spawn()?))
    }

    fn with_link(
        model: &QuantModel,
        max_batch: usize,
        enclave: Box<dyn EnclaveLink>,
    ) -> Result<Self> {
        let schedule = Schedule::compile_best(model, max_batch.max(1))?;
        let before = alloc_meter::current();
        let (registered, _) = enclave.call(Request::RegisterModel {
            schedule: Box::new(schedule.clone()),
        })?;
        let enclave_resident = alloc_meter::current().saturating_sub(before);
        let (model_id, pk_bytes, sealed_model) = match registered {
            Response::Registered {
                model_id,
                public_key,
                sealed,
            } => (model_id, public_key, sealed),
            other => bail!("enclave refused the model: {}", describe(&other)),
        };
        let par = schedule.he.build()?;
        let pk = PublicKey::from_bytes(&pk_bytes, &par)
            .map_err(|e| anyhow!("bad public key from the enclave: {e}"))?;
        // Model provider: encrypt and upload.
        let uploaded = encrypt_weights(model, &schedule, &par, &pk)?;
        let weight_bytes = uploaded.iter().flatten().map(|b| b.len()).sum();
        // Host: decode and pre-extend the weights once.
        let evaluator = Evaluator::new(&par)?;
        let weights = uploaded
            .iter()
            .map(|stage| {
                let cts = stage
                    .par_iter()
                    .map(|b| ciphertext_from_bytes(b, &par, 2))
                    .collect::<Result<Vec<_>, _>>()?;
                evaluator.extend_all(&cts)
            })
            .collect::<Result<Vec<_>, _>>()
            .context("host could not load the encrypted weights")?;
        let weight_memory = weights.iter().flatten().map(|w| w.memory_bytes()).sum();
        Ok(Deployment {
            enclave,
            sealed_model,
            enclave_resident,
            model_id,
            schedule,
            par,
            pk,
            evaluator,
            weights,
            weight_bytes,
            weight_memory,
        })
    }

    /// Runs one secure inference; returns the logits and the figures.
    pub fn infer(&self, x: &[f32]) -> Result<(Vec<f32>, QueryStats)> {
        let (mut l, s) = self.infer_batch(&[x])?;
        Ok((l.swap_remove(0), s))
    }

    /// Runs one secure query on up to `schedule.batch` images; returns the
    /// logits of each image and the figures of the whole query.
    pub fn infer_batch(&self, xs: &[&[f32]]) -> Result<(Vec<Vec<f32>>, QueryStats)> {
        let t0 = Instant::now();
        let mut stats = QueryStats::default();
        // Data provider.
        let mut cts = encrypt_input(&self.schedule, &self.par, &self.pk, xs)?;
        stats.client_encrypt_ms = ms(t0);
        stats.bytes_up = cts.iter().map(Vec::len).sum();
        let query_id = match self
            .enclave
            .call(Request::StartQuery {
                model_id: self.model_id,
            })?
            .0
        {
            Response::QueryStarted { query_id } => query_id,
            other => bail!("enclave refused the query: {}", describe(&other)),
        };
        for (k, st) in self.schedule.stages.iter().enumerate() {
            let mut s = StageStats {
                products: st.packing.product_count(),
                enclave_decrypts: st.packing.output_count(),
                ..Default::default()
            };
            // Host: linear layer.
            let th = Instant::now();
            let inputs = cts
                .par_iter()
                .map(|b| ciphertext_from_bytes(b, &self.par, 2))
                .collect::<Result<Vec<_>, _>>()?;
            let ext = self.evaluator.extend_all(&inputs)?;
            let outs =
                self.evaluator
                    .evaluate_plan(&st.packing.product_plan(), &ext, &self.weights[k])?;
            let out_bytes: Vec<Vec<u8>> = outs.par_iter().map(ciphertext_to_bytes).collect();
            s.host_ms = ms(th);
            s.bytes_to_enclave = out_bytes.iter().map(Vec::len).sum();
            // Enclave: nonlinear step.
            let te = Instant::now();
            let (resp, peak) = self.enclave.call(Request::StageResult {
                query_id,
                stage: k as u32,
                ciphertexts: out_bytes,
            })?;
            s.enclave_ms = ms(te);
            s.enclave_working_peak = peak;
            match resp {
                Response::NextInput { ciphertexts, .. } => {
                    s.enclave_encrypts = ciphertexts.len();
                    s.bytes_from_enclave = ciphertexts.iter().map(Vec::len).sum();
                    cts = ciphertexts;
                    stats.stages.push(s);
                }
                Response::Logits { values } => {
                    s.bytes_from_enclave = values.len() * 4;
                    stats.bytes_down = values.len() * 4;
                    stats.stages.push(s);
                    stats.total_ms = ms(t0);
                    let classes = values.len() / self.schedule.batch;
                    let logits = values
                        .chunks(classes.max(1))
                        .take(xs.len())
                        .map(<[f32]>::to_vec)
                        .collect();
                    return Ok((logits, stats));
                }
                other => bail!("enclave error at stage {k}: {}", describe(&other)),
            }
        }
        bail!("the enclave released no result")
    }
}

fn describe(r: &Response) -> String {
    match r {
        Response::Error { message } => message.clone(),
        other => format!("unexpected response {:?}", std::mem::discriminant(other)),
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
