//! The enclave's one byte stream: frames in, frames out
//! ([`hetee_proto::wire`]). The enclave process is a plain `main` around
//! [`serve`] on its stdin/stdout.
//!
//! One thread reads requests, and `workers` threads handle them (the
//! enclave is shared: see [`Enclave::handle`]); each worker writes its
//! answer, tagged with its request's id, as soon as it is ready, under the
//! output's lock (no hand-off to a writer thread on the way out). With one
//! worker, answers come in request order.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::Mutex;

use hetee_attest::Error as FrameError;
use hetee_proto::wire::{codec, decode_request, encode_response, KIND_REQUEST, KIND_RESPONSE};

use crate::enclave::lock;
use crate::messages::Response;
use crate::Enclave;

/// Serves requests from `input` until it closes, on `workers` threads.
/// Malformed requests get a [`Response::Error`]; only a broken stream ends
/// the loop with an error (once every request read has been answered).
pub fn serve<W: Write + Send>(
    enclave: &Enclave,
    input: &mut impl Read,
    output: &mut W,
    workers: usize,
) -> Result<(), FrameError> {
    let workers = workers.max(1);
    // Bounded: a host that sends faster than the enclave works waits.
    let (work_tx, work_rx) = mpsc::sync_channel::<Vec<u8>>(workers * 2);
    let work_rx = Mutex::new(work_rx);
    let output = Mutex::new(output);
    // The first write error; the workers stop, the reader stops at the
    // next request.
    let failed: Mutex<Option<FrameError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (rx, output, failed) = (&work_rx, &output, &failed);
            s.spawn(move || {
                let codec = codec();
                loop {
                    let next = lock(rx).recv();
                    let Ok(payload) = next else { break };
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
        let codec = codec();
        let read = loop {
            if lock(&failed).is_some() {
                break Ok(());
            }
            match codec.read_kind(input, KIND_REQUEST) {
                Ok(p) => {
                    if work_tx.send(p).is_err() {
                        break Ok(());
                    }
                }
                Err(FrameError::Closed) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(work_tx);
        read
    })?;
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
