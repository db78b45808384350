//! Shared helpers for the deployment tests: a `hetee serve` child process
//! on a loopback port with a temp data dir, and the bundled MNIST data.
#![allow(dead_code)]

pub mod cli;
pub mod deploy;
pub mod relay;
pub mod replicas;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod images;

pub const BIN: &str = env!("CARGO_BIN_EXE_hetee");

/// Runs `hetee` with arguments.
pub fn hetee(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run hetee")
}

/// stdout and stderr of a run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The measurement clients pin: `hetee enclave measure`.
pub fn measurement() -> String {
    let out = hetee(&["enclave", "measure"]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("a measurement line")
        .trim()
        .to_string()
}

/// A running `hetee serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub stderr: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `hetee serve` on a free loopback port.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, Command::new(BIN))
    }

    /// Starts `hetee serve` on a free loopback port with extra serve
    /// arguments (e.g. TLS).
    pub fn start_with_args(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_inner(data_dir, Command::new(BIN), extra)
    }

    /// Starts `cmd` (which must exec `hetee`) with the serve arguments.
    pub fn start_with(data_dir: &Path, cmd: Command) -> Server {
        Self::start_inner(data_dir, cmd, &[])
    }

    fn start_inner(data_dir: &Path, mut cmd: Command, extra: &[&str]) -> Server {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hetee serve");
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut addr = None;
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    let a = l
                        .strip_prefix("listening on http://")
                        .or_else(|| l.strip_prefix("listening on https://"));
                    if let Some(a) = a {
                        addr = Some(a.trim().to_string());
                        break;
                    }
                }
                _ => break,
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start: {}", stderr.join().unwrap());
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stderr: Some(stderr),
        }
    }

    /// Stops the server and returns its log.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }

    /// `GET /v1/health` as JSON.
    pub fn health(&self) -> serde_json::Value {
        let mut r = ureq::get(&format!("http://{}/v1/health", self.addr))
            .call()
            .expect("health");
        r.body_mut().read_json().expect("health json")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gunzip(path: &str) -> Vec<u8> {
    let f = std::fs::File::open(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The first `n` MNIST test images, scaled to [0, 1], flat.
pub fn mnist_images(n: usize) -> Vec<f32> {
    mnist_pixels(n).iter().map(|&b| b as f32 / 255.0).collect()
}

/// The pixels (0–255) of the first `n` MNIST test images, 28 x 28 each.
pub fn mnist_pixels(n: usize) -> Vec<u8> {
    let raw = gunzip("../../data/mnist/t10k-images-idx3-ubyte.gz");
    raw[16..16 + n * 784].to_vec()
}

/// Writes a float32 `.npy`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    for v in data {
        b.extend(v.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// The public key (64 hex digits) of the client key in `path`, created if
/// missing: what an owner lists in `--allow-clients`.
pub fn public_key_hex(path: &Path) -> String {
    let k = hetee::client::channel::load_or_create_key(path).expect("client key");
    hetee_proto::ids::id_hex(k.public())
}

/// The model id a successful `hetee model upload` printed on its last line.
pub fn model_id_of(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(id.len(), 32, "model id line: {id:?}");
    id
}

/// Uploads `model` (`mnist`, `e2dm` or an ONNX file) as the owner whose
/// long-term key is in `owner_key` (created if missing); returns the model id.
pub fn upload_as(
    addr: &str,
    measurement: &str,
    model: &str,
    owner_key: &Path,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "model",
        "upload",
        "--server",
        addr,
        "--model",
        model,
        "--expect-measurement",
        measurement,
        "--allow-sim",
        "--client-key",
        owner_key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    model_id_of(&hetee(&args))
}

/// Uploads the bundled MNIST model with the CLI as the owner in
/// `owner_key`; returns the model id.
pub fn upload_mnist(addr: &str, measurement: &str, owner_key: &Path) -> String {
    upload_as(addr, measurement, "mnist", owner_key, &[])
}

/// `hetee infer` of `x` into `y`, with extra flags (e.g. `--client-key`).
pub fn infer(
    addr: &str,
    measurement: &str,
    id: &str,
    x: &Path,
    y: &Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "infer",
        "--server",
        addr,
        "--model-id",
        id,
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--expect-measurement",
        measurement,
        "--allow-sim",
    ];
    args.extend_from_slice(extra);
    hetee(&args)
}

/// `hetee run --plaintext` of `x` into `y` (the bit-exact reference).
pub fn run_plaintext(model: &str, x: &Path, y: &Path) {
    let out = hetee(&[
        "run",
        "--model",
        model,
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--plaintext",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Runs `hetee serve` with `extra` arguments on a free loopback port, expecting it to exit
/// (fail at start) within two minutes; its output. Panics if it keeps serving.
pub fn serve_exit(data_dir: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hetee serve");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().expect("wait for hetee serve").is_some() {
            return child.wait_with_output().expect("hetee serve output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("hetee serve output");
    panic!("hetee serve {extra:?} kept running: {}", describe(&out));
}
