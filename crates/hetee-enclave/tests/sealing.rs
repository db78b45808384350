//! Sealing: a model registered in one enclave instance keeps working in a
//! restarted one with the same measurement (same keys: earlier ciphertexts
//! still decrypt), and nothing else can unseal it.

use fhe::bfv::{Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_enclave::{Enclave, Request, Response, Schedule};
use hetee_he::codec::ciphertext_to_bytes;
use hetee_he::Evaluator;
use hetee_model::ir::{Layer, Model};

fn model() -> (hetee_model::QuantModel, Vec<f32>) {
    let w = |n: usize, s: usize| {
        (0..n)
            .map(|i| (((i * 31 + s) % 23) as f32 - 11.0) / 30.0)
            .collect::<Vec<_>>()
    };
    let m = Model {
        input_shape: vec![20],
        layers: vec![
            Layer::Dense {
                weight: w(8 * 20, 1),
                bias: w(8, 2),
                out_features: 8,
                in_features: 20,
            },
            Layer::Relu,
            Layer::Dense {
                weight: w(3 * 8, 3),
                bias: w(3, 4),
                out_features: 3,
                in_features: 8,
            },
        ],
        node_names: vec!["fc1".into(), "relu".into(), "fc2".into()],
    };
    let calib: Vec<f32> = (0..5 * 20).map(|i| (i % 7) as f32 / 7.0).collect();
    (
        hetee_model::quantize(&m, &calib).unwrap(),
        calib[..20].to_vec(),
    )
}

fn call(e: &mut Enclave, r: Request) -> Response {
    e.handle(r)
}

/// Runs the model end to end through `enclave` with the host's encrypted
/// weights and input made under `pk`; returns the logits.
fn infer(
    enclave: &mut Enclave,
    model_id: u64,
    s: &Schedule,
    q: &hetee_model::QuantModel,
    pk: &PublicKey,
    x: &[f32],
) -> Result<Vec<f32>, String> {
    let par = s.he.build().unwrap();
    let enc = |polys: Vec<Vec<i64>>| {
        polys
            .iter()
            .map(|p| {
                pk.try_encrypt(
                    &Plaintext::try_encode(p.as_slice(), Encoding::poly(), &par).unwrap(),
                    &mut rand::rng(),
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let ev = Evaluator::new(&par).unwrap();
    let Response::QueryStarted { query_id } = call(enclave, Request::StartQuery { model_id })
    else {
        return Err("no query".into());
    };
    let mut inputs = enc(s
        .pack_stage_input(0, &[s.input.quantize(x).unwrap()])
        .unwrap());
    for (k, st) in s.stages.iter().enumerate() {
        let w = ev
            .extend_all(&enc(s.pack_stage_weights(k, &q.stages[k].weight).unwrap()))
            .unwrap();
        let outs = ev
            .evaluate_plan(
                &st.packing.product_plan(),
                &ev.extend_all(&inputs).unwrap(),
                &w,
            )
            .unwrap();
        let req = Request::StageResult {
            query_id,
            stage: k as u32,
            ciphertexts: outs.iter().map(ciphertext_to_bytes).collect(),
        };
        match call(enclave, req) {
            Response::NextInput { ciphertexts, .. } => {
                inputs = ciphertexts
                    .iter()
                    .map(|b| hetee_he::codec::ciphertext_from_bytes(b, &par, 2).unwrap())
                    .collect();
            }
            Response::Logits { values } => return Ok(values),
            Response::Error { message } => return Err(message),
            _ => return Err("unexpected".into()),
        }
    }
    Err("no logits".into())
}

fn register(e: &mut Enclave, s: &Schedule) -> (u64, Vec<u8>, Vec<u8>) {
    match call(
        e,
        Request::RegisterModel {
            schedule: Box::new(s.clone()),
        },
    ) {
        Response::Registered {
            model_id,
            public_key,
            sealed,
        } => (model_id, public_key, sealed),
        _ => panic!("register failed"),
    }
}

#[test]
fn restarted_enclave_unseals_and_keeps_serving_with_the_same_keys() {
    let (q, x) = model();
    let s = Schedule::compile(&q, 1).unwrap();
    let init = || Request::Init {
        measurement: [7; 32],
        platform_secret: [9; 32],
    };
    let mut a = Enclave::new();
    assert!(matches!(call(&mut a, init()), Response::Ready));
    let (id_a, pk, sealed) = register(&mut a, &s);
    let par = s.he.build().unwrap();
    let pk = PublicKey::from_bytes(&pk, &par).unwrap();
    let before = infer(&mut a, id_a, &s, &q, &pk, &x).unwrap();
    assert_eq!(
        before,
        hetee_model::reference::run_quantized(&q, &x).unwrap()
    );
    drop(a);

    // Restart: same measurement and platform, restore from the sealed blob,
    // and use ciphertexts made under the old public key.
    let mut b = Enclave::new();
    assert!(matches!(call(&mut b, init()), Response::Ready));
    let id_b = match call(
        &mut b,
        Request::RestoreModel {
            sealed: sealed.clone(),
        },
    ) {
        Response::Registered { model_id, .. } => model_id,
        Response::Error { message } => panic!("{message}"),
        _ => panic!("unexpected"),
    };
    assert_eq!(infer(&mut b, id_b, &s, &q, &pk, &x).unwrap(), before);

    // A changed enclave binary (other measurement) cannot unseal.
    let mut c = Enclave::new();
    call(
        &mut c,
        Request::Init {
            measurement: [8; 32],
            platform_secret: [9; 32],
        },
    );
    match call(
        &mut c,
        Request::RestoreModel {
            sealed: sealed.clone(),
        },
    ) {
        Response::Error { message } => assert!(message.contains("cannot restore"), "{message}"),
        _ => panic!("a different measurement unsealed the model"),
    }
    // A tampered or truncated blob is refused.
    let mut d = Enclave::new();
    call(&mut d, init());
    let mut bad = sealed.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(
        call(&mut d, Request::RestoreModel { sealed: bad }),
        Response::Error { .. }
    ));
    assert!(matches!(
        call(
            &mut d,
            Request::RestoreModel {
                sealed: sealed[..10].to_vec()
            }
        ),
        Response::Error { .. }
    ));
    // Init after a model is loaded is refused.
    assert!(matches!(call(&mut b, init()), Response::Error { .. }));
}
