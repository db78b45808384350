//! Every supported activation in a small ONNX model built in memory
//! (Gemm -> activation -> Gemm, and a convolutional one for PRelu and Clip):
//! the import's float execution matches tract's, and the quantized integer
//! reference with the activation tables agrees with the float model.

mod common;

use common::onnx_build::{model_bytes_opset, node_out, tensor, Rng, A};
use hetee_model::float::run_float;
use hetee_model::intops::PostOp;
use hetee_model::reference::run_quantized;
use hetee_model::{quantize, Layer, Model, ModelError};
use hetee_onnx::{import_onnx_bytes, tract_float_reference};
use tract_onnx::pb::{NodeProto, TensorProto};

/// `x[N, 12] -> Gemm(12 -> 10) -> act -> Gemm(10 -> 4)`; `act` reads `h`,
/// writes `a` and may add constants.
fn mlp(opset: i64, act: Vec<NodeProto>, extra: Vec<TensorProto>) -> Vec<u8> {
    let mut r = Rng(11);
    let mut inits = vec![
        tensor("w1", &[10, 12], r.vec_scaled(120, 1.5)),
        tensor("b1", &[10], r.vec_scaled(10, 0.5)),
        tensor("w2", &[4, 10], r.vec_scaled(40, 1.0)),
        tensor("b2", &[4], r.vec_scaled(4, 0.2)),
    ];
    inits.extend(extra);
    let mut nodes = vec![node_out(
        "Gemm",
        &["x", "w1", "b1"],
        "h",
        vec![("transB", A::I(1))],
    )];
    nodes.extend(act);
    nodes.push(node_out(
        "Gemm",
        &["a", "w2", "b2"],
        "y",
        vec![("transB", A::I(1))],
    ));
    model_bytes_opset(opset, &[12], nodes, inits)
}

fn act(op: &str, attrs: Vec<(&str, A)>) -> Vec<NodeProto> {
    vec![node_out(op, &["h"], "a", attrs)]
}

/// The single-activation models: name, opset, bytes.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let scalar = |name: &str, v: f32| tensor(name, &[], vec![v]);
    vec![
        (
            "LeakyRelu",
            mlp(16, act("LeakyRelu", vec![("alpha", A::F(0.1))]), vec![]),
        ),
        (
            "PRelu",
            mlp(
                16,
                vec![node_out("PRelu", &["h", "slope"], "a", vec![])],
                vec![tensor("slope", &[10], Rng(3).vec_scaled(10, 0.5))],
            ),
        ),
        (
            "Clip",
            mlp(
                13,
                vec![node_out("Clip", &["h", "lo", "hi"], "a", vec![])],
                vec![scalar("lo", -0.5), scalar("hi", 1.5)],
            ),
        ),
        (
            "Clip (ReLU6, opset 6 attributes)",
            mlp(
                6,
                act("Clip", vec![("min", A::F(0.0)), ("max", A::F(6.0))]),
                vec![],
            ),
        ),
        (
            "Clip (min only)",
            mlp(
                13,
                vec![node_out("Clip", &["h", "lo"], "a", vec![])],
                vec![scalar("lo", 0.25)],
            ),
        ),
        ("Sigmoid", mlp(13, act("Sigmoid", vec![]), vec![])),
        (
            "HardSigmoid",
            mlp(
                13,
                act(
                    "HardSigmoid",
                    vec![("alpha", A::F(0.3)), ("beta", A::F(0.4))],
                ),
                vec![],
            ),
        ),
        ("Tanh", mlp(13, act("Tanh", vec![]), vec![])),
        ("HardSwish", mlp(14, act("HardSwish", vec![]), vec![])),
        (
            "Elu",
            mlp(13, act("Elu", vec![("alpha", A::F(0.7))]), vec![]),
        ),
        ("Selu", mlp(13, act("Selu", vec![]), vec![])),
        // alpha 1: tract 0.23 leaves out the alpha factor of ONNX Celu's negative part.
        (
            "Celu",
            mlp(13, act("Celu", vec![("alpha", A::F(1.0))]), vec![]),
        ),
        ("Softplus", mlp(13, act("Softplus", vec![]), vec![])),
        ("Softsign", mlp(13, act("Softsign", vec![]), vec![])),
        (
            "ThresholdedRelu",
            mlp(
                13,
                act("ThresholdedRelu", vec![("alpha", A::F(0.5))]),
                vec![],
            ),
        ),
        ("Gelu", mlp(20, act("Gelu", vec![]), vec![])),
        (
            "Gelu (tanh)",
            mlp(20, act("Gelu", vec![("approximate", A::S("tanh"))]), vec![]),
        ),
        ("Erf", mlp(13, act("Erf", vec![]), vec![])),
        ("Mish", mlp(18, act("Mish", vec![]), vec![])),
        (
            "Tanh -> Relu -> Sigmoid (one table)",
            mlp(
                13,
                vec![
                    node_out("Tanh", &["h"], "t", vec![]),
                    node_out("Relu", &["t"], "r", vec![]),
                    node_out("Sigmoid", &["r"], "a", vec![]),
                ],
                vec![],
            ),
        ),
        (
            "Relu -> Softplus (fast ReLU, then a table)",
            mlp(
                13,
                vec![
                    node_out("Relu", &["h"], "r", vec![]),
                    node_out("Softplus", &["r"], "a", vec![]),
                ],
                vec![],
            ),
        ),
    ]
}

