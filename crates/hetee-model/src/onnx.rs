//! ONNX import: parses the protobuf with tract-onnx, then walks the graph
//! itself and translates a single chain of supported ops into the IR.
//!
//! Also offers [`tract_float_reference`], tract's own float execution of the
//! same file, to check the import and the float executor against.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

use crate::error::{ModelError, Result};
use crate::float::layer_output_shape;
use crate::ir::{Layer, Model, Pads, Window};

/// Largest kernel, stride or padding accepted from an attribute.
const MAX_ATTR: i64 = 1 << 16;
/// The ONNX ops the importer translates (MatMul also absorbs a following Add).
const KNOWN_OPS: [&str; 12] = [
    "Identity",
    "Dropout",
    "Relu",
    "Conv",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
];
/// Largest activation (values per sample) accepted for the model input.
const MAX_INPUT: usize = 1 << 28;

/// Imports the ONNX model at `path` (external data is resolved next to it).
pub fn import_onnx(path: &Path) -> Result<Model> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ModelError::Onnx {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    let dir = path.parent().map(|d| d.to_string_lossy().into_owned());
    import(&bytes, &name, dir.as_deref())
}

/// Imports an ONNX model from memory; `name_for_errors` stands for the file
/// in messages. Tensors with external data cannot be resolved this way.
pub fn import_onnx_bytes(bytes: &[u8], name_for_errors: &str) -> Result<Model> {
    import(bytes, name_for_errors, None)
}

/// Runs tract's float execution of the ONNX file on `n` samples of shape
/// `input_shape` (batch excluded), given back to back in `batch`, one
/// sample per run, and returns the concatenated flat outputs.
pub fn tract_float_reference(
    path: &Path,
    input_shape: &[usize],
    batch: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let per: usize = input_shape.iter().product();
    if per == 0 || per.checked_mul(n) != Some(batch.len()) {
        return Err(ModelError::Data(format!(
            "{} input values do not make {n} samples of shape {input_shape:?}",
            batch.len()
        )));
    }
    let err = |e: TractError| ModelError::Onnx {
        path: path.display().to_string(),
        reason: format!("tract: {e:#}"),
    };
    let mut full = vec![1usize];
    full.extend_from_slice(input_shape);
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(&full).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let mut out = Vec::new();
    for sample in batch.chunks_exact(per) {
        let t = Tensor::from_shape(&full, sample).map_err(err)?;
        let res = plan.run(tvec!(t.into())).map_err(err)?;
        let first = res.first().ok_or_else(|| err(TractError::msg("model has no output")))?;
        out.extend(first.to_plain_array_view::<f32>().map_err(err)?.iter().copied());
    }
    Ok(out)
}

fn import(bytes: &[u8], path: &str, dir: Option<&str>) -> Result<Model> {
    let onnx_err = |reason: String| ModelError::Onnx {
        path: path.to_string(),
        reason,
    };
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| onnx_err(format!("{e:#}")))?;
    if proto.ir_version <= 0 && proto.opset_import.is_empty() {
        return Err(onnx_err("no ir_version and no opset_import, not an ONNX model".into()));
    }
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| onnx_err("the model contains no graph".into()))?;
    Importer::new(graph, path, dir, &onnx)?.run()
}

/// Names a node in messages: its name, or `#<index>` when it has none.
fn node_name(graph: &GraphProto, i: usize) -> String {
    match graph.node.get(i) {
        Some(n) if !n.name.is_empty() => n.name.clone(),
        _ => format!("#{i}"),
    }
}

/// A graph-level structural problem (not tied to one node).
fn graph_err(what: String) -> ModelError {
    ModelError::Unsupported {
        node: "<graph>".into(),
        op: "graph".into(),
        what,
    }
}

/// One translated step of the chain.
struct Step {
    layer: Option<Layer>,
    /// Tensor that carries the activation after this step.
    next: String,
}

struct Importer<'a> {
    g: &'a GraphProto,
    path: &'a str,
    dir: Option<&'a str>,
    onnx: &'a tract_onnx::model::Onnx,
    consts: HashMap<&'a str, Cow<'a, TensorProto>>,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    /// Shapes (batch excluded) of the activations seen so far.
    chain_shapes: HashMap<String, Vec<usize>>,
    input: String,
    output: String,
    input_shape: Vec<usize>,
    batch: Option<i64>,
}

/// The node being translated, for error messages.
struct Ctx<'a> {
    name: String,
    node: &'a NodeProto,
}

