//! Attribute access and error helpers for one ONNX node.

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto};

use hetee_model::error::{ModelError, Result};

/// Largest kernel, stride or padding accepted from an attribute.
pub(super) const MAX_ATTR: i64 = 1 << 16;

/// Names a node in messages: its name, or `#<index>` when it has none.
pub(super) fn node_name(graph: &GraphProto, i: usize) -> String {
    match graph.node.get(i) {
        Some(n) if !n.name.is_empty() => n.name.clone(),
        _ => format!("#{i}"),
    }
}

/// A graph-level structural problem (not tied to one node).
pub(super) fn graph_err(what: String) -> ModelError {
    ModelError::Unsupported {
        node: "<graph>".into(),
        op: "graph".into(),
        what,
    }
}

/// The node being translated, for error messages.
pub(super) struct Ctx<'a> {
    /// Node name, or `#<index>`.
    pub(super) name: String,
    /// The node itself.
    pub(super) node: &'a NodeProto,
}

impl Ctx<'_> {
    pub(super) fn unsup(&self, what: impl Into<String>) -> ModelError {
        ModelError::Unsupported {
            node: self.name.clone(),
            op: self.node.op_type.clone(),
            what: what.into(),
        }
    }
    pub(super) fn shape_err(&self, what: impl std::fmt::Display) -> ModelError {
        ModelError::Shape(format!(
            "node '{}' ({}): {what}",
            self.name, self.node.op_type
        ))
    }
    /// Requires a flat `[N, F]` activation (`shape` without the batch).
    pub(super) fn require_flat(&self, shape: &[usize]) -> Result<()> {
        if shape.len() == 1 {
            Ok(())
        } else {
            Err(self.shape_err(format!(
                "needs a flat [N, F] input, got [N, {shape:?}]; insert a Flatten"
            )))
        }
    }
    pub(super) fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }
    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }
    /// Requires an integer attribute to have one of the `ok` values.
    pub(super) fn int_in(&self, name: &str, default: i64, ok: &[i64]) -> Result<i64> {
        let v = self.int(name, default);
        if ok.contains(&v) {
            Ok(v)
        } else {
            Err(self.unsup(format!(
                "attribute {name}={v} is not supported (supported: {ok:?})"
            )))
        }
    }
    /// A list of `len` non-negative integers (at most [`MAX_ATTR`]).
    pub(super) fn ints(
        &self,
        name: &str,
        len: usize,
        default: i64,
        min: i64,
    ) -> Result<Vec<usize>> {
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
}