/// `x[N, 2, 7, 7] -> Conv(3, k3) -> PRelu [3,1,1] -> MaxPool 2 -> Conv(4, k2)
/// -> HardSwish -> Flatten -> Gemm(36 -> 5) -> Clip(0, 6)`: a table per
/// channel, pooling after a table, and logits that come out of a table.
fn conv_model() -> Vec<u8> {
    let mut r = Rng(5);
    let inits = vec![
        tensor("w1", &[3, 2, 3, 3], r.vec_scaled(54, 0.6)),
        tensor("b1", &[3], r.vec_scaled(3, 0.3)),
        tensor("slope", &[3, 1, 1], vec![0.2, -0.5, 1.5]),
        tensor("w2", &[4, 3, 2, 2], r.vec_scaled(48, 0.8)),
        tensor("w3", &[5, 36], r.vec_scaled(180, 0.7)),
        tensor("b3", &[5], r.vec_scaled(5, 0.5)),
        tensor("lo", &[], vec![0.0]),
        tensor("hi", &[], vec![6.0]),
    ];
    let nodes = vec![
        node_out("Conv", &["x", "w1", "b1"], "c1", vec![]),
        node_out("PRelu", &["c1", "slope"], "p1", vec![]),
        node_out(
            "MaxPool",
            &["p1"],
            "m1",
            vec![
                ("kernel_shape", A::Is(&[2, 2])),
                ("strides", A::Is(&[1, 1])),
            ],
        ),
        node_out("Conv", &["m1", "w2"], "c2", vec![]),
        node_out("HardSwish", &["c2"], "s2", vec![]),
        node_out("Flatten", &["s2"], "f", vec![]),
        node_out("Gemm", &["f", "w3", "b3"], "g", vec![("transB", A::I(1))]),
        node_out("Clip", &["g", "lo", "hi"], "y", vec![]),
    ];
    model_bytes_opset(14, &[2, 7, 7], nodes, inits)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Float output vs tract on random inputs in [-2, 2), then the quantized
/// reference vs the float model. Returns the model.
fn check(what: &str, bytes: &[u8]) -> Model {
    let model = import_onnx_bytes(bytes, what).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, bytes).unwrap();
    let n: usize = model.input_shape.iter().product();
    let batch = Rng(42).vec_scaled(8 * n, 2.0);
    let want = tract_float_reference(&path, &model.input_shape, &batch, 8).unwrap();
    let float: Vec<Vec<f32>> = batch
        .chunks(n)
        .map(|x| run_float(&model, x).unwrap())
        .collect();
    let scale = 1.0 + want.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (g, w) in float.concat().iter().zip(&want) {
        assert!((g - w).abs() <= 1e-3 * scale, "{what}: got {g}, tract {w}");
    }
    // Quantize on 64 samples, compare on 200 others.
    let calib = Rng(7).vec_scaled(64 * n, 2.0);
    let q = quantize(&model, &calib).unwrap_or_else(|e| panic!("{what}: {e}"));
    let tables = q
        .stages
        .iter()
        .flat_map(|s| &s.post)
        .filter(|op| matches!(op, PostOp::Lut(_)))
        .count();
    assert!(tables >= 1, "{what}: no activation table");
    let test = Rng(99).vec_scaled(200 * n, 2.0);
    let (mut agree, mut err, mut sum, mut range) = (0, 0f32, 0f32, 0f32);
    for x in test.chunks(n) {
        let f = run_float(&model, x).unwrap();
        let qy = run_quantized(&q, x).unwrap();
        agree += (argmax(&f) == argmax(&qy)) as usize;
        for (a, b) in f.iter().zip(&qy) {
            err = err.max((a - b).abs());
            sum += (a - b).abs();
            range = range.max(a.abs());
        }
    }
    let mean = sum / (200 * q.classes()) as f32;
    println!("{what}: argmax {agree}/200, max error {err}, mean {mean}, range {range}");
    assert!(agree >= 180, "{what}: argmax agrees on {agree}/200");
    assert!(
        err <= 0.15 * range.max(0.1),
        "{what}: max error {err}, range {range}"
    );
    assert!(
        mean <= 0.02 * range.max(0.1),
        "{what}: mean error {mean}, range {range}"
    );
    model
}

