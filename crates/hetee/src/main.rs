//! `hetee`: confidential neural-network inference with BFV + a trusted enclave.

mod cli;
mod demo;
mod report;
mod data;
mod parties;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
