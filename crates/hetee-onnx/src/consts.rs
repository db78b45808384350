//! Constants: initializers, Constant nodes, tensor loading and small
//! shape computations, plus the graph input shape.

use std::borrow::Cow;

use tract_onnx::pb::{
    tensor_shape_proto::dimension, type_proto, NodeProto, TensorProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

use super::node::Ctx;
use super::Importer;
use hetee_model::error::{ModelError, Result};

/// Largest activation (values per sample) accepted for the model input.
const MAX_INPUT: usize = 1 << 28;

impl Importer<'_> {
    /// Evaluates a small shape computation; `None` entries stand for the
    /// (symbolic) batch size.
    pub(super) fn eval_shape(&self, name: &str, depth: usize) -> Option<Vec<Option<i64>>> {
        if depth > 32 {
            return None;
        }
        if let Some(t) = self.resolve_const(name) {
            return self
                .load(t, name)
                .ok()
                .and_then(|t| int_vec(&t))
                .map(|v| v.into_iter().map(Some).collect());
        }
        let n = &self.g.node[*self.producer.get(name)?];
        let arg = |i: usize| self.eval_shape(n.input.get(i)?, depth + 1);
        match n.op_type.as_str() {
            "Shape" => {
                let s = self.chain_shapes.get(n.input.first()?)?;
                let mut v: Vec<Option<i64>> = vec![None];
                v.extend(s.iter().map(|&d| Some(d as i64)));
                let r = v.len() as i64;
                let cx = Ctx {
                    name: String::new(),
                    node: n,
                };
                let norm = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                let (lo, hi) = (norm(cx.int("start", 0)), norm(cx.int("end", r)));
                Some(v.get(lo..hi.max(lo))?.to_vec())
            }
            "Gather" => {
                let data = arg(0)?;
                let cx = Ctx {
                    name: String::new(),
                    node: n,
                };
                if cx.int("axis", 0) != 0 {
                    return None;
                }
                let idx = self.eval_shape(n.input.get(1)?, depth + 1)?;
                idx.iter()
                    .map(|i| {
                        let i = i.map(|i| if i < 0 { i + data.len() as i64 } else { i })?;
                        data.get(usize::try_from(i).ok()?).copied()
                    })
                    .collect()
            }
            "Unsqueeze" | "Squeeze" | "Cast" | "Identity" => arg(0),
            "Concat" => {
                let mut v = Vec::new();
                for i in n.input.iter() {
                    v.extend(self.eval_shape(i, depth + 1)?);
                }
                Some(v)
            }
            _ => None,
        }
    }

    /// The constant tensor behind `name`, following Identity nodes.
    pub(super) fn resolve_const(&self, name: &str) -> Option<&TensorProto> {
        let mut name = name;
        for _ in 0..16 {
            if let Some(t) = self.consts.get(name) {
                return Some(t);
            }
            let n = &self.g.node[*self.producer.get(name)?];
            if n.op_type != "Identity" {
                return None;
            }
            name = n.input.first()?;
        }
        None
    }

    /// Loads a tensor with tract's loader, accepting only plain number types.
    pub(super) fn load(&self, t: &TensorProto, name: &str) -> Result<Tensor> {
        const OK: [i32; 5] = [1, 6, 7, 10, 11]; // float, int32, int64, float16, double
        if !OK.contains(&t.data_type) {
            return Err(ModelError::Data(format!(
                "tensor '{name}' has ONNX data type {}; only float and integer tensors are supported",
                dtype_name(t.data_type)
            )));
        }
        tract_onnx::tensor::load_tensor(&*self.onnx.provider, t, self.dir).map_err(|e| {
            ModelError::Onnx {
                path: self.path.to_string(),
                reason: format!("tensor '{name}': {e:#}"),
            }
        })
    }

    /// The float constant at input `i` of the node: its shape and values.
    pub(super) fn floats(&self, cx: &Ctx, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let name = cx.node.input.get(i).map(String::as_str).unwrap_or("");
        self.const_floats(cx, name)
    }

    pub(super) fn const_floats(&self, cx: &Ctx, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.resolve_const(name).ok_or_else(|| {
            cx.unsup(format!(
                "input '{name}' must be a constant (initializer or Constant node)"
            ))
        })?;
        if ![1, 10, 11].contains(&t.data_type) {
            return Err(cx.unsup(format!(
                "weight '{name}' has data type {}; only float32 (or float64/float16) is supported",
                dtype_name(t.data_type)
            )));
        }
        let t = self.load(t, name)?;
        let f = t
            .cast_to::<f32>()
            .map_err(|e| cx.unsup(format!("weight '{name}': {e}")))?;
        let v = f
            .to_plain_array_view::<f32>()
            .map_err(|e| cx.unsup(format!("weight '{name}': {e}")))?;
        Ok((t.shape().to_vec(), v.iter().copied().collect()))
    }

    /// An optional bias at input `i` (zeros if absent).
    pub(super) fn opt_floats(&self, cx: &Ctx, i: usize, len: usize) -> Result<Vec<f32>> {
        match cx.node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(vec![0.0; len]),
            Some(name) => self.bias_of(cx, name, len),
        }
    }

    /// A bias of `len` values from a constant of shape [len], [1, len], [1] or [].
    pub(super) fn bias_of(&self, cx: &Ctx, name: &str, len: usize) -> Result<Vec<f32>> {
        let (d, v) = self.const_floats(cx, name)?;
        match (&d[..], v.len()) {
            ([], 1) | ([1], 1) | ([1, 1], 1) => Ok(vec![v[0]; len]),
            ([n], _) | ([1, n], _) if *n == len && v.len() == len => Ok(v),
            _ => Err(cx.shape_err(format!(
                "bias '{name}' has shape {d:?}, expected [{len}] or [1, {len}]"
            ))),
        }
    }

    pub(super) fn int_values(&self, cx: &Ctx, name: &str) -> Result<Vec<i64>> {
        let t = self
            .resolve_const(name)
            .ok_or_else(|| cx.unsup(format!("input '{name}' must be a constant")))?;
        let t = self.load(t, name)?;
        int_vec(&t)
            .or_else(|| {
                let f = t.cast_to::<f32>().ok()?;
                let v = f.to_plain_array_view::<f32>().ok()?;
                Some(v.iter().map(|&x| x as i64).collect())
            })
            .ok_or_else(|| cx.unsup(format!("input '{name}' is not numeric")))
    }
}

