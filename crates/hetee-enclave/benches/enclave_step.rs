//! The enclave's share of a query: one nonlinear step (decrypt, check,
//! unpack, bias + ReLU + max pool + requantize, lay out, pack, encrypt) on
//! an MNIST-sized stage (16x24x24 conv output -> 16x12x12 -> next conv).
//!
//! The model is registered and every query is opened over the attested
//! channel, as in production; only the `StageResult` of stage 0 is timed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};
use hetee_model::ir::{Layer, Model, Pads, Window};
use rand::{Rng, SeedableRng};

fn model() -> Model {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut w = |n: usize| {
        (0..n)
            .map(|_| r.random_range(-0.3f32..0.3))
            .collect::<Vec<_>>()
    };
    let conv = |m: usize, c: usize, k: usize, w: &mut dyn FnMut(usize) -> Vec<f32>| Layer::Conv2d {
        weight: w(m * c * k * k),
        bias: w(m),
        out_channels: m,
        in_channels: c,
        window: Window {
            kernel: (k, k),
            strides: (1, 1),
            pads: Pads::default(),
            dilations: (1, 1),
        },
    };
    Model {
        input_shape: vec![1, 28, 28],
        layers: vec![
            conv(16, 1, 5, &mut w),
            Layer::Relu,
            Layer::MaxPool(Window {
                kernel: (2, 2),
                strides: (2, 2),
                pads: Pads::default(),
                dilations: (1, 1),
            }),
            conv(32, 16, 5, &mut w),
        ],
        node_names: vec!["conv1".into(), "relu".into(), "pool".into(), "conv2".into()],
        inputs: Vec::new(),
    }
}

fn enclave_step(c: &mut Criterion) {
    let m = model();
    let calib: Vec<f32> = (0..4 * 784).map(|i| (i % 251) as f32 / 251.0).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let model_id = register(&enclave, &keys, &host).model_id;

    // One data provider's input and the host's (honest) stage-0 result on
    // it; every timed query sends the same input with the same seed.
    let dp = hello(&enclave, &keys, model_id).unwrap();
    let seed = dp.seed;
    let input = dp.encrypt(&keys.public_key, &calib[..784]);
    let out0 = host.evaluate(0, &input);
    enclave.handle(Request::CloseSession {
        session: dp.channel.session,
    });

    let mut g = c.benchmark_group("enclave");
    g.sample_size(20);
    g.bench_function("mnist_stage1_step", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Not timed: the channel, the hello and the query's start.
                let mut dp = hello(&enclave, &keys, model_id).unwrap();
                dp.seed = seed;
                let r = dp.start(&enclave, model_id, &input);
                assert!(
                    matches!(r, Response::QueryStarted { input: None, .. }),
                    "start failed: {}",
                    short(&r)
                );
                let session = dp.channel.session;
                let t = Instant::now();
                let r = enclave.handle(Request::StageResult {
                    session,
                    stage: 0,
                    ciphertexts: out0.clone(),
                });
                total += t.elapsed();
                match r {
                    Response::NextInput { ciphertexts, .. } => {
                        std::hint::black_box(ciphertexts);
                    }
                    other => panic!("step failed: {}", short(&other)),
                }
                // The session now waits for stage 1; close it so that open
                // sessions do not pile up to the enclave's limit.
                assert!(matches!(
                    enclave.handle(Request::CloseSession { session }),
                    Response::Closed
                ));
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, enclave_step);
criterion_main!(benches);
