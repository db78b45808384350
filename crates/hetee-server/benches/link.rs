//! The host's link to the enclave process, one call at a time: a `Status`
//! (no payload) and a 96 KiB and a 420 KiB stage result the enclave refuses at once (no
//! running query), each a full round trip through the real
//! `hetee-enclave` binary (build it first: `cargo build --release -p
//! hetee-enclave-bin`).
//!
//! `leader_follower` is the link as it is ([`ChildProcess`]: one write per
//! frame, the caller reads its own answer). `reader_thread` is the host
//! side it replaced, kept here to compare: the frame written as a header
//! and a payload through a `BufWriter`, and a reader thread that reads
//! every answer and hands it to the caller over a channel.

use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use criterion::{criterion_group, criterion_main, Criterion};
use hetee_proto::wire::{codec, decode_response, encode_request, KIND_REQUEST, KIND_RESPONSE};
use hetee_proto::{EnclaveConfig, Request, Response};
use hetee_server::launcher::{find_enclave_binary, ChildProcess, EnclaveLink, LaunchSpec};

/// The old host side: a reader thread and a channel.
struct ReaderThread {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    answers: Receiver<Response>,
}

impl ReaderThread {
    fn spawn(spec: &LaunchSpec) -> Self {
        let mut child = Command::new(&spec.program)
            .args(spec.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the enclave binary starts");
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            while let Ok(p) = codec().read_kind(&mut r, KIND_RESPONSE) {
                let (_, resp) = decode_response(&p).expect("a well-formed answer");
                if tx.send(resp).is_err() {
                    return;
                }
            }
        });
        ReaderThread {
            child,
            stdin: BufWriter::new(stdin),
            answers,
        }
    }

    fn call(&mut self, id: u64, req: &Request) -> Response {
        let payload = encode_request(id, req).unwrap();
        codec()
            .write(&mut self.stdin, KIND_REQUEST, &payload)
            .unwrap();
        self.stdin.flush().unwrap();
        self.answers.recv().expect("an answer")
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stage result of `n` ciphertexts of `kib` KiB each, for a session the
/// enclave does not know (it refuses at once).
fn refused_stage_result(n: usize, kib: usize) -> Request {
    Request::StageResult {
        session: [7u8; 16],
        stage: 0,
        ciphertexts: (0..n).map(|i| vec![i as u8; kib << 10]).collect(),
    }
}

fn link(c: &mut Criterion) {
    let Ok(program) = find_enclave_binary() else {
        eprintln!("no hetee-enclave binary: `cargo build --release -p hetee-enclave-bin` first");
        return;
    };
    let spec = LaunchSpec::new(Some(program), "sim", EnclaveConfig::default()).unwrap();
    let new = ChildProcess::spawn(&spec).unwrap();
    let mut old = ReaderThread::spawn(&spec);
    let stage = refused_stage_result(2, 48);
    // MNIST's largest latency stage result: 5 degree-2 ciphertexts of 84 KiB.
    let mnist = refused_stage_result(5, 84);
    let mut id = 1u64;
    let mut g = c.benchmark_group("enclave_link_round_trip");
    g.bench_function("status_leader_follower", |b| {
        b.iter(|| {
            assert!(matches!(
                new.call(Request::Status),
                Ok((Response::Status(_), _))
            ))
        })
    });
    g.bench_function("status_reader_thread", |b| {
        b.iter(|| {
            id += 1;
            assert!(matches!(
                old.call(id, &Request::Status),
                Response::Status(_)
            ))
        })
    });
    g.bench_function("96KiB_refused_leader_follower", |b| {
        b.iter(|| {
            assert!(matches!(
                new.call(stage.clone()),
                Ok((Response::Error { .. }, _))
            ))
        })
    });
    g.bench_function("420KiB_refused_leader_follower", |b| {
        b.iter(|| {
            assert!(matches!(
                new.call(mnist.clone()),
                Ok((Response::Error { .. }, _))
            ))
        })
    });
    g.bench_function("96KiB_refused_reader_thread", |b| {
        b.iter(|| {
            id += 1;
            assert!(matches!(old.call(id, &stage), Response::Error { .. }))
        })
    });
    g.finish();
}

criterion_group!(benches, link);
criterion_main!(benches);
