//! Validation of a schedule's graph: what every stage and join reads exists
//! and is computed before it, sizes agree, exactly the output value
//! releases logits, and no join's accumulator can overflow.

use hetee_model::graph::{JoinKind, TensorRef};
use hetee_model::quant::{output_ref, StageOutput};

use crate::schedule::{check_tail, Schedule};
use crate::ProtoError;

/// Largest |multiplier| or |offset| of a join.
const MAX_JOIN_FACTOR: u64 = 1 << 40;

fn as3(s: &[usize]) -> Option<[usize; 3]> {
    match s {
        [c, h, w] => Some([*c, *h, *w]),
        [f] => Some([*f, 1, 1]),
        _ => None,
    }
}

impl Schedule {
    /// The value holding the result.
    pub fn output_ref(&self) -> TensorRef {
        output_ref(self.stages.len(), &self.joins)
    }

    /// Whether stage 0 reads a value the enclave computes from the input
    /// (ops before the first linear layer). Such a model takes its input
    /// over the channel (thin queries) only: the enclave must run those
    /// ops before anything is encrypted for the host.
    pub fn input_in_enclave(&self) -> bool {
        self.stages
            .first()
            .is_some_and(|s| s.tail.reads != TensorRef::Input)
    }

    /// The value stage `k` reads.
    pub fn stage_reads(&self) -> Vec<TensorRef> {
        self.stages.iter().map(|s| s.tail.reads).collect()
    }

    /// Shape `[C, H, W]` of a value.
    pub fn value_shape(&self, t: TensorRef) -> Option<[usize; 3]> {
        match t {
            TensorRef::Input => match &self.input.layout {
                Some(l) => l.output_shape(),
                None => as3(&self.input_shape),
            },
            TensorRef::Stage(k) => self.stages.get(k).map(|s| s.tail.output_shape),
            TensorRef::Join(j) => self.joins.get(j).map(|j| j.output_shape),
        }
    }

    /// The integer range `[min, max]` of an 8-bit value (`None` for the
    /// final logits or an unknown value).
    fn value_range(&self, t: TensorRef) -> Option<(i64, i64)> {
        let out = match t {
            TensorRef::Input => return Some((self.input.min, self.input.max)),
            TensorRef::Stage(k) => &self.stages.get(k)?.tail.output,
            TensorRef::Join(j) => &self.joins.get(j)?.output,
        };
        match out {
            StageOutput::Requant(rq) => Some((rq.min, rq.max)),
            StageOutput::Logits => None,
        }
    }

    /// Whether value `t` is computed before stage `k` starts.
    fn before_stage(&self, t: TensorRef, k: usize) -> bool {
        match t {
            TensorRef::Input => true,
            TensorRef::Stage(i) => i < k,
            TensorRef::Join(j) => self.joins.get(j).is_some_and(|x| x.after_stage < Some(k)),
        }
    }

    pub(crate) fn validate_graph(&self) -> Result<(), ProtoError> {
        let n = self.stages.len();
        let out = self.output_ref();
        let len = |d: [usize; 3]| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        if let Some(l) = &self.input.layout {
            if l.output_shape().is_none() || as3(&self.input_shape) != Some(l.shape) {
                return Err(ProtoError::Schedule(
                    "the input layout does not permute the input shape".into(),
                ));
            }
        }
        for (k, st) in self.stages.iter().enumerate() {
            let bad = |what: String| ProtoError::Schedule(format!("stage {k}: {what}"));
            let r = st.tail.reads;
            if !self.before_stage(r, k) {
                return Err(bad(format!("reads {r:?}, which is not computed before it")));
            }
            let size = self.value_shape(r).and_then(len);
            if size.is_none() || size != len([st.spec.c, st.spec.h, st.spec.w]) {
                return Err(bad(format!("the size of {r:?} does not match its input")));
            }
            if self.value_range(r).is_none() {
                return Err(bad(format!("reads {r:?}, which holds the final logits")));
            }
            let is_out = TensorRef::Stage(k) == out;
            if is_out != (st.tail.output == StageOutput::Logits) {
                return Err(bad("exactly the model's output releases logits".into()));
            }
        }
        let mut last_after: Option<usize> = None;
        for (j, join) in self.joins.iter().enumerate() {
            let bad = |what: String| ProtoError::Schedule(format!("join {j}: {what}"));
            if join.after_stage >= Some(n) || join.after_stage < last_after {
                return Err(bad("runs after a stage out of order".into()));
            }
            last_after = join.after_stage;
            let [c, h, w] = join.shape;
            let hw = h.checked_mul(w).ok_or_else(|| bad("too large".into()))?;
            if join.inputs.is_empty() || join.inputs.len() > 64 {
                return Err(bad("reads 1 to 64 values".into()));
            }
            if join.offset.len() != c || join.acc_scale.len() != c {
                return Err(bad(
                    "offset or scale length does not match the channels".into()
                ));
            }
            let mut channels = 0usize;
            let mut bound: u64 = join
                .offset
                .iter()
                .map(|o| o.unsigned_abs())
                .max()
                .unwrap_or(0);
            for inp in &join.inputs {
                let t = inp.tensor;
                let ready = match t {
                    TensorRef::Input => true,
                    TensorRef::Stage(i) => Some(i) <= join.after_stage,
                    TensorRef::Join(i) => i < j,
                };
                if !ready {
                    return Err(bad(format!("reads {t:?}, which is not computed before it")));
                }
                let ch = inp.multiplier.len();
                let size = self.value_shape(t).and_then(len);
                if size.is_none() || size != ch.checked_mul(hw) {
                    return Err(bad(format!(
                        "the size of {t:?} does not match its multipliers"
                    )));
                }
                let (lo, hi) = self
                    .value_range(t)
                    .ok_or_else(|| bad(format!("reads {t:?}, which holds the final logits")))?;
                let m = inp
                    .multiplier
                    .iter()
                    .map(|m| m.unsigned_abs())
                    .max()
                    .unwrap_or(0);
                if m > MAX_JOIN_FACTOR {
                    return Err(bad("multiplier out of bounds".into()));
                }
                bound = bound
                    .saturating_add(m.saturating_mul(lo.unsigned_abs().max(hi.unsigned_abs())));
                channels += ch;
                if join.kind == JoinKind::Sum && ch != c {
                    return Err(bad("a summed input has another channel count".into()));
                }
            }
            if join.kind == JoinKind::Concat && channels != c {
                return Err(bad("the concatenated channels do not make its shape".into()));
            }
            if bound > MAX_JOIN_FACTOR
                || join
                    .offset
                    .iter()
                    .any(|o| o.unsigned_abs() > MAX_JOIN_FACTOR)
            {
                return Err(bad("the accumulator could overflow".into()));
            }
            if len(join.shape).is_none_or(|s| s > hetee_he::layout::MAX_VALUES) {
                return Err(bad("too large".into()));
            }
            check_tail(&join.post, join.shape, join.output_shape, &join.output).map_err(bad)?;
            let is_out = TensorRef::Join(j) == out;
            if is_out != (join.output == StageOutput::Logits) {
                return Err(bad("exactly the model's output releases logits".into()));
            }
        }
        Ok(())
    }
}