/// Name of an ONNX data type code, e.g. `INT8`.
fn dtype_name(code: i32) -> String {
    match tract_onnx::pb::tensor_proto::DataType::try_from(code) {
        Ok(d) => d.as_str_name().to_string(),
        Err(_) => format!("#{code}"),
    }
}

/// Integer values of an int32/int64 tensor.
fn int_vec(t: &Tensor) -> Option<Vec<i64>> {
    if !matches!(t.datum_type(), DatumType::I64 | DatumType::I32) {
        return None;
    }
    let t = t.cast_to::<i64>().ok()?;
    let v = t
        .to_plain_array_view::<i64>()
        .ok()?
        .iter()
        .copied()
        .collect();
    Some(v)
}

/// The value of a Constant node as a tensor proto.
pub(super) fn constant_value(n: &NodeProto) -> Option<Cow<'_, TensorProto>> {
    let a = n.attribute.first()?;
    let (dims, t) = match a.name.as_str() {
        "value" => return a.t.as_ref().map(Cow::Borrowed),
        "value_float" => (vec![], (1, vec![a.f], vec![])),
        "value_floats" => (vec![a.floats.len() as i64], (1, a.floats.clone(), vec![])),
        "value_int" => (vec![], (7, vec![], vec![a.i])),
        "value_ints" => (vec![a.ints.len() as i64], (7, vec![], a.ints.clone())),
        _ => return None,
    };
    Some(Cow::Owned(TensorProto {
        dims,
        data_type: t.0,
        float_data: t.1,
        int64_data: t.2,
        ..Default::default()
    }))
}

/// The input shape without batch, and the batch size if it is a number.
pub(super) fn input_shape(input: &ValueInfoProto) -> Result<(Vec<usize>, Option<i64>)> {
    let err = |what: String| ModelError::Unsupported {
        node: input.name.clone(),
        op: "graph input".into(),
        what,
    };
    let Some(type_proto::Value::TensorType(tt)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(err("the input has no tensor type".into()));
    };
    if tt.elem_type != 1 {
        return Err(err(format!(
            "input data type {} is not supported (only float32)",
            tt.elem_type
        )));
    }
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    let val = |d: &tract_onnx::pb::tensor_shape_proto::Dimension| match d.value {
        Some(dimension::Value::DimValue(v)) => Some(v),
        _ => None,
    };
    if !(2..=4).contains(&dims.len()) {
        return Err(err(format!(
            "input rank {} is not supported (supported: [N, C, H, W], [N, C, L] or [N, F])",
            dims.len()
        )));
    }
    let mut shape = Vec::new();
    for d in &dims[1..] {
        match val(d) {
            Some(v) if v > 0 => shape.push(v as usize),
            _ => {
                return Err(err(format!(
                    "input dimension {:?} is not a fixed positive size; only the batch dimension may be symbolic",
                    d.value
                )))
            }
        }
    }
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none_or(|n| n > MAX_INPUT)
    {
        return Err(err(format!("input shape {shape:?} is too large")));
    }
    // A 1-D signal [C, L] is a [C, 1, L] map: 1-D convs and pools are 2-D
    // ones of height 1.
    if let [c, l] = shape[..] {
        shape = vec![c, 1, l];
    }
    Ok((shape, dims.first().and_then(val)))
}
