//! The trusted part of hetee. It holds the HE secret keys, decrypts each
//! linear stage's result, applies the exact integer nonlinear step (bias,
//! ReLU, pooling, requantization), lays the values out for the next stage,
//! and re-encrypts. Its only interface is [`Enclave::handle`]: one request
//! in, one response out, carried over one byte stream by [`wire`].
//!
//! - [`messages`]: host ↔ enclave requests and client ↔ enclave channel messages;
//! - [`enclave`]: state, sessions and dispatch;
//! - [`keys`]: key sets, models, sealing;
//! - [`step`]: decrypt → Freivalds check → nonlinear step → encrypt;
//! - [`freivalds`]: the checks of the host's linear layers;
//! - [`input_binding`]: input ciphertexts bound to the data provider who made them;
//! - [`policy`]: output policies, branch-free;
//! - [`schedule`]: the compiled model;
//! - [`budget`]: the counting allocator behind the memory budget;
//! - [`config`]: the measured enclave config.

pub mod budget;
pub mod config;
pub mod enclave;
pub mod freivalds;
pub mod input_binding;
pub mod keys;
pub mod messages;
pub mod policy;
mod query;
pub mod schedule;
pub mod step;
pub mod wire;

pub use config::EnclaveConfig;
pub use enclave::Enclave;
pub use messages::{Request, Response};
pub use schedule::Schedule;

/// Errors inside the enclave.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// HE layer error.
    #[error(transparent)]
    He(#[from] hetee_he::HeError),
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
