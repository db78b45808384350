//! What a data provider needs to encrypt its input: the public structure
//! of the model's first stage, sent by the enclave in answer to `Hello`.

use hetee_he::{ConvPacking, ConvSpec, HeConfig};
use hetee_model::quant::InputQuant;
use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, ModelId};
use crate::schedule::{check_packing, Schedule};
use crate::ProtoError;

/// What a data provider needs to encrypt its input: public structure of
/// the first stage only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPlan {
    /// The model.
    pub model_id: ModelId,
    /// Its key set.
    pub key_id: KeyId,
    /// The model's owner: the long-term channel key of the model provider
    /// that owns the key set (a data provider can check it is who it expects).
    pub owner: [u8; 32],
    /// BFV parameters.
    pub he: HeConfig,
    /// Input shape.
    pub input_shape: Vec<usize>,
    /// Input quantization.
    pub input: InputQuant,
    /// Images per query.
    pub batch: usize,
    /// First linear layer.
    pub spec: ConvSpec,
    /// Its packing.
    pub packing: ConvPacking,
    /// Logits per image.
    pub classes: usize,
    /// The enclave runs ops on the input before the first linear layer:
    /// queries send the input over the channel (thin) only.
    pub input_in_enclave: bool,
}

impl QueryPlan {
    /// The plan of a schedule.
    pub fn of(
        model_id: ModelId,
        key_id: KeyId,
        owner: [u8; 32],
        s: &Schedule,
    ) -> Result<Self, ProtoError> {
        let first = s
            .stages
            .first()
            .ok_or_else(|| ProtoError::Schedule("no stages".into()))?;
        Ok(QueryPlan {
            model_id,
            key_id,
            owner,
            he: s.he.clone(),
            input_shape: s.input_shape.clone(),
            input: s.input.clone(),
            batch: s.batch,
            spec: first.spec,
            packing: first.packing,
            classes: s.output_shape.iter().product(),
            input_in_enclave: s.input_in_enclave(),
        })
    }

    /// Quantizes and packs up to `batch` images (zero images pad the rest).
    pub fn pack_input(&self, xs: &[&[f32]]) -> Result<Vec<Vec<i64>>, ProtoError> {
        if self.input_in_enclave {
            return Err(ProtoError::Schedule(
                "this model runs ops on the input in the enclave; its queries are thin".into(),
            ));
        }
        if xs.is_empty() || xs.len() > self.batch {
            return Err(ProtoError::Schedule(format!(
                "a query holds 1 to {} images, got {}",
                self.batch,
                xs.len()
            )));
        }
        let packing = check_packing(&self.spec, &self.packing, self.batch, self.he.degree)
            .map_err(ProtoError::Schedule)?;
        let per = self.spec.c * self.spec.h * self.spec.w;
        let shape_len = (self.input_shape.iter()).try_fold(1usize, |a, &d| a.checked_mul(d));
        if shape_len != Some(per) {
            return Err(ProtoError::Schedule(
                "the plan's input shape does not match its first layer".into(),
            ));
        }
        let mut q = Vec::with_capacity(self.batch);
        for x in xs {
            if x.len() != per {
                return Err(ProtoError::Schedule(format!(
                    "an image has {} values, the model takes {per}",
                    x.len()
                )));
            }
            q.push(
                self.input
                    .quantize(x)
                    .map_err(|e| ProtoError::Schedule(e.to_string()))?,
            );
        }
        q.resize(self.batch, vec![0; per]);
        let refs: Vec<&[i64]> = q.iter().map(|x| x.as_slice()).collect();
        Ok(packing.pack_input(&self.spec.layout_batch(&refs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetee_he::Tiling;

    fn plan() -> QueryPlan {
        let he = HeConfig::for_accumulator_bound(1000).unwrap();
        let spec = ConvSpec::dense(4, 2);
        let tiling = Tiling {
            ct: 4,
            ht: 1,
            wt: 1,
            mt: 2,
        };
        let packing = ConvPacking::new(spec.batched_shape(1), tiling, he.degree).unwrap();
        QueryPlan {
            model_id: [0; 16],
            key_id: [0; 16],
            owner: [0; 32],
            he,
            input_shape: vec![4],
            input: InputQuant {
                layout: None,
                scale: 0.1,
                min: -127,
                max: 127,
            },
            batch: 1,
            spec,
            packing,
            classes: 2,
            input_in_enclave: false,
        }
    }

    #[test]
    fn pack_input_refuses_malformed_plans() {
        // Found by fuzz/ (channel_messages): sizes of a decoded plan overflowed.
        let x = [0.5f32; 4];
        assert!(plan().pack_input(&[&x]).is_ok());
        let mut p = plan();
        p.input_shape = vec![1 << 32, 1 << 32, 4];
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.batch = usize::MAX;
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.spec.pads = [usize::MAX; 4];
        assert!(p.pack_input(&[&x]).is_err());
        let mut p = plan();
        p.packing.tiling = Tiling {
            ct: 1 << 32,
            ht: 1 << 32,
            wt: 1 << 32,
            mt: 1 << 32,
        };
        assert!(p.pack_input(&[&x]).is_err());
    }
}
