//! How the host reaches the enclave: in this process (tests, benchmarks,
//! `--in-process`), or as a child process speaking length-prefixed frames
//! over its stdin/stdout. The simulated platform measures the child's binary
//! and config before it starts, as a TEE loader would.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use hetee_attest::Measurement;
use hetee_enclave::budget;
use hetee_enclave::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};

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
}

/// A connection to one enclave.
pub trait EnclaveLink: Send + Sync {
    /// Sends one request and waits for the response. Also returns the peak
    /// bytes allocated while an in-process enclave handled it (0 otherwise).
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError>;
}

/// The enclave in this process (unattested local mode).
pub struct InProcess(Mutex<Enclave>);

impl InProcess {
    /// A fresh enclave.
    pub fn new() -> Self {
        InProcess(Mutex::new(Enclave::new()))
    }
}

impl Default for InProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl EnclaveLink for InProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let mut enclave = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let base = budget::current();
        let resp = enclave.handle(req);
        Ok((resp, budget::peak().saturating_sub(base)))
    }
}

/// What to launch as the enclave.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments (e.g. `["enclave", "run"]`).
    pub args: Vec<String>,
    /// The measured config.
    pub config: EnclaveConfig,
}

impl LaunchSpec {
    /// `hetee enclave run` from this executable.
    pub fn this_executable(config: EnclaveConfig) -> Result<Self, LinkError> {
        let program = std::env::current_exe()
            .map_err(|e| LinkError::Launch(format!("cannot locate this executable: {e}")))?;
        Ok(LaunchSpec {
            program,
            args: vec!["enclave".into(), "run".into()],
            config,
        })
    }

    /// The measurement of the binary and config (what clients pin).
    pub fn measure(&self) -> Result<Measurement, LinkError> {
        measure_binary(&self.program, &self.config)
    }
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

/// The enclave as a child process speaking frames on stdin/stdout.
pub struct ChildProcess {
    child: Mutex<Child>,
    io: Mutex<(BufWriter<ChildStdin>, BufReader<ChildStdout>)>,
    measurement: Measurement,
    pid: u32,
}

impl ChildProcess {
    /// Measures and starts the enclave, then gives it its identity.
    pub fn spawn(spec: &LaunchSpec, platform_secret: [u8; 32]) -> Result<Self, LinkError> {
        let measurement = spec.measure()?;
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                LinkError::Launch(format!("cannot run {}: {e}", spec.program.display()))
            })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(LinkError::Launch(
                "the enclave's stdio is unavailable".into(),
            ));
        };
        let link = ChildProcess {
            child: Mutex::new(child),
            io: Mutex::new((BufWriter::new(stdin), BufReader::new(stdout))),
            measurement,
            pid,
        };
        match link.call(Request::Init {
            measurement: measurement.0,
            platform_secret,
            config: spec.config.to_bytes(),
        })? {
            (Response::Ready, _) => Ok(link),
            (Response::Error { message }, _) => Err(LinkError::Launch(format!(
                "the enclave refused its identity: {message}"
            ))),
            _ => Err(LinkError::Launch("unexpected answer to Init".into())),
        }
    }

    /// The measurement the platform took before starting it.
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl EnclaveLink for ChildProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let payload = encode_request(&req).map_err(LinkError::TooLarge)?;
        let c = codec();
        if payload.len() > c.max_payload() as usize {
            return Err(LinkError::TooLarge(format!(
                "a {} MiB message is over the enclave's {} MiB frame limit; send less per query",
                payload.len() >> 20,
                c.max_payload() >> 20
            )));
        }
        let mut io = match self.io.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (w, r) = &mut *io;
        c.write(w, KIND_REQUEST, &payload)
            .and_then(|_| w.flush().map_err(Into::into))
            .map_err(|e| LinkError::Dead(format!("write: {e}")))?;
        let bytes = c
            .read_kind(r, KIND_RESPONSE)
            .map_err(|e| LinkError::Dead(format!("read: {e}")))?;
        Ok((decode_response(&bytes).map_err(LinkError::Dead)?, 0))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
