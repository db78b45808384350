//! Gemm and MatMul with a constant matrix: a dense layer (a following Add
//! of a constant folds into its bias when the graph is cut).

use hetee_model::error::Result;
use hetee_model::ir::Layer;

use crate::node::Ctx;
use crate::ops::Family;
use crate::{Importer, Step};

/// Gemm and MatMul.
pub(crate) const LINEAR: Family = Family {
    name: "linear",
    ops: &["Gemm", "MatMul"],
    import,
};

fn import(imp: &Importer, cx: &Ctx, x: &str, shape: &[usize]) -> Result<Step> {
    let n = cx.node;
    let step = |layer| Ok(Step { layer });
    match n.op_type.as_str() {
        "Gemm" => {
            cx.int_in("transA", 0, &[0])?;
            let tb = cx.int_in("transB", 0, &[0, 1])?;
            let (alpha, beta) = (cx.float("alpha", 1.0), cx.float("beta", 1.0));
            cx.require_flat(shape)?;
            let (bd, b) = imp.floats(cx, 1)?;
            let [r, c] = bd[..] else {
                return Err(cx.shape_err(format!("B has shape {bd:?}, expected 2-D")));
            };
            let (k, nout, mut w) = if tb == 1 {
                (c, r, b)
            } else {
                (r, c, transpose(&b, r, c))
            };
            w.iter_mut().for_each(|v| *v *= alpha);
            let mut bias = imp.opt_floats(cx, 2, nout)?;
            bias.iter_mut().for_each(|v| *v *= beta);
            step(Some(dense(w, bias, k, nout)))
        }
        "MatMul" => {
            if n.input.first().map(String::as_str) != Some(x) {
                return Err(cx.unsup("only activation x constant matrix is supported"));
            }
            cx.require_flat(shape)?;
            let (bd, b) = imp.floats(cx, 1)?;
            let [k, nout] = bd[..] else {
                return Err(cx.shape_err(format!(
                    "right operand has shape {bd:?}, expected [in, out]"
                )));
            };
            let w = transpose(&b, k, nout);
            // A following Add of a constant becomes a per-feature affine
            // that the quantizer folds into this layer's bias.
            step(Some(dense(w, vec![0.0; nout], k, nout)))
        }
        _ => Err(cx.unsup("not a linear op")),
    }
}

/// Transposes a row-major `r x c` matrix.
fn transpose(m: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = m[i * c + j];
        }
    }
    t
}

fn dense(weight: Vec<f32>, bias: Vec<f32>, in_features: usize, out_features: usize) -> Layer {
    Layer::Dense {
        weight,
        bias,
        out_features,
        in_features,
    }
}
