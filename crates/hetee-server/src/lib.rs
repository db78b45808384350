//! `hetee-server`: the untrusted host.
//!
//! - [`launcher`]: starting and measuring the enclave process, the link to it;
//! - [`supervisor`]: keeping the enclave alive, restoring it, storing its sealed states;
//! - [`host_model`]: encrypted weights and the HE evaluation of the linear stages;
//! - [`stage_loop`]: the one loop that runs a query stage by stage, for every path;
//! - [`stacker`]: concurrent thin queries of one model gathered into stacked queries;
//! - [`store`]: the [`store::Store`] of encrypted models, sealed blobs and job metadata: embedded
//!   (redb, the default) or PostgreSQL shared by several replicas;
//! - [`peer`]: the bodies of the peer relay by which a new replica joins the cluster;
//! - [`job_log`]: the record of every query, written off the query path;
//! - [`app`]: the host logic behind each API call (a query: `app/query.rs`);
//! - [`api`]: the HTTP/JSON routes (axum), limits and timeouts.
//!
//! The JSON bodies are [`hetee_proto::api`], shared with the clients.

#![warn(missing_docs)]

pub mod api;
pub mod app;
mod child;
pub mod host_model;
pub mod job_log;
pub mod launcher;
pub mod peer;
pub mod stacker;
pub mod stage_loop;
pub mod store;
pub mod supervisor;
pub mod tls;
