//! The model provider: compile and quantize its model, check the enclave,
//! encrypt the packed weights under the enclave's HE key, upload them, and
//! register the model over its channel. The key set belongs to the model
//! provider's long-term channel key: only that key can register models
//! under it, read their state, unlock them or change who may query.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{FheEncoder, FheEncrypter};
use hetee_attest::StaticKeypair;
use hetee_he::codec::ciphertext_to_bytes;
use hetee_model::QuantModel;
use hetee_proto::api::{b64, CreateKeys, KeysInfo, ModelCreated, ModelInfo};
use hetee_proto::bodies::{StageBody, UploadBody};
use hetee_proto::channel::{AllowList, ModelReport, ModelTerms};
use hetee_proto::messages::{
    he_params_bytes, id_from_hex, id_hex, model_id, registration_digest, upload_id,
    weights_commitment, ClientMessage, EnclaveMessage, ModelId,
};
use hetee_proto::Schedule;
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::channel::Session;
use crate::public_meta::PublicMeta;
use crate::relay::Relay;
use crate::trust::{verify, AttestedKeys, Trust};

/// What an upload produced.
pub struct Uploaded {
    /// The model's id.
    pub model_id: ModelId,
    /// Bytes of encrypted weights sent.
    pub weight_bytes: usize,
    /// Images per query the schedule was planned for.
    pub batch: usize,
    /// The compiled model (public structure).
    pub schedule: Schedule,
}

/// What the model provider decides about its model.
#[derive(Debug, Clone)]
pub struct Terms {
    /// Largest batch of images per query to plan for.
    pub max_batch: usize,
    /// Policy, budget and lock threshold (fixed at registration).
    pub model: ModelTerms,
    /// Who may query at first (changeable later).
    pub allow: AllowList,
    /// Public metadata kept by the host with the model (the preprocessing
    /// of image inputs; the output shape is filled in from the model).
    pub public: PublicMeta,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            max_batch: 8,
            model: ModelTerms::default(),
            allow: AllowList::Open,
            public: PublicMeta::default(),
        }
    }
}

/// The model provider's side: encrypt every stage's packed weights under
/// the enclave's public key.
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
                .map(|p| {
                    let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), par)?;
                    let ct = pk.try_encrypt(&pt, &mut rand::rng())?;
                    Ok(ciphertext_to_bytes(&ct))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// The registration message of a model, and the id the enclave must answer.
pub fn registration(
    keys: &AttestedKeys,
    model: &QuantModel,
    schedule: &Schedule,
    commitment: [u8; 32],
    terms: &Terms,
) -> (ClientMessage, ModelId) {
    let weights = Zeroizing::new(
        model
            .stages
            .iter()
            .map(|s| s.weight.clone())
            .collect::<Vec<_>>(),
    );
    let digest = registration_digest(schedule, &weights, &terms.model);
    let want = model_id(&keys.key_id, &commitment, &digest);
    let msg = ClientMessage::RegisterModel {
        key_id: keys.key_id,
        commitment,
        schedule: Box::new(schedule.clone()),
        weights,
        terms: terms.model,
        allow: terms.allow.clone(),
    };
    (msg, want)
}

