//! Conv and pool models generated from a seed (groups, depthwise, dilations,
//! strides, asymmetric pads, every auto_pad mode, ceil-mode and dilated
//! pools) and 1-D convs and pools, each checked against tract's own float
//! execution of the same bytes.

mod common;

use common::onnx_build::{model_bytes, node, tensor, Rng, A};
use common::tract_check::check_against_tract;
use hetee_model::float::run_float;
use hetee_onnx::{import_onnx_bytes, tract_float_reference};

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
