//! Client <-> enclave channel messages: `postcard` decoding of
//! [`ClientMessage`] and [`EnclaveMessage`], then what the enclave does with
//! a model provider's schedule (validate, derive the query plan, pack and
//! unpack) and what a data provider does with a plan (`pack_input`).
//! Nothing may panic; `validate` must refuse garbage with an error.
#![no_main]

use hetee_enclave::messages::{ClientMessage, EnclaveMessage, QueryPlan};
use hetee_enclave::Schedule;
use libfuzzer_sys::fuzz_target;

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
    let Ok(plan) = QueryPlan::of([7; 16], s) else {
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
        let _ = s.pack_stage_input(k, &xs);
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

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = postcard::from_bytes::<ClientMessage>(data) {
        if let ClientMessage::RegisterModel { schedule, .. } = &msg {
            if schedule.validate().is_ok() {
                use_schedule(schedule);
            }
        }
    }
    if let Ok(EnclaveMessage::Plan(plan)) = postcard::from_bytes::<EnclaveMessage>(data) {
        pack(&plan);
    }
});
