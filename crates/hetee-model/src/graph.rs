//! The quantized model as a graph: HE stages and the enclave-only *joins*
//! between them (residual adds, channel concatenations, per-channel affine
//! maps and any op that reads a tensor several layers use).
//!
//! Every value of the graph is an 8-bit tensor with one real scale: the
//! model input, a stage's output or a join's output. A join forms an
//! accumulator `acc[c] = offset[c] + Σ input_i[c] · multiplier_i[c]` (inputs
//! summed elementwise, or stacked along the channels), then finishes it like
//! a stage: post ops and a requantization to 8 bits (or the final logits).
//!
//! Values are computed in creation order, which is topological: the
//! enclave first runs the joins on the model input (`after_stage == None`:
//! ops before the first linear layer), then for each `k` stage `k` runs on
//! the host, the enclave runs every join with `after_stage == Some(k)`, and
//! stage `k + 1` reads any value computed so far.
//! A skip connection costs no HE work: the enclave keeps the tensor.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::intops::PostOp;
use crate::quant::StageOutput;

/// A value of the quantized graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorRef {
    /// The model input (quantized by the data provider).
    Input,
    /// The output of HE stage `k`.
    Stage(usize),
    /// The output of join `j`.
    Join(usize),
}

/// How a join combines its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// Elementwise sum of inputs of the same shape (one input: an affine map).
    Sum,
    /// The inputs stacked along the channels, in order.
    Concat,
}

/// One input of a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinInput {
    /// The value read.
    pub tensor: TensorRef,
    /// Integer multiplier per channel of this input.
    pub multiplier: Vec<i64>,
}

/// An enclave-only node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Join {
    /// Sum or concatenation.
    pub kind: JoinKind,
    /// The values read, with their multipliers.
    pub inputs: Vec<JoinInput>,
    /// Accumulator shape `[C, H, W]` (before the post ops).
    pub shape: [usize; 3],
    /// Offset per accumulator channel.
    pub offset: Vec<i64>,
    /// Ops after the combination, in order.
    pub post: Vec<PostOp>,
    /// Shape after the post ops.
    pub output_shape: [usize; 3],
    /// Requantization or final logits.
    pub output: StageOutput,
    /// Real value of one accumulator unit, per channel.
    pub acc_scale: Vec<f64>,
    /// Largest possible |accumulator|.
    pub acc_bound: u64,
    /// The join runs once HE stage `after_stage` has finished; `None`: on
    /// the model input, before stage 0 (an op before the first linear
    /// layer). `None` orders before every `Some(k)`.
    pub after_stage: Option<usize>,
    /// Source node names, for reports.
    pub nodes: Vec<String>,
}

impl Join {
    /// The accumulator of one image from its inputs (each `[C_i, H, W]`,
    /// already checked against [`Join::shape`]).
    pub fn accumulate(&self, inputs: &[&[i64]]) -> Vec<i64> {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let mut acc = vec![0i64; c * hw];
        let mut base = 0usize;
        for (inp, x) in self.inputs.iter().zip(inputs) {
            let ch = x.len() / hw.max(1);
            for (k, &m) in inp.multiplier.iter().enumerate().take(ch) {
                let dst = &mut acc[(base + k) * hw..(base + k + 1) * hw];
                for (d, &v) in dst.iter_mut().zip(&x[k * hw..(k + 1) * hw]) {
                    *d = d.wrapping_add(v.wrapping_mul(m));
                }
            }
            if self.kind == JoinKind::Concat {
                base += ch;
            }
        }
        for (k, &o) in self.offset.iter().enumerate() {
            acc[k * hw..(k + 1) * hw]
                .iter_mut()
                .for_each(|v| *v = v.wrapping_add(o));
        }
        acc
    }

    /// Dequantizes this join's final values into floats (see
    /// [`crate::quant::QuantStage::dequantize`]).
    pub fn dequantize(&self, acc: &[i64]) -> Vec<f32> {
        crate::quant::dequantize_tail(&self.post, &self.acc_scale, acc)
    }
}

/// The values of one image during a run, freed as soon as nothing reads
/// them any more and zeroed when dropped.
#[derive(Debug, Default, Clone)]
pub struct Values {
    input: Option<Vec<i64>>,
    stages: Vec<Option<Vec<i64>>>,
    joins: Vec<Option<Vec<i64>>>,
}

impl Values {
    /// A store holding the model input of one image.
    pub fn new(input: Vec<i64>, stages: usize, joins: usize) -> Self {
        Values {
            input: Some(input),
            stages: vec![None; stages],
            joins: vec![None; joins],
        }
    }

    /// The value `t`, if it is computed and still held.
    pub fn get(&self, t: TensorRef) -> Option<&[i64]> {
        match t {
            TensorRef::Input => self.input.as_deref(),
            TensorRef::Stage(k) => self.stages.get(k)?.as_deref(),
            TensorRef::Join(j) => self.joins.get(j)?.as_deref(),
        }
    }

    fn slot(&mut self, t: TensorRef) -> Option<&mut Option<Vec<i64>>> {
        match t {
            TensorRef::Input => Some(&mut self.input),
            TensorRef::Stage(k) => self.stages.get_mut(k),
            TensorRef::Join(j) => self.joins.get_mut(j),
        }
    }

    /// Stores the value `t` (ignored if `t` names no value).
    pub fn set(&mut self, t: TensorRef, v: Vec<i64>) {
        if let Some(s) = self.slot(t) {
            if let Some(old) = s.as_mut() {
                old.zeroize();
            }
            *s = Some(v);
        }
    }

    /// Removes and returns the value `t`.
    pub fn take(&mut self, t: TensorRef) -> Option<Vec<i64>> {
        self.slot(t)?.take()
    }

    /// Zeroes and frees the value `t`.
    pub fn free(&mut self, t: TensorRef) {
        if let Some(mut v) = self.take(t) {
            v.zeroize();
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let n = |v: &Option<Vec<i64>>| v.as_ref().map_or(0, |x| x.len() * 8);
        n(&self.input)
            + self.stages.iter().map(n).sum::<usize>()
            + self.joins.iter().map(n).sum::<usize>()
    }
}

impl Drop for Values {
    fn drop(&mut self) {
        for v in std::iter::once(&mut self.input)
            .chain(self.stages.iter_mut())
            .chain(self.joins.iter_mut())
            .flatten()
        {
            v.zeroize();
        }
    }
}

/// The values read after HE stage `done` has finished and its joins have
/// run (`done == None`: after the joins on the input, before stage 0), i.e.
/// by later stages and by later joins. Everything else can be freed then.
pub fn live_after(
    done: Option<usize>,
    stage_reads: &[TensorRef],
    joins: &[Join],
    output: TensorRef,
) -> Vec<TensorRef> {
    let mut live = vec![output];
    let next = done.map_or(0, |k| k + 1);
    live.extend(stage_reads.iter().skip(next).copied());
    for j in joins.iter().filter(|j| j.after_stage > done) {
        live.extend(j.inputs.iter().map(|i| i.tensor));
    }
    live
}

impl Values {
    /// Zeroes and frees every value not in `live`.
    pub fn retain(&mut self, live: &[TensorRef]) {
        let all: Vec<TensorRef> = std::iter::once(TensorRef::Input)
            .chain((0..self.stages.len()).map(TensorRef::Stage))
            .chain((0..self.joins.len()).map(TensorRef::Join))
            .collect();
        for t in all {
            if !live.contains(&t) {
                self.free(t);
            }
        }
    }
}
