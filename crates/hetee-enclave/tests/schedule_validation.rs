//! The enclave refuses inconsistent schedules (a model provider's mistake or
//! a tampered registration) with an error instead of panicking later.

use hetee_enclave::{Enclave, Request, Response, Schedule};
use hetee_model::intops::PostOp;
use hetee_model::ir::{Layer, Model, Pads, Window};
use hetee_model::quant::StageOutput;

fn schedule() -> Schedule {
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
    };
    let calib: Vec<f32> = (0..3 * 128).map(|i| (i % 13) as f32 / 13.0).collect();
    Schedule::compile(&hetee_model::quantize(&m, &calib).unwrap(), 2).unwrap()
}

/// Registers in local mode (an in-process enclave, not Init'ed).
fn register(s: Schedule) -> Response {
    Enclave::new().handle(Request::RegisterLocal {
        schedule: Box::new(s),
        checks: vec![],
    })
}

fn refused(s: Schedule, what: &str) {
    match register(s) {
        Response::Error { message } => assert!(message.contains(what), "{message}"),
        _ => panic!("accepted a bad schedule ({what})"),
    }
}

#[test]
fn valid_schedule_is_accepted() {
    match register(schedule()) {
        Response::Registered {
            model_id,
            key_id,
            public_key,
            sealed_keys,
            sealed_model,
        } => {
            assert!(!public_key.is_empty());
            // Another in-process enclave takes the sealed key set and model back.
            let mut e = Enclave::new();
            match e.handle(Request::RestoreKeys {
                sealed: sealed_keys,
            }) {
                Response::KeysRestored { key_id: k } => assert_eq!(k, key_id),
                _ => panic!("keys not restored"),
            }
            match e.handle(Request::RestoreModel {
                sealed: sealed_model,
            }) {
                Response::ModelRestored { model_id: m } => assert_eq!(m, model_id),
                _ => panic!("model not restored"),
            }
        }
        Response::Error { message } => panic!("refused a valid schedule: {message}"),
        _ => panic!("unexpected response"),
    }
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
}
