//! A command whose reader stops early (`hetee plan | head`) exits quietly
//! instead of panicking on the closed pipe.

use std::process::{Command, Stdio};

#[test]
fn plan_into_a_closed_pipe_exits_quietly() {
    for args in [
        &["plan", "--model", "e2dm", "--quiet"][..],
        &["plan", "--model", "e2dm", "--json", "--quiet"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hetee"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
