//! The enclave's messages.
//!
//! Two layers:
//! - [`Request`]/[`Response`]: host ↔ enclave, over the enclave's one byte
//!   stream. The host sees all of it, so nothing secret travels here in the
//!   clear: secrets are sealed blobs, Noise messages, or HE ciphertexts.
//! - [`ClientMessage`]/[`EnclaveMessage`]: client ↔ enclave, inside the Noise
//!   channel that the host only relays.

use hetee_he::{ConvPacking, ConvSpec, HeConfig};
use hetee_model::quant::InputQuant;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::freivalds::StageCheck;
use crate::schedule::{check_packing, Schedule};
use crate::EnclaveError;

/// Wire-format version of these messages.
pub const PROTOCOL_VERSION: u32 = 2;

/// Identifies a key set (random, chosen by the enclave).
pub type KeyId = [u8; 16];
/// Identifies a registered model: [`model_id`] of its key set, weights and secrets.
pub type ModelId = [u8; 16];
/// Identifies a channel and the session it carries (random).
pub type SessionId = [u8; 16];

/// A request from the host to the enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Sets the (simulated) platform identity and the measured config. Only
    /// accepted first. Real platforms derive these in hardware.
    Init {
        /// Measurement of the enclave binary and config.
        measurement: [u8; 32],
        /// Platform sealing secret (simulation: supplied by the launcher).
        platform_secret: [u8; 32],
        /// The measured enclave config ([`crate::EnclaveConfig::to_bytes`]).
        config: Vec<u8>,
    },
    /// Generates a BFV key set for these parameters.
    CreateKeys {
        /// Parameters the model provider asked for.
        he: HeConfig,
    },
    /// Restores a key set sealed by an enclave with the same measurement.
    RestoreKeys {
        /// Blob from [`Response::KeysCreated`].
        sealed: Vec<u8>,
    },
    /// The key set's public identity, for the platform to attest.
    Identity {
        /// Which key set.
        key_id: KeyId,
    },
    /// Noise XK message 1 from a client who verified `evidence`.
    OpenChannel {
        /// Key set the evidence attests.
        key_id: KeyId,
        /// The evidence the client verified; its hash is the Noise prologue.
        evidence: Vec<u8>,
        /// Handshake message 1.
        msg1: Vec<u8>,
    },
    /// Noise XK message 3 and the client's first message.
    ChannelFinish {
        /// From [`Response::ChannelOpened`].
        session: SessionId,
        /// Handshake message 3.
        msg3: Vec<u8>,
        /// A sealed [`ClientMessage`].
        payload: Vec<u8>,
    },
    /// Restores a model sealed by an enclave with the same measurement.
    /// Its key set must be restored first.
    RestoreModel {
        /// Blob from [`RegisteredModel::sealed`].
        sealed: Vec<u8>,
    },
    /// Starts the query of a session that said hello.
    StartQuery {
        /// The session.
        session: SessionId,
        /// The model whose weights the host evaluates (must be the session's).
        model_id: ModelId,
        /// A sealed [`ClientMessage::Query`].
        payload: Vec<u8>,
        /// The data provider's input ciphertexts, exactly as the host will
        /// use them for stage 0 (their digest must match the query's).
        input: Vec<Vec<u8>>,
    },
    /// The host's encrypted result of linear stage `stage` of a query.
    StageResult {
        /// The session.
        session: SessionId,
        /// Stage index; stages must come in order, each once.
        stage: u32,
        /// Serialized degree-2 ciphertexts, in packing order.
        ciphertexts: Vec<Vec<u8>>,
    },
    /// Forgets a session (the host gave up on it).
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// Memory and table counts.
    Status,
    /// Local mode only (in-process, unattested): register a model directly.
    RegisterLocal {
        /// The compiled model (no weights).
        schedule: Box<Schedule>,
        /// Freivalds checks (empty: none).
        checks: Vec<StageCheck>,
    },
    /// Local mode only: start a query whose logits come back in the clear.
    StartLocalQuery {
        /// From [`Response::Registered`].
        model_id: ModelId,
        /// The stage-0 input ciphertexts (decrypted for the first check if
        /// the model has checks).
        input: Vec<Vec<u8>>,
        /// If set, the input must have been made with this seed
        /// ([`crate::input_binding`]), as in an attested query.
        seed: Option<[u8; 32]>,
    },
}

