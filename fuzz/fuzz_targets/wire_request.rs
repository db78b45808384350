//! Host -> enclave wire: frame decoding, `postcard` decoding of [`Request`]s
//! and [`Enclave::handle`] on whatever decodes. Nothing may panic.
//!
//! The input is read three ways:
//! - as one frame for `FrameCodec::decode` (1 MiB limit);
//! - as a byte stream for `stream::serve` (framed requests, the enclave's real loop);
//! - as up to four `postcard` requests back to back, handled in order by one
//!   fresh enclave on the simulated platform (measurement `[7; 32]`), so that
//!   e.g. `RestoreKeys` of a blob sealed by that platform followed by
//!   `Evidence` or `OpenChannel` is reachable.
#![no_main]

use hetee_attest::frame::FrameCodec;
use hetee_attest::platform::SimTee;
use hetee_attest::Measurement;
use hetee_enclave::{stream, Enclave, EnclaveConfig, Request};
use libfuzzer_sys::fuzz_target;

/// The measurement of the fuzzed enclave (the seeds seal to it).
const MEASUREMENT: Measurement = Measurement([7; 32]);

fn enclave() -> Enclave {
    Enclave::new(Box::new(SimTee::new(MEASUREMENT)), EnclaveConfig::default())
}

fuzz_target!(|data: &[u8]| {
    let codec = FrameCodec::new(1 << 20);
    if let Ok((frame, used)) = codec.decode(data) {
        assert!(used <= data.len());
        assert_eq!(used, hetee_attest::frame::HEADER_LEN + frame.payload.len());
        let again = codec.encode(frame.kind, &frame.payload).expect("re-encode");
        assert_eq!(&again[..], &data[..used]);
    }
    let _ = codec.read(&mut &data[..]);

    if data.starts_with(&hetee_attest::frame::MAGIC) {
        let mut out = Vec::new();
        let _ = stream::serve(&enclave(), &mut &data[..], &mut out, 2);
    }

    let enclave = enclave();
    let mut rest = data;
    for _ in 0..4 {
        let Ok((req, tail)) = postcard::take_from_bytes::<Request>(rest) else {
            break;
        };
        let _ = enclave.handle(req);
        rest = tail;
    }
});
