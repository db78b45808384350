//! Builders of small ONNX models in memory: seeded random weights, tensors,
//! nodes with attributes, and the encoded model with input `x` and output `y`.

use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Deterministic pseudo-random values in [-1, 1).
pub struct Rng(pub u64);
impl Rng {
    pub fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    /// `n` values in [-scale, scale).
    pub fn vec_scaled(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// A float32 tensor.
pub fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: data,
        ..Default::default()
    }
}

/// A 1-D int64 tensor.
pub fn ints_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// An attribute: int, ints, float, tensor or string.
pub enum A {
    I(i64),
    Is(&'static [i64]),
    F(f32),
    T(Box<TensorProto>),
    S(&'static str),
}

fn attributes(attrs: Vec<(&str, A)>) -> Vec<AttributeProto> {
    attrs
        .into_iter()
        .map(|(n, a)| {
            let mut p = AttributeProto {
                name: n.into(),
                ..Default::default()
            };
            match a {
                A::I(i) => (p.i, p.r#type) = (i, AttributeType::Int as i32),
                A::Is(v) => (p.ints, p.r#type) = (v.to_vec(), AttributeType::Ints as i32),
                A::F(f) => (p.f, p.r#type) = (f, AttributeType::Float as i32),
                A::T(t) => (p.t, p.r#type) = (Some(*t), AttributeType::Tensor as i32),
                A::S(v) => (p.s, p.r#type) = (v.as_bytes().to_vec(), AttributeType::String as i32),
            }
            p
        })
        .collect()
}

/// A node named `name`.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, A)>,
) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attributes(attrs),
        ..Default::default()
    }
}

/// A node with one output, named `{op}_{output}`.
pub fn node_out(op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, A)>) -> NodeProto {
    node(op, &format!("{op}_{output}"), inputs, &[output], attrs)
}

/// A float32 value of shape `[N, dims...]`.
pub fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut dim = vec![pb::tensor_shape_proto::Dimension {
        value: Some(dimension::Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| pb::tensor_shape_proto::Dimension {
        value: Some(dimension::Value::DimValue(d)),
        ..Default::default()
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Encodes a model with input `x` of shape `[N, in_dims...]` and output `y`
/// (IR version 7, opset 13).
pub fn model_bytes(in_dims: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Vec<u8> {
    encode(7, 13, in_dims, nodes, inits)
}

/// [`model_bytes`] at IR version 8 and the given opset.
pub fn model_bytes_opset(
    opset: i64,
    in_dims: &[i64],
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    encode(8, opset, in_dims, nodes, inits)
}

fn encode(
    ir_version: i64,
    opset: i64,
    in_dims: &[i64],
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    let out = ValueInfoProto {
        name: "y".into(),
        ..Default::default()
    };
    ModelProto {
        ir_version,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", in_dims)],
            output: vec![out],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
