//! The enclave as a separate process (`hetee-enclave run`): what it does
//! with malformed or hostile frames on its stdin.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_proto::{Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_hetee-enclave");

fn enclave_session(input: &[u8]) -> (std::process::ExitStatus, Vec<u8>, String) {
    let mut child = Command::new(BIN)
        .args(["run"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), out, err)
}

#[test]
fn malformed_request_gets_an_error_response_and_the_enclave_keeps_serving() {
    let c = codec();
    let mut input = c.encode(KIND_REQUEST, b"\xff\xff\xff garbage").unwrap();
    // A well-formed request for an unknown session after the garbage.
    let req = encode_request(
        7,
        &Request::StageResult {
            session: [42; 16],
            stage: 0,
            ciphertexts: vec![vec![1, 2, 3]],
        },
    )
    .unwrap();
    input.extend(c.encode(KIND_REQUEST, &req).unwrap());
    let (status, out, err) = enclave_session(&input);
    assert!(status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (f1, used) = c.decode(&out).unwrap();
    let (f2, _) = c.decode(&out[used..]).unwrap();
    assert_eq!((f1.kind, f2.kind), (KIND_RESPONSE, KIND_RESPONSE));
    // Answers come in any order, each tagged with its request's id (the
    // garbage's "id" is its first 8 bytes).
    let mut answers = [
        decode_response(&f1.payload).unwrap(),
        decode_response(&f2.payload).unwrap(),
    ];
    answers.sort_by_key(|(id, _)| u64::from(*id != 7));
    match &answers[0] {
        (7, Response::Error { message, .. }) => {
            assert!(message.contains("unknown or closed session"), "{message}")
        }
        other => panic!("expected an error to request 7, got {other:?}"),
    }
    match &answers[1] {
        (_, Response::Error { message, .. }) => {
            assert!(message.contains("malformed request"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn broken_stream_ends_the_enclave_with_a_message_not_a_panic() {
    let (status, _, err) = enclave_session(b"NOPE this is not a frame at all");
    assert!(!status.success());
    assert!(err.contains("hetee-enclave: stream"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // An oversized frame header is refused before allocating.
    let mut hdr = b"HTEE".to_vec();
    hdr.extend_from_slice(&1u16.to_le_bytes());
    hdr.push(KIND_REQUEST);
    hdr.extend_from_slice(&u32::MAX.to_le_bytes());
    hdr.extend_from_slice(&[0; 16]);
    let (status, _, err) = enclave_session(&hdr);
    assert!(!status.success());
    assert!(!err.contains("panicked"), "{err}");
}
