//! Model graphs through the real protocol: residual adds (two branches at
//! different scales, aligned in the enclave), 1x1 projection shortcuts,
//! channel concatenation, a BatchNorm that cannot be folded, an add that
//! reads the model input, and a model whose output is a join. The secure
//! logits equal the plaintext integer reference bit for bit, and the
//! quantized model stays close to the float one.

mod common;

use common::*;
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};
use hetee_model::float::run_float;
use hetee_model::graph::TensorRef;
use hetee_model::ir::{Layer, Model, Pads, Window};
use hetee_model::{quantize, QuantModel};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i + 1) * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * scale)
        .collect()
}

fn conv(c: usize, m: usize, k: usize, pad: usize, seed: usize) -> Layer {
    Layer::Conv2d {
        weight: values(m * c * k * k, seed, 0.5),
        bias: values(m, seed + 1, 0.2),
        out_channels: m,
        in_channels: c,
        window: Window {
            kernel: (k, k),
            strides: (1, 1),
            pads: Pads::same(pad),
            dilations: (1, 1),
        },
    }
}

fn bn(c: usize, seed: usize) -> Layer {
    Layer::BatchNorm {
        scale: values(c, seed, 1.5).iter().map(|v| v.abs() + 0.3).collect(),
        shift: values(c, seed + 7, 0.5),
    }
}

fn dense(i: usize, o: usize, seed: usize) -> Layer {
    Layer::Dense {
        weight: values(i * o, seed, 0.6),
        bias: values(o, seed + 1, 0.3),
        out_features: o,
        in_features: i,
    }
}

fn graph(input_shape: Vec<usize>, nodes: Vec<(Layer, Vec<usize>)>) -> Model {
    let node_names = (0..nodes.len()).map(|i| format!("n{i}")).collect();
    let (layers, inputs) = nodes.into_iter().unzip();
    Model {
        input_shape,
        layers,
        node_names,
        inputs,
    }
}

fn inputs(n: usize, per: usize) -> Vec<Vec<f32>> {
    (0..n).map(|s| values(per, 100 + s, 1.0)).collect()
}

/// Quantizes on `calib`, registers with a fresh enclave, and checks every
/// input: secure logits equal the reference bit for bit, and the float
/// model agrees within `tol` of its largest logit.
fn check(m: &Model, xs: &[Vec<f32>], tol: f32) -> QuantModel {
    let calib: Vec<f32> = xs.iter().flatten().copied().collect();
    let q = quantize(m, &calib).unwrap();
    let schedule = Schedule::compile(&q, 1).unwrap();
    schedule.validate().unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let id = register(&enclave, &keys, &host).model_id;
    for x in xs {
        let secure = query(&enclave, &keys, &host, id, x).unwrap();
        let plain = reference(&q, x);
        assert_eq!(bits(&secure), bits(&plain), "input {x:?}");
        let float = run_float(m, x).unwrap();
        let top = float.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (s, f) in secure.iter().zip(&float) {
            assert!(
                (s - f).abs() <= tol * top,
                "secure {s} vs float {f} (top {top})"
            );
        }
    }
    q
}

#[test]
fn residual_block_with_projection_and_concat_is_bit_exact() {
    // A ResNet basic block whose shortcut is a 1x1 projection, then a conv
    // whose output is concatenated with the block's output, a BatchNorm on
    // the concatenation (not foldable), global pooling and a dense head.
    let m = graph(
        vec![2, 6, 6],
        vec![
            (conv(2, 4, 3, 1, 1), vec![0]), // t1
            (bn(4, 2), vec![1]),            // t2 (folded)
            (Layer::Relu, vec![2]),         // t3
            (conv(4, 4, 3, 1, 3), vec![3]), // t4
            (bn(4, 4), vec![4]),            // t5 (folded)
            (conv(2, 4, 1, 0, 5), vec![0]), // t6: projection of the input
            (Layer::Add, vec![5, 6]),       // t7
            (Layer::Relu, vec![7]),         // t8
            (conv(4, 3, 3, 1, 6), vec![8]), // t9
            (Layer::Concat, vec![9, 8]),    // t10: 7 channels
            (bn(7, 7), vec![10]),           // t11: an enclave affine
            (Layer::GlobalAvgPool, vec![11]),
            (Layer::Flatten, vec![12]),
            (dense(7, 5, 8), vec![13]),
        ],
    );
    let q = check(&m, &inputs(6, 72), 0.08);
    assert_eq!(
        q.stages.len(),
        5,
        "conv a, conv b, projection, conv c, dense"
    );
    assert_eq!(q.joins.len(), 3, "add, concat, affine");
    assert_eq!(
        q.stages[2].reads,
        TensorRef::Input,
        "the projection reads the input"
    );
    assert_eq!(
        q.stages[3].reads,
        TensorRef::Join(0),
        "conv c reads the add"
    );
}

