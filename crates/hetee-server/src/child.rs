//! The enclave as a child process speaking frames on its stdin/stdout.
//! Calls run concurrently: each request carries an id and the enclave
//! answers in whatever order it finishes.
//!
//! There is no reader thread: the callers take turns at the enclave's
//! output (leader-follower). The one holding it reads the next answer; if
//! the answer is its own it returns with it, otherwise it leaves it for
//! its caller and wakes that caller, and keeps reading. A caller leaving
//! the output wakes another waiting caller to take it. So an answer
//! reaches its caller with no hand-off between threads in the common case
//! (one call at a time): in this VM each hand-off to a sleeping thread cost
//! tens of microseconds, sometimes hundreds, and a query makes a call per
//! stage.
//!
//! Large payloads go through a region of shared memory when the launch
//! asks for one ([`LaunchSpec::shared_memory`]): a call takes a free run
//! of slots (one, or as many as a long payload needs), writes its request
//! there and sends a reference; the enclave answers in the same run.
//! Small messages, calls that find no free run and payloads larger than
//! the region's side travel in the stream.
//!
//! A call that outlives the timeout kills the enclave (the supervisor
//! restarts it): the reader waits for data with `poll` up to its deadline,
//! and a waiting caller wakes at its own. A dead stream fails every call
//! in flight with a clear error.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use hetee_attest::Error as FrameError;
use hetee_attest::Measurement;
use hetee_proto::shared_memory::{Region, Side, SlotRef, KIND_RESPONSE_SHARED};
use hetee_proto::wire::{codec, decode_response, request_frame, request_len, KIND_RESPONSE};
use hetee_proto::{Request, Response};

use crate::launcher::{EnclaveLink, LaunchSpec, LinkError};

type Reply = Result<Response, LinkError>;

/// The calls in flight and the answers read for them.
#[derive(Default)]
struct Inbox {
    /// Calls waiting for their answer, by request id, with the thread to
    /// wake when it is read.
    waiting: HashMap<u64, Thread>,
    /// Answers read by another caller, not yet taken by their own.
    answers: HashMap<u64, Response>,
    /// Whether a caller is reading the enclave's output now.
    reading: bool,
    /// Why the stream is dead, once it is.
    dead: Option<String>,
}

impl Inbox {
    /// Wakes a waiting caller other than `me` to take the output.
    fn wake_next_reader(&self, me: u64) {
        if let Some(t) = self
            .waiting
            .iter()
            .find(|(id, _)| **id != me && !self.answers.contains_key(id))
            .map(|(_, t)| t)
        {
            t.unpark();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The enclave's stdout, read only up to a deadline: each read waits for
/// data with `poll` first.
struct Output {
    out: ChildStdout,
    deadline: Instant,
}

impl Read for Output {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        wait_readable(&self.out, self.deadline)?;
        self.out.read(buf)
    }
}

/// The enclave process and its stream.
pub struct ChildProcess {
    child: Arc<Mutex<Child>>,
    stdin: Mutex<ChildStdin>,
    /// Held only by the caller whose turn it is to read ([`Inbox::reading`]).
    stdout: Mutex<BufReader<Output>>,
    inbox: Mutex<Inbox>,
    next_id: AtomicU64,
    measurement: Measurement,
    pid: u32,
    timeout: Duration,
    /// The slots beside the stream, if the enclave mapped them.
    shared: Option<Slots>,
}

/// The shared region and which of its slots a call holds.
struct Slots {
    region: Region,
    held: Mutex<Vec<bool>>,
}

impl Slots {
    /// The first run of `run` consecutive free slots, now held.
    fn take(&self, run: u32) -> Option<u32> {
        let mut held = lock(&self.held);
        let run = run as usize;
        let start =
            (0..=held.len().checked_sub(run)?).find(|&i| held[i..i + run].iter().all(|h| !h))?;
        held[start..start + run].fill(true);
        u32::try_from(start).ok()
    }
}

/// Requests smaller than this go in the stream even when a slot is free:
/// one write of a small frame costs less than a slot's bookkeeping.
const INLINE_BELOW: usize = 16 << 10;

/// A run of slots held by one call until its answer is read.
struct SlotHold<'a> {
    slots: &'a Slots,
    slot: u32,
    run: u32,
}

impl Drop for SlotHold<'_> {
    fn drop(&mut self) {
        let (start, end) = (self.slot as usize, (self.slot + self.run) as usize);
        if let Some(held) = lock(&self.slots.held).get_mut(start..end) {
            held.fill(false);
        }
    }
}

