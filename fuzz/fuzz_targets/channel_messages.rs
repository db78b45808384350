//! Client <-> enclave channel messages: `postcard` decoding of
//! [`ClientMessage`] and [`EnclaveMessage`], then what the enclave does with
//! a model provider's registration (validate the schedule, fit the weights
//! to the layers, draw the Freivalds checks, derive the query plan, pack and
//! unpack) and what a data provider does with a plan (`pack_input`).
//! The enclave's own checks of a registration (`Schedule::validate`, the
//! weight sizes, `validate_checks`) come first, as in `Enclave::handle`;
//! only a model that passes them is used further. Nothing may panic; the
//! checks must refuse garbage with an error.
#![no_main]

use hetee_enclave::freivalds::StageCheck;
use hetee_enclave::keys::ModelRecord;
use hetee_enclave::messages::{
    registration_digest, thin_input_digest, AllowList, ClientMessage, EnclaveMessage, QueryPlan,
};
use hetee_enclave::policy;
use hetee_enclave::Schedule;
use hetee_model::quant::LinearKind;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

/// Largest image (values) or polynomial set the harness materializes.
const MAX_VALUES: usize = 1 << 18;

fn image_len(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
}

/// A data provider packing one and `batch` images with `plan`.
fn pack(plan: &QueryPlan) {
    let _ = plan.pack_input(&[]);
    let x: Vec<f32> = match image_len(&plan.input_shape) {
        Some(n) => (0..n).map(|i| (i % 7) as f32 / 7.0 - 0.3).collect(),
        None => vec![0.5; 3],
    };
    let _ = plan.pack_input(&[&x]);
    if plan.batch > 1 && plan.batch <= 8 {
        let xs: Vec<&[f32]> = (0..plan.batch).map(|_| x.as_slice()).collect();
        let _ = plan.pack_input(&xs);
    }
}

/// What the enclave does with an accepted schedule.
fn use_schedule(s: &Schedule) {
    let _ = s.predicted_cost();
    let Ok(plan) = QueryPlan::of([7; 16], [8; 16], [9; 32], s) else {
        return;
    };
    pack(&plan);
    if s.batch > 64 {
        return;
    }
    for k in 0..s.stages.len().min(4) {
        let st = &s.stages[k];
        let Some(n) = st
            .spec
            .c
            .checked_mul(st.spec.h)
            .and_then(|v| v.checked_mul(st.spec.w))
            .filter(|&n| n.saturating_mul(s.batch) <= MAX_VALUES)
        else {
            continue;
        };
        let xs = vec![vec![1i64; n]; s.batch];
        if let Ok(polys) = s.pack_stage_input(k, &xs) {
            let _ = s.unpack_stage_input(k, &polys);
        }
        let outs = st.packing.output_count();
        if outs.saturating_mul(s.he.degree) <= MAX_VALUES {
            let polys = vec![vec![0i64; s.he.degree]; outs];
            let _ = s.unpack_stage_output(k, &polys);
        }
        let w = st
            .spec
            .m
            .checked_mul(st.spec.c)
            .and_then(|v| v.checked_mul(st.spec.kh))
            .and_then(|v| v.checked_mul(st.spec.kw))
            .filter(|&n| n <= MAX_VALUES);
        if let Some(w) = w {
            let _ = s.pack_stage_weights(k, &vec![1i8; w]);
        }
    }
}

/// The weight count the enclave expects for each stage (as `draw_record`
/// computes it), or `None` if it overflows.
fn weight_len(st: &hetee_enclave::schedule::StageSchedule) -> Option<usize> {
    let t = &st.tail;
    let [c, h, w] = t.input_shape;
    let (kh, kw) = t.kernel();
    match t.linear {
        LinearKind::Dense => [c, h, w, t.out_channels]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d)),
        LinearKind::Conv(_) => [t.out_channels, c, kh, kw]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d)),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = postcard::from_bytes::<ClientMessage>(data) {
        match msg {
            ClientMessage::RegisterModel {
                key_id,
                commitment,
                schedule,
                weights,
                terms,
                allow,
            } => {
                let _ = allow.allows(&[0; 32]);
                if schedule.validate().is_ok() && weights.len() == schedule.stages.len() {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
                    let mut checks = Vec::new();
                    for (st, w) in schedule.stages.iter().zip(weights.iter()) {
                        if weight_len(st) != Some(w.len()) {
                            return;
                        }
                        let outs = st
                            .tail
                            .linear_output_shape()
                            .iter()
                            .try_fold(1usize, |a, &d| a.checked_mul(d));
                        if outs.is_none_or(|n| n > MAX_VALUES) {
                            return;
                        }
                        let mut stage = st.tail.clone();
                        stage.weight = w.clone();
                        checks.push(StageCheck::draw(&stage, &mut rng));
                    }
                    let _ = registration_digest(&schedule, &weights, &terms);
                    let rec = ModelRecord {
                        model_id: [0; 16],
                        key_id,
                        commitment,
                        schedule: *schedule,
                        checks,
                        terms,
                    };
                    if rec.validate_checks().is_ok() {
                        use_schedule(&rec.schedule);
                        let classes = rec
                            .schedule
                            .stages
                            .last()
                            .map(|s| s.tail.output_shape.iter().product::<usize>())
                            .unwrap_or(0);
                        if classes <= MAX_VALUES {
                            let logits: Vec<f32> =
                                (0..classes).map(|i| (i % 5) as f32 - 2.0).collect();
                            let _ = policy::apply(rec.terms.policy, &logits, classes);
                        }
                    }
                }
            }
            ClientMessage::ThinQuery { images, .. } => {
                let _ = thin_input_digest(&images);
            }
            ClientMessage::SetAllowList { allow, .. } => {
                let _ = allow.allows(&[1; 32]);
                let _ = matches!(allow, AllowList::Open);
            }
            ClientMessage::Hello { .. }
            | ClientMessage::Query { .. }
            | ClientMessage::ModelStatus { .. }
            | ClientMessage::Unlock { .. } => {}
        }
    }
    if let Ok(msg) = postcard::from_bytes::<EnclaveMessage>(data) {
        match msg {
            EnclaveMessage::Plan(plan) => pack(&plan),
            EnclaveMessage::Result { result, .. } => {
                let _ = result.signed_message();
            }
            _ => {}
        }
    }
});