#[test]
fn identity_shortcut_and_an_output_join_are_bit_exact() {
    // y = dense_a(x) + dense_b(relu(dense_c(x))) with an identity shortcut
    // around dense_c: the output is a join, released as logits.
    let m = graph(
        vec![6],
        vec![
            (dense(6, 6, 11), vec![0]), // t1
            (Layer::Relu, vec![1]),     // t2
            (Layer::Add, vec![2, 0]),   // t3: identity shortcut from the input
            (dense(6, 4, 12), vec![3]), // t4
            (dense(6, 4, 13), vec![0]), // t5
            (Layer::Add, vec![4, 5]),   // t6: the output
        ],
    );
    let q = check(&m, &inputs(8, 6), 0.08);
    assert_eq!(q.output_ref(), TensorRef::Join(1));
}

#[test]
fn a_dead_branch_is_refused_by_name() {
    let dead = graph(
        vec![4],
        vec![
            (dense(4, 3, 1), vec![0]),
            (Layer::Relu, vec![1]),
            (dense(4, 2, 2), vec![0]),
        ],
    );
    let e = quantize(&dead, &values(8, 1, 1.0)).unwrap_err().to_string();
    assert!(e.contains("n1") && e.contains("not used"), "{e}");
    // A reshape that no Conv or Dense reads, and a Transpose after a layer.
    for (mid, what) in [
        (Layer::Reshape(vec![2, 2, 2]), "Reshape"),
        (Layer::Transpose([0, 1, 2]), "Transpose"),
    ] {
        let m = graph(
            vec![2, 2, 2],
            vec![
                (conv(2, 2, 1, 0, 1), vec![0]),
                (mid, vec![1]),
                (Layer::Relu, vec![2]),
                (Layer::Flatten, vec![3]),
                (dense(8, 2, 2), vec![4]),
            ],
        );
        let e = quantize(&m, &values(16, 1, 1.0)).unwrap_err().to_string();
        assert!(e.contains("n1") && e.contains(what), "{e}");
    }
}

/// A BatchNorm, a max pool and a Tanh on the input, before the first conv,
/// plus a skip from the pooled input to a later add: the enclave runs them
/// on the decrypted input and encrypts stage 0's input itself. A query
/// that brings HE ciphertexts of the raw input is refused by name; a thin
/// query is bit-exact.
#[test]
fn ops_before_the_first_linear_layer_run_in_the_enclave() {
    let m = graph(
        vec![2, 8, 8],
        vec![
            (bn(2, 1), vec![0]), // t1: an affine join on the input
            (
                Layer::MaxPool(Window {
                    kernel: (2, 2),
                    strides: (2, 2),
                    pads: Pads::default(),
                    dilations: (1, 1),
                }),
                vec![1],
            ), // t2 (fused into the join)
            (
                Layer::Act(hetee_model::activation::Activation::Tanh),
                vec![2],
            ), // t3: a table on the pooled input
            (conv(2, 2, 3, 1, 3), vec![3]), // t4: stage 0 reads a join
            (Layer::Add, vec![4, 3]), // t5: skip from the pre-join
            (Layer::Relu, vec![5]),
            (Layer::Flatten, vec![6]),
            (dense(32, 3, 5), vec![7]),
        ],
    );
    let xs = inputs(4, 128);
    let calib: Vec<f32> = xs.iter().flatten().copied().collect();
    let q = quantize(&m, &calib).unwrap();
    assert_ne!(q.stages[0].reads, TensorRef::Input);
    assert!(q.joins.iter().any(|j| j.after_stage.is_none()));
    let schedule = Schedule::compile(&q, 1).unwrap();
    schedule.validate().unwrap();
    assert!(schedule.input_in_enclave());
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let id = register(&enclave, &keys, &host).model_id;
    for x in &xs {
        let secure = query_thin(&enclave, &keys, &host, id, x).unwrap();
        assert_eq!(bits(&secure), bits(&reference(&q, x)));
        let float = run_float(&m, x).unwrap();
        let top = float.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (s, f) in secure.iter().zip(&float) {
            assert!((s - f).abs() <= 0.08 * top, "secure {s} vs float {f}");
        }
    }
    // The data provider's client refuses to pack such a query; a client
    // that packs the raw input anyway is refused by the enclave.
    let mut dp = hello(&enclave, &keys, id).unwrap();
    assert!(dp.plan.input_in_enclave);
    let e = dp.plan.pack_input(&[&xs[0]]).unwrap_err().to_string();
    assert!(e.contains("thin"), "{e}");
    dp.plan.input_in_enclave = false;
    dp.plan.input_shape = vec![2, 4, 4];
    let input = dp.encrypt(&keys.public_key, &xs[0][..32]);
    let msg = error_of(dp.start(&enclave, id, &input));
    assert!(msg.contains("thin query"), "{msg}");
}

