//! The model provider: compile and quantize its model, check the enclave,
//! encrypt the packed weights under the enclave's HE key, upload them, and
//! hand the per-layer secrets to the enclave over the channel.

use anyhow::{bail, Context, Result};
use hetee_enclave::freivalds::StageCheck;
use hetee_enclave::messages::{
    he_params_bytes, id_hex, model_id, registration_digest, upload_id, weights_commitment,
    ClientMessage, EnclaveMessage, ModelId, OutputPolicy,
};
use hetee_enclave::Schedule;
use hetee_model::QuantModel;
use hetee_server::api_types::{b64, CreateKeys, KeysInfo, ModelCreated, StageUpload, UploadModel};

use super::channel::Session;
use super::http::Api;
use super::trust::{verify, Trust};
use crate::parties::encrypt_weights;

/// What an upload produced.
pub struct Uploaded {
    /// The model's id.
    pub model_id: ModelId,
    /// Bytes of encrypted weights sent.
    pub weight_bytes: usize,
    /// Images per query the schedule was planned for.
    pub batch: usize,
}

/// What the model provider decides about its model's queries.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// Largest batch of images per query to plan for.
    pub max_batch: usize,
    /// What a query releases.
    pub policy: OutputPolicy,
    /// Most queries per client key (`None`: unlimited).
    pub query_budget: Option<u64>,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            max_batch: 8,
            policy: OutputPolicy::Logits,
            query_budget: None,
        }
    }
}

/// Uploads `model` on `terms`.
pub fn upload(api: &Api, trust: &Trust, model: &QuantModel, terms: &Terms) -> Result<Uploaded> {
    let schedule = Schedule::compile_best(model, terms.max_batch.max(1))?;
    // Secret check vectors for the host's linear layers (Freivalds).
    let mut rng = rand::rng();
    let checks: Vec<StageCheck> = model
        .stages
        .iter()
        .map(|st| StageCheck::draw(st, &mut rng))
        .collect();
    let info: KeysInfo = api.post(
        "/v1/keys",
        &CreateKeys {
            he_params: b64(&he_params_bytes(&schedule.he)),
        },
    )?;
    let keys = verify(&info, trust)?;
    if keys.he != schedule.he {
        bail!("the enclave made keys for other HE parameters than requested; refusing");
    }
    let weights = encrypt_weights(model, &schedule, &keys.par, &keys.public_key)?;
    let commitment = weights_commitment(&weights);
    let upload = upload_id(&keys.key_id, &commitment);
    let digest = registration_digest(&schedule, &checks, terms.policy, terms.query_budget);
    let want_id = model_id(&keys.key_id, &commitment, &digest);
    let stages = schedule
        .stages
        .iter()
        .zip(&weights)
        .map(|(st, w)| {
            Ok(StageUpload {
                packing: b64(&postcard::to_allocvec(&st.packing)?),
                weights: w.iter().map(|c| b64(c)).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let created: ModelCreated = api
        .post(
            "/v1/models",
            &UploadModel {
                key_id: id_hex(&keys.key_id),
                stages,
            },
        )
        .context("uploading the encrypted weights")?;
    if created.upload_id != id_hex(&upload) || created.commitment != id_hex(&commitment) {
        bail!("the server stored the weights under another commitment than ours; refusing");
    }
    let (_, answer) = Session::open(
        api,
        &keys,
        None,
        &ClientMessage::RegisterModel {
            key_id: keys.key_id,
            commitment,
            schedule: Box::new(schedule.clone()),
            checks,
            policy: terms.policy,
            query_budget: terms.query_budget,
        },
    )?;
    match answer {
        EnclaveMessage::Registered { model_id } if model_id == want_id => Ok(Uploaded {
            model_id,
            weight_bytes: weights.iter().flatten().map(Vec::len).sum(),
            batch: schedule.batch,
        }),
        _ => bail!("the enclave did not confirm the registration"),
    }
}
