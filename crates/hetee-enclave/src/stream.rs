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
//! hand-off on the way out either). With one worker, answers come in
//! request order; a host that sends faster than the enclave works waits,
//! as a request is read only by a free thread.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hetee_attest::Error as FrameError;
use hetee_proto::wire::{codec, decode_request, encode_response, KIND_REQUEST, KIND_RESPONSE};

use crate::enclave::lock;
use crate::messages::Response;
use crate::Enclave;

/// Serves requests from `input` until it closes, on `workers` threads.
/// Malformed requests get a [`Response::Error`]; only a broken stream ends
/// the loop with an error (once every request read has been answered).
pub fn serve<R: Read + Send, W: Write + Send>(
    enclave: &Enclave,
    input: &mut R,
    output: &mut W,
    workers: usize,
) -> Result<(), FrameError> {
    let workers = workers.max(1);
    let input = Mutex::new(input);
    let output = Mutex::new(output);
    // The stream's end or first read error stops every worker at its next
    // turn at the input; the first write error too.
    let ended = AtomicBool::new(false);
    let read_error: Mutex<Option<FrameError>> = Mutex::new(None);
    let failed: Mutex<Option<FrameError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (input, output, ended, read_error, failed) =
                (&input, &output, &ended, &read_error, &failed);
            s.spawn(move || {
                let codec = codec();
                loop {
                    let payload = {
                        let mut input = lock(input);
                        if ended.load(Ordering::Acquire) || lock(failed).is_some() {
                            break;
                        }
                        match codec.read_kind(&mut **input, KIND_REQUEST) {
                            Ok(p) => p,
                            Err(e) => {
                                ended.store(true, Ordering::Release);
                                if !matches!(e, FrameError::Closed) {
                                    lock(read_error).get_or_insert(e);
                                }
                                break;
                            }
                        }
                    };
                    let (id, req) = decode_request(&payload);
                    drop(payload);
                    let resp = match req {
                        Ok(req) => enclave.handle(req),
                        Err(e) => Response::error(e),
                    };
                    let bytes = encode_response(id, &resp)
                        .or_else(|e| encode_response(id, &Response::error(e)))
                        .unwrap_or_default();
                    drop(resp);
                    let written = {
                        let mut out = lock(output);
                        codec
                            .write(&mut **out, KIND_RESPONSE, &bytes)
                            .and_then(|()| out.flush().map_err(FrameError::from))
                    };
                    if let Err(e) = written {
                        lock(failed).get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = read_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
