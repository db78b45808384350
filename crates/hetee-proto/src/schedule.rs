//! The compiled model: HE parameters, per-stage packing, and what the
//! enclave needs for the nonlinear step. Shared by the model provider (who
//! compiles it), the data provider (who packs the first input) and the
//! enclave (who runs it).

use hetee_he::planner::{plan_conv, CostModel};
use hetee_he::{ConvPacking, ConvSpec, Evaluator, HeConfig};
use hetee_model::graph::Join;
use hetee_model::intops::PostOp;
use hetee_model::quant::{InputQuant, LinearKind, QuantModel, QuantStage, StageOutput};
use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// One stage: the linear layer's HE layout and its nonlinear tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSchedule {
    /// The linear layer as the HE scheme sees it.
    pub spec: ConvSpec,
    /// Its packing and tiling.
    pub packing: ConvPacking,
    /// Quantized stage without weights: bias, post ops, requantization.
    pub tail: QuantStage,
}

/// A model compiled for secure inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// BFV parameters.
    pub he: HeConfig,
    /// Input shape as imported.
    pub input_shape: Vec<usize>,
    /// Input quantization (needed by the data provider).
    pub input: InputQuant,
    /// Images evaluated together in every product (stacked along the height).
    pub batch: usize,
    /// Stages in order.
    pub stages: Vec<StageSchedule>,
    /// The enclave-only nodes between the stages (residual adds, concats…).
    #[serde(default)]
    pub joins: Vec<Join>,
    /// The model's own output shape (batch excluded), as imported.
    #[serde(default)]
    pub output_shape: Vec<usize>,
    /// Whether the enclave applies a Softmax to the dequantized logits.
    #[serde(default)]
    pub softmax: bool,
}

/// The HE view of a quantized stage's linear layer.
pub fn conv_spec(stage: &QuantStage) -> ConvSpec {
    let [c, h, w] = stage.input_shape;
    match stage.linear {
        LinearKind::Dense => ConvSpec::dense(c * h * w, stage.out_channels),
        LinearKind::Conv(win) => ConvSpec {
            c,
            h,
            w,
            m: stage.out_channels,
            kh: win.kernel.0,
            kw: win.kernel.1,
            sh: win.strides.0,
            sw: win.strides.1,
            pads: [win.pads.top, win.pads.left, win.pads.bottom, win.pads.right],
            groups: conv_groups(&stage.weight, c, stage.out_channels, win.kernel),
        },
    }
}

/// The most groups `g` (dividing both channel counts) for which the kernel
/// `[m, c, kh, kw]` is block diagonal: output channel `o` reads only input
/// channels of group `o / (m / g)`. A grouped or depthwise conv imports as
/// such a kernel; the packing then skips the products across groups. The
/// host learns `g`, a fact of the architecture like the layer's shape.
/// 1 when the weights are absent (a schedule without its secrets).
pub fn conv_groups(weight: &[i8], c: usize, m: usize, kernel: (usize, usize)) -> usize {
    let taps = kernel.0 * kernel.1;
    if weight.len() != m * c * taps || weight.is_empty() {
        return 1;
    }
    let divides = |g: usize| c.is_multiple_of(g) && m.is_multiple_of(g);
    (2..=c.min(m))
        .rev()
        .filter(|&g| divides(g))
        .find(|&g| respects_groups(weight, c, m, taps, g))
        .unwrap_or(1)
}

/// Whether every weight across `g` groups is zero.
pub fn respects_groups(weight: &[i8], c: usize, m: usize, taps: usize, g: usize) -> bool {
    let (per_in, per_out) = (c / g.max(1), m / g.max(1));
    weight.chunks(taps).enumerate().all(|(i, tap)| {
        let (o, ch) = (i / c, i % c);
        o / per_out.max(1) == ch / per_in.max(1) || tap.iter().all(|&w| w == 0)
    })
}

