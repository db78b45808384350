//! The trusted part of hetee. It holds the HE secret keys, decrypts each
//! linear stage's result, applies the exact integer nonlinear step (bias,
//! ReLU, pooling, requantization), lays the values out for the next stage,
//! and re-encrypts. Its only interface is [`Enclave::handle`]: one request
//! in, one response out.

pub mod enclave;
pub mod messages;
pub mod schedule;
pub mod wire;

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
}
