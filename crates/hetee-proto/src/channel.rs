//! Client ↔ enclave messages, inside the Noise channel that the host only
//! relays. A channel carries one conversation: its first client message says
//! what it is for (register a model, manage one, or query one).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ids::{ClientKey, KeyId, ModelId, QueryId};
use crate::plan::QueryPlan;
use crate::schedule::Schedule;

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
    pub logits: Zeroizing<Vec<f32>>,
    /// `images x k` labels, best first (policies `TopK` and `Label`), else empty.
    pub labels: Zeroizing<Vec<u32>>,
}

impl QueryResult {
    /// The bytes the enclave signs.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = b"hetee/result/v1".to_vec();
        m.extend(postcard::to_allocvec(self).unwrap_or_default());
        m
    }
}

/// What a model provider decides about its model's queries. Fixed at
/// registration (part of the model id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTerms {
    /// What a query releases.
    pub policy: OutputPolicy,
    /// Most queries one client key may run (`None`: unlimited).
    pub query_budget: Option<u64>,
    /// Failed integrity checks after which the model locks (at least 1).
    pub lock_after: u32,
}

impl Default for ModelTerms {
    fn default() -> Self {
        ModelTerms {
            policy: OutputPolicy::Logits,
            query_budget: None,
            lock_after: 1,
        }
    }
}

/// Who may query a model: everyone, or the listed data-provider keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AllowList {
    /// Any client key.
    #[default]
    Open,
    /// Only these long-term client keys.
    Only(Vec<ClientKey>),
}

impl AllowList {
    /// Whether `client` may query.
    pub fn allows(&self, client: &ClientKey) -> bool {
        match self {
            AllowList::Open => true,
            AllowList::Only(keys) => keys.contains(client),
        }
    }
}

/// A message from a client to the enclave, inside the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The key set's owner registers a model whose encrypted weights the
    /// host holds. The enclave draws the integrity checks itself from the
    /// plaintext weights, then forgets the weights.
    RegisterModel {
        /// Key set the weights are encrypted under (must be the channel's,
        /// and owned by the channel's client key).
        key_id: KeyId,
        /// [`crate::ids::weights_commitment`] of the uploaded weights.
        commitment: [u8; 32],
        /// Per-stage packing, scales, biases and requantization.
        schedule: Box<Schedule>,
        /// The int8 weights of every stage, as quantized (for the checks).
        weights: Zeroizing<Vec<Vec<i8>>>,
        /// Policy, budget and lock threshold.
        terms: ModelTerms,
        /// Who may query (changeable later with [`ClientMessage::SetAllowList`]).
        allow: AllowList,
    },
    /// Owner: the model's state (lock, incidents, budgets, allow list).
    ModelStatus {
        /// Which model.
        model_id: ModelId,
    },
    /// Owner: clear the lock and the incident log.
    Unlock {
        /// Which model.
        model_id: ModelId,
    },
    /// Owner: replace the allow list.
    SetAllowList {
        /// Which model.
        model_id: ModelId,
        /// The new list.
        allow: AllowList,
    },
    /// Data provider: open a query session on a model.
    Hello {
        /// Which model.
        model_id: ModelId,
    },
    /// Data provider: the input is uploaded.
    Query {
        /// The logical query (a retry reuses it, with the same seed, so the
        /// input digest is the same and a budget counts the query once).
        query_id: QueryId,
        /// [`crate::ids::input_digest`] of the input ciphertexts.
        input_digest: [u8; 32],
        /// Real images in the batch (the rest is padding).
        images: u32,
        /// The secret seed of the input's encryption randomness
        /// ([`crate::input_binding`]): proves the sender made the input.
        seed: Zeroizing<[u8; 32]>,
    },
    /// Thin data provider: the input in the clear, for the enclave to
    /// quantize, pack and encrypt.
    ThinQuery {
        /// The logical query (a retry reuses it with the same images, so a
        /// budget counts the query once).
        query_id: QueryId,
        /// The images (each in the model's input shape).
        images: Zeroizing<Vec<Vec<f32>>>,
    },
}

/// What the enclave logged about a failed integrity check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// Counts every incident of the model since registration.
    pub seq: u64,
    /// The linear stage whose result failed its check.
    pub stage: u32,
    /// The long-term key of the client whose session it was.
    pub client: ClientKey,
}

/// A model's mutable state as its owner reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReport {
    /// The model.
    pub model_id: ModelId,
    /// Version of the sealed state: grows with every change (a host that
    /// restores an older sealed copy shows up as a smaller version).
    pub version: u64,
    /// Whether queries are refused.
    pub locked: bool,
    /// Failed checks since the last unlock.
    pub failures: u32,
    /// The model's terms.
    pub terms: ModelTerms,
    /// Who may query.
    pub allow: AllowList,
    /// Queries run per client key.
    pub spent: Vec<(ClientKey, u64)>,
    /// Failed checks since the last unlock (the most recent ones).
    pub incidents: Vec<Incident>,
}

/// A message from the enclave to a client, inside the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EnclaveMessage {
    /// The model is registered.
    Registered {
        /// Its id.
        model_id: ModelId,
    },
    /// The model's state (answer to the owner's messages).
    Report(Box<ModelReport>),
    /// How to encrypt a query's input.
    Plan(Box<QueryPlan>),
    /// The result of the query, signed by the enclave's result key.
    Result {
        /// The result.
        result: QueryResult,
        /// Ed25519 signature of [`QueryResult::signed_message`].
        signature: Vec<u8>,
    },
}
