//! The measured artifact is this small binary, and its identity is its own:
//! the measurement it attests is SHA-256 over its own bytes and config,
//! whatever the host says, and it carries no CLI, HTTP, ONNX, benchmark or
//! chart code.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use hetee_attest::{measure, StaticKeypair};
use hetee_proto::ids::he_params_from_bytes;
use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_proto::{EnclaveConfig, Request, Response};

const BIN: &str = env!("CARGO_BIN_EXE_hetee-enclave");

/// Runs the enclave with `args` on the given requests; its answers.
fn ask(args: &[&str], reqs: &[Request]) -> Vec<Response> {
    let c = codec();
    let mut input = Vec::new();
    for (id, r) in reqs.iter().enumerate() {
        input.extend(
            c.encode(KIND_REQUEST, &encode_request(id as u64, r).unwrap())
                .unwrap(),
        );
    }
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    // Answers come in any order, tagged with their request's id.
    let mut answers = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let (f, used) = c.decode(rest).unwrap();
        answers.push(decode_response(&f.payload).unwrap());
        rest = &rest[used..];
    }
    answers.sort_by_key(|(id, _)| *id);
    answers.into_iter().map(|(_, r)| r).collect()
}

fn he() -> hetee_he::HeConfig {
    hetee_he::HeConfig::for_accumulator_bound(1000).unwrap()
}

/// The measurement the enclave's platform attests for a new key set,
/// asked of one enclave process.
fn attested_measurement(args: &[&str]) -> [u8; 32] {
    let c = codec();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut call = |req: Request| {
        c.write(&mut stdin, KIND_REQUEST, &encode_request(1, &req).unwrap())
            .unwrap();
        stdin.flush().unwrap();
        decode_response(&c.read_kind(&mut stdout, KIND_RESPONSE).unwrap())
            .unwrap()
            .1
    };
    let owner = *StaticKeypair::generate().unwrap().public();
    let Response::KeysCreated { key_id, .. } = call(Request::CreateKeys { he: he(), owner }) else {
        panic!("CreateKeys refused");
    };
    let Response::Evidence { identity, evidence } = call(Request::Evidence { key_id }) else {
        panic!("Evidence refused");
    };
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let ev = hetee_attest::Evidence::decode(&evidence).unwrap();
    assert_eq!(ev.measurement.0, identity.measurement);
    assert_eq!(ev.report_data, identity.report_data());
    assert_eq!(identity.owner, owner);
    assert_eq!(he_params_from_bytes(&identity.he_params).unwrap(), he());
    identity.measurement
}

#[test]
fn the_attested_measurement_is_the_binarys_own() {
    let bytes = std::fs::read(BIN).unwrap();
    let config = EnclaveConfig::default();
    let want = measure(&bytes, &config.to_bytes());
    assert_eq!(attested_measurement(&["run"]), want.0);
    // The memory budget is part of the measured config.
    let small = EnclaveConfig {
        memory_budget_mib: 256,
    };
    let got = attested_measurement(&["run", "--memory-budget-mib", "256"]);
    assert_eq!(got, measure(&bytes, &small.to_bytes()).0);
    assert_ne!(got, want.0);
}

#[test]
fn the_binary_holds_no_cli_http_onnx_bench_or_chart_code() {
    let bytes = std::fs::read(BIN).unwrap();
    for needle in [
        "tract_onnx",
        "tract_core",
        "axum",
        "hyper",
        "clap_builder",
        "plotters",
        "indicatif",
        "hetee::cli",
        "hetee_server",
    ] {
        let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!found, "the enclave binary contains {needle:?}");
    }
    // And it is the enclave: it speaks the enclave protocol.
    assert!(matches!(
        ask(&["run"], &[Request::Status])[0],
        Response::Status(_)
    ));
}

#[test]
fn bad_arguments_and_unknown_platforms_get_a_clear_error() {
    for (args, says) in [
        (vec!["serve"], "usage"),
        (vec!["run", "--platform"], "needs a value"),
        (vec!["run", "--memory-budget-mib", "lots"], "not a number"),
        (vec!["run", "--memory-budget-mib", "1"], "config"),
        (vec!["run", "--platform", "quantum"], "quantum"),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