/// Uploads and registers `model` on `terms`, as `owner`.
pub fn upload(
    api: &dyn Relay,
    trust: &Trust,
    owner: &StaticKeypair,
    model: &QuantModel,
    terms: &Terms,
) -> Result<Uploaded> {
    let schedule = Schedule::compile_best(model, terms.max_batch.max(1))?;
    let info: KeysInfo = api.create_keys(&CreateKeys {
        he_params: b64(&he_params_bytes(&schedule.he)),
        owner: id_hex(owner.public()),
    })?;
    let keys = verify(&info, trust)?;
    if keys.he != schedule.he {
        bail!("the enclave made keys for other HE parameters than requested; refusing");
    }
    if keys.owner != *owner.public() {
        bail!("the enclave's key set belongs to another key than ours; refusing to use it");
    }
    let weights = encrypt_weights(model, &schedule, &keys.par, &keys.public_key)?;
    let commitment = weights_commitment(&weights);
    let upload = upload_id(&keys.key_id, &commitment);
    let stages = schedule
        .stages
        .iter()
        .zip(&weights)
        .map(|(st, w)| {
            Ok(StageBody {
                packing: postcard::to_allocvec(&st.packing)?,
                weights: w.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let public = PublicMeta {
        output_shape: Some(model.output_shape.clone())
            .filter(|s| !s.is_empty() && s.iter().product::<usize>() == model.classes()),
        ..terms.public.clone()
    };
    let body = UploadBody {
        key_id: keys.key_id,
        stages,
    };
    let created: ModelCreated = api
        .upload_with_meta(&body, &public)
        .context("uploading the encrypted weights")?;
    if created.upload_id != id_hex(&upload) || created.commitment != id_hex(&commitment) {
        bail!("the server stored the weights under another commitment than ours; refusing");
    }
    let (msg, want_id) = registration(&keys, model, &schedule, commitment, terms);
    let (_, answer) = Session::open_as(api, &keys, None, &msg, Some(owner))?;
    match answer {
        EnclaveMessage::Registered { model_id } if model_id == want_id => Ok(Uploaded {
            model_id,
            weight_bytes: weights.iter().flatten().map(Vec::len).sum(),
            batch: schedule.batch,
            schedule,
        }),
        _ => bail!("the enclave did not confirm the registration"),
    }
}

/// What the owner can do to a registered model.
#[derive(Debug, Clone)]
pub enum Manage {
    /// Read its state.
    Status,
    /// Clear the lock and the incident log.
    Unlock,
    /// Replace the allow list.
    Allow(AllowList),
}

/// Sends an owner's message about `model_id` over a channel of its own and
/// returns the model's state as the enclave reports it.
pub fn manage(
    api: &dyn Relay,
    trust: &Trust,
    owner: &StaticKeypair,
    model_id: &str,
    what: Manage,
) -> Result<ModelReport> {
    let id = id_from_hex(model_id).map_err(|e| anyhow::anyhow!("--model-id: {e}"))?;
    let info: ModelInfo = api.model(&id_hex(&id))?;
    let keys = verify(&info.keys, trust)?;
    if keys.owner != *owner.public() {
        bail!(
            "model {model_id} belongs to key {}, not to this client key; pass the owner's --client-key",
            id_hex(&keys.owner)
        );
    }
    let msg = match what {
        Manage::Status => ClientMessage::ModelStatus { model_id: id },
        Manage::Unlock => ClientMessage::Unlock { model_id: id },
        Manage::Allow(allow) => ClientMessage::SetAllowList {
            model_id: id,
            allow,
        },
    };
    let (_, answer) = Session::open_as(api, &keys, None, &msg, Some(owner))?;
    match answer {
        EnclaveMessage::Report(r) if r.model_id == id => Ok(*r),
        _ => bail!("the enclave did not report the model's state"),
    }
}

/// Reads an allow list file: one client public key (64 hex digits) per
/// line; blank lines and `#` comments are skipped.
pub fn read_allow_list(path: &std::path::Path) -> Result<AllowList> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the allow list {}", path.display()))?;
    parse_allow_list(&text, &path.display().to_string())
}

/// Parses the text of an allow list (see [`read_allow_list`]); `origin`
/// names it in errors (`origin:line: …`).
pub fn parse_allow_list(text: &str, origin: &str) -> Result<AllowList> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let v = hetee_attest::evidence::unhex(line)
            .map_err(|e| anyhow::anyhow!("{origin}:{}: {e}", n + 1))?;
        let k: [u8; 32] = v
            .try_into()
            .map_err(|_| anyhow::anyhow!("{origin}:{}: a client key is 64 hex digits", n + 1))?;
        keys.push(k);
    }
    Ok(AllowList::Only(keys))
}
