//! How host ↔ enclave messages travel: length-prefixed, versioned frames
//! ([`hetee_attest::frame`]) over one byte stream (the host uses the enclave
//! process's stdin/stdout). Each payload is a request id, then the message
//! in `postcard`: the enclave works on several requests at once and answers
//! each, tagged with its id, as soon as it is done.

use hetee_attest::frame::{FrameCodec, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use serde::Serialize;

use crate::host::{Request, Response};

/// Frame kind of a host -> enclave request.
pub const KIND_REQUEST: u8 = 0x10;
/// Frame kind of an enclave -> host response.
pub const KIND_RESPONSE: u8 = 0x11;

/// The frame codec both sides use.
pub fn codec() -> FrameCodec {
    FrameCodec::new(DEFAULT_MAX_PAYLOAD)
}

/// Bytes of the request id at the start of every payload.
pub const ID_BYTES: usize = 8;

fn tagged(id: u64, body: Result<Vec<u8>, postcard::Error>, what: &str) -> Result<Vec<u8>, String> {
    let body = body.map_err(|e| format!("cannot encode {what}: {e}"))?;
    let mut out = Vec::with_capacity(ID_BYTES + body.len());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Bytes of the payload a frame of `msg` carries (the id, then `msg` in
/// `postcard`), counted without encoding it; refused over the frame limit,
/// as a frame of it would be.
fn payload_len(msg: &impl Serialize, what: &str) -> Result<usize, String> {
    let len = postcard::experimental::serialized_size(msg)
        .map_err(|e| format!("cannot encode {what}: {e}"))?
        .saturating_add(ID_BYTES);
    codec()
        .encode_header(0, len)
        .map_err(|e| format!("cannot send {what}: {e}"))?;
    Ok(len)
}

/// Bytes of the payload of request `r`'s frame ([`request_frame`]).
pub fn request_len(r: &Request) -> Result<usize, String> {
    payload_len(r, "request")
}

/// Bytes of the payload of response `r`'s frame ([`response_frame`]).
pub fn response_len(r: &Response) -> Result<usize, String> {
    payload_len(r, "response")
}

/// A whole frame of `kind` in one buffer, allocated once at its size: the
/// header, the id, then `msg` serialized in place. The stream gets it in
/// one write, so the reader is woken once per message, not once for the
/// header and again for the body.
fn frame(kind: u8, id: u64, msg: &impl Serialize, what: &str) -> Result<Vec<u8>, String> {
    let len = payload_len(msg, what)?;
    let header = codec()
        .encode_header(kind, len)
        .map_err(|e| format!("cannot send {what}: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&header);
    out.extend_from_slice(&id.to_le_bytes());
    postcard::to_extend(msg, out).map_err(|e| format!("cannot encode {what}: {e}"))
}

/// The whole frame of request `r` with id `id` (header and payload, as
/// [`encode_request`] makes the payload); refused over the frame limit.
pub fn request_frame(id: u64, r: &Request) -> Result<Vec<u8>, String> {
    frame(KIND_REQUEST, id, r, "request")
}

/// The whole frame of the response `r` to request `id`.
pub fn response_frame(id: u64, r: &Response) -> Result<Vec<u8>, String> {
    frame(KIND_RESPONSE, id, r, "response")
}

/// Splits a payload into its request id (little-endian) and body; a
/// payload too short for an id has id 0 and no body.
pub fn split_id(b: &[u8]) -> (u64, Option<&[u8]>) {
    match b.split_first_chunk::<ID_BYTES>() {
        Some((id, body)) => (u64::from_le_bytes(*id), Some(body)),
        None => (0, None),
    }
}

/// Encodes a request payload: the id the host matches the answer by, then
/// the request. Requests may be answered in any order.
pub fn encode_request(id: u64, r: &Request) -> Result<Vec<u8>, String> {
    tagged(id, postcard::to_allocvec(r), "request")
}

/// Decodes a request payload into its id and the request.
pub fn decode_request(b: &[u8]) -> (u64, Result<Request, String>) {
    match split_id(b) {
        (id, Some(body)) => (
            id,
            postcard::from_bytes(body).map_err(|e| format!("malformed request: {e}")),
        ),
        (id, None) => (id, Err("malformed request: no request id".into())),
    }
}

/// Encodes a response payload to request `id`.
pub fn encode_response(id: u64, r: &Response) -> Result<Vec<u8>, String> {
    tagged(id, postcard::to_allocvec(r), "response")
}

/// Decodes a response payload into the id of its request and the response.
pub fn decode_response(b: &[u8]) -> Result<(u64, Response), String> {
    match split_id(b) {
        (id, Some(body)) => postcard::from_bytes(body)
            .map(|r| (id, r))
            .map_err(|e| format!("malformed enclave response: {e}")),
        (_, None) => Err("malformed enclave response: no request id".into()),
    }
}
