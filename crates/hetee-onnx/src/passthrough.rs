//! Ops that pass their input on (Identity, Dropout at inference) and the
//! final Softmax, which the enclave applies to the released logits.

use hetee_model::error::Result;
use hetee_model::ir::Layer;

use crate::node::Ctx;
use crate::ops::Family;
use crate::{Importer, Step};

/// Identity, Dropout, Softmax.
pub(crate) const PASSTHROUGH: Family = Family {
    name: "pass-through",
    ops: &["Identity", "Dropout", "Softmax"],
    import,
};

fn import(imp: &Importer, cx: &Ctx, _x: &str, shape: &[usize]) -> Result<Step> {
    let n = cx.node;
    let step = |layer| Ok(Step { layer });
    match n.op_type.as_str() {
        "Dropout" => {
            if let Some(t) = n.input.get(2).filter(|s| !s.is_empty()) {
                if imp.int_values(cx, t)?.iter().any(|&v| v != 0) {
                    return Err(cx.unsup("training_mode=1 is not supported (inference only)"));
                }
            }
            step(None)
        }
        "Softmax" => {
            cx.require_flat(shape)?;
            let axis = cx.int("axis", -1);
            if axis != 1 && axis != -1 {
                return Err(cx.unsup(format!(
                    "axis={axis} is not supported (supported: the features, 1 or -1)"
                )));
            }
            step(Some(Layer::Softmax))
        }
        _ => step(None),
    }
}