/// The enclave's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Init accepted.
    Ready,
    /// A new key set.
    KeysCreated {
        /// Its id.
        key_id: KeyId,
        /// Serialized BFV public key.
        public_key: Vec<u8>,
        /// The key set sealed to this enclave's measurement (host stores it).
        sealed: Vec<u8>,
    },
    /// Key set restored.
    KeysRestored {
        /// Its id.
        key_id: KeyId,
    },
    /// What the platform attests for a key set.
    Identity(Identity),
    /// Noise XK message 2.
    ChannelOpened {
        /// The new session.
        session: SessionId,
        /// Handshake message 2.
        msg2: Vec<u8>,
    },
    /// The enclave's sealed answer to the client's first message.
    ChannelReply {
        /// A sealed [`EnclaveMessage`] for the client.
        payload: Vec<u8>,
        /// Set when the message registered a model: what the host stores.
        registered: Option<RegisteredModel>,
    },
    /// Model restored.
    ModelRestored {
        /// Its id.
        model_id: ModelId,
    },
    /// Query accepted; the host evaluates stage 0 on the data provider's
    /// ciphertexts, or on `input` for a thin query (encrypted by the enclave).
    QueryStarted {
        /// Stage-0 input of a thin query.
        input: Option<Vec<Vec<u8>>>,
    },
    /// Encrypted input of the next stage.
    NextInput {
        /// The stage these ciphertexts feed.
        stage: u32,
        /// Serialized fresh ciphertexts.
        ciphertexts: Vec<Vec<u8>>,
    },
    /// The query's result, sealed to the data provider's channel.
    Finished {
        /// A sealed [`EnclaveMessage::Result`].
        payload: Vec<u8>,
    },
    /// Session closed.
    Closed,
    /// Counts and memory.
    Status(Status),
    /// Local mode: model registered.
    Registered {
        /// Id to refer to the model.
        model_id: ModelId,
        /// Its key set.
        key_id: KeyId,
        /// Serialized BFV public key.
        public_key: Vec<u8>,
        /// The key set sealed, for [`Request::RestoreKeys`].
        sealed_keys: Vec<u8>,
        /// The model sealed, for [`Request::RestoreModel`].
        sealed_model: Vec<u8>,
    },
    /// Local mode: query started.
    LocalQueryStarted {
        /// The session carrying it.
        session: SessionId,
    },
    /// Local mode: dequantized logits in the clear.
    Logits {
        /// `batch x classes` values, image by image.
        values: Vec<f32>,
    },
    /// The request was refused; any session it touched is closed.
    Error {
        /// What went wrong and what to do (never secret data).
        message: String,
    },
}

/// A registered model as the host stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// Its id.
    pub model_id: ModelId,
    /// The upload whose weights it uses ([`upload_id`]).
    pub upload_id: [u8; 16],
    /// Model secrets sealed to the enclave's measurement.
    pub sealed: Vec<u8>,
}

/// The public identity of a key set: what the report data binds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The key set.
    pub key_id: KeyId,
    /// The enclave's measurement.
    pub measurement: [u8; 32],
    /// The enclave's static Noise key.
    pub channel_public_key: [u8; 32],
    /// Serialized BFV public key.
    pub public_key: Vec<u8>,
    /// The BFV parameters, as bound in the report data ([`he_params_bytes`]).
    pub he_params: Vec<u8>,
    /// The enclave's Ed25519 key that signs results.
    pub signing_public_key: [u8; 32],
}

impl Identity {
    /// SHA-256 of the public key.
    pub fn public_key_hash(&self) -> [u8; 32] {
        Sha256::digest(&self.public_key).into()
    }

