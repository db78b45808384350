//! ONNX import: parses the protobuf with tract-onnx, then walks the graph
//! itself and translates a single chain of supported ops into the IR.
//!
//! Also offers [`tract_float_reference`], tract's own float execution of the
//! same file, to check the import and the float executor against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use tract_onnx::pb::{GraphProto, TensorProto};
use tract_onnx::prelude::*;

use hetee_model::error::{ModelError, Result};
use hetee_model::float::node_output_shape;
use hetee_model::ir::{Layer, Model};

mod activations;
mod arith;
mod consts;
mod conv;
mod floor;
mod layout;
mod linear;
mod node;
mod norm;
mod ops;
mod passthrough;

pub use floor::TractPlan;

use arith::ARITH_OPS;
use consts::{constant_value, input_shape};
use node::{graph_err, node_name, Ctx};
use ops::family_of;
pub use ops::supported_ops;

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
        let first = res
            .first()
            .ok_or_else(|| err(TractError::msg("model has no output")))?;
        out.extend(
            first
                .to_plain_array_view::<f32>()
                .map_err(err)?
                .iter()
                .copied(),
        );
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
        return Err(onnx_err(
            "no ir_version and no opset_import, not an ONNX model".into(),
        ));
    }
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| onnx_err("the model contains no graph".into()))?;
    Importer::new(graph, path, dir, &onnx)?.run()
}

/// One translated node: a layer, or `None` when it passes its input on
/// (Identity, Dropout, a Flatten of a flat tensor).
pub(crate) struct Step {
    pub layer: Option<Layer>,
}

pub(crate) struct Importer<'a> {
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

    /// Node indices in a topological order (ONNX asks exporters for one;
    /// this does not rely on it, but keeps the file's order when it is one).
    fn topo_order(&self) -> Result<Vec<usize>> {
        let nodes = &self.g.node;
        let mut indeg = vec![0usize; nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let mut deps: Vec<usize> = n
                .input
                .iter()
                .filter_map(|t| self.producer.get(t.as_str()).copied())
                .collect();
            deps.sort_unstable();
            deps.dedup();
            indeg[i] = deps.len();
            for d in deps {
                users[d].push(i);
            }
        }
        // Smallest index first: the file's own order whenever it is valid.
        let mut ready: std::collections::BTreeSet<usize> =
            (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != nodes.len() {
            return Err(graph_err("the graph has a cycle".into()));
        }
        Ok(order)
    }

    fn run(mut self) -> Result<Model> {
        // Activation tensors: name -> tensor id (0 = input, i + 1 = layer i).
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut shapes: Vec<Vec<usize>> = vec![self.input_shape.clone()];
        ids.insert(self.input.clone(), 0);
        self.chain_shapes
            .insert(self.input.clone(), self.input_shape.clone());
        let (mut layers, mut names, mut inputs) = (Vec::new(), Vec::new(), Vec::new());
        for idx in self.topo_order()? {
            let n = &self.g.node[idx];
            // Shape arithmetic (for Reshape targets) is evaluated on demand.
            if n.op_type == "Shape" {
                continue;
            }
            let acts: Vec<Option<Vec<usize>>> = n
                .input
                .iter()
                .map(|t| ids.get(t.as_str()).map(|&i| shapes[i].clone()))
                .collect();
            if acts.iter().all(Option::is_none) {
                continue; // a constant subgraph
            }
            let cx = Ctx {
                name: node_name(self.g, idx),
                node: n,
            };
            let (layer, reads): (Option<Layer>, Vec<usize>) = if ARITH_OPS
                .contains(&n.op_type.as_str())
                && self.is_plain_domain(n)
            {
                let (l, which) = self.arith(&cx, &acts)?;
                (
                    Some(l),
                    which.iter().map(|&i| ids[n.input[i].as_str()]).collect(),
                )
            } else {
                let act: Vec<&String> = n
                    .input
                    .iter()
                    .filter(|t| ids.contains_key(t.as_str()))
                    .collect();
                let [x] = act.as_slice() else {
                    return Err(cx.unsup(format!(
                            "reads {} activations, but only its first input may be one: each other input must be a constant (initializer or Constant node)",
                            act.len()
                        )));
                };
                let t = ids[x.as_str()];
                let step = self.translate(&cx, x, &shapes[t])?;
                (step.layer, vec![t])
            };
            let out = match n.output.first() {
                Some(o) if !o.is_empty() => o.clone(),
                _ => return Err(cx.unsup("node has no output")),
            };
            let id = match layer {
                Some(layer) => {
                    let ins: Vec<&[usize]> = reads.iter().map(|&t| shapes[t].as_slice()).collect();
                    let shape = node_output_shape(&layer, &ins).map_err(|e| cx.shape_err(e))?;
                    layers.push(layer);
                    names.push(cx.name.clone());
                    inputs.push(reads);
                    shapes.push(shape);
                    layers.len()
                }
                None => reads[0],
            };
            self.chain_shapes.insert(out.clone(), shapes[id].clone());
            ids.insert(out, id);
        }
        let Some(&out) = ids.get(self.output.as_str()) else {
            return Err(graph_err(format!(
                "the graph output '{}' is not computed from the input",
                self.output
            )));
        };
        if out != layers.len() || out == 0 {
            return Err(graph_err(format!(
                "the graph output '{}' must be the output of the graph's last layer",
                self.output
            )));
        }
        Ok(Model {
            input_shape: self.input_shape,
            layers,
            node_names: names,
            inputs,
        })
    }

    fn is_plain_domain(&self, n: &tract_onnx::pb::NodeProto) -> bool {
        n.domain.is_empty() || n.domain == "ai.onnx"
    }

    /// Translates the node `cx` whose data input is the activation `x`.
    fn translate(&self, cx: &Ctx, x: &str, shape: &[usize]) -> Result<Step> {
        let n = cx.node;
        let op = n.op_type.as_str();
        let known = family_of(op).is_some();
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
        if !matches!(n.output.first(), Some(o) if !o.is_empty()) {
            return Err(cx.unsup("node has no output"));
        }
        for extra in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.consumers.contains_key(extra.as_str()) || *extra == self.output {
                return Err(cx.unsup(format!(
                    "secondary output '{extra}' is used; only the first output is supported"
                )));
            }
        }
        let family = family_of(op).ok_or_else(|| ModelError::UnsupportedOp {
            node: cx.name.clone(),
            op: n.op_type.clone(),
        })?;
        (family.import)(self, cx, x, shape)
    }
}
