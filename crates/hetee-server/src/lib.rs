//! `hetee-server`: the untrusted host.
//!
//! - [`launcher`]: starting and measuring the enclave process, the link to it;
//! - [`supervisor`]: keeping the enclave alive, restoring it, issuing (simulated) evidence;
//! - [`host_model`]: encrypted weights and the HE evaluation of the linear stages;
//! - [`store`]: the embedded store (redb) of encrypted models, sealed blobs and job metadata;
//! - [`app`]: the host logic behind each API call;
//! - [`api`]: the HTTP/JSON routes (axum), limits and timeouts;
//! - [`api_types`]: the JSON bodies, shared with the clients.

#![warn(missing_docs)]

pub mod api;
pub mod api_types;
pub mod app;
pub mod host_model;
pub mod launcher;
pub mod store;
pub mod supervisor;
