//! `hetee`: confidential neural-network inference with BFV + a trusted enclave.

mod alloc_meter;
mod bench;
mod chart;
mod cli;
mod data;
mod demo;
mod link;
mod parties;
mod plan;
mod report;

use clap::Parser;

#[global_allocator]
static ALLOC: alloc_meter::Meter = alloc_meter::Meter;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
