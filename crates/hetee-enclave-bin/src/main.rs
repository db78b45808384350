//! `hetee-enclave`: the enclave as a plain `main` behind one byte stream
//! (the Fortanix EDP shape). It is the only measured artifact: the enclave
//! crate, the stream loop and the memory meter; no CLI, HTTP, ONNX import,
//! benchmarks or charts.
//!
//! ```text
//! hetee-enclave run [--platform sim|tdx|snp|gramine] [--memory-budget-mib N] [--sim-cpu NAME]
//!                    [--shared-memory PATH --shared-slots N --shared-slot-bytes B]
//! ```
//!
//! It reads requests from stdin and writes responses to stdout, in frames
//! ([`hetee_proto::wire`](hetee_enclave::messages)) tagged with request ids,
//! working on several at once; diagnostics go to stderr. Its measurement, evidence and sealing key come from the platform;
//! the host hands it nothing but requests. The memory budget is part of the
//! measured config, so a host that changes it changes the measurement.
//!
//! `--sim-cpu NAME` (simulated platform only, for tests and demos) runs the
//! enclave "on another CPU": its sealing key differs, as it would between two
//! real CPUs, while its measurement stays the same (the CPU is not part of
//! what a loader measures).
//!
//! `--shared-memory PATH` maps the host's region of slots beside the stream
//! (`hetee_proto::shared_memory`): large payloads then skip the pipe. The region is the host's memory, untrusted like the
//! pipe; it is not part of the measurement. A region that cannot be mapped
//! stops the enclave (exit 1), and the host starts it again without one.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use hetee_attest::platform::{Platform, SimTee};
use hetee_enclave::budget::Meter;
use hetee_enclave::shared_memory::{Layout, Region};
use hetee_enclave::{Enclave, EnclaveConfig};
use sha2::{Digest, Sha256};

#[global_allocator]
static METER: Meter = Meter;

const USAGE: &str = "usage: hetee-enclave run [--platform sim|tdx|snp|gramine] \
                     [--memory-budget-mib N] [--sim-cpu NAME] \
                     [--shared-memory PATH --shared-slots N --shared-slot-bytes B]";

/// What the command line asks for.
struct Args {
    platform: String,
    config: EnclaveConfig,
    /// The simulated CPU's name (sim only).
    sim_cpu: Option<String>,
    /// The host's shared region and its layout.
    shared: Option<(PathBuf, Layout)>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("run") {
        return Err(USAGE.into());
    }
    let mut platform = "sim".to_string();
    let mut config = EnclaveConfig::default();
    let mut sim_cpu = None;
    let mut shared_path = None;
    let mut layout = Layout::DEFAULT;
    let number = |flag: &str, value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| format!("{flag} {value:?} is not a number"))
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--platform" => platform = value.clone(),
            "--sim-cpu" if value.is_empty() => return Err("--sim-cpu needs a name".into()),
            "--sim-cpu" => sim_cpu = Some(value.clone()),
            "--memory-budget-mib" => {
                config.memory_budget_mib = value
                    .parse()
                    .map_err(|_| format!("--memory-budget-mib {value:?} is not a number"))?
            }
            "--shared-memory" => shared_path = Some(PathBuf::from(value)),
            "--shared-slots" => layout.slots = number(flag, value)?,
            "--shared-slot-bytes" => layout.slot_bytes = number(flag, value)?,
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    // Refuse configs the enclave would not accept (e.g. an absurd budget).
    EnclaveConfig::from_bytes(&config.to_bytes()).map_err(|e| e.to_string())?;
    if sim_cpu.is_some() && platform != "sim" {
        return Err(format!(
            "--sim-cpu is for the simulated platform only, not --platform {platform}"
        ));
    }
    layout.check().map_err(|e| e.to_string())?;
    Ok(Args {
        platform,
        config,
        sim_cpu,
        shared: shared_path.map(|p| (p, layout)),
    })
}

/// The platform the arguments name; on `sim` with `--sim-cpu`, the simulated
/// CPU `NAME` (its secret is SHA-256 of the name: the simulation keeps no secret).
fn platform(args: &Args) -> Result<Box<dyn Platform>, hetee_attest::Error> {
    let config = args.config.to_bytes();
    match &args.sim_cpu {
        Some(name) => {
            let own = SimTee::measure_self(&config)?;
            let cpu: [u8; 32] = Sha256::digest(name.as_bytes()).into();
            Ok(Box::new(SimTee::on_cpu(own.measurement(), cpu)))
        }
        None => hetee_attest::platform::open(&args.platform, &config),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hetee-enclave: {e}");
            return ExitCode::from(2);
        }
    };
    let region = match &args.shared {
        Some((path, layout)) => match Region::open(path, *layout) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("hetee-enclave: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let config = args.config;
    let platform = match platform(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hetee-enclave: {e}");
            return ExitCode::from(1);
        }
    };
    // Threads for concurrent requests: twice the cores, so that a request
    // waiting its turn (an owner's change runs alone) idles no core. They
    // run on the global pool, beside a thread per core for their parallel
    // steps (`stream::serve`).
    let workers = std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .clamp(2, 16);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(workers + cores)
        .build_global();
    let enclave = Enclave::new(platform, config);
    // Not `stdin().lock()`: its guard cannot move between the workers,
    // which take turns at the input.
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
    // Stdout's own descriptor, unbuffered: each answer is one frame in
    // one write (`std::io::Stdout` would split it at line breaks).
    let mut output = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("hetee-enclave: cannot use stdout: {e}");
            return ExitCode::from(1);
        }
    };
    match hetee_enclave::stream::serve_with(
        &enclave,
        &mut input,
        &mut output,
        workers,
        region.as_ref(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hetee-enclave: stream: {e}");
            ExitCode::from(1)
        }
    }
}
