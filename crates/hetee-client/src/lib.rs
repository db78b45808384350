//! The two clients of a hetee deployment, talking to the host over a
//! [`relay::Relay`] (the HTTP API of `hetee serve`, or a host in the same
//! process):
//! - [`model_provider`]: quantize, encrypt the weights, upload, register
//!   the model with the enclave, and manage it as the key set's owner;
//! - [`data_provider`]: encrypt inputs, query, receive the result over the
//!   channel; [`query_session`]: several queries on one session;
//! - [`failover`]: either client with several servers (replicas), retrying
//!   on another one when a replica fails ([`fault`] tells which failures).
//!
//! Both first verify the enclave's evidence ([`trust`]) and speak to the
//! enclave only through a Noise channel bound to it ([`channel`]). This
//! crate links no server or enclave code: only the protocol types
//! (`hetee-proto`), the attestation crate and the HE layer.

pub mod channel;
pub mod data_provider;
pub mod failover;
pub mod fault;
pub mod http;
pub mod model_provider;
pub mod public_meta;
pub mod query_session;
pub mod relay;
pub mod resolver;
pub mod trust;
