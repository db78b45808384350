//! Host ↔ enclave requests and responses, over the enclave's one byte
//! stream. The host sees all of it, so nothing secret travels here in the
//! clear: secrets are sealed blobs, Noise messages, or HE ciphertexts.
//!
//! The enclave takes no identity and no secret from the host: its
//! measurement, evidence and sealing key come from its platform.

use hetee_he::HeConfig;
use serde::{Deserialize, Serialize};

use crate::ids::{ClientKey, Identity, KeyId, ModelId, SessionId};

/// A request from the host to the enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Generates a BFV key set for these parameters, owned by `owner`.
    CreateKeys {
        /// Parameters the model provider asked for.
        he: HeConfig,
        /// The model provider's long-term channel key. Only a channel from
        /// this key may register or manage models under the key set; the
        /// owner checks this field in the attested [`Identity`].
        owner: ClientKey,
    },
    /// Restores a key set sealed by an enclave with the same measurement.
    RestoreKeys {
        /// Blob from [`Response::KeysCreated`].
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// The key set's public identity and the platform's evidence for it.
    Evidence {
        /// Which key set.
        key_id: KeyId,
    },
    /// Noise XK message 1 from a client who verified `evidence`.
    OpenChannel {
        /// Key set the evidence attests.
        key_id: KeyId,
        /// The evidence the client verified; its hash is the Noise prologue.
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
        /// Handshake message 1.
        #[serde(with = "serde_bytes")]
        msg1: Vec<u8>,
    },
    /// Noise XK message 3 and the client's first message.
    ChannelFinish {
        /// From [`Response::ChannelOpened`].
        session: SessionId,
        /// Handshake message 3.
        #[serde(with = "serde_bytes")]
        msg3: Vec<u8>,
        /// A sealed client message.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Restores a model sealed by an enclave with the same measurement.
    /// Its key set must be restored first.
    RestoreModel {
        /// Blob from [`RegisteredModel::sealed`].
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Restores a model's sealed state (lock, budgets, allow list).
    /// A state older than the one loaded is refused.
    RestoreState {
        /// Blob from [`SealedState::sealed`].
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Starts the query of a session that said hello.
    StartQuery {
        /// The session.
        session: SessionId,
        /// The model whose weights the host evaluates (must be the session's).
        model_id: ModelId,
        /// A sealed query message.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// The data provider's input ciphertexts, exactly as the host will
        /// use them for stage 0 (their digest must match the query's).
        #[serde(with = "crate::bytes::list")]
        input: Vec<Vec<u8>>,
    },
    /// Starts one query for several thin sessions of the same model: the
    /// enclave stacks their images in one batch (up to the model's batch),
    /// so that the host evaluates each product once for all of them. Each
    /// member's result is sealed to its own data provider.
    StartStack {
        /// The model whose weights the host evaluates (every member's).
        model_id: ModelId,
        /// The members, in the order their images are stacked.
        members: Vec<StackMember>,
    },
    /// The host's encrypted result of linear stage `stage` of a query.
    StageResult {
        /// The session.
        session: SessionId,
        /// Stage index; stages must come in order, each once.
        stage: u32,
        /// Serialized degree-2 ciphertexts, in packing order.
        #[serde(with = "crate::bytes::list")]
        ciphertexts: Vec<Vec<u8>>,
    },
    /// Forgets a session (the host gave up on it).
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// Memory and table counts.
    Status,
    /// This enclave's offer to join a cluster of enclaves with its
    /// measurement: its channel key, and evidence that binds it.
    PeerOffer,
    /// Hand this enclave's sealing key to the peer enclave that made the
    /// offer `peer_evidence` (it must attest the same measurement).
    ShareSealingKey {
        /// The peer's channel key, from its offer.
        peer_key: [u8; 32],
        /// The peer's evidence over `peer_key`.
        #[serde(with = "serde_bytes")]
        peer_evidence: Vec<u8>,
    },
    /// Adopt the sealing key a peer enclave shared with this one (before
    /// any key set is created or restored).
    AdoptSealingKey {
        /// The one-way message to this enclave's channel key.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// The sharing enclave's evidence over the message.
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
    },
    /// Take back an adopted sealing key this enclave sealed for itself.
    RestoreSealingKey {
        /// What [`Response::SealingKeyAdopted`] gave the host.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
}

/// One session of a [`Request::StartStack`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackMember {
    /// The session (it said hello to the model).
    pub session: SessionId,
    /// Its sealed thin query; empty for a member deferred by an earlier stack.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The enclave's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// A new key set.
    KeysCreated {
        /// Its id.
        key_id: KeyId,
        /// Serialized BFV public key.
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        /// The key set sealed to this enclave's measurement (host stores it).
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Key set restored.
    KeysRestored {
        /// Its id.
        key_id: KeyId,
    },
    /// A key set's identity and the platform's evidence for it.
    Evidence {
        /// The identity it attests.
        identity: Identity,
        /// Encoded [`hetee_attest::Evidence`].
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
    },
    /// Noise XK message 2.
    ChannelOpened {
        /// The new session.
        session: SessionId,
        /// Handshake message 2.
        #[serde(with = "serde_bytes")]
        msg2: Vec<u8>,
    },
    /// The enclave's sealed answer to the client's first message.
    ChannelReply {
        /// A sealed enclave message for the client.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Set when the message registered a model: what the host stores.
        registered: Option<RegisteredModel>,
        /// Set when the message changed a model's state: what the host stores.
        state: Option<SealedState>,
    },
    /// Model restored.
    ModelRestored {
        /// Its id.
        model_id: ModelId,
    },
    /// Model state restored.
    StateRestored {
        /// Its model.
        model_id: ModelId,
        /// Its version.
        version: u64,
    },
    /// Query accepted; the host evaluates stage 0 on the data provider's
    /// ciphertexts, or on `input` for a thin query (encrypted by the enclave).
    QueryStarted {
        /// Stage-0 input of a thin query.
        #[serde(with = "crate::bytes::option_list")]
        input: Option<Vec<Vec<u8>>>,
        /// The model's state with this query counted (budgeted models
        /// only; `None` when the state did not change): what the host stores.
        state: Option<SealedState>,
    },
    /// A stacked query started (see [`Request::StartStack`]); its stages
    /// run on the session `group` like any query's.
    StackStarted {
        /// The session id the stacked query runs under (its first member's).
        group: SessionId,
        /// The model's batch: the most images one stacked query holds.
        batch: u32,
        /// Stage-0 input, encrypted by the enclave.
        #[serde(with = "crate::bytes::list")]
        input: Vec<Vec<u8>>,
        /// Members whose images are in this query, in stacking order.
        started: Vec<SessionId>,
        /// Members opened but not stacked because the batch was full: they
        /// stay open; name them (with an empty payload) in a later stack.
        deferred: Vec<SessionId>,
        /// Members refused, with why; their sessions are closed.
        refused: Vec<(SessionId, String)>,
        /// The model's state with the started members counted (budgeted
        /// models only).
        state: Option<SealedState>,
    },
    /// The results of a stacked query, each sealed to its member's channel.
    StackFinished {
        /// Per member: its session and its sealed result.
        payloads: Vec<(SessionId, Vec<u8>)>,
    },
    /// Encrypted input of the next stage.
    NextInput {
        /// The stage these ciphertexts feed.
        stage: u32,
        /// Serialized fresh ciphertexts.
        #[serde(with = "crate::bytes::list")]
        ciphertexts: Vec<Vec<u8>>,
    },
    /// The query's result, sealed to the data provider's channel.
    Finished {
        /// A sealed [`crate::channel::EnclaveMessage::Result`].
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Session closed.
    Closed,
    /// An offer to join a cluster (see [`Request::PeerOffer`]).
    PeerOffer {
        /// The enclave's channel key.
        channel_public_key: [u8; 32],
        /// Evidence binding it.
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
    },
    /// The sealing key, encrypted to the peer (see [`Request::ShareSealingKey`]).
    SealingKeyShared {
        /// One-way message to the peer's channel key.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// This enclave's evidence over the message.
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
    },
    /// The cluster's sealing key is adopted; `sealed` is it, sealed under
    /// this enclave's own platform key, for its host to keep.
    SealingKeyAdopted {
        /// The adopted key, sealed for this enclave only.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// The adopted sealing key is back.
    SealingKeyRestored,
    /// Counts and memory.
    Status(Status),
    /// The request was refused; any session it touched is closed.
    Error {
        /// What went wrong and what to do (never secret data).
        message: String,
        /// Set when the refusal changed a model's state (a failed check
        /// locks it): what the host stores.
        state: Option<SealedState>,
    },
}

impl Response {
    /// A refusal that changed no state.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
            state: None,
        }
    }
}

/// A registered model as the host stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// Its id.
    pub model_id: ModelId,
    /// The upload whose weights it uses ([`crate::ids::upload_id`]).
    pub upload_id: [u8; 16],
    /// Model secrets sealed to the enclave's measurement.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// Its first sealed state.
    pub state: SealedState,
}

/// A model's mutable state sealed by the enclave, for the host to store and
/// give back after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedState {
    /// The model.
    pub model_id: ModelId,
    /// The state's version (public, so the host keeps the newest).
    pub version: u64,
    /// The sealed blob.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
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
    /// Encryptions of zero made ahead so far (for re-encryptions).
    pub made_ahead: u64,
    /// The CPU time making them took (µs): enclave time no query waits for.
    pub made_ahead_us: u64,
    /// Re-encryptions that used an encryption of zero made ahead, over the
    /// key sets loaded now.
    pub taken_ahead: u64,
}