    /// The report data the platform must attest for this identity:
    /// `hetee_attest::report_data(channel key, SHA-256(public key), he_params)`.
    /// The second half binds the result-signing key:
    /// `SHA-256("hetee/result-key/v1" ‖ signing key)`.
    pub fn report_data(&self) -> [u8; 64] {
        let mut rd = hetee_attest::report_data(
            &self.channel_public_key,
            &self.public_key_hash(),
            &self.he_params,
        );
        rd[32..].copy_from_slice(&signing_key_binding(&self.signing_public_key));
        rd
    }
}

/// The report-data half that binds a result-signing key.
pub fn signing_key_binding(key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hetee/result-key/v1");
    h.update(key);
    h.finalize().into()
}

/// Enclave counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Key sets loaded.
    pub keysets: usize,
    /// Models loaded.
    pub models: usize,
    /// Open sessions.
    pub sessions: usize,
    /// Bytes allocated now.
    pub memory_current: u64,
    /// Highest allocation seen since the enclave started.
    pub memory_peak: u64,
    /// The configured budget (0: none).
    pub memory_budget: u64,
}

/// Which part of the result the data provider receives (set by the model
/// provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputPolicy {
    /// All dequantized logits.
    Logits,
    /// The labels of the `k` highest logits, best first.
    TopK(u32),
    /// The label of the highest logit.
    Label,
}

impl OutputPolicy {
    /// Parses `logits`, `label` or `top-K`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "logits" => Ok(OutputPolicy::Logits),
            "label" => Ok(OutputPolicy::Label),
            _ => s
                .strip_prefix("top-")
                .and_then(|k| k.parse::<u32>().ok())
                .filter(|&k| k >= 1)
                .map(OutputPolicy::TopK)
                .ok_or_else(|| format!("output policy {s:?} is not logits, label or top-K")),
        }
    }
}

/// What the enclave signs for a data provider: enough to show a third
/// party what the model said on which input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The model.
    pub model_id: ModelId,
    /// Commitment to its weights.
    pub commitment: [u8; 32],
    /// Digest of the input (ciphertexts, or plaintext for a thin query).
    pub input_digest: [u8; 32],
    /// Images in the query.
    pub images: u32,
    /// Logits per image.
    pub classes: u32,
    /// The policy applied.
    pub policy: OutputPolicy,
    /// `images x classes` logits (policy `Logits`), else empty.
    pub logits: Vec<f32>,
    /// `images x k` labels, best first (policies `TopK` and `Label`), else empty.
    pub labels: Vec<u32>,
}

impl QueryResult {
    /// The bytes the enclave signs.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = b"hetee/result/v1".to_vec();
        m.extend(postcard::to_allocvec(self).unwrap_or_default());
        m
    }
}

/// A message from a client to the enclave, inside the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Model provider: the secrets of a model whose encrypted weights the
    /// host holds.
    RegisterModel {
        /// Key set the weights are encrypted under.
        key_id: KeyId,
        /// [`weights_commitment`] of the uploaded weights.
        commitment: [u8; 32],
        /// Per-stage packing, scales, biases and requantization.
        schedule: Box<Schedule>,
        /// Secret Freivalds check vectors, one per stage.
        checks: Vec<StageCheck>,
        /// What a query releases.
        policy: OutputPolicy,
        /// Most queries one client key may run (`None`: unlimited).
        query_budget: Option<u64>,
    },
    /// Data provider: open a query session on a model.
    Hello {
        /// Which model.
        model_id: ModelId,
    },
    /// Data provider: the input is uploaded.
    Query {
        /// [`input_digest`] of the input ciphertexts.
        input_digest: [u8; 32],
        /// Real images in the batch (the rest is padding).
        images: u32,
        /// The secret seed of the input's encryption randomness
        /// ([`crate::input_binding`]): proves the sender made the input.
        seed: [u8; 32],
    },
    /// Thin data provider: the input in the clear, for the enclave to
    /// quantize, pack and encrypt.
    ThinQuery {
        /// The images (each in the model's input shape).
        images: Vec<Vec<f32>>,
    },
}

