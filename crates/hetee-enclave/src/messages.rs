//! The enclave's request/response messages. The host talks to the enclave
//! only through these, so the enclave can move to its own process unchanged.

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// Wire-format version of these messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from the host to the enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Sets the (simulated) platform identity; only accepted before any
    /// model is registered. Real platforms derive these in hardware.
    Init {
        /// Measurement of the enclave binary and config.
        measurement: [u8; 32],
        /// Platform sealing secret (simulation: supplied by the launcher).
        platform_secret: [u8; 32],
    },
    /// Restores a model from a blob sealed by an enclave with the same
    /// measurement (after a restart); same keys, so ciphertexts made for the
    /// model earlier still decrypt.
    RestoreModel {
        /// The sealed blob from [`Response::Registered`].
        sealed: Vec<u8>,
    },
    /// Register a compiled model; the enclave creates its HE keys.
    RegisterModel {
        /// The compiled model (no weights).
        schedule: Box<Schedule>,
    },
    /// Start one inference query on a registered model.
    StartQuery {
        /// Model id from [`Response::Registered`].
        model_id: u64,
    },
    /// The host's encrypted result of linear stage `stage` of a query.
    StageResult {
        /// Query id from [`Response::QueryStarted`].
        query_id: u64,
        /// Stage index; stages must come in order, each once.
        stage: u32,
        /// Serialized degree-2 ciphertexts, in packing order.
        ciphertexts: Vec<Vec<u8>>,
    },
}

/// The enclave's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Model registered.
    Registered {
        /// Id to refer to the model.
        model_id: u64,
        /// Serialized BFV public key for this model's parameters.
        public_key: Vec<u8>,
        /// The model's keys and schedule sealed to this enclave's
        /// measurement, for the host to store and hand back after a restart.
        sealed: Vec<u8>,
    },
    /// Init accepted.
    Ready,
    /// Query started.
    QueryStarted {
        /// Id to refer to the query.
        query_id: u64,
    },
    /// Encrypted input of the next stage.
    NextInput {
        /// The stage these ciphertexts feed.
        stage: u32,
        /// Serialized fresh ciphertexts.
        ciphertexts: Vec<Vec<u8>>,
    },
    /// Final dequantized logits (for the data provider).
    Logits {
        /// `batch x classes` values, image by image.
        values: Vec<f32>,
    },
    /// The request was refused.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}
