//! Enclave state and request handling.

use std::collections::HashMap;
use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{
    DeserializeParametrized, FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize as _,
};
use hetee_attest::Measurement;
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_model::quant::StageOutput;
use hetee_model::reference::finish_stage;
use rayon::prelude::*;
use zeroize::{Zeroize, Zeroizing};

use crate::messages::{Request, Response};
use crate::schedule::Schedule;
use crate::EnclaveError;

/// A registered model with its keys. The secret key is zeroized on drop by `fhe`.
struct LoadedModel {
    schedule: Schedule,
    par: Arc<BfvParameters>,
    sk: SecretKey,
}

/// An inference in progress: which model, which stage comes next.
struct Query {
    model_id: u64,
    next_stage: u32,
}

/// What the enclave seals: its model's schedule and secret key.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModelSnapshot {
    schedule: Schedule,
    secret_key: Vec<u8>,
}

impl Drop for ModelSnapshot {
    fn drop(&mut self) {
        self.secret_key.zeroize();
    }
}

/// Measurement used when no platform identity was given (in-process use).
pub const DEV_MEASUREMENT: [u8; 32] = [0x5a; 32];
/// Sealing secret used when no platform identity was given. Not a secret:
/// the in-process simulation protects nothing.
pub const DEV_PLATFORM_SECRET: [u8; 32] = [0xa5; 32];

const SEAL_LABEL: &str = "model-v1";

/// The enclave: keys, models and queries. Reads no file and no environment.
pub struct Enclave {
    models: HashMap<u64, LoadedModel>,
    queries: HashMap<u64, Query>,
    next_id: u64,
    measurement: Measurement,
    platform_secret: Zeroizing<[u8; 32]>,
}

impl Default for Enclave {
    fn default() -> Self {
        Enclave {
            models: HashMap::new(),
            queries: HashMap::new(),
            next_id: 0,
            measurement: Measurement(DEV_MEASUREMENT),
            platform_secret: Zeroizing::new(DEV_PLATFORM_SECRET),
        }
    }
}

impl Enclave {
    /// A fresh enclave with no models.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one request. Never panics on bad input: errors become
    /// [`Response::Error`].
    pub fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Init {
                measurement,
                platform_secret,
            } => self.init(measurement, platform_secret),
            Request::RestoreModel { sealed } => self.restore(&sealed),
            Request::RegisterModel { schedule } => self.register(*schedule),
            Request::StartQuery { model_id } => self.start_query(model_id),
            Request::StageResult {
                query_id,
                stage,
                ciphertexts,
            } => self.stage_result(query_id, stage, &ciphertexts),
        };
        r.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn init(&mut self, measurement: [u8; 32], secret: [u8; 32]) -> Result<Response, EnclaveError> {
        if !self.models.is_empty() {
            return Err(EnclaveError::Protocol(
                "Init must come before any model is registered".into(),
            ));
        }
        self.measurement = Measurement(measurement);
        self.platform_secret = Zeroizing::new(secret);
        Ok(Response::Ready)
    }

    fn register(&mut self, schedule: Schedule) -> Result<Response, EnclaveError> {
        schedule.validate()?;
        let par = schedule.he.build()?;
        let sk = SecretKey::random(&par, &mut rand::rng());
        self.load(schedule, par, sk)
    }

    fn restore(&mut self, sealed: &[u8]) -> Result<Response, EnclaveError> {
        let plain = hetee_attest::seal::unseal(
            &self.platform_secret,
            &self.measurement,
            SEAL_LABEL,
            sealed,
        )
        .map_err(|e| EnclaveError::Protocol(format!("cannot restore the model: {e}")))?;
        let snap: ModelSnapshot = postcard::from_bytes(&plain)
            .map_err(|e| EnclaveError::Protocol(format!("sealed model is malformed: {e}")))?;
        snap.schedule.validate()?;
        let par = snap.schedule.he.build()?;
        let sk = SecretKey::from_bytes(&snap.secret_key, &par)
            .map_err(|e| EnclaveError::Protocol(format!("sealed secret key is malformed: {e}")))?;
        self.load(snap.schedule.clone(), par, sk)
    }

    /// Installs a model with its key; answers with the public key and the
    /// sealed snapshot.
    fn load(
        &mut self,
        schedule: Schedule,
        par: Arc<BfvParameters>,
        sk: SecretKey,
    ) -> Result<Response, EnclaveError> {
        let pk = PublicKey::new(&sk, &mut rand::rng());
        let snap = ModelSnapshot {
            schedule: schedule.clone(),
            secret_key: sk.to_bytes(),
        };
        let plain = Zeroizing::new(
            postcard::to_allocvec(&snap)
                .map_err(|e| EnclaveError::Protocol(format!("cannot encode the model: {e}")))?,
        );
        let sealed =
            hetee_attest::seal::seal(&self.platform_secret, &self.measurement, SEAL_LABEL, &plain)
                .map_err(|e| EnclaveError::Protocol(format!("cannot seal the model: {e}")))?;
        let model_id = self.fresh_id();
        self.models
            .insert(model_id, LoadedModel { schedule, par, sk });
        Ok(Response::Registered {
            model_id,
            public_key: pk.to_bytes(),
            sealed,
        })
    }

    fn start_query(&mut self, model_id: u64) -> Result<Response, EnclaveError> {
        if !self.models.contains_key(&model_id) {
            return Err(EnclaveError::Protocol(format!(
                "unknown model {model_id}; register it first"
            )));
        }
        let query_id = self.fresh_id();
        self.queries.insert(
            query_id,
            Query {
                model_id,
                next_stage: 0,
            },
        );
        Ok(Response::QueryStarted { query_id })
    }

    fn stage_result(
        &mut self,
        query_id: u64,
        stage: u32,
        cts: &[Vec<u8>],
    ) -> Result<Response, EnclaveError> {
        let q = self.queries.get(&query_id).ok_or_else(|| {
            EnclaveError::Protocol(format!("unknown or finished query {query_id}"))
        })?;
        if q.next_stage != stage {
            let expected = q.next_stage;
            self.queries.remove(&query_id);
            return Err(EnclaveError::Protocol(format!(
                "stage {stage} out of order (expected {expected}); query {query_id} aborted"
            )));
        }
        let m = self
            .models
            .get(&q.model_id)
            .ok_or_else(|| EnclaveError::Protocol("model was removed".into()))?;
        let result = step(m, stage as usize, cts);
        match &result {
            Ok(Response::NextInput { .. }) => {
                if let Some(q) = self.queries.get_mut(&query_id) {
                    q.next_stage += 1;
                }
            }
            _ => {
                self.queries.remove(&query_id);
            }
        }
        result
    }
}

