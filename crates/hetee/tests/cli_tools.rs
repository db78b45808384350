//! The `hetee` binary's other commands and output: shell completions and
//! man pages, progress bars kept out of a pipe (and `--quiet`), and
//! `hetee plan --json`.

mod common;

use common::cli::*;
use tempfile::TempDir;

#[test]
fn completions_and_man_pages_are_generated() {
    let out = hetee(&["completions", "bash"]);
    assert!(out.status.success(), "{}", describe(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "infer", "run", "bench", "model"] {
        assert!(script.contains(sub), "the bash completion lacks {sub}");
    }
    let out = hetee(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
    let dir = TempDir::new().unwrap();
    let man = dir.path().join("man");
    let out = hetee(&["man", "--out", p(&man)]);
    assert!(out.status.success(), "{}", describe(&out));
    let page = std::fs::read_to_string(man.join("hetee-serve.1")).unwrap();
    assert!(
        page.contains(".TH") && page.contains("tls\\-cert"),
        "{page}"
    );
}

/// Progress bars go to stderr only on a terminal: a run whose stderr is a
/// pipe (as here) carries none, with or without `--quiet`, and still says
/// what it wrote.
#[test]
fn progress_bars_stay_out_of_a_pipe_and_quiet_is_accepted() {
    let (dir, x, c) = mnist_files();
    for quiet in [false, true] {
        let y = dir.path().join(format!("y{quiet}.npy"));
        let mut args = vec![
            "run",
            "--model",
            MNIST_ONNX,
            "--input",
            p(&x),
            "--calib",
            p(&c),
            "--output",
            p(&y),
        ];
        if quiet {
            args.insert(0, "--quiet");
        }
        let out = hetee(&args);
        assert!(out.status.success(), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        for bar in ["eta ", "elapsed", "calibrating on"] {
            assert!(!err.contains(bar), "a bar in a pipe ({bar}):\n{err}");
        }
        assert_eq!(read_f32(&y).0, vec![2, 10]);
    }
}

/// `hetee plan --json`: the same plan as the table, machine-readable; the
/// totals are the stages' sums.
#[test]
fn plan_prints_json() {
    let out = hetee(&["plan", "--model", "mnist", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = p["stages"].as_array().unwrap();
    assert!(!stages.is_empty());
    let host: f64 = stages.iter().map(|s| s["host_ms"].as_f64().unwrap()).sum();
    assert!((p["host_ms"].as_f64().unwrap() - host).abs() < 1e-9);
    assert!(stages.iter().all(|s| s["products"].as_u64().unwrap() >= 1));
    assert_eq!(p["batch"], 1);
    assert_eq!(p["degree"], 4096);
}