#[test]
fn a_schedule_whose_join_reads_ahead_is_refused() {
    let m = graph(
        vec![4],
        vec![
            (dense(4, 4, 1), vec![0]),
            (Layer::Add, vec![1, 0]),
            (dense(4, 2, 2), vec![2]),
        ],
    );
    let q = quantize(&m, &values(16, 3, 1.0)).unwrap();
    let good = Schedule::compile(&q, 1).unwrap();
    good.validate().unwrap();
    let mut s = good.clone();
    s.joins[0].inputs[0].tensor = TensorRef::Stage(1);
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("not computed before"), "{e}");
    let mut s = good.clone();
    s.joins[0].inputs[0].multiplier = vec![1 << 50; 4];
    assert!(s.validate().is_err());
    let mut s = good.clone();
    s.stages[1].tail.reads = TensorRef::Join(3);
    assert!(s.validate().is_err());
    let mut s = good;
    s.joins[0].inputs[1].multiplier.pop();
    assert!(s.validate().is_err());
}

#[test]
fn a_final_softmax_is_applied_in_the_enclave_bit_exactly() {
    let m = graph(
        vec![6],
        vec![
            (dense(6, 8, 21), vec![0]),
            (Layer::Relu, vec![1]),
            (dense(8, 4, 22), vec![2]),
            (Layer::Softmax, vec![3]),
        ],
    );
    let q = check(&m, &inputs(6, 6), 0.08);
    assert!(q.softmax);
    let p = reference(&q, &values(6, 5, 1.0));
    let sum: f32 = p.iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-5 && p.iter().all(|&v| v > 0.0),
        "{p:?}"
    );
    // Anywhere but last, it is refused by name.
    let mid = graph(
        vec![6],
        vec![
            (dense(6, 4, 1), vec![0]),
            (Layer::Softmax, vec![1]),
            (dense(4, 2, 2), vec![2]),
        ],
    );
    let e = quantize(&mid, &values(12, 1, 1.0)).unwrap_err().to_string();
    assert!(e.contains("n1") && e.contains("last op"), "{e}");
}

