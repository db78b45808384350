//! Import of elementwise activations: Relu (its own layer) and every other
//! one into [`Activation`], with ONNX's defaults for absent attributes.

use hetee_model::activation::Activation;
use hetee_model::error::Result;
use hetee_model::ir::Layer;

use super::node::Ctx;
use super::Importer;
use crate::ops::Family;
use crate::Step;

/// Relu and every activation that becomes a table.
pub(crate) const ACTIVATIONS: Family = Family {
    name: "activations",
    ops: &[
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "HardSwish",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "ThresholdedRelu",
        "Gelu",
        "Erf",
        "Mish",
    ],
    import,
};

fn import(imp: &Importer, cx: &Ctx, _x: &str, shape: &[usize]) -> Result<Step> {
    let layer = match cx.node.op_type.as_str() {
        "Relu" => Layer::Relu,
        _ => Layer::Act(imp.activation(cx, shape)?),
    };
    Ok(Step { layer: Some(layer) })
}

impl Importer<'_> {
    /// Translates the activation node `cx` on an activation of shape
    /// `shape` (batch excluded).
    pub(super) fn activation(&self, cx: &Ctx, shape: &[usize]) -> Result<Activation> {
        let n = cx.node;
        let a = match n.op_type.as_str() {
            "LeakyRelu" => Activation::LeakyRelu {
                alpha: cx.float("alpha", 0.01),
            },
            "PRelu" => Activation::PRelu {
                slope: self.prelu_slope(cx, shape)?,
            },
            "Clip" => {
                let (min, max) = (
                    self.clip_bound(cx, 1, "min")?,
                    self.clip_bound(cx, 2, "max")?,
                );
                Activation::Clip {
                    min: min.unwrap_or(f32::NEG_INFINITY),
                    max: max.unwrap_or(f32::INFINITY),
                }
            }
            "Sigmoid" => Activation::Sigmoid,
            "HardSigmoid" => Activation::HardSigmoid {
                alpha: cx.float("alpha", 0.2),
                beta: cx.float("beta", 0.5),
            },
            "Tanh" => Activation::Tanh,
            "HardSwish" => Activation::HardSwish,
            "Elu" => Activation::Elu {
                alpha: cx.float("alpha", 1.0),
            },
            "Selu" => Activation::Selu {
                alpha: cx.float("alpha", 1.673_263_2),
                gamma: cx.float("gamma", 1.050_701),
            },
            "Celu" => Activation::Celu {
                alpha: cx.float("alpha", 1.0),
            },
            "Softplus" => Activation::Softplus,
            "Softsign" => Activation::Softsign,
            "ThresholdedRelu" => Activation::ThresholdedRelu {
                alpha: cx.float("alpha", 1.0),
            },
            "Gelu" => {
                let approx = cx
                    .attr("approximate")
                    .map(|a| String::from_utf8_lossy(&a.s).into_owned());
                match approx.as_deref() {
                    None | Some("none") => Activation::Gelu { tanh: false },
                    Some("tanh") => Activation::Gelu { tanh: true },
                    Some(o) => {
                        return Err(cx.unsup(format!(
                            "attribute approximate={o} is not supported (supported: none, tanh)"
                        )))
                    }
                }
            }
            "Erf" => Activation::Erf,
            "Mish" => Activation::Mish,
            other => return Err(cx.unsup(format!("{other} is not an activation"))),
        };
        let channels = shape.first().copied().unwrap_or(1);
        a.check(channels).map_err(|e| cx.unsup(e))?;
        Ok(a)
    }

    /// A Clip bound: the constant input `i` (opset 11+), else the attribute
    /// `name` (opset 6-10), else `None`.
    fn clip_bound(&self, cx: &Ctx, i: usize, name: &str) -> Result<Option<f32>> {
        if let Some(t) = cx.node.input.get(i).filter(|s| !s.is_empty()) {
            let (_, v) = self.const_floats(cx, t)?;
            return match v[..] {
                [b] => Ok(Some(b)),
                _ => Err(cx.unsup(format!("{name} must be a scalar, got {} values", v.len()))),
            };
        }
        Ok(cx.attr(name).map(|a| a.f))
    }

    /// PRelu's slope: one value, or one per channel (`[C, 1, 1]` for an
    /// activation `[N, C, H, W]`, `[F]` for `[N, F]`, leading ones allowed).
    fn prelu_slope(&self, cx: &Ctx, shape: &[usize]) -> Result<Vec<f32>> {
        let name = cx.node.input.get(1).map(String::as_str).unwrap_or("");
        let (dims, v) = self.const_floats(cx, name)?;
        if v.len() == 1 {
            return Ok(v);
        }
        let lead = dims.iter().take_while(|&&d| d == 1).count();
        let d = &dims[lead..];
        let per_channel = match shape {
            [c, _, _] => d == [*c, 1, 1],
            [f] => d == [*f],
            _ => false,
        };
        if per_channel && !v.is_empty() {
            Ok(v)
        } else {
            Err(cx.unsup(format!(
                "slope '{name}' of shape {dims:?} on an activation [N, {shape:?}] is not supported \
                 (supported: one value, [C, 1, 1] for [N, C, H, W], [F] for [N, F])"
            )))
        }
    }
}
