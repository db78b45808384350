//! BatchNormalization: a per-channel affine (folded into a neighbouring
//! linear layer when the graph is cut, else an exact enclave join).

use hetee_model::error::Result;
use hetee_model::ir::Layer;

use crate::node::Ctx;
use crate::ops::Family;
use crate::{Importer, Step};

/// BatchNormalization.
pub(crate) const NORM: Family = Family {
    name: "normalization",
    ops: &["BatchNormalization"],
    import,
};

fn import(imp: &Importer, cx: &Ctx, _x: &str, _shape: &[usize]) -> Result<Step> {
    let step = |layer| Ok(Step { layer });
    cx.int_in("training_mode", 0, &[0])?;
    cx.int_in("spatial", 1, &[1])?;
    let eps = cx.float("epsilon", 1e-5) as f64;
    let mut p = Vec::new();
    for i in 1..5 {
        let (d, v) = imp.floats(cx, i)?;
        if d.len() != 1 {
            return Err(cx.shape_err(format!("parameter {i} has shape {d:?}, expected [C]")));
        }
        p.push(v);
    }
    let c = p[0].len();
    if p.iter().any(|v| v.len() != c) {
        return Err(cx.shape_err("scale, bias, mean and var differ in length"));
    }
    let scale: Vec<f32> = (0..c)
        .map(|i| (p[0][i] as f64 / (p[3][i] as f64 + eps).sqrt()) as f32)
        .collect();
    let shift = (0..c)
        .map(|i| (p[1][i] as f64 - p[2][i] as f64 * scale[i] as f64) as f32)
        .collect();
    step(Some(Layer::BatchNorm { scale, shift }))
}
