//! The trusted part of hetee. It holds the HE secret keys, decrypts each
//! linear stage's result, checks it, applies the exact integer nonlinear
//! step (bias, ReLU, pooling, requantization), lays the values out for the
//! next stage, and re-encrypts. Its only interface is [`Enclave::handle`]:
//! one request in, one response out, carried over one byte stream by
//! [`stream`]. Its identity (measurement, evidence, sealing key) comes from
//! its [`hetee_attest::platform::Platform`], never from the host.
//!
//! - [`enclave`]: state, sessions and dispatch;
//! - `channel`: identity, handshake and a channel's first message;
//! - `register`: model registration and the owner's management messages;
//! - `query`: a data provider's query, stage by stage;
//! - `stack`: several thin data providers' queries stacked in one batch;
//! - [`keys`]: key sets, registered models, sealing;
//! - [`peer`]: the cluster's sealing key, moved enclave to enclave;
//! - [`peer_check`]: how a peer's evidence is checked (production verifiers);
//! - [`state`]: a model's mutable state (lock, incidents, budgets, allow list);
//! - [`query_ids`]: recent query ids, so a retried query spends once;
//! - [`step`]: decrypt → Freivalds check → nonlinear step → encrypt;
//! - [`reserve`]: encryptions of zero made ahead by an idle thread;
//! - [`freivalds`]: the checks of the host's linear layers;
//! - [`policy`]: output policies, branch-free;
//! - [`budget`]: the counting allocator behind the memory budget;
//! - [`stream`]: the request loop over one byte stream.
//!
//! The protocol types live in [`hetee_proto`]; [`messages`] and
//! [`schedule`] re-export them for the enclave's users.

pub mod binding;
pub mod budget;
mod channel;
pub mod enclave;
pub mod freivalds;
pub mod keys;
pub mod peer;
pub mod peer_check;
pub mod policy;
mod query;
pub mod query_ids;
mod register;
pub mod reserve;
mod stack;
pub mod state;
pub mod step;
pub mod stream;

pub use enclave::Enclave;
pub use hetee_proto::{config, input_binding, messages, schedule, shared_memory};
pub use hetee_proto::{EnclaveConfig, Request, Response, Schedule};

/// Errors inside the enclave.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// HE layer error.
    #[error(transparent)]
    He(#[from] hetee_he::HeError),
    /// A malformed schedule, plan or message.
    #[error(transparent)]
    Proto(#[from] hetee_proto::ProtoError),
    /// The platform under the enclave failed.
    #[error(transparent)]
    Platform(#[from] hetee_attest::Error),
    /// The compiled model is inconsistent.
    #[error("schedule: {0}")]
    Schedule(String),
    /// A request that does not fit the current state.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The host's work failed a check.
    #[error("{0}")]
    Integrity(String),
}
