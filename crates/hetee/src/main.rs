//! `hetee`: confidential neural-network inference with BFV + a trusted enclave.

mod cli;
mod data;
mod demo;
mod parties;
mod plan;
mod report;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
