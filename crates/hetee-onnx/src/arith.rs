//! Ops that read several tensors or a constant beside the activation:
//! `Add` of two activations (a residual join), `Concat` along the channels,
//! and `Add`/`Sub`/`Mul`/`Div` by a constant that broadcasts per channel
//! (an exact per-channel affine map, folded into a neighbouring linear
//! layer when it can be).

use hetee_model::error::Result;
use hetee_model::ir::Layer;

use crate::node::Ctx;
use crate::Importer;

/// The ops of this module.
pub(crate) const ARITH_OPS: [&str; 5] = ["Add", "Sub", "Mul", "Div", "Concat"];

impl Importer<'_> {
    /// Translates an arithmetic node. `acts[i]` is `Some(shape)` when input
    /// `i` is an activation. Returns the layer and which inputs it reads.
    pub(crate) fn arith(
        &self,
        cx: &Ctx,
        acts: &[Option<Vec<usize>>],
    ) -> Result<(Layer, Vec<usize>)> {
        let n = cx.node;
        let op = n.op_type.as_str();
        let act_idx: Vec<usize> = (0..acts.len()).filter(|&i| acts[i].is_some()).collect();
        if op == "Concat" {
            if act_idx.len() != acts.len() || acts.len() < 2 {
                return Err(cx.unsup(
                    "only a concatenation of two or more activations is supported (no constants)",
                ));
            }
            let rank = acts[0].as_ref().map_or(0, Vec::len) as i64 + 1;
            let axis = cx.int("axis", 1);
            if axis != 1 && axis != 1 - rank {
                return Err(cx.unsup(format!(
                    "axis={axis} is not supported (supported: 1, the channels)"
                )));
            }
            return Ok((Layer::Concat, act_idx));
        }
        if acts.len() != 2 {
            return Err(cx.unsup(format!("{op} needs two inputs")));
        }
        if act_idx.len() == 2 {
            if op == "Add" {
                return Ok((Layer::Add, act_idx));
            }
            let hint = if op == "Mul" {
                " (Mish exported as Mul(x, Tanh(Softplus(x))) is not supported: export the single ONNX op Mish, opset 18, instead)"
            } else {
                ""
            };
            return Err(cx.unsup(format!(
                "{op} of two activations is not supported; only Add joins two activations{hint}"
            )));
        }
        let a = act_idx[0];
        let shape = acts[a].clone().unwrap_or_default();
        let c = shape.first().copied().unwrap_or(1);
        let k = self.per_channel(cx, 1 - a, &shape)?;
        let (scale, shift): (Vec<f32>, Vec<f32>) = match (op, a) {
            ("Add", _) => (vec![1.0; c], k),
            ("Sub", 0) => (vec![1.0; c], k.iter().map(|v| -v).collect()),
            ("Sub", _) => (vec![-1.0; c], k),
            ("Mul", _) => (k, vec![0.0; c]),
            ("Div", 0) => {
                if k.iter().any(|&v| v == 0.0 || !v.is_finite()) {
                    return Err(cx.unsup("division by zero or a non-finite constant"));
                }
                (k.iter().map(|v| 1.0 / v).collect(), vec![0.0; c])
            }
            _ => return Err(cx.unsup(
                "a constant divided by an activation is not supported (only activation / constant)",
            )),
        };
        if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
            return Err(cx.unsup("the constant holds a non-finite value"));
        }
        Ok((Layer::BatchNorm { scale, shift }, vec![a]))
    }

    /// The constant at input `i`, broadcast to one value per channel of an
    /// activation of shape `shape` (batch excluded): a scalar, or a
    /// per-channel tensor `[C, 1, 1]`, `[1, C, 1, 1]`, `[F]` or `[1, F]`.
    fn per_channel(&self, cx: &Ctx, i: usize, shape: &[usize]) -> Result<Vec<f32>> {
        let (d, v) = self.floats(cx, i)?;
        let c = shape.first().copied().unwrap_or(1);
        if v.len() == 1 {
            return Ok(vec![v[0]; c]);
        }
        // Drop leading ones up to the activation's rank + 1 (the batch).
        let mut dims: &[usize] = &d;
        while dims.len() > shape.len() && dims.first() == Some(&1) {
            dims = &dims[1..];
        }
        let per_channel = dims.len() == shape.len()
            && dims.first() == Some(&c)
            && dims[1..].iter().all(|&x| x == 1);
        if per_channel && v.len() == c {
            Ok(v)
        } else {
            Err(cx.unsup(format!(
                "a constant of shape {d:?} on an activation of shape [N, {shape:?}]: only a scalar or one value per channel is supported"
            )))
        }
    }
}
