//! How the host reaches the enclave: in this process (tests, benchmarks,
//! `--in-process`), or as the separate `hetee-enclave` binary speaking
//! length-prefixed frames over its stdin/stdout. The host hands the enclave
//! no identity and no secret: the enclave's platform measures it. The host
//! computes the same measurement of the binary and config it launches, to
//! print what clients should pin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hetee_attest::platform::SimTee;
use hetee_attest::Measurement;
use hetee_enclave::budget;
use hetee_enclave::Enclave;
use hetee_proto::shared_memory::Layout;
use hetee_proto::{EnclaveConfig, Request, Response};

/// Failures reaching the enclave.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The enclave process is gone or its stream broke.
    #[error("the enclave process died or its stream broke ({0}); the host restarts it")]
    Dead(String),
    /// The enclave could not be started.
    #[error("cannot start the enclave: {0}")]
    Launch(String),
    /// A message too large for the enclave's stream (nothing was sent).
    #[error("{0}")]
    TooLarge(String),
    /// The enclave did not answer in time; it was killed.
    #[error(
        "the enclave did not answer within {0} s and was killed; the host restarts it \
         (raise --enclave-timeout for very large queries)"
    )]
    TimedOut(u64),
}

/// A connection to one enclave.
pub trait EnclaveLink: Send + Sync {
    /// Sends one request and waits for the response. Also returns the peak
    /// bytes allocated while an in-process enclave handled it (0 otherwise).
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError>;
}

/// The enclave in this process, on the simulated platform (`hetee run`,
/// `bench`, `demo --in-process`, tests). It speaks the same protocol as the
/// enclave process; only the stream is missing.
pub struct InProcess(Arc<Enclave>);

/// Domain of the in-process enclave's simulated measurement.
const IN_PROCESS: &[u8] = b"hetee in-process enclave (simulated, protects nothing)";

impl InProcess {
    /// A fresh in-process enclave with `config`.
    pub fn new(config: EnclaveConfig) -> Self {
        let platform = SimTee::new(Self::measurement(&config));
        InProcess(Arc::new(Enclave::new(Box::new(platform), config)))
    }

    /// The simulated measurement of an in-process enclave with `config`.
    pub fn measurement(config: &EnclaveConfig) -> Measurement {
        hetee_attest::measure(IN_PROCESS, &config.to_bytes())
    }
}

impl EnclaveLink for InProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let base = budget::current();
        let resp = self.0.handle(req);
        Ok((resp, budget::peak().saturating_sub(base)))
    }
}

/// Name of the enclave executable.
pub const ENCLAVE_BINARY: &str = "hetee-enclave";

/// What to launch as the enclave.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The enclave executable.
    pub program: PathBuf,
    /// The platform it runs on (`sim`, `tdx`, `snp`, `gramine`).
    pub platform: String,
    /// The measured config.
    pub config: EnclaveConfig,
    /// Longest one call may take before the enclave is killed.
    pub timeout: Duration,
    /// Simulated platform only (tests, demos): the name of the simulated CPU
    /// the enclave runs on (`--sim-cpu`); its sealing key differs per name,
    /// its measurement does not.
    pub sim_cpu: Option<String>,
    /// The slots of shared memory beside the stream for large payloads
    /// ([`hetee_proto::shared_memory`]); `None` sends everything through
    /// the stream. By default a region of [`Layout::DEFAULT`] on the
    /// simulated platform, where the enclave is a process beside the host.
    /// Gramine could map one too (an `untrusted_shm` mount); a TDX or
    /// SEV-SNP guest would need a device for it.
    pub shared_memory: Option<Layout>,
}

/// Default of [`LaunchSpec::timeout`].
pub const DEFAULT_ENCLAVE_TIMEOUT: Duration = Duration::from_secs(120);

impl LaunchSpec {
    /// The `hetee-enclave` binary at `program`, or the one installed beside
    /// this executable (or one folder up, for test binaries in `deps/`).
    pub fn new(
        program: Option<PathBuf>,
        platform: &str,
        config: EnclaveConfig,
    ) -> Result<Self, LinkError> {
        let program = match program {
            Some(p) => p,
            None => find_enclave_binary()?,
        };
        Ok(LaunchSpec {
            program,
            platform: platform.to_string(),
            config,
            timeout: DEFAULT_ENCLAVE_TIMEOUT,
            sim_cpu: None,
            shared_memory: (platform == "sim").then_some(Layout::DEFAULT),
        })
    }

    /// The enclave's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "run".into(),
            "--platform".into(),
            self.platform.clone(),
            "--memory-budget-mib".into(),
            self.config.memory_budget_mib.to_string(),
        ];
        if let Some(cpu) = &self.sim_cpu {
            args.extend(["--sim-cpu".into(), cpu.clone()]);
        }
        args
    }

    /// The measurement of the binary and config (what clients pin).
    pub fn measure(&self) -> Result<Measurement, LinkError> {
        measure_binary(&self.program, &self.config)
    }
}

/// The `hetee-enclave` binary installed beside this executable.
pub fn find_enclave_binary() -> Result<PathBuf, LinkError> {
    let exe = std::env::current_exe()
        .map_err(|e| LinkError::Launch(format!("cannot locate this executable: {e}")))?;
    let name = format!("{ENCLAVE_BINARY}{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LinkError::Launch(format!(
                "no {name} beside {}; build it with `cargo build --release -p hetee-enclave-bin` \
                 or pass --enclave-binary",
                exe.display()
            ))
        })
}

/// Measures an enclave binary with its config.
pub fn measure_binary(program: &Path, config: &EnclaveConfig) -> Result<Measurement, LinkError> {
    let binary = std::fs::read(program).map_err(|e| {
        LinkError::Launch(format!(
            "cannot read the enclave binary {} to measure it: {e}",
            program.display()
        ))
    })?;
    Ok(hetee_attest::measure(&binary, &config.to_bytes()))
}

pub use crate::child::ChildProcess;
