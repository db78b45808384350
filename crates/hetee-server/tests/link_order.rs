//! The host's link to the enclave process when answers come out of order:
//! every caller gets its own answer, whoever reads it from the stream, and
//! a call that is never answered times out while the calls around it get
//! theirs.
//!
//! The "enclave" here is a script speaking the frame protocol: it answers
//! each request with a `Status` whose `keysets` is the last byte of the
//! request (the last byte of the session a `CloseSession` names), in the
//! order its mode says.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hetee_proto::host::Status;
use hetee_proto::wire::encode_response;
use hetee_proto::{EnclaveConfig, Request, Response};
use hetee_server::launcher::{ChildProcess, EnclaveLink, LaunchSpec, LinkError};

const SCRIPT: &str = r#"#!/usr/bin/env python3
import struct, sys, time
prefix, rest, mode = bytes.fromhex(sys.argv[-3]), bytes.fromhex(sys.argv[-2]), sys.argv[-1]
inp, out = sys.stdin.buffer, sys.stdout.buffer

def read():
    h = inp.read(11)
    if len(h) < 11:
        sys.exit(0)
    p = inp.read(struct.unpack('<I', h[7:11])[0])
    return h, p[:8], p[-1] if len(p) > 8 else 0

def answer(h, rid, token):
    body = rid + prefix + bytes([token]) + rest
    out.write(h[:6] + b'\x11' + struct.pack('<I', len(body)) + body)
    out.flush()

answer(*read())  # the Status the host sends at start
if mode.startswith('reverse'):
    n = int(mode[len('reverse'):])
    while True:
        held = [read() for _ in range(n)]
        for r in reversed(held):
            time.sleep(0.005)
            answer(*r)
else:  # 'never99': every request at once, except token 99 never
    while True:
        r = read()
        if r[2] != 99:
            answer(*r)
"#;

/// A script "enclave" in `mode`, with the link's timeout.
fn scripted(dir: &std::path::Path, mode: &str, timeout: Duration) -> ChildProcess {
    // Status { keysets: 0, .. } without its id: the bytes before the 0 of
    // `keysets` (found where keysets 1 differs), and those after it.
    let with = |keysets| {
        encode_response(
            0,
            &Response::Status(Status {
                keysets,
                ..Status::default()
            }),
        )
        .unwrap()
    };
    let (zero, one) = (with(0), with(1));
    let at = (0..zero.len()).find(|&i| zero[i] != one[i]).unwrap();
    let (prefix, rest) = (&zero[8..at], &zero[at + 1..]);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let p = dir.join(format!("enclave-{mode}"));
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(SCRIPT.as_bytes()).unwrap();
    drop(f);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The script takes its last three arguments; the host adds its own first.
    let wrapper = dir.join(format!("run-{mode}"));
    let mut f = std::fs::File::create(&wrapper).unwrap();
    writeln!(
        f,
        "#!/bin/sh\nexec {} \"$@\" {} {} {mode}",
        p.display(),
        hex(prefix),
        hex(rest)
    )
    .unwrap();
    drop(f);
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = LaunchSpec::new(Some(wrapper), "sim", EnclaveConfig::default()).unwrap();
    spec.timeout = timeout;
    ChildProcess::spawn(&spec).unwrap()
}

/// Calls `CloseSession` on a session ending in `token`; the token answered.
fn call(link: &ChildProcess, token: u8) -> Result<usize, LinkError> {
    let mut session = [0u8; 16];
    session[15] = token;
    match link.call(Request::CloseSession { session })? {
        (Response::Status(s), _) => Ok(s.keysets),
        (other, _) => panic!("unexpected answer {other:?}"),
    }
}

/// The scripted "enclave" in `mode` in a fresh directory, or `None` (the
/// test skips) where there is no `python3`.
fn scripted_link(mode: &str, timeout: Duration) -> Option<(tempfile::TempDir, Arc<ChildProcess>)> {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no python3");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let link = Arc::new(scripted(dir.path(), mode, timeout));
    Some((dir, link))
}

#[test]
fn answers_in_reverse_order_each_reach_their_own_caller() {
    let Some((_dir, link)) = scripted_link("reverse8", Duration::from_secs(20)) else {
        return;
    };
    for round in 0..3u8 {
        let calls: Vec<_> = (0..8u8)
            .map(|i| {
                let link = link.clone();
                let token = round * 8 + i + 1;
                std::thread::spawn(move || (token, call(&link, token)))
            })
            .collect();
        for c in calls {
            let (token, got) = c.join().unwrap();
            assert_eq!(
                got.unwrap(),
                usize::from(token),
                "a caller got another's answer"
            );
        }
    }
}

#[test]
fn a_call_never_answered_times_out_while_the_others_get_theirs() {
    let Some((_dir, link)) = scripted_link("never99", Duration::from_millis(1500)) else {
        return;
    };
    let t0 = Instant::now();
    let hung = {
        let link = link.clone();
        std::thread::spawn(move || call(&link, 99))
    };
    std::thread::sleep(Duration::from_millis(50));
    // The hung call may be the one reading: it hands every other answer on.
    for token in 1..=40u8 {
        assert_eq!(call(&link, token).unwrap(), usize::from(token));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    let err = hung.join().unwrap().unwrap_err();
    assert!(matches!(err, LinkError::TimedOut(1)), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The timeout killed the enclave: the next call fails clearly.
    let next = call(&link, 5).unwrap_err();
    assert!(matches!(next, LinkError::Dead(_)), "{next}");
}