/// Decrypt, finish the stage in the clear, and re-encrypt (or release logits).
fn step(m: &LoadedModel, k: usize, cts: &[Vec<u8>]) -> Result<Response, EnclaveError> {
    let st = &m.schedule.stages[k];
    if cts.len() != st.packing.output_count() {
        return Err(EnclaveError::Protocol(format!(
            "stage {k} needs {} ciphertexts, got {}",
            st.packing.output_count(),
            cts.len()
        )));
    }
    let polys = cts
        .par_iter()
        .map(|b| {
            let ct = ciphertext_from_bytes(b, &m.par, 3)?;
            decrypt(&m.sk, &ct, m.par.plaintext())
        })
        .collect::<Result<Vec<_>, EnclaveError>>()?;
    let ys: Vec<Vec<i64>> = m
        .schedule
        .unpack_stage_output(k, &polys)?
        .into_iter()
        .map(|acc| finish_stage(&st.tail, acc))
        .collect();
    match st.tail.output {
        StageOutput::Logits => Ok(Response::Logits {
            values: ys.iter().flat_map(|y| st.tail.dequantize(y)).collect(),
        }),
        StageOutput::Requant(_) => {
            let polys = m.schedule.pack_stage_input(k + 1, &ys)?;
            let ciphertexts = polys
                .par_iter()
                .map(|p| {
                    let mut rng = rand::rng();
                    let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), &m.par)
                        .map_err(hetee_he::HeError::from)?;
                    let ct =
                        m.sk.try_encrypt(&pt, &mut rng)
                            .map_err(hetee_he::HeError::from)?;
                    Ok(ciphertext_to_bytes(&ct))
                })
                .collect::<Result<Vec<_>, EnclaveError>>()?;
            Ok(Response::NextInput {
                stage: k as u32 + 1,
                ciphertexts,
            })
        }
    }
}

/// Decrypts to centred coefficients in `(-t/2, t/2]`.
fn decrypt(sk: &SecretKey, ct: &Ciphertext, t: u64) -> Result<Vec<i64>, EnclaveError> {
    let pt = sk.try_decrypt(ct).map_err(hetee_he::HeError::from)?;
    // Decode as residues and centre them here without branches: fhe's signed
    // decoder centres with a variable-time routine.
    let v = Vec::<u64>::try_decode(&pt, Encoding::poly()).map_err(hetee_he::HeError::from)?;
    Ok(v.into_iter().map(|x| centre(x, t)).collect())
}

/// Branch-free centring of a residue `x < t`: `x - t` if `x > t/2`, else `x`.
fn centre(x: u64, t: u64) -> i64 {
    let above = ((t / 2) as i64).wrapping_sub(x as i64) >> 63; // all ones if x > t/2
    (x as i64).wrapping_sub(t as i64 & above)
}

#[cfg(test)]
mod tests {
    #[test]
    fn centre_matches_the_signed_representative() {
        for t in [3u64, 65537, 16760833] {
            for x in [0, 1, t / 2, t / 2 + 1, t - 1] {
                let want = if x > t / 2 {
                    x as i64 - t as i64
                } else {
                    x as i64
                };
                assert_eq!(super::centre(x, t), want, "x={x} t={t}");
            }
        }
    }
}
