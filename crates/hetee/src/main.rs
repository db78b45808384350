//! `hetee`: confidential neural-network inference with BFV + a trusted enclave.

use clap::Parser;
use hetee::cli;

#[global_allocator]
static ALLOC: hetee_enclave::budget::Meter = hetee_enclave::budget::Meter;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        if hetee::stdout::is_closed_stdout(&e) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