impl ChildProcess {
    /// Measures and starts the enclave, with the shared region the spec asks
    /// for; an enclave that cannot map it is started again without one.
    pub fn spawn(spec: &LaunchSpec) -> Result<Self, LinkError> {
        let Some(layout) = spec.shared_memory else {
            return Self::start(spec, None);
        };
        let dir = shared_memory_dir();
        let (region, path) = match Region::create(&dir, layout) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "no shared memory for the enclave ({e}); payloads go through its stream"
                );
                return Self::start(spec, None);
            }
        };
        let started = Self::start(spec, Some((region, &path)));
        // The enclave has mapped it (or failed): the name is not needed.
        let _ = std::fs::remove_file(&path);
        match started {
            Err(LinkError::Launch(e) | LinkError::Dead(e)) => {
                tracing::warn!(
                    "the enclave did not start with shared memory ({e}); starting it without"
                );
                Self::start(spec, None)
            }
            other => other,
        }
    }

    fn start(spec: &LaunchSpec, shared: Option<(Region, &Path)>) -> Result<Self, LinkError> {
        let measurement = spec.measure()?;
        let mut args = spec.args();
        if let Some((region, path)) = &shared {
            let l = region.layout();
            args.extend([
                "--shared-memory".into(),
                path.display().to_string(),
                "--shared-slots".into(),
                l.slots.to_string(),
                "--shared-slot-bytes".into(),
                l.slot_bytes.to_string(),
            ]);
        }
        let mut child = Command::new(&spec.program)
            .args(args)
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
        let link = ChildProcess {
            child: Arc::new(Mutex::new(child)),
            stdin: Mutex::new(stdin),
            stdout: Mutex::new(BufReader::with_capacity(
                READ_BUFFER,
                Output {
                    out: stdout,
                    deadline: Instant::now(),
                },
            )),
            inbox: Mutex::new(Inbox::default()),
            next_id: AtomicU64::new(1),
            measurement,
            pid,
            timeout: spec.timeout,
            shared: shared.map(|(region, _)| Slots {
                held: Mutex::new(vec![false; region.layout().slots as usize]),
                region,
            }),
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

    /// Reads the next answer, waiting for it up to `deadline`.
    fn read_answer(&self, deadline: Instant) -> Result<(u64, Response), ReadError> {
        let mut stdout = lock(&self.stdout);
        stdout.get_mut().deadline = deadline;
        match codec().read(&mut *stdout) {
            Ok(f) if f.kind == KIND_RESPONSE => {
                decode_response(&f.payload).map_err(ReadError::Broken)
            }
            Ok(f) if f.kind == KIND_RESPONSE_SHARED => {
                let payload = SlotRef::decode(&f.payload)
                    .zip(self.shared.as_ref())
                    .ok_or_else(|| ReadError::Broken("a stray shared-memory answer".into()))
                    .and_then(|(r, s)| {
                        s.region
                            .read(&r, Side::Response)
                            .map_err(|e| ReadError::Broken(e.to_string()))
                    })?;
                decode_response(&payload).map_err(ReadError::Broken)
            }
            Ok(f) => Err(ReadError::Broken(format!(
                "read: a frame of kind {:#04x} where an answer belongs",
                f.kind
            ))),
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(ReadError::TimedOut)
            }
            Err(e) => Err(ReadError::Broken(format!("read: {e}"))),
        }
    }

    /// Waits for the answer to request `id` until `deadline`, reading the
    /// enclave's output while it is this caller's turn.
    fn wait_for(&self, id: u64, deadline: Instant) -> Reply {
        let mut inbox = lock(&self.inbox);
        loop {
            if let Some(resp) = inbox.answers.remove(&id) {
                inbox.waiting.remove(&id);
                return Ok(resp);
            }
            if let Some(why) = inbox.dead.clone() {
                inbox.waiting.remove(&id);
                return Err(LinkError::Dead(why));
            }
            if Instant::now() >= deadline {
                return Err(self.time_out(inbox, id));
            }
            if inbox.reading {
                drop(inbox);
                std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
                inbox = lock(&self.inbox);
                continue;
            }
            inbox.reading = true;
            drop(inbox);
            let read = self.read_answer(deadline);
            inbox = lock(&self.inbox);
            inbox.reading = false;
            match read {
                Ok((rid, resp)) if rid == id => {
                    inbox.waiting.remove(&id);
                    inbox.wake_next_reader(id);
                    return Ok(resp);
                }
                Ok((rid, resp)) => {
                    // Another call's answer (one that timed out is dropped).
                    if let Some(t) = inbox.waiting.get(&rid) {
                        t.unpark();
                        inbox.answers.insert(rid, resp);
                    }
                }
                Err(ReadError::TimedOut) => return Err(self.time_out(inbox, id)),
                Err(ReadError::Broken(why)) => {
                    inbox.dead = Some(why.clone());
                    for t in inbox.waiting.values() {
                        t.unpark();
                    }
                    inbox.waiting.remove(&id);
                    return Err(LinkError::Dead(why));
                }
            }
        }
    }

    /// Gives up on call `id`: the enclave is hung (or this call is too
    /// large for the timeout), so it is killed; the supervisor restarts it,
    /// and the next reader finds the stream closed and fails every other
    /// call in flight.
    fn time_out(&self, mut inbox: MutexGuard<'_, Inbox>, id: u64) -> LinkError {
        inbox.waiting.remove(&id);
        inbox.wake_next_reader(id);
        drop(inbox);
        self.kill();
        LinkError::TimedOut(self.timeout.as_secs())
    }
}

