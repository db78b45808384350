//! Ops that move values without computing: Reshape (a flatten, or an
//! "unflatten" into the input of a Conv) and Transpose (of the model input).

use hetee_model::error::Result;
use hetee_model::ir::Layer;

use crate::node::Ctx;
use crate::ops::Family;
use crate::{Importer, Step};

/// Flatten, Reshape, Transpose.
pub(crate) const LAYOUT: Family = Family {
    name: "layout",
    ops: &["Flatten", "Reshape", "Transpose"],
    import,
};

fn import(imp: &Importer, cx: &Ctx, x: &str, shape: &[usize]) -> Result<Step> {
    let step = |layer| Ok(Step { layer });
    match cx.node.op_type.as_str() {
        "Flatten" => {
            let axis = cx.int("axis", 1);
            let rank = shape.len() as i64 + 1;
            if axis != 1 && axis + rank != 1 {
                return Err(cx.unsup(format!("axis={axis} is not supported (supported: 1)")));
            }
            step((shape.len() != 1).then_some(Layer::Flatten))
        }
        "Reshape" => match imp.reshape_target(cx, shape)? {
            None => step((shape.len() != 1).then_some(Layer::Flatten)),
            Some(to) if to == shape => step(None),
            Some(to) => step(Some(Layer::Reshape(to))),
        },
        _ => {
            let on_input = x == imp.input;
            step(Some(Layer::Transpose(transpose_perm(cx, shape, on_input)?)))
        }
    }
}

impl Importer<'_> {
    /// The target of a Reshape of `[N, shape...]`: `None` for a flatten to
    /// `[N, F]`, else the new per-sample shape (`[C, H, W]`, or `[C, 1, L]`
    /// for a rank-3 target, as 1-D maps are held).
    fn reshape_target(&self, cx: &Ctx, shape: &[usize]) -> Result<Option<Vec<usize>>> {
        let f = shape.iter().product::<usize>() as i64;
        let allowzero = cx.int("allowzero", 0) != 0;
        let t = cx
            .node
            .input
            .get(1)
            .and_then(|t| self.eval_shape(t, 0))
            .ok_or_else(|| {
                cx.unsup("cannot determine the target shape (supported: a constant, or Shape/Gather/Unsqueeze/Concat of the input)")
            })?;
        if t.len() == 3 || t.len() == 4 {
            return self.unflatten_target(cx, &t, shape).map(Some);
        }
        let [a, b] = t[..] else {
            return Err(cx.unsup(format!(
                "reshape to rank {} is not supported (supported: [N, F], [N, C, L], [N, C, H, W])",
                t.len()
            )));
        };
        let a_ok = match a {
            None | Some(-1) | Some(1) => true,
            Some(0) => !allowzero,
            Some(v) => Some(v) == self.batch,
        };
        let b_ok = match b {
            None => true,
            Some(-1) => a != Some(-1),
            Some(0) => !allowzero && shape.first().map(|&d| d as i64) == Some(f),
            Some(v) => v == f,
        };
        if a_ok && b_ok {
            Ok(None)
        } else {
            let show = |v: Option<i64>| v.map_or("N".to_string(), |v| v.to_string());
            Err(cx.unsup(format!(
                "target shape [{}, {}] is not a flatten of [N, {shape:?}] (supported: [N or -1 or 0, {f} or -1])",
                show(a),
                show(b)
            )))
        }
    }

    /// Resolves a rank-3 or rank-4 Reshape target `t` (`-1` and `0`
    /// entries included) of `[N, shape...]` to the held per-sample shape.
    fn unflatten_target(&self, cx: &Ctx, t: &[Option<i64>], shape: &[usize]) -> Result<Vec<usize>> {
        let f = shape.iter().product::<usize>() as i64;
        let allowzero = cx.int("allowzero", 0) != 0;
        let batch_ok = match t[0] {
            None | Some(-1) | Some(1) => true,
            Some(0) => !allowzero,
            Some(v) => Some(v) == self.batch,
        };
        let mut dims = Vec::with_capacity(t.len() - 1);
        let mut free = None;
        for (i, d) in t.iter().enumerate().skip(1) {
            let v = match *d {
                Some(-1) if free.is_none() => {
                    free = Some(dims.len());
                    1
                }
                Some(0) if !allowzero => shape.get(i - 1).map_or(0, |&s| s as i64),
                Some(v) if v > 0 => v,
                _ => 0,
            };
            dims.push(v);
        }
        let known: i64 = dims.iter().product();
        if let Some(i) = free {
            if known > 0 && f % known == 0 {
                dims[i] = f / known;
            }
        }
        if !batch_ok || dims.iter().any(|&d| d <= 0) || dims.iter().product::<i64>() != f {
            let show: Vec<String> = t
                .iter()
                .map(|d| d.map_or("N".into(), |v| v.to_string()))
                .collect();
            return Err(cx.unsup(format!(
                "target shape [{}] is not a reshape of [N, {shape:?}] (the batch axis must stay first)",
                show.join(", ")
            )));
        }
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        Ok(match dims[..] {
            [c, l] => vec![c, 1, l],
            _ => dims,
        })
    }
}

/// The `[C, H, W]` permutation of a Transpose of the model input `[N, shape...]` (a 1-D
/// `[N, C, L]` tensor is held as `[C, 1, L]`); the batch axis must stay first.
pub(crate) fn transpose_perm(cx: &Ctx, shape: &[usize], on_input: bool) -> Result<[usize; 3]> {
    if !on_input {
        return Err(cx.unsup(
            "a Transpose is supported only on the model input (e.g. an NHWC image to NCHW)",
        ));
    }
    let rank = match cx.attr("perm").map(|a| a.ints.len()) {
        Some(r @ (3 | 4)) => r,
        _ => {
            return Err(cx.unsup(
                "needs a perm attribute over a rank-3 or rank-4 tensor (the batch axis first)",
            ))
        }
    };
    let p = cx.ints("perm", rank, 0, 0)?;
    if shape.len() != 3 || p[0] != 0 {
        return Err(cx.unsup(format!(
            "perm={p:?} over [N, {shape:?}] is not supported (the batch axis must stay first)"
        )));
    }
    // ONNX axis (1-based after the batch) to the axis of the held [C, H, W].
    let axis = |a: usize| if rank == 4 { a - 1 } else { (a - 1) * 2 };
    let perm = if rank == 4 {
        [axis(p[1]), axis(p[2]), axis(p[3])]
    } else {
        [axis(p[1]), 1, axis(p[2])]
    };
    if p[1..].iter().any(|&a| a == 0 || a >= rank) || !hetee_model::ir::is_perm3(perm) {
        return Err(cx.unsup(format!("perm={p:?} is not a permutation of the axes")));
    }
    Ok(perm)
}
