//! The op registry: every ONNX op the importer takes, grouped in families,
//! one module per family (the way tract keeps one file per op family).
//! Adding an op is one entry in its family's list and one arm in its
//! family's import function; `translate` dispatches through [`family_of`]
//! and the list of supported ops in errors is built from here. Binary
//! arithmetic, which reads two tensors, is imported by `arith`.

use hetee_model::error::Result;

use crate::node::Ctx;
use crate::{Importer, Step};

/// Imports one node of a family: the importer, the node, the name of its
/// activation input and that activation's shape (batch excluded).
pub(crate) type Import = fn(&Importer, &Ctx, &str, &[usize]) -> Result<Step>;

/// An op family: the ONNX op types it imports, and how.
pub(crate) struct Family {
    /// For messages and docs.
    pub name: &'static str,
    /// ONNX op types (default domain).
    pub ops: &'static [&'static str],
    /// The import function.
    pub import: Import,
}

/// Every family of single-activation ops.
pub(crate) const REGISTRY: &[Family] = &[
    crate::conv::CONV,
    crate::conv::POOL,
    crate::linear::LINEAR,
    crate::norm::NORM,
    crate::layout::LAYOUT,
    crate::activations::ACTIVATIONS,
    crate::passthrough::PASSTHROUGH,
];

/// The family importing `op`.
pub(crate) fn family_of(op: &str) -> Option<&'static Family> {
    REGISTRY.iter().find(|f| f.ops.contains(&op))
}

/// Every supported op type by family (binary arithmetic last).
pub fn supported_ops() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut v: Vec<_> = REGISTRY.iter().map(|f| (f.name, f.ops.to_vec())).collect();
    v.push(("arithmetic and joins", crate::arith::ARITH_OPS.to_vec()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_exactly_one_family() {
        let ops: Vec<&str> = supported_ops().into_iter().flat_map(|(_, o)| o).collect();
        for op in &ops {
            let n = REGISTRY.iter().filter(|f| f.ops.contains(op)).count()
                + usize::from(crate::arith::ARITH_OPS.contains(op));
            assert_eq!(n, 1, "{op} is in {n} families");
        }
        assert!(ops.len() >= 35, "{ops:?}");
    }
}