/// Deterministic pseudo-random numbers for the mutation test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn mutated_graph_schedules_are_refused_or_run_without_panic() {
    // A schedule with every join kind; each mutation of a join or a stage's
    // read either fails validation or still runs through the reference step
    // (what the enclave runs) without a panic.
    let m = graph(
        vec![2, 6, 6],
        vec![
            (conv(2, 4, 3, 1, 1), vec![0]),
            (Layer::Relu, vec![1]),
            (conv(4, 4, 3, 1, 3), vec![2]),
            (conv(2, 4, 1, 0, 5), vec![0]),
            (Layer::Add, vec![3, 4]),
            (Layer::Relu, vec![5]),
            (Layer::Concat, vec![6, 2]),
            (bn(8, 7), vec![7]),
            (Layer::GlobalAvgPool, vec![8]),
            (Layer::Flatten, vec![9]),
            (dense(8, 3, 8), vec![10]),
        ],
    );
    let xs = inputs(4, 72);
    let calib: Vec<f32> = xs.iter().flatten().copied().collect();
    let q = quantize(&m, &calib).unwrap();
    let good = Schedule::compile(&q, 1).unwrap();
    good.validate().unwrap();
    let refs = |r: &mut Lcg| match r.pick(3) {
        0 => TensorRef::Input,
        1 => TensorRef::Stage(r.pick(6) as usize),
        _ => TensorRef::Join(r.pick(5) as usize),
    };
    let mut r = Lcg(9);
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..2000 {
        let mut s = good.clone();
        let j = r.pick(s.joins.len() as u64) as usize;
        match r.pick(9) {
            0 => s.joins[j].inputs[0].tensor = refs(&mut r),
            1 => s.joins[j].after_stage = Some(r.pick(8) as usize),
            2 => {
                let k = r.pick(s.joins[j].inputs[0].multiplier.len() as u64) as usize;
                s.joins[j].inputs[0].multiplier[k] = (r.next() as i64) << r.pick(40);
            }
            3 => s.joins[j].offset.truncate(r.pick(9) as usize),
            4 => s.joins[j].shape[r.pick(3) as usize] = r.pick(20) as usize,
            5 => {
                let k = 1 + r.pick(s.stages.len() as u64 - 1) as usize;
                s.stages[k].tail.reads = refs(&mut r);
            }
            6 => s.joins[j].kind = hetee_model::graph::JoinKind::Concat,
            7 => {
                s.joins.swap(0, j);
            }
            _ => {
                let _ = s.joins[j].inputs.pop();
            }
        }
        if s.validate().is_err() {
            refused += 1;
            continue;
        }
        // What validates must run: the reference over the mutated graph.
        let mut q2 = q.clone();
        q2.joins = s.joins.clone();
        for (st, ss) in q2.stages.iter_mut().zip(&s.stages) {
            st.reads = ss.tail.reads;
        }
        for x in &xs {
            let _ = hetee_model::reference::run_quantized(&q2, x);
        }
        ran += 1;
    }
    assert!(refused > 500 && ran > 50, "refused {refused}, ran {ran}");
}

#[test]
fn attack_host_feeds_a_projection_another_querys_input() {
    // Stage 1 is a projection that reads the model input again (a skip
    // tensor the enclave holds). The host evaluates it honestly, but on the
    // input ciphertexts the enclave handed out in another session. The
    // enclave checks stage 1 against this session's own input: refused.
    let m = graph(
        vec![6],
        vec![
            (dense(6, 6, 31), vec![0]),
            (Layer::Relu, vec![1]),
            (dense(6, 6, 32), vec![0]),
            (Layer::Add, vec![2, 3]),
            (dense(6, 4, 33), vec![4]),
        ],
    );
    let xs = inputs(6, 6);
    let calib: Vec<f32> = xs.iter().flatten().copied().collect();
    let q = quantize(&m, &calib).unwrap();
    assert_eq!(q.stages[1].reads, TensorRef::Input);
    let schedule = Schedule::compile(&q, 1).unwrap();
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&e, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let id = register(&e, &keys, &host).model_id;
    // Session A (the victim): stage 0 honestly; keep the stage-1 input.
    let mut a = hello_as(&e, &keys, None, id).unwrap();
    let input_a = a.encrypt(&keys.public_key, &xs[0]);
    assert!(matches!(
        a.start(&e, id, &input_a),
        Response::QueryStarted { .. }
    ));
    let stage1_input_a = match e.handle(Request::StageResult {
        session: a.channel.session,
        stage: 0,
        ciphertexts: host.evaluate(0, &input_a),
    }) {
        Response::NextInput { ciphertexts, .. } => ciphertexts,
        other => panic!("{}", short(&other)),
    };
    // Session B: stage 0 honestly, then stage 1 on A's input.
    let mut b = hello_as(&e, &keys, None, id).unwrap();
    let input_b = b.encrypt(&keys.public_key, &xs[1]);
    assert!(matches!(
        b.start(&e, id, &input_b),
        Response::QueryStarted { .. }
    ));
    let honest_b = match e.handle(Request::StageResult {
        session: b.channel.session,
        stage: 0,
        ciphertexts: host.evaluate(0, &input_b),
    }) {
        Response::NextInput { ciphertexts, .. } => ciphertexts,
        other => panic!("{}", short(&other)),
    };
    let _ = honest_b;
    let r = e.handle(Request::StageResult {
        session: b.channel.session,
        stage: 1,
        ciphertexts: host.evaluate(1, &stage1_input_a),
    });
    let msg = error_of(r);
    assert!(msg.contains("integrity"), "{msg}");
}
