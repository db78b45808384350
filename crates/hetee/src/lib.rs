//! `hetee`: confidential neural-network inference with BFV + a trusted
//! enclave. The library behind the `hetee` command: the clients of a
//! deployment, the model owner's commands, the in-process harness, data
//! files, benchmarks and the CLI.

pub mod bench;
mod bench_batch;
mod bench_ratios;
pub mod bench_served;
pub mod bundled;
pub mod chart;
pub mod cli;
pub mod infer;

/// The clients (the `hetee-client` crate).
pub use hetee_client as client;
pub mod data;
pub mod demo;
pub mod deployment_demo;
pub mod harness;
pub mod images;
pub mod owner;
pub mod plan;
pub mod progress;
pub mod report;
pub mod results;
pub mod run;
pub mod run_files;
pub mod serve;
pub mod stdout;
