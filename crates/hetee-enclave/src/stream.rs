//! The enclave's one byte stream: frames in, frames out
//! ([`hetee_proto::wire`]). The enclave process is a plain `main` around
//! [`serve`] on its stdin/stdout.

use std::io::{Read, Write};

use hetee_attest::Error as FrameError;
use hetee_proto::wire::{codec, decode_request, encode_response, KIND_REQUEST, KIND_RESPONSE};

use crate::messages::Response;
use crate::Enclave;

/// Serves requests from `input` until it closes. Malformed requests get a
/// [`Response::Error`]; only a broken stream ends the loop with an error.
pub fn serve(
    enclave: &Enclave,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<(), FrameError> {
    let codec = codec();
    loop {
        let payload = match codec.read_kind(input, KIND_REQUEST) {
            Ok(p) => p,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let resp = match decode_request(&payload) {
            Ok(req) => enclave.handle(req),
            Err(e) => Response::error(e),
        };
        let bytes = encode_response(&resp)
            .or_else(|e| encode_response(&Response::error(e)))
            .unwrap_or_default();
        codec.write(output, KIND_RESPONSE, &bytes)?;
        output.flush().map_err(FrameError::from)?;
    }
}