/// Why reading one answer failed.
enum ReadError {
    /// No answer came before the deadline.
    TimedOut,
    /// The stream ended or carried something malformed.
    Broken(String),
}

impl EnclaveLink for ChildProcess {
    fn call(&self, req: Request) -> Result<(Response, usize), LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let too_large = |e: String| LinkError::TooLarge(format!("{e}; send less per query"));
        let len = request_len(&req).map_err(too_large)?;
        let (frame, _hold) = match self.encode_in_slot(id, &req, len) {
            Some((named, hold)) => (named, Some(hold)),
            None => (request_frame(id, &req).map_err(too_large)?, None),
        };
        drop(req);
        {
            let mut inbox = lock(&self.inbox);
            if let Some(why) = &inbox.dead {
                return Err(LinkError::Dead(why.clone()));
            }
            inbox.waiting.insert(id, std::thread::current());
        }
        // One whole frame in one write: the enclave's reader wakes once.
        let written = {
            let mut w = lock(&self.stdin);
            w.write_all(&frame).and_then(|()| w.flush())
        };
        drop(frame);
        if let Err(e) = written {
            let mut inbox = lock(&self.inbox);
            inbox.waiting.remove(&id);
            inbox.wake_next_reader(id);
            return Err(LinkError::Dead(format!("write: {e}")));
        }
        self.wait_for(id, Instant::now() + self.timeout)
            .map(|r| (r, 0))
    }
}

impl ChildProcess {
    /// The frame naming request `req` (of payload length `len`), encoded
    /// straight into the first free run of slots long enough, with the
    /// run's hold; `None` (send it inline) when it is small, larger than
    /// the region's side, or no free run is long enough.
    fn encode_in_slot(
        &self,
        id: u64,
        req: &Request,
        len: usize,
    ) -> Option<(Vec<u8>, SlotHold<'_>)> {
        let slots = self.shared.as_ref()?;
        if len < INLINE_BELOW || !slots.region.fits(len) {
            return None;
        }
        let run = slots.region.layout().run(len);
        let slot = slots.take(run)?;
        let hold = SlotHold { slots, slot, run };
        let named = slots
            .region
            .encode_into(slot, run, Side::Request, id, req, len)?;
        Some((named, hold))
    }
}

/// Where the shared region's file is made: `/dev/shm` (memory, never
/// written back to a disk) where there is one, else the temporary folder.
fn shared_memory_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The host's read buffer: a stage's input for the next stage arrives in
/// one read.
const READ_BUFFER: usize = 1 << 20;

/// Waits until `fd` has data (or is closed) or `deadline` passes.
#[cfg(unix)]
fn wait_readable(fd: &impl std::os::fd::AsRawFd, deadline: Instant) -> std::io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on a descriptor this process owns.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        match r {
            0 if Instant::now() >= deadline => {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            0 => continue,
            r if r < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
fn wait_readable<T>(_: &T, _: Instant) -> std::io::Result<()> {
    Ok(())
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