/// Checks a stage's or join's post ops on the accumulator shape `acc`:
/// well formed, bounded work, the declared output shape, and well-formed
/// requantization parameters.
pub(crate) fn check_tail(
    post: &[PostOp],
    acc: [usize; 3],
    declared: [usize; 3],
    output: &StageOutput,
) -> Result<(), String> {
    let size = |d: &[usize]| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
    let fits = |d: &[usize]| size(d).is_some_and(|n| n <= hetee_he::layout::MAX_VALUES);
    // Pooling takes one step per output and window tap: bound that too.
    let mut s = acc;
    for op in post {
        op.check(s)?;
        let out = op.output_shape(s).ok_or("a pooling window does not fit")?;
        if let PostOp::MaxPool(w) | PostOp::AvgPool { window: w, .. } = op {
            if !fits(&[out[0], out[1], out[2], w.kernel.0, w.kernel.1]) {
                return Err("a pooling window is too large".into());
            }
        }
        s = out;
    }
    if s != declared || s[0] != acc[0] || !fits(&s) {
        return Err("post-op shapes do not match the declared output".into());
    }
    if let StageOutput::Requant(rq) = output {
        let ok_len = rq.multiplier.len() == acc[0] && rq.shift.len() == acc[0];
        if !ok_len || rq.shift.iter().any(|&s| !(1..=62).contains(&s)) || rq.min > rq.max {
            return Err("malformed requantization parameters".into());
        }
        if rq.min < -(1 << 16)
            || rq.max > 1 << 16
            || rq.multiplier.iter().any(|m| m.unsigned_abs() > 1 << 40)
        {
            return Err("requantization range or multipliers out of bounds".into());
        }
    }
    Ok(())
}

/// Largest predicted host memory of a model's encrypted weights that
/// [`Schedule::compile_best`] picks a batch size for (1.5 GiB).
///
/// It was 3 GiB against a prediction that counted almost twice the real
/// memory; with the prediction exact ([`Schedule::weight_memory`]), 1.5 GiB
/// keeps the same choices. Doubling it lets ResNet-20 take stacks of 8
/// instead of 4: 10.8 against 10.3 img/s, for 12.4 GB of peak resident
/// memory against 7.2 (`hetee bench --models resnet20 --batch 16`).
pub const HOST_WEIGHT_BUDGET: usize = 3 << 29;

/// Most images per query.
pub const MAX_BATCH: usize = 4096;

/// Checks a layer and its packing for `batch` images under ring `degree`:
/// well formed, consistent, and small enough that nothing computed from
/// them overflows. Returns the packing.
pub(crate) fn check_packing(
    spec: &ConvSpec,
    packing: &ConvPacking,
    batch: usize,
    degree: usize,
) -> Result<ConvPacking, String> {
    spec.validate()?;
    if batch == 0 || batch > MAX_BATCH {
        return Err(format!(
            "batch {batch} out of range 1..={MAX_BATCH}; the packing does not match the layer"
        ));
    }
    let bs = spec.batched_shape(batch);
    let fits = |ds: [usize; 3]| {
        ds.iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_some_and(|n| n <= hetee_he::layout::MAX_VALUES)
    };
    if !fits([bs.c, bs.h, bs.w]) || !fits([bs.m, bs.oh, bs.ow]) {
        return Err(format!("{batch} images of this layer are too large"));
    }
    let p = ConvPacking::new(packing.shape, packing.tiling, packing.degree)?;
    if p.shape != bs || p.degree != degree {
        return Err("packing does not match the layer".into());
    }
    Ok(p)
}

