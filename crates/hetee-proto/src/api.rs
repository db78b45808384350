//! JSON bodies of the HTTP API (`openapi.yaml` at the repo root describes
//! them). Binary fields are base64 (standard alphabet, padded); ids are hex.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Encodes bytes for a JSON field.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a base64 JSON field; `what` names it in the error.
pub fn unb64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(s)
        .map_err(|e| format!("field {what} is not valid base64: {e}"))
}

/// An error body: every 4xx/5xx carries one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// The enclave's measurement (hex), as the host's platform measured it.
    pub measurement: String,
    /// Process id of the current enclave process (0 if none is running).
    pub enclave_pid: u32,
    /// How many times the enclave was (re)started.
    pub enclave_starts: u64,
    /// Enclave memory now (bytes).
    pub enclave_memory_current: u64,
    /// Enclave memory peak (bytes).
    pub enclave_memory_peak: u64,
    /// Enclave memory budget (bytes).
    pub enclave_memory_budget: u64,
    /// Encryptions of zero the enclave made ahead, off any query's path.
    #[serde(default)]
    pub enclave_made_ahead: u64,
    /// The enclave CPU time they took (µs).
    #[serde(default)]
    pub enclave_made_ahead_us: u64,
    /// Re-encryptions that used one (over the key sets loaded now).
    #[serde(default)]
    pub enclave_taken_ahead: u64,
    /// Registered models in the store.
    pub models: usize,
    /// Sessions open in the enclave.
    pub sessions: usize,
}

/// `POST /v1/keys` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateKeys {
    /// Canonical BFV parameters (`hetee_proto::ids::he_params_bytes`), base64.
    pub he_params: String,
    /// The model provider's long-term Noise static public key (hex): the
    /// key set's owner, bound in the evidence.
    pub owner: String,
}

/// A key set's attested identity (`POST /v1/keys`, `GET /v1/keys/{key_id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysInfo {
    /// Key set id (hex).
    pub key_id: String,
    /// Canonical BFV parameters, base64.
    pub he_params: String,
    /// Serialized BFV public key, base64.
    pub public_key: String,
    /// The enclave's static Noise key (hex).
    pub channel_public_key: String,
    /// The enclave's Ed25519 result-signing key (hex).
    pub signing_public_key: String,
    /// The key set's owner: a model provider's long-term Noise key (hex).
    pub owner: String,
    /// Encoded attestation evidence, base64; its report data binds the fields above.
    pub evidence: String,
}

/// One stage of an uploaded model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageUpload {
    /// The stage's packing (`hetee_he::ConvPacking`, postcard), base64.
    pub packing: String,
    /// Encrypted packed weights in packing order, each base64.
    pub weights: Vec<String>,
}

/// `POST /v1/models` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadModel {
    /// Key set the weights are encrypted under (hex).
    pub key_id: String,
    /// The stages in order.
    pub stages: Vec<StageUpload>,
}

/// `POST /v1/models` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCreated {
    /// Upload id (hex): derived from the key set and the commitment. The
    /// model id comes when the model provider registers the model's secrets.
    pub upload_id: String,
    /// Commitment to the weights (hex).
    pub commitment: String,
}

/// `GET /v1/models/{model_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id (hex).
    pub model_id: String,
    /// Whether the model provider has registered the model's secrets.
    pub registered: bool,
    /// The key set, attested.
    pub keys: KeysInfo,
}

/// `POST /v1/sessions` body: Noise message 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenSession {
    /// Key set whose evidence the client verified (hex).
    pub key_id: String,
    /// For a query session: the model it will query (hex), so that the host
    /// knows which weights to evaluate. The enclave checks it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Handshake message 1, base64.
    pub msg1: String,
}

/// `POST /v1/sessions` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionOpened {
    /// Session id (hex).
    pub session: String,
    /// Handshake message 2, base64.
    pub msg2: String,
}

/// `POST /v1/sessions/{id}/finish` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishSession {
    /// Handshake message 3, base64.
    pub msg3: String,
    /// The client's first channel message, base64.
    pub payload: String,
}

/// A channel message for the client (`finish` and `query` answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sealed {
    /// The enclave's channel message, base64.
    pub payload: String,
}

/// `POST /v1/sessions/{id}/query` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunQuery {
    /// The sealed query message (binds the input digest), base64.
    pub payload: String,
    /// Input ciphertexts of stage 0, each base64.
    pub input: Vec<String>,
}

/// `POST /v1/sessions/{id}/query` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryDone {
    /// The enclave's sealed result, base64.
    pub payload: String,
    /// Host time on the linear layers (ms).
    pub host_ms: f64,
    /// Enclave time (ms).
    pub enclave_ms: f64,
    /// Per linear stage: products, times, ciphertexts and bytes.
    #[serde(default)]
    pub stages: Vec<StageStats>,
    /// How many sessions shared this query (a stacked query: the figures
    /// above are the whole stack's); 1 for a query of its own.
    #[serde(default = "one")]
    pub stacked: u32,
}

fn one() -> u32 {
    1
}

/// Figures of one linear stage of one query (public: counts, sizes, times).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageStats {
    /// ct x ct products on the host.
    pub products: usize,
    /// Host time: operand extension and products (ms).
    pub host_ms: f64,
    /// Enclave time: decrypt, check, nonlinear step, encrypt (ms).
    pub enclave_ms: f64,
    /// Ciphertexts the enclave decrypted.
    pub enclave_decrypts: usize,
    /// Ciphertexts the enclave encrypted.
    pub enclave_encrypts: usize,
    /// Bytes host -> enclave.
    pub bytes_to_enclave: usize,
    /// Bytes enclave -> host.
    pub bytes_from_enclave: usize,
    /// Peak bytes an in-process enclave allocated for this stage (0 when
    /// the enclave is a separate process).
    pub enclave_working_peak: usize,
}
