//! The enclave as a separate process (`hetee-enclave run`): what it does
//! with malformed or hostile frames on its stdin.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use hetee_proto::shared_memory::{
    Layout, Region, Side, SlotRef, KIND_REQUEST_SHARED, KIND_RESPONSE_SHARED,
};
use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_proto::{Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_hetee-enclave");

fn enclave_session(input: &[u8]) -> (std::process::ExitStatus, Vec<u8>, String) {
    enclave_session_with(&[], input)
}

fn enclave_session_with(
    args: &[&str],
    input: &[u8],
) -> (std::process::ExitStatus, Vec<u8>, String) {
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
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

/// A host's region of slots: a request in its slot is answered in the same
/// slot. The host as attacker names slots past the region, lengths past
/// the region's side, a slot that holds another request, a run of slots
/// that holds none, and a malformed reference:
/// each gets an error answer, nothing is read out of bounds, and the
/// enclave keeps serving.
#[test]
fn attack_hostile_slot_references_are_refused_and_good_ones_answered_in_their_slot() {
    let layout = Layout {
        slots: 2,
        slot_bytes: 4096,
    };
    let dir = tempfile::tempdir().unwrap();
    let (region, path) = Region::create(dir.path(), layout).unwrap();
    let status = encode_request(5, &Request::Status).unwrap();
    region.write(1, 1, Side::Request, &status).unwrap();
    let len = status.len() as u32;
    let c = codec();
    let mut input = Vec::new();
    // 6: no slot 2; 7: past the side (two slots of 4096 bytes); 8: slot 1
    // holds request 5; 9: a run of both slots, holding no request 9.
    for (id, slot, len) in [
        (5, 1, len),
        (6, 2, len),
        (7, 0, 8193),
        (8, 1, len),
        (9, 0, 4097),
    ] {
        let r = SlotRef { id, slot, len };
        input.extend(c.encode(KIND_REQUEST_SHARED, &r.encode()).unwrap());
    }
    input.extend(c.encode(KIND_REQUEST_SHARED, b"short").unwrap());
    let args = [
        "--shared-memory",
        path.to_str().unwrap(),
        "--shared-slots",
        "2",
        "--shared-slot-bytes",
        "4096",
    ];
    let (exit, out, err) = enclave_session_with(&args, &input);
    assert!(exit.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let mut answers = std::collections::BTreeMap::new();
    let mut in_slot = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let (f, used) = c.decode(&out[at..]).unwrap();
        at += used;
        let (id, resp) = if f.kind == KIND_RESPONSE_SHARED {
            let r = SlotRef::decode(&f.payload).unwrap();
            assert_eq!(r.slot, 1, "answered in another slot");
            in_slot.push(r.id);
            decode_response(&region.read(&r, Side::Response).unwrap()).unwrap()
        } else {
            assert_eq!(f.kind, KIND_RESPONSE);
            decode_response(&f.payload).unwrap()
        };
        answers.insert(id, resp);
    }
    assert!(
        matches!(answers.get(&5), Some(Response::Status(_))),
        "{answers:?}"
    );
    assert_eq!(
        in_slot,
        [5],
        "only the good request is answered in its slot"
    );
    let error = |id: u64| match answers.get(&id) {
        Some(Response::Error { message, .. }) => message.clone(),
        other => panic!("request {id}: expected an error, got {other:?}"),
    };
    assert!(error(6).contains("out of bounds"), "{}", error(6));
    assert!(error(7).contains("out of bounds"), "{}", error(7));
    assert!(error(8).contains("another request"), "{}", error(8));
    assert!(error(9).contains("another request"), "{}", error(9));
    assert!(error(0).contains("malformed"), "{}", error(0));
}

/// Without the region's file, or with a layout out of bounds, the enclave
/// stops with a message (the host then starts it without shared memory).
#[test]
fn an_unusable_region_stops_the_enclave_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (exit, _, err) = enclave_session_with(&["--shared-memory", missing.to_str().unwrap()], &[]);
    assert_eq!(exit.code(), Some(1), "{err}");
    assert!(err.contains("shared memory"), "{err}");
    let (exit, _, err) = enclave_session_with(&["--shared-slots", "0"], &[]);
    assert_eq!(exit.code(), Some(2), "{err}");
    assert!(err.contains("slots"), "{err}");
}