impl Ctx<'_> {
    fn unsup(&self, what: impl Into<String>) -> ModelError {
        ModelError::Unsupported {
            node: self.name.clone(),
            op: self.node.op_type.clone(),
            what: what.into(),
        }
    }
    fn shape_err(&self, what: impl std::fmt::Display) -> ModelError {
        ModelError::Shape(format!("node '{}' ({}): {what}", self.name, self.node.op_type))
    }
    fn attr(&self, name: &str) -> Option<&tract_onnx::pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }
    /// Requires an integer attribute to have one of the `ok` values.
    fn int_in(&self, name: &str, default: i64, ok: &[i64]) -> Result<i64> {
        let v = self.int(name, default);
        if ok.contains(&v) {
            Ok(v)
        } else {
            Err(self.unsup(format!("attribute {name}={v} is not supported (supported: {ok:?})")))
        }
    }
    /// A list of `len` non-negative integers (at most [`MAX_ATTR`]).
    fn ints(&self, name: &str, len: usize, default: i64, min: i64) -> Result<Vec<usize>> {
        let v = match self.attr(name) {
            Some(a) => a.ints.clone(),
            None => vec![default; len],
        };
        if v.len() != len || v.iter().any(|&x| x < min || x > MAX_ATTR) {
            return Err(self.unsup(format!(
                "attribute {name}={v:?} is not supported (expected {len} values in {min}..={MAX_ATTR})"
            )));
        }
        Ok(v.iter().map(|&x| x as usize).collect())
    }
    fn check_auto_pad(&self) -> Result<()> {
        let s = self.attr("auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned());
        match s.as_deref() {
            None | Some("") | Some("NOTSET") | Some("VALID") => Ok(()),
            Some(o) => Err(self.unsup(format!(
                "auto_pad={o} is not supported (supported: NOTSET or VALID; export with explicit pads)"
            ))),
        }
    }
    fn check_dilations(&self) -> Result<()> {
        if let Some(a) = self.attr("dilations") {
            if a.ints.iter().any(|&d| d != 1) {
                return Err(self.unsup(format!(
                    "dilations={:?} is not supported (supported: all 1)",
                    a.ints
                )));
            }
        }
        Ok(())
    }
    /// Kernel, strides and pads of a 2-D conv or pool.
    fn window(&self, kernel: Option<(usize, usize)>) -> Result<Window> {
        self.check_auto_pad()?;
        self.check_dilations()?;
        let k = match (self.attr("kernel_shape"), kernel) {
            (None, Some(k)) => k,
            (None, None) => return Err(self.unsup("missing kernel_shape")),
            (Some(_), _) => {
                let k = self.ints("kernel_shape", 2, 0, 1)?;
                if kernel.is_some_and(|w| w != (k[0], k[1])) {
                    return Err(self.shape_err(format!(
                        "kernel_shape {k:?} does not match the weight {kernel:?}"
                    )));
                }
                (k[0], k[1])
            }
        };
        let s = self.ints("strides", 2, 1, 1)?;
        let p = self.ints("pads", 4, 0, 0)?;
        Ok(Window {
            kernel: k,
            strides: (s[0], s[1]),
            pads: Pads {
                top: p[0],
                left: p[1],
                bottom: p[2],
                right: p[3],
            },
        })
    }
}

