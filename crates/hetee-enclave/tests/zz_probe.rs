mod common;
use common::*;
use hetee_enclave::budget;
use hetee_enclave::messages::QueryPlan;
use hetee_enclave::{EnclaveConfig, Request, Schedule};
use hetee_model::ir::{Layer, Model, Pads, Window};

#[global_allocator]
static A: hetee_enclave::budget::Meter = hetee_enclave::budget::Meter;

fn mib(x: usize) -> f64 { x as f64 / (1u64 << 20) as f64 }

fn mnist() -> Model {
    let mut s = 1u64;
    let mut w = |n: usize| (0..n).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 / (1u64<<24) as f32 - 0.5) * 0.6 }).collect::<Vec<_>>();
    let conv = |m: usize, c: usize, k: usize, w: &mut dyn FnMut(usize) -> Vec<f32>| Layer::Conv2d {
        weight: w(m * c * k * k), bias: w(m), out_channels: m, in_channels: c,
        window: Window { kernel: (k, k), strides: (1, 1), pads: Pads::default() },
    };
    let fc = conv(10, 32, 8, &mut w);
    Model {
        input_shape: vec![1, 28, 28],
        layers: vec![conv(16, 1, 5, &mut w), Layer::Relu,
            Layer::MaxPool(Window { kernel: (2, 2), strides: (2, 2), pads: Pads::default() }),
            conv(32, 16, 5, &mut w), Layer::Relu, fc],
        node_names: vec!["conv1".into(), "relu".into(), "pool".into(), "conv2".into(), "r2".into(), "fc".into()],
    }
}

#[test]
fn probe() {
    for batch in [1usize, 4, 16] {
    let m = mnist();
    let calib: Vec<f32> = (0..4 * 784).map(|i| (i % 251) as f32 / 251.0).collect();
    let q = hetee_model::quantize(&m, &calib).unwrap();
    let schedule = Schedule::compile(&q, batch).unwrap();
    println!("batch {batch} he {:?} stages {}", schedule.he, schedule.stages.len());
    for st in &schedule.stages { println!("  in {} out {} w {}", st.packing.input_count(), st.packing.output_count(), st.packing.weight_count()); }
    let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&mut e, &schedule.he);
    let (commitment, input, outs) = {
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        let plan = QueryPlan::of([0; 16], &schedule).unwrap();
        let par = schedule.he.build().unwrap();
        let input = encrypt_under(&keys.public_key, &par, &plan.pack_input(&[&calib[..784]]).unwrap());
        let outs = host.evaluate(0, &input);
        (host.commitment(), input, outs)
    };
    let c = budget::current();
    let opened = connect(&mut e, &keys, &hetee_enclave::messages::ClientMessage::RegisterModel { key_id: keys.key_id, commitment, schedule: Box::new(schedule.clone()), policy: hetee_enclave::messages::OutputPolicy::Logits }).unwrap();
    println!("register delta peak {:.2}", mib(budget::peak() - c));
    let model_id = opened.registered.unwrap().model_id;
    let mut dp = hello(&mut e, &keys, model_id).unwrap();
    println!("{}", short(&dp.start(&mut e, model_id, &input)));
    let c = budget::current();
    println!("stage0 {} cts of {} bytes; before: cur {:.2}", outs.len(), outs[0].len(), mib(c));
    let r = e.handle(Request::StageResult { session: dp.channel.session, stage: 0, ciphertexts: outs });
    println!("StageResult0: {} delta peak {:.2} cur {:.2}", short(&r), mib(budget::peak() - c), mib(budget::current()));
    }
}