#[test]
fn every_activation_matches_tract_and_quantizes() {
    for (what, bytes) in cases() {
        let m = check(what, &bytes);
        assert_eq!(m.layers.len(), 3 + what.matches("->").count(), "{what}");
    }
}

#[test]
fn conv_with_per_channel_prelu_hardswish_and_clipped_logits() {
    let m = check("conv", &conv_model());
    let names: Vec<&str> = m.layers.iter().map(Layer::name).collect();
    assert_eq!(
        names,
        [
            "Conv2d",
            "PRelu",
            "MaxPool",
            "Conv2d",
            "HardSwish",
            "Flatten",
            "Dense",
            "Clip"
        ]
    );
    let q = quantize(&m, &Rng(1).vec_scaled(32 * 98, 2.0)).unwrap();
    let PostOp::Lut(prelu) = &q.stages[0].post[0] else {
        panic!("{:?}", q.stages[0].post)
    };
    assert_eq!(prelu.table.len(), 3 * 256, "one table per channel");
    assert!(matches!(q.stages[2].post[..], [PostOp::Lut(_)]));
}

#[test]
fn malformed_activations_are_refused_by_name() {
    let refused = |bytes: Vec<u8>, want: &str| match import_onnx_bytes(&bytes, "mem") {
        Err(ModelError::Unsupported { node, what, .. }) => {
            assert!(node.ends_with("_a"), "{node}");
            assert!(what.contains(want), "{what:?} should mention {want:?}");
        }
        other => panic!("expected Unsupported ({want}), got {other:?}"),
    };
    refused(
        mlp(20, act("Gelu", vec![("approximate", A::S("erf"))]), vec![]),
        "approximate=erf",
    );
    refused(
        mlp(
            16,
            vec![node_out("PRelu", &["h", "slope"], "a", vec![])],
            vec![tensor("slope", &[5, 2], vec![0.1; 10])],
        ),
        "slope 'slope' of shape [5, 2]",
    );
    refused(
        mlp(
            13,
            vec![node_out("Clip", &["h", "lo"], "a", vec![])],
            vec![tensor("lo", &[2], vec![0.0, 1.0])],
        ),
        "min must be a scalar",
    );
    refused(
        mlp(
            13,
            act("LeakyRelu", vec![("alpha", A::F(f32::NAN))]),
            vec![],
        ),
        "not finite",
    );
    refused(
        mlp(13, act("Celu", vec![("alpha", A::F(0.0))]), vec![]),
        "nonzero",
    );
    // A non-constant slope.
    refused(
        mlp(
            16,
            vec![node_out("PRelu", &["h", "h"], "a", vec![])],
            vec![],
        ),
        "must be a constant",
    );
    // Mish decomposed into Mul(x, Tanh(Softplus(x))) names the fix.
    let msg = import_onnx_bytes(
        &mlp(
            13,
            vec![
                node_out("Softplus", &["h"], "sp", vec![]),
                node_out("Tanh", &["sp"], "t", vec![]),
                node_out("Mul", &["h", "t"], "a", vec![]),
            ],
            vec![],
        ),
        "mem",
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("Mish"), "{msg}");
}
