//! The enclave refuses inconsistent schedules (a model provider's mistake or
//! a tampered registration) with an error instead of panicking later.

mod common;

use common::*;
use hetee_enclave::messages::{AllowList, ClientMessage, ModelTerms, RegisteredModel};
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};
use hetee_model::intops::PostOp;
use hetee_model::ir::{Layer, Model, Pads, Window};
use hetee_model::quant::StageOutput;
use hetee_model::QuantModel;

fn model() -> QuantModel {
    let w = |n: usize| {
        (0..n)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 20.0)
            .collect::<Vec<_>>()
    };
    let m = Model {
        input_shape: vec![2, 8, 8],
        layers: vec![
            Layer::Conv2d {
                weight: w(4 * 2 * 9),
                bias: w(4),
                out_channels: 4,
                in_channels: 2,
                window: Window {
                    kernel: (3, 3),
                    strides: (1, 1),
                    pads: Pads::same(1),
                    dilations: (1, 1),
                },
            },
            Layer::Relu,
            Layer::Flatten,
            Layer::Dense {
                weight: w(3 * 256),
                bias: w(3),
                out_features: 3,
                in_features: 256,
            },
        ],
        node_names: vec!["c".into(), "r".into(), "f".into(), "d".into()],
        inputs: Vec::new(),
    };
    let calib: Vec<f32> = (0..3 * 128).map(|i| (i % 13) as f32 / 13.0).collect();
    hetee_model::quantize(&m, &calib).unwrap()
}

fn schedule() -> Schedule {
    Schedule::compile(&model(), 2).unwrap()
}

/// The key set's owner registers `s` (with the model's int8 weights) in a
/// fresh attested enclave whose key set has the valid schedule's parameters.
/// Returns the answer and the enclave's model count after it.
fn register(s: Schedule) -> (Result<RegisteredModel, String>, Keys, usize) {
    let weights: Vec<Vec<i8>> = model().stages.iter().map(|st| st.weight.clone()).collect();
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&e, &schedule().he);
    let msg = ClientMessage::RegisterModel {
        key_id: keys.key_id,
        commitment: [5; 32],
        schedule: Box::new(s),
        weights: zeroize::Zeroizing::new(weights),
        terms: ModelTerms::default(),
        allow: AllowList::Open,
    };
    let r = connect(&e, &keys, &msg).map(|o| o.registered.expect("no sealed model"));
    let st = status(&e);
    assert_eq!(st.sessions, 0);
    (r, keys, st.models)
}

fn refused(s: Schedule, what: &str) {
    match register(s) {
        (Err(message), _, models) => {
            assert!(message.contains(what), "{what}: {message}");
            assert_eq!(models, 0, "{what}: a refused model was stored");
        }
        (Ok(_), ..) => panic!("accepted a bad schedule ({what})"),
    }
}

#[test]
fn valid_schedule_is_accepted() {
    let (reg, keys, models) = register(schedule());
    let reg = reg.unwrap_or_else(|e| panic!("refused a valid schedule: {e}"));
    assert_eq!(models, 1);
    assert_eq!(reg.state.model_id, reg.model_id);
    assert_eq!(reg.state.version, 1);
    // Another enclave with the same measurement takes the sealed key set,
    // model and state back.
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    match e.handle(Request::RestoreKeys {
        sealed: keys.sealed.clone(),
    }) {
        Response::KeysRestored { key_id } => assert_eq!(key_id, keys.key_id),
        other => panic!("keys not restored: {}", short(&other)),
    }
    match e.handle(Request::RestoreModel {
        sealed: reg.sealed.clone(),
    }) {
        Response::ModelRestored { model_id } => assert_eq!(model_id, reg.model_id),
        other => panic!("model not restored: {}", short(&other)),
    }
    match e.handle(Request::RestoreState {
        sealed: reg.state.sealed.clone(),
    }) {
        Response::StateRestored { model_id, version } => {
            assert_eq!((model_id, version), (reg.model_id, 1))
        }
        other => panic!("state not restored: {}", short(&other)),
    }
    let st = status(&e);
    assert_eq!((st.keysets, st.models), (1, 1));
}

#[test]
fn tampered_schedules_are_refused() {
    let mut s = schedule();
    s.stages[0].tail.bias.pop();
    refused(s, "bias");

    let mut s = schedule();
    if let StageOutput::Requant(rq) = &mut s.stages[0].tail.output {
        rq.shift[0] = 0;
    }
    refused(s, "requantization");

    let mut s = schedule();
    s.stages[0].tail.post.push(PostOp::MaxPool(Window {
        kernel: (9, 9),
        strides: (1, 1),
        pads: Pads::default(),
        dilations: (1, 1),
    }));
    refused(s, "window");

    let mut s = schedule();
    s.stages[0].packing.tiling.mt += 1;
    refused(s, "stage 0");

    let mut s = schedule();
    s.batch = 3;
    refused(s, "packing");

    let mut s = schedule();
    s.he.moduli_sizes = vec![60, 60];
    refused(s, "insecure");

    let mut s = schedule();
    s.stages.truncate(1);
    refused(s, "logits");

    // A dense conv declared grouped: the host would skip products whose
    // weights are not zero.
    let mut s = schedule();
    s.stages[0].spec.groups = 2;
    s.stages[0].packing.shape.groups = 2;
    refused(s, "weights cross them");
}