impl Schedule {
    /// Chooses parameters from the model's accumulator bound and plans every
    /// stage for `batch` images per query.
    pub fn compile(model: &QuantModel, batch: usize) -> Result<Self, ProtoError> {
        if batch == 0 || batch > 4096 {
            return Err(ProtoError::Schedule(format!(
                "batch {batch} out of range 1..=4096"
            )));
        }
        let he = HeConfig::for_accumulator_bound(model.acc_bound())?;
        let cost = CostModel::for_degree(he.degree);
        let stages = model
            .stages
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let spec = conv_spec(st);
                spec.validate()
                    .map_err(|e| ProtoError::Schedule(format!("stage {k}: {e}")))?;
                let packing = plan_conv(spec.batched_shape(batch), he.degree, &cost)
                    .map_err(|e| ProtoError::Schedule(format!("stage {k}: {e}")))?;
                Ok(StageSchedule {
                    spec,
                    packing,
                    tail: QuantStage {
                        weight: Vec::new(),
                        ..st.clone()
                    },
                })
            })
            .collect::<Result<Vec<_>, ProtoError>>()?;
        Ok(Schedule {
            he,
            input_shape: model.input_shape.clone(),
            input: model.input.clone(),
            batch,
            stages,
            joins: model.joins.clone(),
            output_shape: model.output_shape.clone(),
            softmax: model.softmax,
        })
    }

    /// Compiles for the batch size (a power of two up to `max_batch`) with
    /// the lowest predicted cost per image, among those whose encrypted
    /// weights fit [`HOST_WEIGHT_BUDGET`] in the host's memory (batch 1
    /// always qualifies).
    pub fn compile_best(model: &QuantModel, max_batch: usize) -> Result<Self, ProtoError> {
        let mut best = Self::compile(model, 1)?;
        let mut best_cost = best.predicted_cost();
        let mut b = 2;
        while b <= max_batch {
            if let Ok(s) = Self::compile(model, b).and_then(|s| {
                if s.weight_memory() <= HOST_WEIGHT_BUDGET {
                    Ok(s)
                } else {
                    Err(ProtoError::Schedule("weights too large".into()))
                }
            }) {
                let c = s.predicted_cost() / b as f64;
                if c < best_cost {
                    best_cost = c;
                    best = s;
                }
            }
            b *= 2;
        }
        Ok(best)
    }

    /// Predicted host memory of the encrypted weights in the
    /// multiplication basis, in bytes: two polynomials per weight
    /// ciphertext over the primes of the host's basis for this schedule's
    /// longest sum ([`Evaluator::for_fresh_sums`]; twice the ciphertext
    /// primes plus one if that basis cannot be built).
    pub fn weight_memory(&self) -> usize {
        let terms = self
            .stages
            .iter()
            .map(|s| s.packing.longest_sum())
            .max()
            .unwrap_or(1);
        let primes = self
            .he
            .build()
            .ok()
            .and_then(|par| Evaluator::for_fresh_sums(&par, terms).ok())
            .map_or(2 * self.he.moduli_sizes.len() + 1, |e| e.basis_primes());
        let per = 2 * primes * self.he.degree * 8;
        self.stages
            .iter()
            .map(|s| s.packing.weight_count().saturating_mul(per))
            .fold(0usize, usize::saturating_add)
    }

    /// Predicted weighted cost of one query (all `batch` images).
    pub fn predicted_cost(&self) -> f64 {
        let cost = CostModel::for_degree(self.he.degree);
        self.stages.iter().map(|s| cost.score(&s.packing)).sum()
    }

    /// Checks that the stages chain together and fit the parameters.
    pub fn validate(&self) -> Result<(), ProtoError> {
        self.he.check_security()?;
        if self.stages.is_empty() {
            return Err(ProtoError::Schedule(
                "a schedule needs at least one stage".into(),
            ));
        }
        for (k, st) in self.stages.iter().enumerate() {
            let bad = |what: &str| ProtoError::Schedule(format!("stage {k}: {what}"));
            check_packing(&st.spec, &st.packing, self.batch, self.he.degree)
                .map_err(|e| bad(&e))?;
            if st.tail.linear_output_shape()
                != [st.spec.m, st.spec.output_hw().0, st.spec.output_hw().1]
            {
                return Err(bad("layer shape does not match its tail"));
            }
            if st.tail.bias.len() != st.spec.m || st.tail.acc_scale.len() != st.spec.m {
                return Err(bad(
                    "bias or scale length does not match the output channels",
                ));
            }
            check_tail(
                &st.tail.post,
                st.tail.linear_output_shape(),
                st.tail.output_shape,
                &st.tail.output,
            )
            .map_err(|e| bad(&e))?;
            if st.tail.acc_bound > self.he.max_abs_value() {
                return Err(bad("accumulator bound exceeds the plaintext modulus"));
            }
        }
        self.validate_graph()
    }

    /// Packs one quantized activation per image (exactly `batch` of them)
    /// into the stage's input polynomials.
    pub fn pack_stage_input(
        &self,
        stage: usize,
        xs: &[Vec<i64>],
    ) -> Result<Vec<Vec<i64>>, ProtoError> {
        let st = self.stage(stage)?;
        if xs.len() != self.batch {
            return Err(ProtoError::Schedule(format!(
                "stage {stage} takes {} images, got {}",
                self.batch,
                xs.len()
            )));
        }
        let need = st.spec.c * st.spec.h * st.spec.w;
        if let Some(x) = xs.iter().find(|x| x.len() != need) {
            return Err(ProtoError::Schedule(format!(
                "stage {stage} input has {} values, expected {need}",
                x.len()
            )));
        }
        let refs: Vec<&[i64]> = xs.iter().map(|x| x.as_slice()).collect();
        Ok(st.packing.pack_input(&st.spec.layout_batch(&refs)))
    }

    fn stage(&self, stage: usize) -> Result<&StageSchedule, ProtoError> {
        self.stages
            .get(stage)
            .ok_or_else(|| ProtoError::Schedule(format!("no stage {stage}")))
    }

    /// The per-image inputs `[c, h, w]` of stage `stage` from its decrypted
    /// input polynomials: the inverse of [`Schedule::pack_stage_input`], each
    /// value read from one of the places it was packed (values the layer
    /// never reads stay 0).
    pub fn unpack_stage_input(
        &self,
        stage: usize,
        polys: &[Vec<i64>],
    ) -> Result<Vec<Vec<i64>>, ProtoError> {
        let st = self.stage(stage)?;
        if polys.len() != st.packing.input_count()
            || polys.iter().any(|p| p.len() != self.he.degree)
        {
            return Err(ProtoError::Protocol(format!(
                "stage {stage}: wrong number or size of inputs"
            )));
        }
        let need = st.spec.c * st.spec.h * st.spec.w;
        // Pack labels instead of values to learn where each value goes.
        let labels: Vec<Vec<i64>> = (0..self.batch)
            .map(|i| (0..need).map(|j| (i * need + j + 1) as i64).collect())
            .collect();
        let places = self.pack_stage_input(stage, &labels)?;
        let mut out = vec![vec![0i64; need]; self.batch];
        for (poly, values) in places.iter().zip(polys) {
            for (&label, &v) in poly.iter().zip(values) {
                if label > 0 {
                    let l = label as usize - 1;
                    out[l / need][l % need] = v;
                }
            }
        }
        Ok(out)
    }

    /// The linear outputs `[m, oh, ow]` of every image from the decrypted polynomials.
    pub fn unpack_stage_output(
        &self,
        stage: usize,
        polys: &[Vec<i64>],
    ) -> Result<Vec<Vec<i64>>, ProtoError> {
        let st = self.stage(stage)?;
        if polys.len() != st.packing.output_count()
            || polys.iter().any(|p| p.len() != self.he.degree)
        {
            return Err(ProtoError::Protocol(format!(
                "stage {stage}: wrong number or size of outputs"
            )));
        }
        Ok(st
            .spec
            .split_batch_output(&st.packing.unpack_output(polys), self.batch))
    }

    /// Packs a stage's int8 weights into plaintext polynomials (model provider).
    pub fn pack_stage_weights(
        &self,
        stage: usize,
        weight: &[i8],
    ) -> Result<Vec<Vec<i64>>, ProtoError> {
        let st = self.stage(stage)?;
        let s = &st.spec;
        if weight.len() != s.m * s.c * s.kh * s.kw {
            return Err(ProtoError::Schedule(format!(
                "stage {stage}: wrong weight count"
            )));
        }
        let k: Vec<i64> = weight.iter().map(|&w| w as i64).collect();
        Ok(st.packing.pack_weights(&s.layout_kernel(&k)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conv_groups_finds_the_block_diagonal_structure() {
        // [m=4, c=4, 1x1]: depthwise, two groups of two, and dense.
        let depthwise: Vec<i8> = (0..16)
            .map(|i| if i / 4 == i % 4 { 3 } else { 0 })
            .collect();
        assert_eq!(super::conv_groups(&depthwise, 4, 4, (1, 1)), 4);
        let pairs: Vec<i8> = (0..16)
            .map(|i| if (i / 4) / 2 == (i % 4) / 2 { 1 } else { 0 })
            .collect();
        assert_eq!(super::conv_groups(&pairs, 4, 4, (1, 1)), 2);
        let mut dense = pairs.clone();
        dense[3] = -1; // output 0 reads input 3
        assert_eq!(super::conv_groups(&dense, 4, 4, (1, 1)), 1);
        // No weights (a schedule without secrets): dense.
        assert_eq!(super::conv_groups(&[], 4, 4, (1, 1)), 1);
    }

    use super::*;
    use hetee_model::{Layer, Model};

    fn two_stages() -> Schedule {
        let m = Model {
            input_shape: vec![4],
            layers: vec![
                Layer::Dense {
                    weight: vec![0.1; 12],
                    bias: vec![0.0; 3],
                    out_features: 3,
                    in_features: 4,
                },
                Layer::Relu,
                Layer::Dense {
                    weight: vec![0.2; 6],
                    bias: vec![0.0; 2],
                    out_features: 2,
                    in_features: 3,
                },
            ],
            node_names: vec!["a".into(), "r".into(), "b".into()],
            inputs: Vec::new(),
        };
        let calib: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
        Schedule::compile(&hetee_model::quantize(&m, &calib).unwrap(), 1).unwrap()
    }

    #[test]
    fn validate_refuses_sizes_that_overflow() {
        // Found by fuzz/ (channel_messages): the next stage's input size overflowed.
        let s = two_stages();
        assert!(s.validate().is_ok());
        let mut t = s.clone();
        t.stages[1].spec.c = 1 << 32;
        t.stages[1].spec.h = 1 << 32;
        assert!(t.validate().is_err());
        let mut t = s.clone();
        t.stages[0].tail.output_shape = [usize::MAX, 2, 2];
        assert!(t.validate().is_err());
        let mut t = s.clone();
        t.batch = usize::MAX;
        assert!(t.validate().is_err());
        // A pooling padding that blows the last stage's output up.
        let mut t = s;
        let last = t.stages.last_mut().unwrap();
        let big = 1 << 40;
        last.tail
            .post
            .push(hetee_model::intops::PostOp::MaxPool(hetee_model::Window {
                kernel: (1, 1),
                strides: (1, 1),
                pads: hetee_model::Pads {
                    top: big,
                    left: 0,
                    bottom: 0,
                    right: big,
                },
                dilations: (1, 1),
            }));
        last.tail.output_shape = [2, big + 1, big + 1];
        assert!(t.validate().is_err());
        // A pooling window far larger than its input: 2^60 steps per query.
        let last = t.stages.last_mut().unwrap();
        last.tail.post = vec![hetee_model::intops::PostOp::MaxPool(hetee_model::Window {
            kernel: (1 << 30, 1 << 30),
            strides: (1, 1),
            pads: hetee_model::Pads {
                top: 1 << 30,
                left: 1 << 30,
                bottom: 0,
                right: 0,
            },
            dilations: (1, 1),
        })];
        last.tail.output_shape = [2, 2, 2];
        let e = t.validate().unwrap_err().to_string();
        assert!(e.contains("pooling window is too large"), "{e}");
    }
}
