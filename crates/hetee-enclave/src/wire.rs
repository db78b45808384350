//! The enclave as its own process: requests and responses travel as
//! length-prefixed, versioned frames ([`hetee_attest::frame`]) over one byte
//! stream (the host uses the child's stdin/stdout), payloads in `postcard`.

use std::io::{Read, Write};

use hetee_attest::frame::{FrameCodec, DEFAULT_MAX_PAYLOAD};
use hetee_attest::Error as FrameError;

use crate::messages::{Request, Response};
use crate::Enclave;

/// Frame kind of a host -> enclave request.
pub const KIND_REQUEST: u8 = 0x10;
/// Frame kind of an enclave -> host response.
pub const KIND_RESPONSE: u8 = 0x11;

/// The frame codec both sides use.
pub fn codec() -> FrameCodec {
    FrameCodec::new(DEFAULT_MAX_PAYLOAD)
}

/// Encodes a request payload.
pub fn encode_request(r: &Request) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(r).map_err(|e| format!("cannot encode request: {e}"))
}

/// Decodes a response payload.
pub fn decode_response(b: &[u8]) -> Result<Response, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed enclave response: {e}"))
}

/// Serves requests from `input` until it closes. Malformed requests get a
/// [`Response::Error`]; only a broken stream ends the loop with an error.
pub fn serve(
    enclave: &mut Enclave,
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
        let resp = match postcard::from_bytes::<Request>(&payload) {
            Ok(req) => enclave.handle(req),
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
        };
        let bytes = postcard::to_allocvec(&resp).unwrap_or_else(|e| {
            postcard::to_allocvec(&Response::Error {
                message: format!("cannot encode response: {e}"),
            })
            .unwrap_or_default()
        });
        codec.write(output, KIND_RESPONSE, &bytes)?;
        output.flush().map_err(FrameError::from)?;
    }
}

/// `hetee enclave run`: serves a fresh enclave on stdin/stdout until stdin
/// closes.
pub fn serve_stdio() -> Result<(), FrameError> {
    let mut enclave = Enclave::new();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = std::io::BufReader::new(stdin.lock());
    let mut output = std::io::BufWriter::new(stdout.lock());
    serve(&mut enclave, &mut input, &mut output)
}
