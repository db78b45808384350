//! The enclave's one byte stream: frames in, frames out
//! ([`hetee_proto::wire`]). The enclave process is a plain `main` around
//! [`serve`] on its stdin/stdout.
//!
//! `workers` threads take turns at the input: the one holding it reads
//! the next request, lets the next thread wait for the one after, and
//! handles its request itself (no hand-off on the way in: in this VM a
//! hand-off to a sleeping thread costs tens of microseconds, and a query
//! makes a call per stage). Each worker writes its answer, tagged with
//! its request's id, as soon as it is ready, under the output's lock (no
//! hand-off on the way out either), as one whole frame in one write. With
//! one worker, answers come in request order; a host that sends faster
//! than the enclave works waits, as a request is read only by a free
//! thread.
//!
//! With a shared region ([`serve_with`], [`hetee_proto::shared_memory`]),
//! a request may come as a reference to a slot: the worker copies the
//! payload out of the slot (and the slots after it that a long payload
//! runs into) once, before it parses anything, and answers in the same run
//! of slots when the answer fits (inline otherwise).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};

use hetee_attest::Error as FrameError;
use hetee_proto::shared_memory::{Region, Side, SlotRef, KIND_REQUEST_SHARED};
use hetee_proto::wire::{
    codec, decode_request, response_frame, response_len, split_id, KIND_REQUEST,
};

use crate::enclave::lock;
use crate::messages::Response;
use crate::Enclave;

/// What the workers share: the stream's two ends and how it stopped.
struct Shared<'a, R, W> {
    input: Mutex<&'a mut R>,
    /// The slots requests may come in, if the host mapped any.
    region: Option<&'a Region>,
    output: Mutex<&'a mut W>,
    /// The stream's end or first read error: every worker stops at its
    /// next turn at the input (and at the first write error too).
    ended: AtomicBool,
    read_error: Mutex<Option<FrameError>>,
    failed: Mutex<Option<FrameError>>,
}

/// Serves requests from `input` until it closes, on `workers` threads.
/// Malformed requests get a [`Response::Error`]; only a broken stream ends
/// the loop with an error (once every request read has been answered).
/// Each answer is one `write_all` of a whole frame, then a flush: an
/// unbuffered `output` (the enclave binary passes its stdout's
/// descriptor) hands the host each answer in one piece.
///
/// When the global rayon pool has more threads than `workers` (the
/// enclave binary builds it so), the workers are threads of that pool:
/// a request's parallel steps (decryptions, encryptions) then start on
/// the worker itself instead of being handed to a sleeping pool thread
/// and waited for. All workers start before any request is read (a
/// barrier), so no worker's loop can be stolen into another's step.
pub fn serve<R: Read + Send, W: Write + Send>(
    enclave: &Enclave,
    input: &mut R,
    output: &mut W,
    workers: usize,
) -> Result<(), FrameError> {
    serve_with(enclave, input, output, workers, None)
}

/// [`serve`], with requests also coming through the slots of `region`
/// (frames of kind [`KIND_REQUEST_SHARED`]); without a region such frames
/// get an error answer.
pub fn serve_with<R: Read + Send, W: Write + Send>(
    enclave: &Enclave,
    input: &mut R,
    output: &mut W,
    workers: usize,
    region: Option<&Region>,
) -> Result<(), FrameError> {
    let workers = workers.max(1);
    let shared = Shared {
        input: Mutex::new(input),
        region,
        output: Mutex::new(output),
        ended: AtomicBool::new(false),
        read_error: Mutex::new(None),
        failed: Mutex::new(None),
    };
    let on_pool = rayon::current_thread_index().is_none() && rayon::current_num_threads() > workers;
    if on_pool {
        let started = Barrier::new(workers);
        rayon::scope(|s| {
            for _ in 0..workers {
                let (shared, started) = (&shared, &started);
                s.spawn(move |_| {
                    started.wait();
                    work(enclave, shared);
                });
            }
        });
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                let shared = &shared;
                s.spawn(move || work(enclave, shared));
            }
        });
    }
    let Shared {
        read_error, failed, ..
    } = shared;
    if let Some(e) = read_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One worker: takes its turn at the input, handles the request it read
/// and writes the answer, until the stream ends or fails.
fn work<R: Read, W: Write>(enclave: &Enclave, shared: &Shared<'_, R, W>) {
    let codec = codec();
    loop {
        let frame = {
            let mut input = lock(&shared.input);
            if shared.ended.load(Ordering::Acquire) || lock(&shared.failed).is_some() {
                break;
            }
            match codec.read(&mut **input) {
                Ok(f) if matches!(f.kind, KIND_REQUEST | KIND_REQUEST_SHARED) => f,
                Ok(f) => {
                    shared.ended.store(true, Ordering::Release);
                    let e = FrameError::UnexpectedKind {
                        found: f.kind,
                        expected: KIND_REQUEST,
                    };
                    lock(&shared.read_error).get_or_insert(e);
                    break;
                }
                Err(e) => {
                    shared.ended.store(true, Ordering::Release);
                    if !matches!(e, FrameError::Closed) {
                        lock(&shared.read_error).get_or_insert(e);
                    }
                    break;
                }
            }
        };
        let (id, slot, req) = if frame.kind == KIND_REQUEST {
            let (id, req) = decode_request(&frame.payload);
            (id, None, req)
        } else {
            match from_slot(shared.region, &frame.payload) {
                Ok((run, payload)) => {
                    let (id, req) = decode_request(&payload);
                    (id, Some(run), req)
                }
                Err((id, why)) => (id, None, Err(why)),
            }
        };
        drop(frame);
        let resp = match req {
            Ok(req) => enclave.handle(req),
            Err(e) => Response::error(e),
        };
        // One buffer, one write: the host's reader wakes once per answer.
        // Answered in the request's run of slots when it fits (encoded
        // straight into it), inline otherwise; an answer over the frame
        // limit becomes an error answer.
        let frame = response_len(&resp)
            .and_then(|len| {
                slot.zip(shared.region)
                    .and_then(|((slot, run), region)| {
                        region.encode_into(slot, run, Side::Response, id, &resp, len)
                    })
                    .map_or_else(|| response_frame(id, &resp), Ok)
            })
            .or_else(|e| response_frame(id, &Response::error(e)))
            .unwrap_or_default();
        drop(resp);
        let written = {
            let mut out = lock(&shared.output);
            out.write_all(&frame).and_then(|()| out.flush())
        };
        if let Err(e) = written {
            lock(&shared.failed).get_or_insert(e.into());
            break;
        }
    }
}

/// A run of slots: the first, and how many.
type Run = (u32, u32);

/// The request payload a shared frame names, copied out of its run of
/// slots once, with the run (as many slots as the request's length takes,
/// which the host holds for this call); or the id to answer and why not.
fn from_slot(region: Option<&Region>, frame: &[u8]) -> Result<(Run, Vec<u8>), (u64, String)> {
    let r = SlotRef::decode(frame).ok_or((0, "malformed shared-memory reference".to_string()))?;
    let region = region.ok_or((r.id, "this enclave maps no shared memory".to_string()))?;
    let payload = region
        .read(&r, Side::Request)
        .map_err(|e| (r.id, e.to_string()))?;
    if split_id(&payload).0 != r.id {
        return Err((r.id, "the slot holds another request".into()));
    }
    Ok(((r.slot, region.layout().run(payload.len())), payload))
}
