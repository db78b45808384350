//! The enclave's share of a query: one nonlinear step (decrypt, unpack,
//! bias + ReLU + max pool + requantize, lay out, pack, encrypt) on an
//! MNIST-sized stage (16x24x24 conv output -> 16x12x12 -> next conv).

use criterion::{criterion_group, criterion_main, Criterion};
use fhe::bfv::{Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_enclave::{Enclave, Request, Response, Schedule};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::Evaluator;
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
            }),
            conv(32, 16, 5, &mut w),
        ],
        node_names: vec!["conv1".into(), "relu".into(), "pool".into(), "conv2".into()],
    }
}

fn enclave_step(c: &mut Criterion) {
    let m = model();
    let calib: Vec<f32> = (0..4 * 784).map(|i| (i % 251) as f32 / 251.0).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let mut enclave = Enclave::new();
    // Local mode (in-process, not Init'ed): register directly.
    let (model_id, pk) = match enclave.handle(Request::RegisterLocal {
        schedule: Box::new(schedule.clone()),
        checks: vec![],
    }) {
        Response::Registered {
            model_id,
            public_key,
            ..
        } => (model_id, public_key),
        _ => panic!("register failed"),
    };
    let par = schedule.he.build().unwrap();
    let pk = PublicKey::from_bytes(&pk, &par).unwrap();
    let enc = |polys: Vec<Vec<i64>>| {
        polys
            .iter()
            .map(|p| {
                let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), &par).unwrap();
                pk.try_encrypt(&pt, &mut rand::rng()).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let x = schedule.input.quantize(&calib[..784]).unwrap();
    let inputs = enc(schedule.pack_stage_input(0, &[x]).unwrap());
    let weights = enc(schedule.pack_stage_weights(0, &q.stages[0].weight).unwrap());
    let ev = Evaluator::new(&par).unwrap();
    let outs = ev
        .evaluate_plan(
            &schedule.stages[0].packing.product_plan(),
            &ev.extend_all(&inputs).unwrap(),
            &ev.extend_all(&weights).unwrap(),
        )
        .unwrap();
    let bytes: Vec<Vec<u8>> = outs.iter().map(ciphertext_to_bytes).collect();
    assert!(ciphertext_from_bytes(&bytes[0], &par, 3).is_ok());
    let mut g = c.benchmark_group("enclave");
    g.sample_size(20);
    g.bench_function("mnist_stage1_step", |b| {
        b.iter(|| {
            let Response::LocalQueryStarted { session } =
                enclave.handle(Request::StartLocalQuery {
                    model_id,
                    input: vec![],
                    seed: None,
                })
            else {
                panic!("start failed")
            };
            let n = match enclave.handle(Request::StageResult {
                session,
                stage: 0,
                ciphertexts: bytes.clone(),
            }) {
                Response::NextInput { ciphertexts, .. } => ciphertexts.len(),
                _ => panic!("step failed"),
            };
            // The session now waits for stage 1; close it so that open
            // sessions do not pile up to the enclave's limit.
            assert!(matches!(
                enclave.handle(Request::CloseSession { session }),
                Response::Closed
            ));
            n
        })
    });
    g.finish();
}

criterion_group!(benches, enclave_step);
criterion_main!(benches);
