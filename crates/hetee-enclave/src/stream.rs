//! The enclave's one byte stream: frames in, frames out
//! ([`hetee_proto::wire`]). The enclave process is a plain `main` around
//! [`serve`] on its stdin/stdout.
//!
//! One thread reads requests, `workers` threads handle them (the enclave
//! is shared: see [`Enclave::handle`]), and one thread writes each answer,
//! tagged with its request's id, as soon as it is ready. With one worker,
//! answers come in request order.

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
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(), FrameError> {
            let codec = codec();
            for bytes in out_rx {
                codec.write(output, KIND_RESPONSE, &bytes)?;
                output.flush().map_err(FrameError::from)?;
            }
            Ok(())
        });
        for _ in 0..workers {
            let (rx, tx) = (&work_rx, out_tx.clone());
            s.spawn(move || loop {
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
                if tx.send(bytes).is_err() {
                    break;
                }
            });
        }
        drop(out_tx);
        let codec = codec();
        let read = loop {
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
        let written = writer.join().unwrap_or(Err(FrameError::Closed));
        read.and(written)
    })
}