/// A message from the enclave to a client, inside the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnclaveMessage {
    /// The model is registered.
    Registered {
        /// Its id.
        model_id: ModelId,
    },
    /// How to encrypt a query's input.
    Plan(Box<QueryPlan>),
    /// The result of the query, signed by the enclave's result key.
    Result {
        /// The result.
        result: QueryResult,
        /// Ed25519 signature of [`QueryResult::signed_message`].
        signature: Vec<u8>,
    },
    /// The request was refused.
    Refused {
        /// Why.
        message: String,
    },
}

/// What a data provider needs to encrypt its input: public structure of
/// the first stage only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPlan {
    /// The model.
    pub model_id: ModelId,
    /// BFV parameters.
    pub he: HeConfig,
    /// Input shape.
    pub input_shape: Vec<usize>,
    /// Input quantization.
    pub input: InputQuant,
    /// Images per query.
    pub batch: usize,
    /// First linear layer.
    pub spec: ConvSpec,
    /// Its packing.
    pub packing: ConvPacking,
    /// Logits per image.
    pub classes: usize,
}

impl QueryPlan {
    /// The plan of a schedule.
    pub fn of(model_id: ModelId, s: &Schedule) -> Result<Self, EnclaveError> {
        let first = s
            .stages
            .first()
            .ok_or_else(|| EnclaveError::Schedule("no stages".into()))?;
        let last = s
            .stages
            .last()
            .ok_or_else(|| EnclaveError::Schedule("no stages".into()))?;
        Ok(QueryPlan {
            model_id,
            he: s.he.clone(),
            input_shape: s.input_shape.clone(),
            input: s.input.clone(),
            batch: s.batch,
            spec: first.spec,
            packing: first.packing,
            classes: last.tail.output_shape.iter().product(),
        })
    }

    /// Quantizes and packs up to `batch` images (zero images pad the rest).
    pub fn pack_input(&self, xs: &[&[f32]]) -> Result<Vec<Vec<i64>>, EnclaveError> {
        if xs.is_empty() || xs.len() > self.batch {
            return Err(EnclaveError::Schedule(format!(
                "a query holds 1 to {} images, got {}",
                self.batch,
                xs.len()
            )));
        }
        let packing = check_packing(&self.spec, &self.packing, self.batch, self.he.degree)
            .map_err(EnclaveError::Schedule)?;
        let per = self.spec.c * self.spec.h * self.spec.w;
        let shape_len = (self.input_shape.iter()).try_fold(1usize, |a, &d| a.checked_mul(d));
        if shape_len != Some(per) {
            return Err(EnclaveError::Schedule(
                "the plan's input shape does not match its first layer".into(),
            ));
        }
        let mut q = Vec::with_capacity(self.batch);
        for x in xs {
            if x.len() != per {
                return Err(EnclaveError::Schedule(format!(
                    "an image has {} values, the model takes {per}",
                    x.len()
                )));
            }
            q.push(
                self.input
                    .quantize(x)
                    .map_err(|e| EnclaveError::Schedule(e.to_string()))?,
            );
        }
        q.resize(self.batch, vec![0; per]);
        let refs: Vec<&[i64]> = q.iter().map(|x| x.as_slice()).collect();
        Ok(packing.pack_input(&self.spec.layout_batch(&refs)))
    }
}

/// The canonical bytes of BFV parameters bound in the report data.
pub fn he_params_bytes(he: &HeConfig) -> Vec<u8> {
    postcard::to_allocvec(he).unwrap_or_default()
}

/// Parses [`he_params_bytes`].
pub fn he_params_from_bytes(b: &[u8]) -> Result<HeConfig, EnclaveError> {
    postcard::from_bytes(b)
        .map_err(|e| EnclaveError::Protocol(format!("malformed HE parameters: {e}")))
}

