//! Import of small ONNX models built in memory, one feature at a time, each
//! checked against tract's own float execution of the same bytes: convs,
//! batch norm, pools, Gemm and MatMul, shape-computed reshapes, float64 and
//! float16 weights, external weights, residual adds and concats. The
//! refusals are in `onnx_refusals.rs`, the generated conv and pool cases in
//! `onnx_generated_convs.rs`.

mod common;

use common::onnx_build::{ints_tensor, model_bytes, node, tensor, Rng, A};
use common::tract_check::check_against_tract;
use hetee_model::float::run_float;
use hetee_model::{Layer, ModelError};
use hetee_onnx::{import_onnx, import_onnx_bytes, tract_float_reference};
use tract_onnx::pb::{self, TensorProto};

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
