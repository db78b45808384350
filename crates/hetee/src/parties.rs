//! The three parties in one process, with the enclave in local
//! (unattested) mode: the model provider (compiles and encrypts the
//! weights), the data provider (encrypts its input, reads the result) and
//! the host (evaluates the linear layers, relays to the enclave). Used by
//! `hetee run`, `hetee demo --in-process` and the benchmarks; the real
//! deployment is `hetee serve` with the clients of [`crate::client`].

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_enclave::budget;
use hetee_enclave::freivalds::StageCheck;
use hetee_enclave::messages::ModelId;
use hetee_enclave::{Request, Response, Schedule};
use hetee_he::codec::ciphertext_to_bytes;
use hetee_model::QuantModel;
use hetee_server::host_model::HostModel;
use hetee_server::launcher::{EnclaveLink, InProcess};
use rayon::prelude::*;
use serde::Serialize;

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
    seed: Option<&[u8; 32]>,
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
    match seed {
        Some(seed) => Ok(hetee_enclave::input_binding::encrypt_input(
            pk, par, &polys, seed,
        )?),
        None => polys.par_iter().map(|p| encrypt_poly(p, par, pk)).collect(),
    }
}

/// The untrusted host with one registered model, holding the encrypted
/// weights pre-extended to the multiplication basis.
pub struct Deployment {
    enclave: Box<dyn EnclaveLink>,
    model_id: ModelId,
    /// The compiled model (public structure).
    pub schedule: Schedule,
    par: Arc<BfvParameters>,
    pk: PublicKey,
    host: HostModel,
    /// Bytes of encrypted weights uploaded by the model provider.
    pub weight_bytes: usize,
    /// Memory held by the pre-extended weights.
    pub weight_memory: usize,
    /// Bytes the enclave keeps allocated for this model (keys, schedule).
    pub enclave_resident: usize,
    /// The model sealed by the enclave (what a host stores to restore it).
    pub sealed_model: Vec<u8>,
    bound_input: bool,
}

impl Deployment {
    /// Sets up all parties for `model`, planned for up to `max_batch` images
    /// per query: the enclave makes keys, the model provider encrypts the
    /// weights, the host loads them.
    pub fn new(model: &QuantModel, max_batch: usize) -> Result<Self> {
        Self::with_checks(model, max_batch, true)
    }

    /// [`Deployment::new`], with or without the Freivalds checks of the
    /// host's work (to measure what they cost).
    pub fn with_checks(model: &QuantModel, max_batch: usize, checked: bool) -> Result<Self> {
        Self::with_integrity(model, max_batch, checked, checked)
    }

    /// [`Deployment::new`] choosing the integrity measures: the Freivalds
    /// checks, and the binding of the input to its maker (seeded encryption
    /// the enclave verifies), to measure what each costs.
    pub fn with_integrity(
        model: &QuantModel,
        max_batch: usize,
        checked: bool,
        bound_input: bool,
    ) -> Result<Self> {
        let enclave: Box<dyn EnclaveLink> = Box::new(InProcess::new());
        let schedule = Schedule::compile_best(model, max_batch.max(1))?;
        let checks = if checked {
            let mut rng = rand::rng();
            model
                .stages
                .iter()
                .map(|st| StageCheck::draw(st, &mut rng))
                .collect()
        } else {
            Vec::new()
        };
        let before = budget::current();
        let (registered, _) = enclave.call(Request::RegisterLocal {
            schedule: Box::new(schedule.clone()),
            checks,
        })?;
        let enclave_resident = budget::current().saturating_sub(before);
        let (model_id, pk_bytes, sealed_model) = match registered {
            Response::Registered {
                model_id,
                public_key,
                sealed_model,
                ..
            } => (model_id, public_key, sealed_model),
            other => bail!("enclave refused the model: {}", describe(&other)),
        };
        let par = schedule.he.build()?;
        let pk = PublicKey::from_bytes(&pk_bytes, &par)
            .map_err(|e| anyhow!("bad public key from the enclave: {e}"))?;
        // Model provider: encrypt and upload; host: decode and pre-extend.
        let uploaded = encrypt_weights(model, &schedule, &par, &pk)?;
        let packings: Vec<_> = schedule.stages.iter().map(|s| s.packing).collect();
        let host = HostModel::load(&schedule.he, &packings, &uploaded)
            .map_err(|e| anyhow!("host could not load the encrypted weights: {e}"))?;
        Ok(Deployment {
            bound_input: bound_input && checked,
            enclave,
            sealed_model,
            enclave_resident,
            model_id,
            schedule,
            par,
            pk,
            weight_bytes: host.weight_bytes,
            weight_memory: host.weight_memory,
            host,
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
        let seed: Option<[u8; 32]> = self.bound_input.then(rand::random);
        let mut cts = encrypt_input(&self.schedule, &self.par, &self.pk, xs, seed.as_ref())?;
        stats.client_encrypt_ms = ms(t0);
        stats.bytes_up = cts.iter().map(Vec::len).sum();
        let session = match self
            .enclave
            .call(Request::StartLocalQuery {
                model_id: self.model_id,
                input: cts.clone(),
                seed,
            })?
            .0
        {
            Response::LocalQueryStarted { session } => session,
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
            let out_bytes = self
                .host
                .evaluate(k, &cts)
                .map_err(|e| anyhow!("host, stage {k}: {e}"))?;
            s.host_ms = ms(th);
            s.bytes_to_enclave = out_bytes.iter().map(Vec::len).sum();
            // Enclave: nonlinear step.
            let te = Instant::now();
            let (resp, peak) = self.enclave.call(Request::StageResult {
                session,
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