fn hash_blobs(domain: &[u8], groups: &[&[Vec<u8>]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update((groups.len() as u64).to_le_bytes());
    for g in groups {
        h.update((g.len() as u64).to_le_bytes());
        for b in g.iter() {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
    h.finalize().into()
}

/// Commitment to a model's uploaded weight ciphertexts (per stage, in order).
pub fn weights_commitment(stages: &[Vec<Vec<u8>>]) -> [u8; 32] {
    let groups: Vec<&[Vec<u8>]> = stages.iter().map(|s| s.as_slice()).collect();
    hash_blobs(b"hetee/weights/v1", &groups)
}

/// Digest binding a query's input ciphertexts.
pub fn input_digest(cts: &[Vec<u8>]) -> [u8; 32] {
    hash_blobs(b"hetee/input/v1", &[cts])
}

/// Digest of a thin query's plaintext input.
pub fn thin_input_digest(images: &[Vec<f32>]) -> [u8; 32] {
    let bytes: Vec<Vec<u8>> = images
        .iter()
        .map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    hash_blobs(b"hetee/thin-input/v1", &[&bytes])
}

fn id16(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d: [u8; 32] = h.finalize().into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// An upload's id: derived from the key set and the weights commitment, so
/// the model provider and the host compute the same.
pub fn upload_id(key_id: &KeyId, commitment: &[u8; 32]) -> [u8; 16] {
    id16(&[b"hetee/upload-id/v1", key_id, commitment])
}

/// Digest of a registration's secrets (schedule, checks, policy, budget).
pub fn registration_digest(
    schedule: &Schedule,
    checks: &[StageCheck],
    policy: OutputPolicy,
    query_budget: Option<u64>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hetee/registration/v1");
    h.update(postcard::to_allocvec(schedule).unwrap_or_default());
    h.update(postcard::to_allocvec(checks).unwrap_or_default());
    h.update(postcard::to_allocvec(&policy).unwrap_or_default());
    h.update(postcard::to_allocvec(&query_budget).unwrap_or_default());
    h.finalize().into()
}

/// A registered model's id: binds the key set, the weights commitment and
/// the registration's secrets. The host cannot compute it (the check vectors
/// are secret random), so it cannot register another model under the id a
/// model provider hands to its data providers.
pub fn model_id(key_id: &KeyId, commitment: &[u8; 32], registration: &[u8; 32]) -> ModelId {
    id16(&[b"hetee/model-id/v2", key_id, commitment, registration])
}

/// Lowercase hex of an id.
pub fn id_hex(id: &[u8]) -> String {
    hetee_attest::evidence::hex(id)
}

/// Parses a 16-byte id from hex.
pub fn id_from_hex(s: &str) -> Result<[u8; 16], String> {
    let v = hetee_attest::evidence::unhex(s.trim())?;
    v.try_into()
        .map_err(|_| format!("an id is 32 hex digits, got {:?}", s.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetee_he::Tiling;

    fn plan() -> QueryPlan {
        let he = HeConfig::for_accumulator_bound(1000).unwrap();
        let spec = ConvSpec::dense(4, 2);
        let tiling = Tiling {
            ct: 4,
            ht: 1,
            wt: 1,
            mt: 2,
        };
        let packing = ConvPacking::new(spec.batched_shape(1), tiling, he.degree).unwrap();
        QueryPlan {
            model_id: [0; 16],
            he,
            input_shape: vec![4],
            input: InputQuant {
                scale: 0.1,
                min: -127,
                max: 127,
            },
            batch: 1,
            spec,
            packing,
            classes: 2,
        }
    }

    #[test]
    fn pack_input_refuses_malformed_plans() {
        // Found by fuzz/ (channel_messages): sizes of a decoded plan overflowed.
        let x = [0.5f32; 4];
        assert!(plan().pack_input(&[&x]).is_ok());
        let mut p = plan();
        p.input_shape = vec![1 << 32, 1 << 32, 4];
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.batch = usize::MAX;
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.spec.pads = [usize::MAX; 4];
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.packing.tiling = Tiling {
            ct: 1 << 32,
            ht: 1 << 32,
            wt: 1 << 32,
            mt: 1 << 32,
        };
        assert!(p.pack_input(&[&x]).is_err());
    }
}
