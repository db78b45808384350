//! The data provider: check the enclave, encrypt its inputs under the
//! attested HE key, and receive the logits over the channel (the server
//! never sees them).

use anyhow::{anyhow, bail, Result};
use fhe::bfv::{Encoding, Plaintext};
use fhe_traits::{FheEncoder, FheEncrypter};
use hetee_enclave::messages::{id_from_hex, input_digest, ClientMessage, EnclaveMessage};
use hetee_he::codec::ciphertext_to_bytes;
use hetee_server::api_types::{b64, ModelInfo, QueryDone, RunQuery};
use rayon::prelude::*;

use super::channel::Session;
use super::http::Api;
use super::trust::{verify, AttestedKeys, Trust};

/// A model the data provider has checked.
pub struct Target {
    api: Api,
    keys: AttestedKeys,
    model_id: [u8; 16],
    /// Images per query.
    pub batch: usize,
}

/// The result of one query.
pub struct Answer {
    /// Logits per image.
    pub logits: Vec<Vec<f32>>,
    /// Host time reported by the server (ms).
    pub host_ms: f64,
    /// Enclave time reported by the server (ms).
    pub enclave_ms: f64,
}

impl Target {
    /// Fetches the model's attested keys and verifies them.
    pub fn connect(api: &Api, trust: &Trust, model_id: &str) -> Result<Self> {
        let id = id_from_hex(model_id).map_err(|e| anyhow!("--model-id: {e}"))?;
        let info: ModelInfo = api.get(&format!("/v1/models/{}", model_id.trim()))?;
        if !info.registered {
            bail!("model {model_id} is uploaded but its provider has not registered it yet");
        }
        let keys = verify(&info.keys, trust)?;
        // Ask the enclave (not the host) how a query is laid out.
        let (s, answer) = Session::open(
            api,
            &keys,
            Some(&id),
            &ClientMessage::Hello { model_id: id },
        )?;
        let _ = api.delete(&format!("/v1/sessions/{}", s.id));
        let EnclaveMessage::Plan(plan) = answer else {
            bail!("the enclave did not send a query plan");
        };
        Ok(Target {
            api: api.clone(),
            keys,
            model_id: id,
            batch: plan.batch,
        })
    }

    /// One query of up to the model's batch of images, in its own session.
    pub fn query(&self, xs: &[&[f32]]) -> Result<Answer> {
        let (mut s, answer) = Session::open(
            &self.api,
            &self.keys,
            Some(&self.model_id),
            &ClientMessage::Hello {
                model_id: self.model_id,
            },
        )?;
        let EnclaveMessage::Plan(plan) = answer else {
            bail!("the enclave did not send a query plan");
        };
        if plan.he != self.keys.he || plan.model_id != self.model_id {
            bail!("the enclave's plan does not match the attested keys; refusing");
        }
        let polys = plan.pack_input(xs)?;
        let cts = polys
            .par_iter()
            .map(|p| {
                let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), &self.keys.par)?;
                let ct = self.keys.public_key.try_encrypt(&pt, &mut rand::rng())?;
                Ok(ciphertext_to_bytes(&ct))
            })
            .collect::<Result<Vec<_>>>()?;
        let payload = s.seal(&ClientMessage::Query {
            input_digest: input_digest(&cts),
            images: xs.len() as u32,
        })?;
        let done: QueryDone = self.api.post(
            &format!("/v1/sessions/{}/query", s.id),
            &RunQuery {
                payload: b64(&payload),
                input: cts.iter().map(|c| b64(c)).collect(),
            },
        )?;
        match s.open_reply(&done.payload)? {
            EnclaveMessage::Result {
                images,
                classes,
                logits,
            } if images as usize == xs.len() && logits.len() == xs.len() * classes as usize => {
                Ok(Answer {
                    logits: logits
                        .chunks(classes.max(1) as usize)
                        .map(<[f32]>::to_vec)
                        .collect(),
                    host_ms: done.host_ms,
                    enclave_ms: done.enclave_ms,
                })
            }
            _ => bail!("the enclave's result does not match the query"),
        }
    }
}
