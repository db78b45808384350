//! How the untrusted host reaches the enclave: in this process, or as a
//! child process (`hetee enclave run`) over its stdin/stdout. Both carry the
//! same [`Request`]/[`Response`] messages.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use hetee_enclave::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_enclave::{Enclave, Request, Response};

use crate::alloc_meter;

/// A channel to one enclave.
pub trait EnclaveLink: Send + Sync {
    /// Sends one request and waits for the response. Also returns the peak
    /// bytes allocated while an in-process enclave handled it (0 otherwise).
    fn call(&self, req: Request) -> Result<(Response, usize)>;
}

/// The enclave in this process (for tests, benchmarks and the demo).
pub struct InProcess(Mutex<Enclave>);

impl InProcess {
    /// A fresh enclave.
    pub fn new() -> Self {
        InProcess(Mutex::new(Enclave::new()))
    }
}

impl EnclaveLink for InProcess {
    fn call(&self, req: Request) -> Result<(Response, usize)> {
        let mut enclave = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let base = alloc_meter::current();
        alloc_meter::reset_peak();
        let resp = enclave.handle(req);
        Ok((resp, alloc_meter::peak().saturating_sub(base)))
    }
}

/// The enclave configuration that is measured with the binary.
const ENCLAVE_CONFIG: &[u8] = b"hetee-enclave v1; transport=stdio";

/// The enclave as a child process speaking frames on stdin/stdout.
pub struct ChildProcess {
    child: Mutex<Child>,
    io: Mutex<(BufWriter<ChildStdin>, BufReader<ChildStdout>)>,
}

impl ChildProcess {
    /// Starts `hetee enclave run` from this executable.
    pub fn spawn() -> Result<Self> {
        let exe = std::env::current_exe().context("cannot locate the hetee executable")?;
        let mut child = Command::new(&exe)
            .args(["enclave", "run"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the enclave process")?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("enclave stdin unavailable"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("enclave stdout unavailable"))?;
        let link = ChildProcess {
            child: Mutex::new(child),
            io: Mutex::new((BufWriter::new(stdin), BufReader::new(stdout))),
        };
        // The simulated platform: measure the binary before use and give the
        // enclave its identity. A real TEE does this in hardware.
        let binary = std::fs::read(&exe).context("cannot read the enclave binary to measure it")?;
        let measurement = hetee_attest::measure(&binary, ENCLAVE_CONFIG).0;
        match link.call(Request::Init {
            measurement,
            platform_secret: hetee_enclave::enclave::DEV_PLATFORM_SECRET,
        })? {
            (Response::Ready, _) => Ok(link),
            (other, _) => Err(anyhow!("the enclave refused its identity: {other:?}")),
        }
    }
}

impl EnclaveLink for ChildProcess {
    fn call(&self, req: Request) -> Result<(Response, usize)> {
        let payload = encode_request(&req).map_err(|e| anyhow!(e))?;
        let mut io = match self.io.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (w, r) = &mut *io;
        let c = codec();
        c.write(w, KIND_REQUEST, &payload)
            .and_then(|_| w.flush().map_err(Into::into))
            .context("the enclave process is gone (write failed); restart it")?;
        let bytes = c
            .read_kind(r, KIND_RESPONSE)
            .context("the enclave process is gone (no response); restart it")?;
        Ok((decode_response(&bytes).map_err(|e| anyhow!(e))?, 0))
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

/// `hetee enclave run`: serve the enclave on stdin/stdout until stdin closes.
pub fn run_enclave_stdio() -> Result<()> {
    let mut enclave = Enclave::new();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = BufReader::new(stdin.lock());
    let mut output = BufWriter::new(stdout.lock());
    hetee_enclave::wire::serve(&mut enclave, &mut input, &mut output)
        .map_err(|e| anyhow!("enclave stream: {e}"))
}
