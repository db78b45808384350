//! A hung enclave: the host kills it after the timeout, the call fails with
//! a clear message, and the next call starts a fresh enclave.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hetee_proto::EnclaveConfig;
use hetee_server::launcher::{ChildProcess, LaunchSpec, LinkError};
use hetee_server::store::RedbStore;
use hetee_server::supervisor::{CallError, Launch, Supervisor};

/// An "enclave" that keeps its stream open and never answers.
fn hung_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("hung-enclave");
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "#!/bin/sh\nexec sleep 1000").unwrap();
    drop(f);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn spec(program: std::path::PathBuf, timeout: Duration) -> LaunchSpec {
    let mut s = LaunchSpec::new(Some(program), "sim", EnclaveConfig::default()).unwrap();
    s.timeout = timeout;
    s
}

#[test]
fn a_hung_enclave_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let err = ChildProcess::spawn(&spec(hung_binary(dir.path()), Duration::from_secs(1)))
        .err()
        .expect("a hung enclave was accepted");
    assert!(matches!(err, LinkError::TimedOut(1)), "{err}");
    assert!(
        err.to_string().contains("did not answer within 1 s"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_supervisor_gives_up_on_a_hung_enclave_with_the_timeout_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("data")).unwrap());
    let t0 = Instant::now();
    let err = Supervisor::start(
        Launch::Process(spec(hung_binary(dir.path()), Duration::from_millis(500))),
        store,
    )
    .err()
    .expect("the supervisor started a hung enclave");
    assert!(matches!(err, LinkError::TimedOut(_)), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The error as the API reports it (503 with the message).
    let api: hetee_server::app::ApiError = CallError::Link(err).into();
    assert_eq!(api.status, 503);
    assert!(api.message.contains("did not answer"), "{}", api.message);
}
