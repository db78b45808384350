//! The compiled model: HE parameters, per-stage packing, and what the
//! enclave needs for the nonlinear step. Shared by the model provider (who
//! compiles it), the data provider (who packs the first input) and the
//! enclave (who runs it).

use hetee_he::planner::{plan_conv, CostModel};
use hetee_he::{ConvPacking, ConvSpec, HeConfig};
use hetee_model::quant::{InputQuant, LinearKind, QuantModel, QuantStage};
use serde::{Deserialize, Serialize};

use crate::EnclaveError;

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
    /// Stages in order.
    pub stages: Vec<StageSchedule>,
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
        },
    }
}

impl Schedule {
    /// Chooses parameters from the model's accumulator bound and plans every stage.
    pub fn compile(model: &QuantModel) -> Result<Self, EnclaveError> {
        let he = HeConfig::for_accumulator_bound(model.acc_bound())?;
        let cost = CostModel::for_degree(he.degree);
        let stages = model
            .stages
            .iter()
            .enumerate()
            .map(|(k, st)| {
                let spec = conv_spec(st);
                spec.validate()
                    .map_err(|e| EnclaveError::Schedule(format!("stage {k}: {e}")))?;
                let packing = plan_conv(spec.normal_shape(), he.degree, &cost)
                    .map_err(|e| EnclaveError::Schedule(format!("stage {k}: {e}")))?;
                Ok(StageSchedule {
                    spec,
                    packing,
                    tail: QuantStage {
                        weight: Vec::new(),
                        ..st.clone()
                    },
                })
            })
            .collect::<Result<Vec<_>, EnclaveError>>()?;
        Ok(Schedule {
            he,
            input_shape: model.input_shape.clone(),
            input: model.input.clone(),
            stages,
        })
    }

    /// Checks that the stages chain together and fit the parameters.
    pub fn validate(&self) -> Result<(), EnclaveError> {
        self.he.check_security()?;
        if self.stages.is_empty() {
            return Err(EnclaveError::Schedule(
                "a schedule needs at least one stage".into(),
            ));
        }
        for (k, st) in self.stages.iter().enumerate() {
            let bad = |what: &str| EnclaveError::Schedule(format!("stage {k}: {what}"));
            st.spec.validate().map_err(|e| bad(&e))?;
            let p = ConvPacking::new(st.packing.shape, st.packing.tiling, st.packing.degree)
                .map_err(|e| bad(&e))?;
            if p.shape != st.spec.normal_shape() || p.degree != self.he.degree {
                return Err(bad("packing does not match the layer"));
            }
            if st.tail.linear_output_shape()
                != [st.spec.m, st.spec.output_hw().0, st.spec.output_hw().1]
            {
                return Err(bad("layer shape does not match its tail"));
            }
            if st.tail.bias.len() != st.spec.m {
                return Err(bad("bias length does not match the output channels"));
            }
            if let Some(next) = self.stages.get(k + 1) {
                let out: usize = st.tail.output_shape.iter().product();
                if out != next.spec.c * next.spec.h * next.spec.w {
                    return Err(bad("output size does not match the next stage's input"));
                }
            }
            if st.tail.acc_bound > self.he.max_abs_value() {
                return Err(bad("accumulator bound exceeds the plaintext modulus"));
            }
        }
        Ok(())
    }

    /// Packs a stage input (a quantized activation) into plaintext polynomials.
    pub fn pack_stage_input(&self, stage: usize, x: &[i64]) -> Result<Vec<Vec<i64>>, EnclaveError> {
        let st = self
            .stages
            .get(stage)
            .ok_or_else(|| EnclaveError::Schedule(format!("no stage {stage}")))?;
        let need = st.spec.c * st.spec.h * st.spec.w;
        if x.len() != need {
            return Err(EnclaveError::Schedule(format!(
                "stage {stage} input has {} values, expected {need}",
                x.len()
            )));
        }
        Ok(st.packing.pack_input(&st.spec.layout_input(x)))
    }

    /// Packs a stage's int8 weights into plaintext polynomials (model provider).
    pub fn pack_stage_weights(
        &self,
        stage: usize,
        weight: &[i8],
    ) -> Result<Vec<Vec<i64>>, EnclaveError> {
        let st = self
            .stages
            .get(stage)
            .ok_or_else(|| EnclaveError::Schedule(format!("no stage {stage}")))?;
        let s = &st.spec;
        if weight.len() != s.m * s.c * s.kh * s.kw {
            return Err(EnclaveError::Schedule(format!(
                "stage {stage}: wrong weight count"
            )));
        }
        let k: Vec<i64> = weight.iter().map(|&w| w as i64).collect();
        Ok(st.packing.pack_weights(&s.layout_kernel(&k)))
    }
}
