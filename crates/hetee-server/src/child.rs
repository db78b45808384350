//! The enclave as a child process speaking frames on its stdin/stdout.
//! Calls run concurrently: each request carries an id, a reader thread
//! hands every answer to the call waiting for that id, and the enclave
//! answers in whatever order it finishes. A call that outlives the timeout
//! kills the enclave (the supervisor restarts it); a dead stream fails
//! every call in flight with a clear error.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hetee_attest::Measurement;
use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_proto::{Request, Response};

use crate::launcher::{EnclaveLink, LaunchSpec, LinkError};

type Reply = Result<Response, LinkError>;

/// Calls waiting for their answer, by request id; `None` once the stream
/// is dead (with why).
struct Pending {
    waiting: HashMap<u64, Sender<Reply>>,
    dead: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The enclave process and its stream.
pub struct ChildProcess {
    child: Arc<Mutex<Child>>,
    stdin: Mutex<BufWriter<ChildStdin>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
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
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        let pending = Arc::new(Mutex::new(Pending {
            waiting: HashMap::new(),
            dead: None,
        }));
        let reader_pending = pending.clone();
        std::thread::Builder::new()
            .name(format!("enclave-{pid}-reader"))
            .spawn(move || read_answers(BufReader::new(stdout), &reader_pending))
            .map_err(|e| LinkError::Launch(format!("cannot start the reader: {e}")))?;
        let link = ChildProcess {
            child: Arc::new(Mutex::new(child)),
            stdin: Mutex::new(BufWriter::new(stdin)),
            pending,
            next_id: AtomicU64::new(1),
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

    fn kill(&self) {
        let _ = lock(&self.child).kill();
    }
}

/// Reads answers until the stream ends, handing each to its call; then
/// fails every call still waiting.
fn read_answers(mut stdout: BufReader<std::process::ChildStdout>, pending: &Mutex<Pending>) {
    let c = codec();
    let why = loop {
        let payload = match c.read_kind(&mut stdout, KIND_RESPONSE) {
            Ok(p) => p,
            Err(e) => break format!("read: {e}"),
        };
        match decode_response(&payload) {
            Ok((id, resp)) => {
                if let Some(tx) = lock(pending).waiting.remove(&id) {
                    let _ = tx.send(Ok(resp));
                }
            }
            Err(e) => break e,
        }
    };
    let mut p = lock(pending);
    p.dead = Some(why.clone());
    for (_, tx) in p.waiting.drain() {
        let _ = tx.send(Err(LinkError::Dead(why.clone())));
    }
}

impl EnclaveLink for ChildProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload = encode_request(id, &req).map_err(LinkError::TooLarge)?;
        drop(req);
        let c = codec();
        if payload.len() > c.max_payload() as usize {
            return Err(LinkError::TooLarge(format!(
                "a {} MiB message is over the enclave's {} MiB frame limit; send less per query",
                payload.len() >> 20,
                c.max_payload() >> 20
            )));
        }
        let (tx, rx) = mpsc::channel();
        {
            let mut p = lock(&self.pending);
            if let Some(why) = &p.dead {
                return Err(LinkError::Dead(why.clone()));
            }
            p.waiting.insert(id, tx);
        }
        let written = {
            let mut w = lock(&self.stdin);
            c.write(&mut *w, KIND_REQUEST, &payload)
                .and_then(|_| w.flush().map_err(Into::into))
        };
        drop(payload);
        if let Err(e) = written {
            lock(&self.pending).waiting.remove(&id);
            return Err(LinkError::Dead(format!("write: {e}")));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(reply) => reply.map(|r| (r, 0)),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).waiting.remove(&id);
                // The enclave is hung (or this call is too large for the
                // timeout): kill it; the supervisor restarts it, and the
                // reader fails every other call in flight.
                self.kill();
                Err(LinkError::TimedOut(self.timeout.as_secs()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(LinkError::Dead("the reader stopped".into()))
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Pipe capacity asked for the enclave's stdin and stdout: stage results are
/// megabytes, and a 64 KiB pipe makes the two processes take turns every 64 KiB.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Asks the kernel for a larger pipe (Linux; up to `/proc/sys/fs/pipe-max-size`). A refusal
/// leaves the default, which only costs speed.
#[cfg(target_os = "linux")]
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns; no memory is passed.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    if got < 0 {
        tracing::debug!("the kernel kept the enclave pipe's default size");
    }
}

#[cfg(not(target_os = "linux"))]
fn widen_pipe<T>(_: &T) {}
