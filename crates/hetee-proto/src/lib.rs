//! `hetee-proto`: the types that cross a trust boundary, shared by the
//! clients, the untrusted host and the enclave. Nothing here holds a secret
//! key; the only I/O is mapping the link's shared region.
//!
//! - [`host`]: host ↔ enclave requests and responses (the enclave's one stream);
//! - [`wire`]: how those travel as frames;
//! - [`shared_memory`]: their large payloads beside the stream, in memory both processes map;
//! - [`channel`]: client ↔ enclave messages inside the Noise channel;
//! - [`ids`]: ids, digests and the attested [`ids::Identity`] of a key set;
//! - [`plan`]: what a data provider needs to encrypt its input;
//! - [`schedule`]: the compiled model (packing, nonlinear tails);
//! - [`input_binding`]: input ciphertexts bound to the data provider who made them;
//! - [`config`]: the measured enclave config;
//! - [`api`]: the JSON bodies of the HTTP API;
//! - [`bodies`]: the binary bodies of the routes that carry ciphertexts.
//!
//! [`messages`] re-exports the message types in one place.

pub mod api;
pub mod bodies;
pub mod bytes;
pub mod channel;
pub mod config;
mod graph_check;
pub mod host;
pub mod ids;
pub mod input_binding;
pub mod plan;
pub mod schedule;
pub mod shared_memory;
pub mod wire;

pub use config::EnclaveConfig;
pub use host::{Request, Response};
pub use schedule::Schedule;

/// Every message type in one place.
pub mod messages {
    pub use crate::channel::*;
    pub use crate::host::*;
    pub use crate::ids::*;
    pub use crate::plan::*;
}

/// Errors of the protocol types: malformed schedules, plans or messages.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// HE layer error.
    #[error(transparent)]
    He(#[from] hetee_he::HeError),
    /// The compiled model is inconsistent.
    #[error("schedule: {0}")]
    Schedule(String),
    /// A message that does not fit the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}
