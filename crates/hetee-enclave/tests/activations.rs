//! Activation tables through the real protocol: models with every supported
//! activation are quantized, compiled, registered and queried in process
//! (host ct x ct, enclave decrypt -> check -> table -> re-encrypt), and the
//! secure logits equal the plaintext integer reference bit for bit.

mod common;

use common::*;
use hetee_enclave::{EnclaveConfig, Schedule};
use hetee_model::activation::Activation;
use hetee_model::intops::PostOp;
use hetee_model::ir::{Layer, Model, Pads, Window};
use hetee_model::QuantModel;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i + 1) * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * scale)
        .collect()
}

fn dense(i: usize, o: usize, seed: usize) -> Layer {
    Layer::Dense {
        weight: values(i * o, seed, 0.6),
        bias: values(o, seed + 1, 0.3),
        out_features: o,
        in_features: i,
    }
}

/// Registers `q` with a fresh enclave and checks that every input's secure
/// logits equal the reference's, bit for bit.
fn secure_equals_reference(q: &QuantModel, inputs: &[Vec<f32>]) {
    let schedule = Schedule::compile(q, 1).unwrap();
    schedule.validate().unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(q, &schedule, &keys.public_key);
    let id = register(&enclave, &keys, &host).model_id;
    for x in inputs {
        let secure = query(&enclave, &keys, &host, id, x).unwrap();
        let plain = reference(q, x);
        assert_eq!(bits(&secure), bits(&plain), "input {x:?}");
    }
}

fn model(input_shape: Vec<usize>, layers: Vec<Layer>) -> Model {
    let node_names = (0..layers.len()).map(|i| format!("n{i}")).collect();
    Model {
        input_shape,
        layers,
        node_names,
        inputs: Vec::new(),
    }
}

fn luts(q: &QuantModel) -> usize {
    q.stages
        .iter()
        .flat_map(|s| &s.post)
        .filter(|op| matches!(op, PostOp::Lut(_)))
        .count()
}

#[test]
fn every_activation_is_bit_exact_through_the_enclave() {
    let acts = vec![
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::PRelu {
            slope: values(12, 9, 0.8),
        },
        Activation::Clip { min: 0.0, max: 6.0 },
        Activation::Sigmoid,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::Tanh,
        Activation::HardSwish,
        Activation::Elu { alpha: 1.0 },
        Activation::Selu {
            alpha: 1.673_263_2,
            gamma: 1.050_701,
        },
        Activation::Celu { alpha: 0.5 },
        Activation::Softplus,
        Activation::Softsign,
        Activation::ThresholdedRelu { alpha: 0.3 },
        Activation::Gelu { tanh: false },
        Activation::Gelu { tanh: true },
        Activation::Erf,
        Activation::Mish,
    ];
    // Dense(16 -> 12) -> act, once per activation, then Dense(12 -> 5) ->
    // Sigmoid: the logits come out of a table too.
    let mut layers = vec![dense(16, 12, 1), Layer::Act(acts[0].clone())];
    for (k, a) in acts.iter().enumerate().skip(1) {
        layers.push(dense(12, 12, 10 * k));
        layers.push(Layer::Act(a.clone()));
    }
    layers.push(dense(12, 5, 7));
    layers.push(Layer::Act(Activation::Sigmoid));
    let m = model(vec![16], layers);
    let calib: Vec<f32> = (0..32).flat_map(|s| values(16, s, 1.0)).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    assert_eq!(luts(&q), acts.len() + 1);
    let inputs: Vec<Vec<f32>> = (0..3).map(|s| values(16, 100 + s, 1.0)).collect();
    secure_equals_reference(&q, &inputs);
}

#[test]
fn tables_per_channel_fused_runs_and_pooling_are_bit_exact() {
    let conv = |c: usize, m: usize, k: usize, seed: usize| Layer::Conv2d {
        weight: values(m * c * k * k, seed, 0.5),
        bias: values(m, seed + 1, 0.2),
        out_channels: m,
        in_channels: c,
        window: Window {
            kernel: (k, k),
            strides: (1, 1),
            pads: Pads::same(k / 2),
            dilations: (1, 1),
        },
    };
    let pool = Window {
        kernel: (2, 2),
        strides: (2, 2),
        pads: Pads::default(),
        dilations: (1, 1),
    };
    let m = model(
        vec![2, 8, 8],
        vec![
            // per-channel PRelu, then max pooling on the table's output
            conv(2, 4, 3, 1),
            Layer::Act(Activation::PRelu {
                slope: vec![0.1, -0.4, 0.7, 1.3],
            }),
            Layer::MaxPool(pool),
            // fast ReLU, then a fused run Tanh -> Relu -> HardSwish, then
            // average pooling
            conv(4, 3, 3, 5),
            Layer::Relu,
            Layer::Act(Activation::Tanh),
            Layer::Relu,
            Layer::Act(Activation::HardSwish),
            Layer::AvgPool {
                window: pool,
                count_include_pad: false,
            },
            Layer::Flatten,
            dense(12, 4, 9),
        ],
    );
    let calib: Vec<f32> = (0..16).flat_map(|s| values(128, s, 1.0)).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    assert!(matches!(
        q.stages[0].post[..],
        [PostOp::Lut(_), PostOp::MaxPool(_)]
    ));
    assert!(matches!(
        q.stages[1].post[..],
        [PostOp::Relu, PostOp::Lut(_), PostOp::AvgPool { .. }]
    ));
    let PostOp::Lut(prelu) = &q.stages[0].post[0] else {
        unreachable!()
    };
    assert_eq!(prelu.table.len(), 4 * 256);
    let inputs: Vec<Vec<f32>> = (0..2).map(|s| values(128, 50 + s, 1.0)).collect();
    secure_equals_reference(&q, &inputs);
}

#[test]
fn a_malformed_table_is_refused_at_registration() {
    let m = model(
        vec![6],
        vec![dense(6, 4, 1), Layer::Act(Activation::Tanh), dense(4, 3, 2)],
    );
    let calib: Vec<f32> = (0..8).flat_map(|s| values(6, s, 1.0)).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    let good = Schedule::compile(&q, 1).unwrap();
    good.validate().unwrap();
    let mut bad = good.clone();
    let PostOp::Lut(lut) = &mut bad.stages[0].tail.post[0] else {
        panic!("{:?}", bad.stages[0].tail.post)
    };
    lut.table.truncate(100);
    let msg = bad.validate().unwrap_err().to_string();
    assert!(msg.contains("activation table"), "{msg}");
    // The enclave refuses it at registration.
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &bad.he);
    let host = HostModel::new(&q, &bad, &keys.public_key);
    match connect(&enclave, &keys, &register_message(&keys, &host)) {
        Err(err) => assert!(err.contains("activation table"), "{err}"),
        Ok(_) => panic!("a malformed activation table was registered"),
    }
    assert_eq!(status(&enclave).models, 0);
}
