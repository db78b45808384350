//! Import of small ONNX models built in memory, one feature at a time, each
//! checked against tract's own float execution of the same bytes.

use hetee_model::float::{layer_shapes, run_float};
use hetee_model::{Layer, ModelError};
use hetee_onnx::{import_onnx, import_onnx_bytes, tract_float_reference};
use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Deterministic pseudo-random values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: data,
        ..Default::default()
    }
}

fn ints_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

enum A {
    I(i64),
    Is(&'static [i64]),
    F(f32),
    T(Box<TensorProto>),
    S(&'static str),
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, A)>,
) -> NodeProto {
    let attribute = attrs
        .into_iter()
        .map(|(n, a)| {
            let mut p = AttributeProto {
                name: n.into(),
                ..Default::default()
            };
            match a {
                A::I(i) => (p.i, p.r#type) = (i, AttributeType::Int as i32),
                A::Is(v) => (p.ints, p.r#type) = (v.to_vec(), AttributeType::Ints as i32),
                A::F(f) => (p.f, p.r#type) = (f, AttributeType::Float as i32),
                A::T(t) => (p.t, p.r#type) = (Some(*t), AttributeType::Tensor as i32),
                A::S(v) => (p.s, p.r#type) = (v.as_bytes().to_vec(), AttributeType::String as i32),
            }
            p
        })
        .collect();
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut dim = vec![pb::tensor_shape_proto::Dimension {
        value: Some(dimension::Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| pb::tensor_shape_proto::Dimension {
        value: Some(dimension::Value::DimValue(d)),
        ..Default::default()
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Encodes a model with input `x` of shape `[N, in_dims...]` and output `y`.
fn model_bytes(in_dims: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Vec<u8> {
    let out = ValueInfoProto {
        name: "y".into(),
        ..Default::default()
    };
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", in_dims)],
            output: vec![out],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Imports the bytes and checks `run_float` against tract on random inputs.
fn check_against_tract(bytes: &[u8]) -> hetee_model::Model {
    let model = import_onnx_bytes(bytes, "mem").expect("import");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(import_onnx(&path).unwrap(), model);
    layer_shapes(&model).unwrap();
    let n: usize = model.input_shape.iter().product();
    let mut rng = Rng(42);
    let batch = rng.vec(3 * n);
    let want = tract_float_reference(&path, &model.input_shape, &batch, 3).unwrap();
    let got: Vec<f32> = batch
        .chunks(n)
        .flat_map(|x| run_float(&model, x).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    let scale = 1.0 + want.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-3 * scale, "got {g}, tract {w}");
    }
    model
}

fn conv_w(rng: &mut Rng, name: &str, m: i64, c: i64, k: i64) -> TensorProto {
    tensor(name, &[m, c, k, k], rng.vec((m * c * k * k) as usize))
}

#[test]
fn conv_bn_pools_gemm_matmul_match_tract() {
    let mut r = Rng(1);
    let var: Vec<f32> = r.vec(3).iter().map(|v| v.abs() + 0.5).collect();
    let inits = vec![
        conv_w(&mut r, "w1", 3, 2, 3),
        tensor("b1", &[3], r.vec(3)),
        tensor("g", &[3], r.vec(3)),
        tensor("be", &[3], r.vec(3)),
        tensor("mu", &[3], r.vec(3)),
        tensor("var", &[3], var),
        tensor("gw", &[3, 5], r.vec(15)),
        tensor("gc", &[1, 5], r.vec(5)),
        tensor("mw", &[5, 4], r.vec(20)),
        tensor("mb", &[4], r.vec(4)),
    ];
    let nodes = vec![
        node(
            "Conv",
            "conv",
            &["x", "w1", "b1"],
            &["c"],
            vec![("pads", A::Is(&[1, 0, 2, 1])), ("strides", A::Is(&[2, 1]))],
        ),
        node(
            "BatchNormalization",
            "bn",
            &["c", "g", "be", "mu", "var"],
            &["b"],
            vec![("epsilon", A::F(1e-3))],
        ),
        node("Relu", "relu", &["b"], &["r"], vec![]),
        node(
            "AveragePool",
            "avg",
            &["r"],
            &["a"],
            vec![
                ("kernel_shape", A::Is(&[3, 2])),
                ("pads", A::Is(&[1, 1, 1, 0])),
                ("count_include_pad", A::I(1)),
            ],
        ),
        node(
            "AveragePool",
            "avg2",
            &["a"],
            &["a2"],
            vec![
                ("kernel_shape", A::Is(&[2, 2])),
                ("pads", A::Is(&[1, 1, 1, 1])),
            ],
        ),
        node(
            "MaxPool",
            "max",
            &["a2"],
            &["p"],
            vec![
                ("kernel_shape", A::Is(&[2, 2])),
                ("strides", A::Is(&[2, 2])),
                ("pads", A::Is(&[1, 1, 0, 0])),
            ],
        ),
        node("GlobalAveragePool", "gap", &["p"], &["q"], vec![]),
        node("Flatten", "flat", &["q"], &["f"], vec![]),
        node(
            "Gemm",
            "gemm",
            &["f", "gw", "gc"],
            &["h"],
            vec![("alpha", A::F(0.5)), ("beta", A::F(2.0))],
        ),
        node("Dropout", "drop", &["h"], &["d"], vec![]),
        node("MatMul", "mm", &["d", "mw"], &["m"], vec![]),
        node("Add", "add", &["mb", "m"], &["y"], vec![]),
    ];
    let m = check_against_tract(&model_bytes(&[2, 9, 8], nodes, inits));
    let names: Vec<&str> = m.layers.iter().map(Layer::name).collect();
    assert_eq!(
        names,
        [
            "Conv2d",
            "BatchNorm",
            "Relu",
            "AvgPool",
            "AvgPool",
            "MaxPool",
            "GlobalAvgPool",
            "Flatten",
            "Dense",
            "Dense",
            "BatchNorm"
        ]
    );
    assert_eq!(m.node_names[9], "mm");
}

#[test]
fn reshape_from_shape_chain_and_constants() {
    let mut r = Rng(2);
    let inits = vec![
        conv_w(&mut r, "w", 2, 1, 2),
        tensor("fw", &[4, 18], r.vec(72)),
        ints_tensor("zero", &[0]),
    ];
    let minus1 = TensorProto {
        dims: vec![1],
        data_type: 7,
        int64_data: vec![-1],
        ..Default::default()
    };
    let nodes = vec![
        node(
            "Conv",
            "",
            &["x", "w"],
            &["c"],
            vec![("kernel_shape", A::Is(&[2, 2]))],
        ),
        node("Shape", "shape", &["c"], &["s"], vec![]),
        node(
            "Constant",
            "k0",
            &[],
            &["i0"],
            vec![(
                "value",
                A::T(Box::new(TensorProto {
                    data_type: 7,
                    int64_data: vec![0],
                    ..Default::default()
                })),
            )],
        ),
        node(
            "Gather",
            "gather",
            &["s", "i0"],
            &["n"],
            vec![("axis", A::I(0))],
        ),
        node("Unsqueeze", "unsq", &["n", "zero"], &["n1"], vec![]),
        node(
            "Constant",
            "km1",
            &[],
            &["m1"],
            vec![("value", A::T(Box::new(minus1)))],
        ),
        node(
            "Concat",
            "cat",
            &["n1", "m1"],
            &["target"],
            vec![("axis", A::I(0))],
        ),
        node("Reshape", "reshape", &["c", "target"], &["f"], vec![]),
        node("Identity", "alias", &["fw"], &["fw2"], vec![]),
        node(
            "Gemm",
            "fc",
            &["f", "fw2"],
            &["y"],
            vec![("transB", A::I(1))],
        ),
    ];
    let m = check_against_tract(&model_bytes(&[1, 4, 4], nodes, inits));
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.node_names[0], "#0");
}

#[test]
fn float64_and_float16_weights_are_converted() {
    let w: Vec<f64> = (0..6).map(|i| i as f64 * 0.25 - 0.5).collect();
    let w64 = TensorProto {
        name: "w".into(),
        dims: vec![3, 2],
        data_type: 11,
        raw_data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    // float16 1.0, -2.0 as raw little-endian bits
    let b16 = TensorProto {
        name: "b".into(),
        dims: vec![2],
        data_type: 10,
        raw_data: vec![0x00, 0x3c, 0x00, 0xc0],
        ..Default::default()
    };
    let nodes = vec![node("Gemm", "fc", &["x", "w", "b"], &["y"], vec![])];
    // Mixed weight types are not valid ONNX for tract, so check by hand.
    let m = import_onnx_bytes(&model_bytes(&[3], nodes, vec![w64, b16]), "mem").unwrap();
    let Layer::Dense { weight, bias, .. } = &m.layers[0] else {
        panic!("{m:?}")
    };
    assert_eq!(bias, &vec![1.0, -2.0]);
    assert_eq!(weight, &vec![-0.5, 0.0, 0.5, -0.25, 0.25, 0.75]); // transposed [2, 3]
    assert_eq!(run_float(&m, &[1.0, 2.0, 3.0]).unwrap(), vec![2.0, 0.5]);
}

/// Imports and returns the error message, which must be of the given kind.
fn import_err(bytes: &[u8]) -> ModelError {
    import_onnx_bytes(bytes, "mem").expect_err("import must fail")
}

fn one_node(op: &str, attrs: Vec<(&str, A)>, in_dims: &[i64], extra: Vec<TensorProto>) -> Vec<u8> {
    let mut inputs = vec!["x"];
    let names: Vec<String> = extra.iter().map(|t| t.name.clone()).collect();
    inputs.extend(names.iter().map(String::as_str));
    model_bytes(
        in_dims,
        vec![node(op, "the_node", &inputs, &["y"], attrs)],
        extra,
    )
}

#[test]
fn unsupported_attributes_are_named() {
    let w = || tensor("w", &[2, 1, 3, 3], vec![0.0; 18]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            one_node(
                "Conv",
                vec![("auto_pad", A::S("SAME_MIDDLE"))],
                &[1, 5, 5],
                vec![w()],
            ),
            "auto_pad=SAME_MIDDLE",
        ),
        (
            one_node(
                "AveragePool",
                vec![
                    ("kernel_shape", A::Is(&[2, 2])),
                    ("dilations", A::Is(&[2, 2])),
                    ("count_include_pad", A::I(1)),
                ],
                &[1, 5, 5],
                vec![],
            ),
            "dilations with count_include_pad=1",
        ),
        (
            one_node(
                "AveragePool",
                vec![
                    ("kernel_shape", A::Is(&[2, 2])),
                    ("ceil_mode", A::I(1)),
                    ("count_include_pad", A::I(1)),
                ],
                &[1, 5, 5],
                vec![],
            ),
            "ceil_mode=1 with count_include_pad=1",
        ),
        (
            one_node("Flatten", vec![("axis", A::I(2))], &[1, 5, 5], vec![]),
            "axis=2",
        ),
        (
            one_node(
                "Gemm",
                vec![("transA", A::I(1))],
                &[3],
                vec![tensor("w", &[3, 2], vec![0.0; 6])],
            ),
            "transA=1",
        ),
    ];
    for (bytes, want) in cases {
        match import_err(&bytes) {
            ModelError::Unsupported { node, what, .. } => {
                assert_eq!(node, "the_node");
                assert!(what.contains(want), "{what:?} should mention {want}");
            }
            e => panic!("expected Unsupported ({want}), got {e:?}"),
        }
    }
}

#[test]
fn unknown_ops_branches_and_bad_weights_are_rejected() {
    match import_err(&one_node("Hardmax", vec![], &[3], vec![])) {
        ModelError::UnsupportedOp { node, op } => {
            assert_eq!((node.as_str(), op.as_str()), ("the_node", "Hardmax"))
        }
        e => panic!("{e:?}"),
    }
    // a product of two activations
    let nodes = vec![
        node("Relu", "r", &["x"], &["a"], vec![]),
        node("Mul", "prod", &["a", "x"], &["y"], vec![]),
    ];
    let msg = import_err(&model_bytes(&[3], nodes, vec![])).to_string();
    assert!(
        msg.contains("prod") && msg.contains("only Add joins two activations"),
        "{msg}"
    );
    // a constant that does not broadcast per channel
    let nodes = vec![node("Mul", "scale", &["x", "k"], &["y"], vec![])];
    let k = tensor("k", &[2, 2], vec![1.0; 4]);
    let msg = import_err(&model_bytes(&[2, 2, 2], nodes, vec![k])).to_string();
    assert!(
        msg.contains("scale") && msg.contains("one value per channel"),
        "{msg}"
    );
    // int8 weights
    let w8 = TensorProto {
        name: "w".into(),
        dims: vec![3, 2],
        data_type: 3,
        raw_data: vec![1; 6],
        ..Default::default()
    };
    let msg = import_err(&one_node("Gemm", vec![], &[3], vec![w8])).to_string();
    assert!(msg.contains("INT8") && msg.contains("the_node"), "{msg}");
    // declared dims do not match the data
    let short = tensor("w", &[3, 2], vec![0.0; 5]);
    assert!(matches!(
        import_err(&one_node("Gemm", vec![], &[3], vec![short])),
        ModelError::Onnx { .. }
    ));
    let raw_short = TensorProto {
        name: "w".into(),
        dims: vec![3, 2],
        data_type: 1,
        raw_data: vec![0; 23],
        ..Default::default()
    };
    assert!(matches!(
        import_err(&one_node("Gemm", vec![], &[3], vec![raw_short])),
        ModelError::Onnx { .. }
    ));
    // dense input size mismatch names the node
    let msg = import_err(&one_node(
        "Gemm",
        vec![],
        &[4],
        vec![tensor("w", &[3, 2], vec![0.0; 6])],
    ))
    .to_string();
    assert!(msg.contains("the_node") && msg.contains("shape"), "{msg}");
    // conv channel mismatch
    let msg = import_err(&one_node(
        "Conv",
        vec![],
        &[2, 5, 5],
        vec![tensor("w", &[2, 1, 3, 3], vec![0.0; 18])],
    ))
    .to_string();
    assert!(
        msg.contains("the_node") && msg.contains("input channels"),
        "{msg}"
    );
    // pooling window larger than the map
    let msg = import_err(&one_node(
        "MaxPool",
        vec![("kernel_shape", A::Is(&[6, 6]))],
        &[1, 5, 5],
        vec![],
    ))
    .to_string();
    assert!(msg.contains("does not fit"), "{msg}");
    // a reshape to rank 5
    let msg = import_err(&one_node(
        "Reshape",
        vec![],
        &[2, 2, 2],
        vec![ints_tensor("s", &[-1, 2, 2, 1, 2])],
    ))
    .to_string();
    assert!(msg.contains("rank 5"), "{msg}");
    // a reshape whose size does not match
    let msg = import_err(&one_node(
        "Reshape",
        vec![],
        &[2, 2, 2],
        vec![ints_tensor("s", &[-1, 3, 4])],
    ))
    .to_string();
    assert!(msg.contains("not a reshape"), "{msg}");
    // a non-flatten reshape imports, but quantizing refuses it unless a
    // Conv or Gemm reads it
    let m = import_onnx_bytes(
        &one_node(
            "Reshape",
            vec![],
            &[2, 2, 2],
            vec![ints_tensor("s", &[-1, 2, 4])],
        ),
        "mem",
    )
    .unwrap();
    assert_eq!(m.layers, vec![Layer::Reshape(vec![2, 1, 4])]);
    // a Transpose that moves the batch axis, or without a perm
    for attrs in [vec![("perm", A::Is(&[1, 0, 2, 3]))], vec![]] {
        let msg = import_err(&one_node("Transpose", attrs, &[2, 3, 4], vec![])).to_string();
        assert!(msg.contains("Transpose") && msg.contains("perm"), "{msg}");
    }
}

#[test]
fn huge_attributes_do_not_panic() {
    let w = tensor("w", &[1, 1, 1, 1], vec![1.0]);
    let bytes = one_node(
        "Conv",
        vec![("pads", A::Is(&[i64::MAX, 0, 0, 0]))],
        &[1, 2, 2],
        vec![w],
    );
    assert!(matches!(import_err(&bytes), ModelError::Unsupported { .. }));
    let w = TensorProto {
        name: "w".into(),
        dims: vec![i64::MAX, 4],
        data_type: 1,
        raw_data: vec![0; 16],
        ..Default::default()
    };
    assert!(matches!(
        import_err(&one_node("Gemm", vec![], &[3], vec![w])),
        ModelError::Onnx { .. }
    ));
}

#[test]
fn external_weights_are_read_next_to_the_model() {
    let w: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
    let ext = TensorProto {
        name: "w".into(),
        dims: vec![3, 2],
        data_type: 1,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        external_data: vec![pb::StringStringEntryProto {
            key: "location".into(),
            value: "w.bin".into(),
        }],
        ..Default::default()
    };
    let bytes = model_bytes(
        &[3],
        vec![node("Gemm", "fc", &["x", "w"], &["y"], vec![])],
        vec![ext],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.bin"),
        w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let m = import_onnx(&path).unwrap();
    // y_j = sum_k x_k B[k][j] = B[0][j] - B[2][j]
    let by_hand: Vec<f32> = (0..2).map(|j| w[j] - w[4 + j]).collect();
    assert_eq!(run_float(&m, &[1.0, 0.0, -1.0]).unwrap(), by_hand);
    let want = tract_float_reference(&path, &[3], &[1.0, 0.0, -1.0], 1).unwrap();
    assert_eq!(run_float(&m, &[1.0, 0.0, -1.0]).unwrap(), want);
    // Without a model path the external file cannot be found.
    assert!(matches!(
        import_onnx_bytes(&bytes, "mem"),
        Err(ModelError::Onnx { .. })
    ));
}

#[test]
fn residual_concat_and_constant_arithmetic_match_tract() {
    // x -> conv a -> relu -> conv b --+--> add -> relu -> concat(., proj x) -> mul 0.5 -> sub c -> gap -> flatten -> gemm
    //   \---------------------------/                     /
    //    \--------------- conv p (1x1) ------------------/
    let mut r = Rng(5);
    let inits = vec![
        conv_w(&mut r, "wa", 2, 2, 3),
        conv_w(&mut r, "wb", 2, 2, 3),
        conv_w(&mut r, "wp", 3, 2, 1),
        tensor("half", &[], vec![0.5]),
        tensor("c", &[5, 1, 1], r.vec(5)),
        tensor("gw", &[5, 4], r.vec(20)),
    ];
    let pad = || vec![("pads", A::Is(&[1, 1, 1, 1]))];
    let nodes = vec![
        node("Conv", "a", &["x", "wa"], &["ya"], pad()),
        node("Relu", "ra", &["ya"], &["za"], vec![]),
        node("Conv", "b", &["za", "wb"], &["yb"], pad()),
        node("Add", "res", &["yb", "x"], &["s"], vec![]),
        node("Relu", "rs", &["s"], &["t"], vec![]),
        node("Conv", "p", &["x", "wp"], &["yp"], vec![]),
        node(
            "Concat",
            "cat",
            &["t", "yp"],
            &["u"],
            vec![("axis", A::I(1))],
        ),
        node("Mul", "m", &["u", "half"], &["v"], vec![]),
        node("Sub", "sub", &["v", "c"], &["w"], vec![]),
        node("GlobalAveragePool", "gap", &["w"], &["g"], vec![]),
        node("Flatten", "f", &["g"], &["h"], vec![]),
        node("Gemm", "fc", &["h", "gw"], &["y"], vec![]),
    ];
    let m = check_against_tract(&model_bytes(&[2, 6, 6], nodes, inits));
    let names: Vec<&str> = m.layers.iter().map(Layer::name).collect();
    assert_eq!(
        names,
        [
            "Conv2d",
            "Relu",
            "Conv2d",
            "Add",
            "Relu",
            "Conv2d",
            "Concat",
            "BatchNorm",
            "BatchNorm",
            "GlobalAvgPool",
            "Flatten",
            "Dense"
        ]
    );
    assert_eq!(
        m.inputs[3],
        vec![3, 0],
        "the Add reads conv b and the input"
    );
    assert_eq!(
        m.inputs[6],
        vec![5, 6],
        "the Concat reads the relu and conv p"
    );
}

/// Deterministic pseudo-random choices for the generated conv cases.
fn pick(r: &mut Rng, n: usize) -> usize {
    ((r.f() + 1.0) / 2.0 * n as f32) as usize % n
}

#[test]
fn grouped_dilated_padded_convs_and_ceil_pools_match_tract() {
    // Seeded generation: groups (depthwise included), dilations, strides,
    // asymmetric pads and every auto_pad mode, each checked against tract.
    let mut r = Rng(77);
    let mut matched = 0;
    for case in 0..24 {
        let g = [1, 2, 3][pick(&mut r, 3)];
        let depthwise = case % 4 == 0;
        let cg = if depthwise { 1 } else { 1 + pick(&mut r, 2) };
        let c = g * cg;
        let m = if depthwise {
            c
        } else {
            g * (1 + pick(&mut r, 2))
        };
        let k = 1 + pick(&mut r, 3);
        let d = 1 + pick(&mut r, 2);
        let s = 1 + pick(&mut r, 2);
        let (h, w) = (5 + pick(&mut r, 4), 4 + pick(&mut r, 5));
        let auto = ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"][pick(&mut r, 4)];
        let mut attrs = vec![
            ("group", A::I(g as i64)),
            (
                "dilations",
                A::Is(Box::leak(vec![d as i64, d as i64].into_boxed_slice())),
            ),
            (
                "strides",
                A::Is(Box::leak(vec![s as i64, 1].into_boxed_slice())),
            ),
        ];
        if auto == "NOTSET" {
            let p: Vec<i64> = (0..4).map(|_| pick(&mut r, k.max(2)) as i64).collect();
            attrs.push(("pads", A::Is(Box::leak(p.into_boxed_slice()))));
        } else {
            attrs.push(("auto_pad", A::S(auto)));
        }
        let wt = tensor(
            "w",
            &[m as i64, cg as i64, k as i64, k as i64],
            r.vec(m * cg * k * k),
        );
        let b = tensor("b", &[m as i64], r.vec(m));
        let ceil = pick(&mut r, 2) as i64;
        // Every third case pools with dilations (1 or 2 per axis).
        const DILATIONS: [[i64; 2]; 4] = [[1, 1], [2, 1], [1, 2], [2, 2]];
        let pd: &'static [i64] = if case % 3 == 2 {
            &DILATIONS[1 + pick(&mut r, 3)]
        } else {
            &DILATIONS[0]
        };
        let nodes = vec![
            node("Conv", "conv", &["x", "w", "b"], &["c"], attrs),
            node(
                "MaxPool",
                "pool",
                &["c"],
                &["y"],
                vec![
                    ("kernel_shape", A::Is(&[2, 2])),
                    ("strides", A::Is(&[2, 2])),
                    ("ceil_mode", A::I(ceil)),
                    ("dilations", A::Is(pd)),
                ],
            ),
        ];
        let bytes = model_bytes(&[c as i64, h as i64, w as i64], nodes, vec![wt, b]);
        // A window that does not fit is refused by name; the rest must match.
        match import_onnx_bytes(&bytes, "mem") {
            Ok(_) => {
                check_against_tract(&bytes);
                matched += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("conv") || msg.contains("pool"),
                    "case {case}: {msg}"
                );
            }
        }
    }
    assert!(
        matched >= 16,
        "only {matched} of 24 generated cases imported"
    );
}

#[test]
fn one_dimensional_convs_and_pools_match_tract() {
    // [N, 3, 20] -> Conv1d(3->4, k5, pad 2, dilation 2, stride 1) -> Relu
    // -> MaxPool1d(k2, ceil) -> Conv1d(4->4, k3, group 4) -> AvgPool1d(k2)
    // -> Flatten -> Gemm(4*4 -> 2)
    let mut r = Rng(11);
    let inits = vec![
        tensor("w1", &[4, 3, 5], r.vec(60)),
        tensor("b1", &[4], r.vec(4)),
        tensor("w2", &[4, 1, 3], r.vec(12)),
        tensor("gw", &[16, 2], r.vec(32)),
    ];
    let nodes = vec![
        node(
            "Conv",
            "c1",
            &["x", "w1", "b1"],
            &["a"],
            vec![("pads", A::Is(&[4, 4])), ("dilations", A::Is(&[2]))],
        ),
        node("Relu", "r", &["a"], &["b"], vec![]),
        node(
            "MaxPool",
            "mp",
            &["b"],
            &["c"],
            vec![
                ("kernel_shape", A::Is(&[2])),
                ("strides", A::Is(&[2])),
                ("ceil_mode", A::I(1)),
            ],
        ),
        node("Conv", "c2", &["c", "w2"], &["d"], vec![("group", A::I(4))]),
        node(
            "AveragePool",
            "ap",
            &["d"],
            &["e"],
            vec![("kernel_shape", A::Is(&[2])), ("strides", A::Is(&[2]))],
        ),
        node("Flatten", "f", &["e"], &["g"], vec![]),
        node("Gemm", "fc", &["g", "gw"], &["y"], vec![]),
    ];
    let bytes = model_bytes(&[3, 20], nodes, inits);
    let model = import_onnx_bytes(&bytes, "mem").expect("import");
    assert_eq!(
        model.input_shape,
        vec![3, 1, 20],
        "a 1-D signal is a map of height 1"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let x = Rng(3).vec(2 * 60);
    let want = tract_float_reference(&path, &[3, 20], &x, 2).unwrap();
    let got: Vec<f32> = x
        .chunks(60)
        .flat_map(|s| run_float(&model, s).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-3 * (1.0 + w.abs()),
            "got {g}, tract {w}"
        );
    }
}

#[test]
fn degenerate_grouped_and_dilated_convs_are_refused_without_panic() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // an empty kernel dimension
        (
            one_node(
                "Conv",
                vec![],
                &[2, 5, 5],
                vec![tensor("w", &[2, 2, 0, 3], vec![])],
            ),
            "empty",
        ),
        // channels that do not split into the groups
        (
            one_node(
                "Conv",
                vec![("group", A::I(3))],
                &[4, 5, 5],
                vec![tensor("w", &[3, 1, 3, 3], vec![0.0; 27])],
            ),
            "group=3",
        ),
        // a group count that overflows when multiplied
        (
            one_node(
                "Conv",
                vec![("group", A::I(1 << 40))],
                &[4, 5, 5],
                vec![tensor("w", &[4, 1, 3, 3], vec![0.0; 36])],
            ),
            "group",
        ),
        // a dilation that makes the kernel absurdly large
        (
            one_node(
                "Conv",
                vec![("dilations", A::Is(&[65536, 65536]))],
                &[1, 5, 5],
                vec![tensor("w", &[1, 1, 3, 3], vec![0.0; 9])],
            ),
            "the_node",
        ),
    ];
    for (bytes, want) in cases {
        let e = import_err(&bytes).to_string();
        assert!(e.contains(want), "{e:?} should mention {want}");
    }
}
