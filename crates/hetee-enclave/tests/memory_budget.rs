//! The enclave's memory budget, counted by the allocator: key sets and
//! stages over it are refused and rolled back, and a refused restore keeps
//! what was loaded. These tests run one at a time (`exclusive`).
mod common;

use common::session_fixtures::*;
use common::*;
use hetee_enclave::budget;
use hetee_enclave::messages::{model_id, ModelTerms};
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};
use hetee_he::HeConfig;
use hetee_model::ir::{Layer, Model, Pads, Window};

// The budget is enforced only with the counting allocator installed.
#[global_allocator]
static METER: budget::Meter = budget::Meter;

// --- Memory budget -------------------------------------------------------

const SMALL: EnclaveConfig = EnclaveConfig {
    memory_budget_mib: 16,
};

#[test]
fn keys_over_the_memory_budget_are_refused_and_rolled_back() {
    let _g = exclusive();
    let (q, _) = tiny_model();
    let he4 = Schedule::compile(&q, 1).unwrap().he;
    let he8 = HeConfig::for_accumulator_bound(1 << 40).unwrap();
    assert_eq!((he4.degree, he8.degree), (4096, 8192));

    let e = attested_enclave(MEASUREMENT, SMALL);
    assert_eq!(status(&e).memory_budget, 16 << 20);
    // N = 4096 keys fit (about 8 MiB).
    let keys = create_keys(&e, &he4);
    assert!(budget::peak() < 16 << 20);
    let before = status(&e);
    assert_eq!(before.keysets, 1);

    // N = 8192 keys take about 60 MiB.
    let msg = error_of(e.handle(Request::CreateKeys {
        he: he8.clone(),
        owner: [1; 32],
    }));
    assert!(msg.contains("memory budget of 16 MiB exceeded"), "{msg}");
    assert!(budget::peak() > 16 << 20);
    let after = status(&e);
    assert_eq!(after.keysets, 1);
    assert!(
        after.memory_current < before.memory_current + (1 << 20),
        "not freed: {before:?} -> {after:?}"
    );
    // Still serving the key set it has.
    assert_eq!(identity(&e, keys.key_id).public_key, keys.public_key);
    drop(e);

    // The same request is fine with the default budget.
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let r = e.handle(Request::CreateKeys {
        he: he8,
        owner: [1; 32],
    });
    assert!(matches!(r, Response::KeysCreated { .. }), "{}", short(&r));
}

/// An MNIST-sized CNN: conv 5x5 (16) -> ReLU -> max pool -> conv 5x5 (32)
/// -> ReLU -> dense as a conv (10).
fn mnist_like() -> (hetee_model::QuantModel, Vec<f32>) {
    let mut seed = 1u64;
    let mut w = |n: usize| {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect::<Vec<_>>()
    };
    let mut conv = |m: usize, c: usize, k: usize| Layer::Conv2d {
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
    let layers = vec![
        conv(16, 1, 5),
        Layer::Relu,
        Layer::MaxPool(Window {
            kernel: (2, 2),
            strides: (2, 2),
            pads: Pads::default(),
            dilations: (1, 1),
        }),
        conv(32, 16, 5),
        Layer::Relu,
        conv(10, 32, 8),
    ];
    let m = Model {
        input_shape: vec![1, 28, 28],
        node_names: (0..layers.len()).map(|i| format!("l{i}")).collect(),
        inputs: Vec::new(),
        layers,
    };
    let calib: Vec<f32> = (0..4 * 784).map(|i| (i % 251) as f32 / 251.0).collect();
    (
        hetee_model::quantize(&m, &calib).unwrap(),
        calib[..784].to_vec(),
    )
}

#[test]
fn a_stage_over_the_memory_budget_closes_its_session() {
    let _g = exclusive();
    let (q, x) = mnist_like();
    // 16 images per query: stage 0 has 56 output ciphertexts, and the
    // enclave's step on them needs several MiB on top of its key set.
    let schedule = Schedule::compile(&q, 16).unwrap();
    assert_eq!(schedule.he.degree, 4096);

    let e = attested_enclave(MEASUREMENT, SMALL);
    let keys = create_keys(&e, &schedule.he);
    // The host's copy of the model lives in this process too: register with
    // its commitment, then drop it so it does not count against the budget.
    let (commitment, weights) = {
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        (host.commitment(), host.plain_weights.clone())
    };
    let msg = registration(
        &keys,
        commitment,
        schedule.clone(),
        &weights,
        ModelTerms::default(),
    );
    let opened = connect(&e, &keys, &msg).unwrap();
    let id = opened.registered.unwrap().model_id;
    let digest =
        hetee_enclave::messages::registration_digest(&schedule, &weights, &ModelTerms::default());
    assert_eq!(id, model_id(&keys.key_id, &commitment, &digest));
    let mut dp = hello(&e, &keys, id).unwrap();
    let input = dp.encrypt(&keys.public_key, &x);
    let r = dp.start(&e, id, &input);
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let session = dp.channel.session;

    // The host evaluates stage 0 (same seeded weights, same commitment).
    let out0 = {
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        assert_eq!(host.commitment(), commitment);
        host.evaluate(0, &input)
    };
    assert_eq!(out0.len(), schedule.stages[0].packing.output_count());
    let before = status(&e);
    assert_eq!((before.keysets, before.models, before.sessions), (1, 1, 1));
    assert!(before.memory_current < 16 << 20, "{before:?}");

    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0.clone(),
    }));
    assert!(msg.contains("memory budget of 16 MiB exceeded"), "{msg}");
    assert!(budget::peak() > 16 << 20);
    let after = status(&e);
    assert_eq!((after.keysets, after.models, after.sessions), (1, 1, 0));
    assert!(
        after.memory_current < before.memory_current + (1 << 20),
        "not freed: {before:?} -> {after:?}"
    );
    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
}

/// Rolling back a request that went over the budget must not remove state
/// that existed before it. Here a RestoreKeys of a key set that is already
/// loaded goes over the budget, and `Enclave::roll_back` removes the key set
/// by its id: the one loaded earlier is gone too.
#[test]
fn a_refused_restore_keeps_what_was_loaded() {
    let _g = exclusive();
    let (q, _) = tiny_model();
    let he = Schedule::compile(&q, 1).unwrap().he;
    // Room for two key sets (about 8 MiB each), not three.
    let e = attested_enclave(
        MEASUREMENT,
        EnclaveConfig {
            memory_budget_mib: 20,
        },
    );
    let a = create_keys(&e, &he);
    let b = create_keys(&e, &he);
    assert_eq!(status(&e).keysets, 2);
    // About 16 MiB are in use; restoring A again needs about 8 more.
    let msg = error_of(e.handle(Request::RestoreKeys {
        sealed: a.sealed.clone(),
    }));
    assert!(msg.contains("memory budget"), "{msg}");
    assert_eq!(identity(&e, b.key_id).public_key, b.public_key);
    match e.handle(Request::Evidence { key_id: a.key_id }) {
        Response::Evidence { identity, .. } => assert_eq!(identity.public_key, a.public_key),
        other => panic!("key set A was lost: {}", short(&other)),
    }
}
