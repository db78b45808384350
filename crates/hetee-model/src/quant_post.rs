//! Quantization of a stage's post ops: pooling and ReLU as they are, and
//! every run of other activations as a lookup table ([`Lut`]) whose input
//! grid is calibrated on the run's input and whose output grid covers what
//! the function takes on that grid.

use crate::activation::{build_table, Activation};
use crate::error::{ModelError, Result};
use crate::intops::{PostOp, Requant};
use crate::lut::Lut;

/// A post op before quantization.
pub(crate) enum PostPlan {
    /// An integer op as is.
    Op(PostOp),
    /// Consecutive activations that become one table.
    Acts {
        acts: Vec<Activation>,
        /// The model tensor the run reads (index into the calibrated ranges).
        input_layer: usize,
        /// The run's first node, for messages.
        node: String,
    },
}

/// What a stage's values are after some of its post ops.
#[derive(Clone, Copy)]
pub(crate) enum Domain {
    /// Accumulator units, per channel (`acc_scale`).
    Acc,
    /// 8-bit values in `[min, max]`, each worth `scale`.
    Int8 { scale: f64, min: i64, max: i64 },
}

/// Quantizes stage `k`'s post ops, whose input is the linear output of
/// shape `shape` (accumulators at `acc_scale`); `ranges` are the calibrated
/// ranges of the model's tensors (index = tensor id). Returns the ops and the
/// domain of the values they produce.
pub(crate) fn quantize_post(
    plans: Vec<PostPlan>,
    mut shape: [usize; 3],
    acc_scale: &[f64],
    ranges: &[(f64, f64)],
    k: usize,
) -> Result<(Vec<PostOp>, Domain)> {
    let mut domain = Domain::Acc;
    let mut post = Vec::with_capacity(plans.len());
    for plan in plans {
        let op = match plan {
            PostPlan::Op(op) => {
                if let (PostOp::Relu, Domain::Int8 { min, .. }) = (&op, &mut domain) {
                    *min = (*min).max(0);
                }
                op
            }
            PostPlan::Acts {
                acts,
                input_layer,
                node,
            } => {
                let c = shape[0];
                for a in &acts {
                    a.check(c).map_err(|e| ModelError::Unsupported {
                        node: node.clone(),
                        op: a.name().into(),
                        what: format!(
                            "{e}; a per-feature slope after a Flatten of a convolution is not supported"
                        ),
                    })?;
                }
                let (input, in_scale) = match domain {
                    Domain::Int8 { scale, min, max } => (Requant::identity(c, min, max), scale),
                    Domain::Acc => {
                        let (lo, hi) = ranges.get(input_layer).copied().unwrap_or((0.0, 0.0));
                        // Inputs where the run is flat need no grid points.
                        let (flat_lo, flat_hi) = acts[0].flat_outside();
                        let (lo, hi) = (lo.max(flat_lo), hi.min(flat_hi));
                        let (qmin, qmax, range) = if lo >= 0.0 {
                            (0, 255, hi)
                        } else {
                            (-127, 127, hi.max(-lo))
                        };
                        let s = if range > 0.0 && range.is_finite() {
                            range / qmax as f64
                        } else {
                            1.0
                        };
                        let r: Vec<f64> = acc_scale.iter().map(|a| a / s).collect();
                        (Requant::from_real(&r, qmin, qmax), s)
                    }
                };
                let t = build_table(&acts, c, in_scale, input.min, input.max);
                domain = Domain::Int8 {
                    scale: t.out_scale,
                    min: t.out_min,
                    max: t.out_max,
                };
                PostOp::Lut(Lut {
                    input,
                    table: t.entries,
                    out_scale: t.out_scale,
                })
            }
        };
        shape = op.output_shape(shape).ok_or_else(|| {
            ModelError::Shape(format!("pooling window does not fit in stage {k}"))
        })?;
        post.push(op);
    }
    Ok((post, domain))
}
