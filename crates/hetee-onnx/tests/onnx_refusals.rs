//! Small ONNX models built in memory that the import must refuse cleanly,
//! naming the node and what is wrong: unsupported attributes, unknown ops,
//! branches and bad weights, huge attributes, and degenerate grouped or
//! dilated convs. None may panic.

mod common;

use common::onnx_build::{ints_tensor, model_bytes, node, tensor, A};
use hetee_model::{Layer, ModelError};
use hetee_onnx::import_onnx_bytes;
use tract_onnx::pb::TensorProto;

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
