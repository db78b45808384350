//! How host ↔ enclave messages travel: length-prefixed, versioned frames
//! ([`hetee_attest::frame`]) over one byte stream (the host uses the enclave
//! process's stdin/stdout), payloads in `postcard`.

use hetee_attest::frame::{FrameCodec, DEFAULT_MAX_PAYLOAD};

use crate::host::{Request, Response};

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

/// Decodes a request payload.
pub fn decode_request(b: &[u8]) -> Result<Request, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed request: {e}"))
}

/// Encodes a response payload.
pub fn encode_response(r: &Response) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(r).map_err(|e| format!("cannot encode response: {e}"))
}

/// Decodes a response payload.
pub fn decode_response(b: &[u8]) -> Result<Response, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed enclave response: {e}"))
}