impl<'a> Importer<'a> {
    fn new(
        g: &'a GraphProto,
        path: &'a str,
        dir: Option<&'a str>,
        onnx: &'a tract_onnx::model::Onnx,
    ) -> Result<Self> {
        let mut consts: HashMap<&str, Cow<TensorProto>> = HashMap::new();
        for t in &g.initializer {
            consts.insert(&t.name, Cow::Borrowed(t));
        }
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                let v = consumers.entry(inp.as_str()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
            if n.op_type == "Constant" && n.input.is_empty() {
                if let (Some(o), Some(t)) = (n.output.first(), constant_value(n)) {
                    consts.insert(o, t);
                }
            }
        }
        let inputs: Vec<_> = g
            .input
            .iter()
            .filter(|i| !consts.contains_key(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(graph_err(format!(
                "the graph has {} non-constant inputs; exactly one is supported",
                inputs.len()
            )));
        };
        let [output] = g.output.as_slice() else {
            return Err(graph_err(format!(
                "the graph has {} outputs; exactly one is supported",
                g.output.len()
            )));
        };
        let (input_shape, batch) = input_shape(input)?;
        Ok(Importer {
            g,
            path,
            dir,
            onnx,
            consts,
            producer,
            consumers,
            chain_shapes: HashMap::new(),
            input: input.name.clone(),
            output: output.name.clone(),
            input_shape,
            batch,
        })
    }

    fn run(mut self) -> Result<Model> {
        let mut cur = self.input.clone();
        let mut shape = self.input_shape.clone();
        let (mut layers, mut names) = (Vec::new(), Vec::new());
        let mut visited = HashSet::new();
        self.chain_shapes.insert(cur.clone(), shape.clone());
        while cur != self.output {
            let users: Vec<usize> = self
                .consumers
                .get(cur.as_str())
                .map(|v| v.iter().copied().filter(|&i| self.g.node[i].op_type != "Shape").collect())
                .unwrap_or_default();
            let idx = match users.as_slice() {
                [i] => *i,
                [] => {
                    return Err(graph_err(format!(
                        "tensor '{cur}' is not used by any node and is not the graph output '{}'",
                        self.output
                    )))
                }
                many => {
                    let who: Vec<String> = many.iter().map(|&i| node_name(self.g, i)).collect();
                    return Err(graph_err(format!(
                        "tensor '{cur}' feeds several nodes {who:?}; only a single chain of layers \
                         is supported (no branches or residual connections)"
                    )));
                }
            };
            if !visited.insert(idx) {
                return Err(graph_err(format!("the graph has a cycle at tensor '{cur}'")));
            }
            let cx = Ctx {
                name: node_name(self.g, idx),
                node: &self.g.node[idx],
            };
            let step = self.translate(&cx, &cur, &shape)?;
            if let Some(layer) = step.layer {
                shape = layer_output_shape(&layer, &shape).map_err(|e| cx.shape_err(e))?;
                layers.push(layer);
                names.push(cx.name.clone());
            }
            cur = step.next;
            self.chain_shapes.insert(cur.clone(), shape.clone());
        }
        Ok(Model {
            input_shape: self.input_shape,
            layers,
            node_names: names,
        })
    }

    /// Translates the node `cx` whose data input is the activation `x`.
    fn translate(&self, cx: &Ctx, x: &str, shape: &[usize]) -> Result<Step> {
        let n = cx.node;
        let known = KNOWN_OPS.contains(&n.op_type.as_str());
        if !(n.domain.is_empty() || n.domain == "ai.onnx") || !known {
            let op = match n.domain.as_str() {
                "" | "ai.onnx" => n.op_type.clone(),
                d => format!("{d}:{}", n.op_type),
            };
            return Err(ModelError::UnsupportedOp {
                node: cx.name.clone(),
                op,
            });
        }
        if n.op_type != "MatMul" && n.input.first().map(String::as_str) != Some(x) {
            return Err(cx.unsup(format!("the activation '{x}' must be the first input")));
        }
        let out = match n.output.first() {
            Some(o) if !o.is_empty() => o.clone(),
            _ => return Err(cx.unsup("node has no output")),
        };
        for extra in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.consumers.contains_key(extra.as_str()) || *extra == self.output {
                return Err(cx.unsup(format!("secondary output '{extra}' is used; only the first output is supported")));
            }
        }
        let step = |layer| Ok(Step { layer, next: out.clone() });
        let flat = || {
            if shape.len() == 1 {
                Ok(())
            } else {
                Err(cx.shape_err(format!("needs a flat [N, F] input, got [N, {shape:?}]; insert a Flatten")))
            }
        };
        match n.op_type.as_str() {
            "Identity" => step(None),
            "Dropout" => {
                if let Some(t) = n.input.get(2).filter(|s| !s.is_empty()) {
                    if self.int_values(cx, t)?.iter().any(|&v| v != 0) {
                        return Err(cx.unsup("training_mode=1 is not supported (inference only)"));
                    }
                }
                step(None)
            }
            "Relu" => step(Some(Layer::Relu)),
            "Conv" => {
                cx.int_in("group", 1, &[1])?;
                let (wd, weight) = self.floats(cx, 1)?;
                let [m, c, kh, kw] = wd[..] else {
                    return Err(cx.unsup(format!(
                        "weight shape {wd:?} is not supported (only 2-D convolution, weight [M, C, kh, kw])"
                    )));
                };
                let bias = self.opt_floats(cx, 2, m)?;
                let window = cx.window(Some((kh, kw)))?;
                step(Some(Layer::Conv2d {
                    weight,
                    bias,
                    out_channels: m,
                    in_channels: c,
                    window,
                }))
            }
            "BatchNormalization" => {
                cx.int_in("training_mode", 0, &[0])?;
                cx.int_in("spatial", 1, &[1])?;
                let eps = cx.float("epsilon", 1e-5) as f64;
                let mut p = Vec::new();
                for i in 1..5 {
                    let (d, v) = self.floats(cx, i)?;
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
            "MaxPool" => {
                cx.int_in("ceil_mode", 0, &[0])?;
                cx.int_in("storage_order", 0, &[0])?;
                step(Some(Layer::MaxPool(cx.window(None)?)))
            }
            "AveragePool" => {
                cx.int_in("ceil_mode", 0, &[0])?;
                let cip = cx.int_in("count_include_pad", 0, &[0, 1])?;
                step(Some(Layer::AvgPool {
                    window: cx.window(None)?,
                    count_include_pad: cip == 1,
                }))
            }
            "GlobalAveragePool" => step(Some(Layer::GlobalAvgPool)),
            "Flatten" => {
                let axis = cx.int("axis", 1);
                let rank = shape.len() as i64 + 1;
                if axis != 1 && axis + rank != 1 {
                    return Err(cx.unsup(format!("axis={axis} is not supported (supported: 1)")));
                }
                step((shape.len() != 1).then_some(Layer::Flatten))
            }
            "Reshape" => {
                self.check_flatten_reshape(cx, shape)?;
                step((shape.len() != 1).then_some(Layer::Flatten))
            }
            "Gemm" => {
                cx.int_in("transA", 0, &[0])?;
                let tb = cx.int_in("transB", 0, &[0, 1])?;
                let (alpha, beta) = (cx.float("alpha", 1.0), cx.float("beta", 1.0));
                flat()?;
                let (bd, b) = self.floats(cx, 1)?;
                let [r, c] = bd[..] else {
                    return Err(cx.shape_err(format!("B has shape {bd:?}, expected 2-D")));
                };
                let (k, nout, mut w) = if tb == 1 { (c, r, b) } else { (r, c, transpose(&b, r, c)) };
                w.iter_mut().for_each(|v| *v *= alpha);
                let mut bias = self.opt_floats(cx, 2, nout)?;
                bias.iter_mut().for_each(|v| *v *= beta);
                step(Some(dense(w, bias, k, nout)))
            }
            "MatMul" => {
                if n.input.first().map(String::as_str) != Some(x) {
                    return Err(cx.unsup("only activation x constant matrix is supported"));
                }
                flat()?;
                let (bd, b) = self.floats(cx, 1)?;
                let [k, nout] = bd[..] else {
                    return Err(cx.shape_err(format!("right operand has shape {bd:?}, expected [in, out]")));
                };
                let w = transpose(&b, k, nout);
                let mut bias = vec![0.0; nout];
                let mut next = out.clone();
                if let (Some([a]), false) = (self.consumers.get(out.as_str()).map(Vec::as_slice), out == self.output) {
                    let add = &self.g.node[*a];
                    let other = add.input.iter().find(|s| **s != out);
                    if add.op_type == "Add" && add.input.len() == 2 && add.output.len() == 1 {
                        if let Some(t) = other.filter(|t| self.resolve_const(t).is_some()) {
                            let acx = Ctx { name: node_name(self.g, *a), node: add };
                            bias = self.bias_of(&acx, t, nout)?;
                            next = add.output[0].clone();
                        }
                    }
                }
                Ok(Step { layer: Some(dense(w, bias, k, nout)), next })
            }
            _ => Err(ModelError::UnsupportedOp {
                node: cx.name.clone(),
                op: n.op_type.clone(),
            }),
        }
    }

    /// Checks that a Reshape flattens `[N, shape...]` to `[N, F]`.
    fn check_flatten_reshape(&self, cx: &Ctx, shape: &[usize]) -> Result<()> {
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
        let [a, b] = t[..] else {
            return Err(cx.unsup(format!(
                "reshape to rank {} is not supported; only flattening to [N, F] is",
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
            Ok(())
        } else {
            let show = |v: Option<i64>| v.map_or("N".to_string(), |v| v.to_string());
            Err(cx.unsup(format!(
                "target shape [{}, {}] is not a flatten of [N, {shape:?}] (supported: [N or -1 or 0, {f} or -1])",
                show(a),
                show(b)
            )))
        }
    }

    /// Evaluates a small shape computation; `None` entries stand for the
    /// (symbolic) batch size.
    fn eval_shape(&self, name: &str, depth: usize) -> Option<Vec<Option<i64>>> {
        if depth > 32 {
            return None;
        }
        if let Some(t) = self.resolve_const(name) {
            return self.load(t, name).ok().and_then(|t| int_vec(&t)).map(|v| v.into_iter().map(Some).collect());
        }
        let n = &self.g.node[*self.producer.get(name)?];
        let arg = |i: usize| self.eval_shape(n.input.get(i)?, depth + 1);
        match n.op_type.as_str() {
            "Shape" => {
                let s = self.chain_shapes.get(n.input.first()?)?;
                let mut v: Vec<Option<i64>> = vec![None];
                v.extend(s.iter().map(|&d| Some(d as i64)));
                let r = v.len() as i64;
                let cx = Ctx { name: String::new(), node: n };
                let norm = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
                let (lo, hi) = (norm(cx.int("start", 0)), norm(cx.int("end", r)));
                Some(v.get(lo..hi.max(lo))?.to_vec())
            }
            "Gather" => {
                let data = arg(0)?;
                let cx = Ctx { name: String::new(), node: n };
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
    fn resolve_const(&self, name: &str) -> Option<&TensorProto> {
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
    fn load(&self, t: &TensorProto, name: &str) -> Result<Tensor> {
        const OK: [i32; 5] = [1, 6, 7, 10, 11]; // float, int32, int64, float16, double
        if !OK.contains(&t.data_type) {
            return Err(ModelError::Data(format!(
                "tensor '{name}' has ONNX data type {}; only float and integer tensors are supported",
                dtype_name(t.data_type)
            )));
        }
        tract_onnx::tensor::load_tensor(&*self.onnx.provider, t, self.dir).map_err(|e| ModelError::Onnx {
            path: self.path.to_string(),
            reason: format!("tensor '{name}': {e:#}"),
        })
    }

    /// The float constant at input `i` of the node: its shape and values.
    fn floats(&self, cx: &Ctx, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let name = cx.node.input.get(i).map(String::as_str).unwrap_or("");
        self.const_floats(cx, name)
    }

    fn const_floats(&self, cx: &Ctx, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .resolve_const(name)
            .ok_or_else(|| cx.unsup(format!("input '{name}' must be a constant (initializer or Constant node)")))?;
        if ![1, 10, 11].contains(&t.data_type) {
            return Err(cx.unsup(format!(
                "weight '{name}' has data type {}; only float32 (or float64/float16) is supported",
                dtype_name(t.data_type)
            )));
        }
        let t = self.load(t, name)?;
        let f = t.cast_to::<f32>().map_err(|e| cx.unsup(format!("weight '{name}': {e}")))?;
        let v = f.to_plain_array_view::<f32>().map_err(|e| cx.unsup(format!("weight '{name}': {e}")))?;
        Ok((t.shape().to_vec(), v.iter().copied().collect()))
    }

    /// An optional bias at input `i` (zeros if absent).
    fn opt_floats(&self, cx: &Ctx, i: usize, len: usize) -> Result<Vec<f32>> {
        match cx.node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(vec![0.0; len]),
            Some(name) => self.bias_of(cx, name, len),
        }
    }

    /// A bias of `len` values from a constant of shape [len], [1, len], [1] or [].
    fn bias_of(&self, cx: &Ctx, name: &str, len: usize) -> Result<Vec<f32>> {
        let (d, v) = self.const_floats(cx, name)?;
        match (&d[..], v.len()) {
            ([], 1) | ([1], 1) | ([1, 1], 1) => Ok(vec![v[0]; len]),
            ([n], _) | ([1, n], _) if *n == len && v.len() == len => Ok(v),
            _ => Err(cx.shape_err(format!("bias '{name}' has shape {d:?}, expected [{len}] or [1, {len}]"))),
        }
    }

    fn int_values(&self, cx: &Ctx, name: &str) -> Result<Vec<i64>> {
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
    let v = t.to_plain_array_view::<i64>().ok()?.iter().copied().collect();
    Some(v)
}

/// The value of a Constant node as a tensor proto.
fn constant_value(n: &NodeProto) -> Option<Cow<'_, TensorProto>> {
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
fn input_shape(input: &tract_onnx::pb::ValueInfoProto) -> Result<(Vec<usize>, Option<i64>)> {
    let err = |what: String| ModelError::Unsupported {
        node: input.name.clone(),
        op: "graph input".into(),
        what,
    };
    let Some(type_proto::Value::TensorType(tt)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(err("the input has no tensor type".into()));
    };
    if tt.elem_type != 1 {
        return Err(err(format!("input data type {} is not supported (only float32)", tt.elem_type)));
    }
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    let val = |d: &tract_onnx::pb::tensor_shape_proto::Dimension| match d.value {
        Some(dimension::Value::DimValue(v)) => Some(v),
        _ => None,
    };
    if !(dims.len() == 2 || dims.len() == 4) {
        return Err(err(format!(
            "input rank {} is not supported (supported: [N, C, H, W] or [N, F])",
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
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_INPUT) {
        return Err(err(format!("input shape {shape:?} is too large")));
    }
    Ok((shape, dims.first().and_then(val)))
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
