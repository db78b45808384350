//! How the host reaches the enclave: in this process (tests, benchmarks,
//! `--in-process`), or as the separate `hetee-enclave` binary speaking
//! length-prefixed frames over its stdin/stdout. The host hands the enclave
//! no identity and no secret: the enclave's platform measures it. The host
//! computes the same measurement of the binary and config it launches, to
//! print what clients should pin.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hetee_attest::platform::SimTee;
use hetee_attest::Measurement;
use hetee_enclave::budget;
use hetee_enclave::Enclave;
use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
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
pub struct InProcess(Mutex<Enclave>);

/// Domain of the in-process enclave's simulated measurement.
const IN_PROCESS: &[u8] = b"hetee in-process enclave (simulated, protects nothing)";

impl InProcess {
    /// A fresh in-process enclave with `config`.
    pub fn new(config: EnclaveConfig) -> Self {
        let platform = SimTee::new(Self::measurement(&config));
        InProcess(Mutex::new(Enclave::new(Box::new(platform), config)))
    }

    /// The simulated measurement of an in-process enclave with `config`.
    pub fn measurement(config: &EnclaveConfig) -> Measurement {
        hetee_attest::measure(IN_PROCESS, &config.to_bytes())
    }
}

impl EnclaveLink for InProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let enclave = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let base = budget::current();
        let resp = enclave.handle(req);
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
        })
    }

    /// The enclave's arguments.
    pub fn args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--platform".into(),
            self.platform.clone(),
            "--memory-budget-mib".into(),
            self.config.memory_budget_mib.to_string(),
        ]
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

/// The enclave as a child process speaking frames on stdin/stdout.
pub struct ChildProcess {
    child: Arc<Mutex<Child>>,
    io: Mutex<(BufWriter<ChildStdin>, BufReader<ChildStdout>)>,
    measurement: Measurement,
    pid: u32,
    timeout: Duration,
}

impl ChildProcess {
    /// Measures and starts the enclave.
    pub fn spawn(spec: &LaunchSpec) -> Result<Self, LinkError> {
        let measurement = spec.measure()?;
        let mut child = Command::new(&spec.program)
            .args(spec.args())
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
            child: Arc::new(Mutex::new(child)),
            io: Mutex::new((BufWriter::new(stdin), BufReader::new(stdout))),
            measurement,
            pid,
            timeout: spec.timeout,
        };
        match link.call(Request::Status)? {
            (Response::Status(_), _) => Ok(link),
            (Response::Error { message, .. }, _) => Err(LinkError::Launch(format!(
                "the enclave does not answer: {message}"
            ))),
            _ => Err(LinkError::Launch("unexpected answer to Status".into())),
        }
    }

    /// The measurement the host computed before starting it.
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
        // A watchdog kills the enclave if this call outlives the timeout:
        // the blocked read then ends, and the supervisor restarts it.
        let (done, watch) = mpsc::channel::<()>();
        let timed_out = Arc::new(AtomicBool::new(false));
        let (child, flag, timeout) = (self.child.clone(), timed_out.clone(), self.timeout);
        let watchdog = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = watch.recv_timeout(timeout) {
                flag.store(true, Ordering::Release);
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                }
            }
        });
        let result = c
            .write(w, KIND_REQUEST, &payload)
            .and_then(|_| w.flush().map_err(Into::into))
            .map_err(|e| LinkError::Dead(format!("write: {e}")))
            .and_then(|_| {
                c.read_kind(r, KIND_RESPONSE)
                    .map_err(|e| LinkError::Dead(format!("read: {e}")))
            });
        drop(done);
        let _ = watchdog.join();
        if timed_out.load(Ordering::Acquire) {
            return Err(LinkError::TimedOut(self.timeout.as_secs()));
        }
        Ok((decode_response(&result?).map_err(LinkError::Dead)?, 0))
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
