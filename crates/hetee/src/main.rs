//! `hetee`: confidential neural-network inference with BFV + a trusted enclave.

mod bench;
mod chart;
mod cli;
mod client;
mod data;
mod demo;
mod deployment_demo;
mod parties;
mod plan;
mod report;
mod serve;

use clap::Parser;

#[global_allocator]
static ALLOC: hetee_enclave::budget::Meter = hetee_enclave::budget::Meter;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
