//! Not a fuzzer: writes valid encodings into `corpus/<target>/seed-*` so the
//! fuzzers start past the first bytes, then exits. Run it with
//! `cargo fuzz run seeds` (it is built with the fuzz targets, so it costs no
//! separate build). It reads the sample DCAP quote shipped in the `dcap-qvl`
//! crate source (found under `$CARGO_HOME/registry/src`) when it is there.
#![no_main]
// The init block exits before the (empty) fuzz loop.
#![allow(unreachable_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_attest::frame::FrameCodec;
use hetee_attest::{ClientHandshake, Evidence, Measurement, SimPlatform};
use hetee_enclave::freivalds::StageCheck;
use hetee_enclave::keys::{ModelRecord, Sealer};
use hetee_enclave::messages::{
    ClientMessage, EnclaveMessage, Identity, OutputPolicy, QueryPlan, QueryResult,
};
use hetee_enclave::{wire, Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_he::codec::ciphertext_to_bytes;
use hetee_he::HeConfig;
use hetee_model::ir::{Layer, Model};
use hetee_model::QuantModel;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

/// The secret and measurement the `sealed` target Inits its enclave with.
const SEALED_SECRET: [u8; 32] = [1; 32];
const SEALED_MEASUREMENT: Measurement = Measurement([2; 32]);

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let p = corpus(target).join(format!("seed-{name}"));
    std::fs::write(&p, bytes).unwrap();
    println!("{} ({} bytes)", p.display(), bytes.len());
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap()
}

/// The enclave tests' two-stage dense model (20 -> 8 -> ReLU -> 3).
fn tiny_model() -> QuantModel {
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
    hetee_model::quantize(&m, &calib).unwrap()
}

/// A conv model from the repository's ONNX test files.
fn onnx_model(path: &Path) -> Option<QuantModel> {
    let bytes = std::fs::read(path).ok()?;
    let m = hetee_onnx::import_onnx_bytes(&bytes, "seed").ok()?;
    let per: usize = m.input_shape.iter().product();
    let calib: Vec<f32> = (0..4 * per).map(|i| (i % 13) as f32 / 13.0).collect();
    hetee_model::quantize(&m, &calib).ok()
}

/// Compiled schedules with their Freivalds checks.
fn schedules() -> Vec<(String, Schedule, Vec<StageCheck>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut checks = |q: &QuantModel| -> Vec<StageCheck> {
        q.stages
            .iter()
            .map(|st| StageCheck::draw(st, &mut rng))
            .collect()
    };
    let tiny = tiny_model();
    let mut out = vec![
        (
            "tiny".to_string(),
            Schedule::compile(&tiny, 1).unwrap(),
            checks(&tiny),
        ),
        (
            "tiny-b4".to_string(),
            Schedule::compile(&tiny, 4).unwrap(),
            checks(&tiny),
        ),
    ];
    for f in [
        "testdata/onnx/deep_conv.onnx",
        "testdata/onnx/avgpool.onnx",
        "models/mnist.onnx",
    ] {
        if let Some(q) = onnx_model(&root.join(f)) {
            if let Ok(s) = Schedule::compile(&q, 2) {
                let name = Path::new(f)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((name, s, checks(&q)));
            }
        }
    }
    out
}

fn he() -> HeConfig {
    HeConfig::for_accumulator_bound(1 << 20).unwrap()
}

/// Fresh ciphertexts of 2 and 3 polynomials, at level 0 and 1.
fn ciphertexts(par: &Arc<BfvParameters>) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let sk = SecretKey::random(par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let v: Vec<i64> = (0..par.degree() as i64).map(|i| i % 11 - 5).collect();
    let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), par).unwrap();
    let ct: Ciphertext = pk.try_encrypt(&pt, &mut rng).unwrap();
    let ct3 = Ciphertext::new(vec![ct[0].clone(), ct[1].clone(), ct[1].clone()], par).unwrap();
    let mut out = vec![
        ("ct2".into(), ciphertext_to_bytes(&ct)),
        ("ct3".into(), ciphertext_to_bytes(&ct3)),
    ];
    if ct.max_switchable_level() >= 1 {
        let mut low = ct.clone();
        low.switch_to_level(1).unwrap();
        out.push(("ct2-level1".into(), ciphertext_to_bytes(&low)));
    }
    out
}

fn dcap_sample() -> Option<(Vec<u8>, Vec<u8>)> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    for reg in std::fs::read_dir(home.join("registry/src")).ok()?.flatten() {
        for pkg in std::fs::read_dir(reg.path()).ok()?.flatten() {
            let name = pkg.file_name().to_string_lossy().into_owned();
            if name.starts_with("dcap-qvl-0.") {
                let s = pkg.path().join("sample");
                if let (Ok(q), Ok(c)) = (
                    std::fs::read(s.join("sgx_quote")),
                    std::fs::read(s.join("sgx_quote_collateral.json")),
                ) {
                    return Some((q, c));
                }
            }
        }
    }
    None
}

fn write_all() {
    let scheds = schedules();
    // The `ciphertext` target's parameters.
    let ct_par = he().build().unwrap();
    let cts = ciphertexts(&ct_par);
    // The key set and the enclave seeds use the tiny model's parameters.
    let he = scheds[0].1.he.clone();
    let par = he.build().unwrap();
    let tiny_cts = ciphertexts(&par);

    // ciphertext
    for (n, b) in &cts {
        put("ciphertext", n, b);
    }

    // Keys and models for the enclave targets, under the `sealed` target's secret.
    let sealer = Sealer {
        secret: &SEALED_SECRET,
        measurement: &SEALED_MEASUREMENT,
    };
    let (ks, sealed_keys) = sealer.create_keys(he.clone()).unwrap();
    let keys_plain =
        hetee_attest::seal::unseal(&SEALED_SECRET, &SEALED_MEASUREMENT, "keys-v1", &sealed_keys)
            .unwrap();
    let tiny = &scheds[0].1;
    let tiny_checks = &scheds[0].2;
    let rec = ModelRecord {
        model_id: [5; 16],
        key_id: ks.key_id,
        commitment: [3; 32],
        schedule: tiny.clone(),
        checks: tiny_checks.clone(),
        policy: OutputPolicy::Logits,
        query_budget: Some(10),
    };
    let sealed_model = sealer.seal_model(&rec).unwrap();
    let model_plain = hetee_attest::seal::unseal(
        &SEALED_SECRET,
        &SEALED_MEASUREMENT,
        "model-v2",
        &sealed_model,
    )
    .unwrap();

    // sealed: mode byte + payload
    let with = |m: u8, b: &[u8]| [&[m][..], b].concat();
    put("sealed", "unseal-keys", &with(0, &sealed_keys));
    put("sealed", "restore-keys", &with(1, &sealed_keys));
    put("sealed", "restore-model", &with(2, &sealed_model));
    put("sealed", "plain-keys", &with(3, &keys_plain));
    put("sealed", "plain-model", &with(4, &model_plain));
    for (n, s, c) in &scheds[1..] {
        let mut r = rec.clone();
        r.schedule = s.clone();
        r.checks = c.clone();
        r.policy = OutputPolicy::TopK(2);
        put("sealed", &format!("plain-model-{n}"), &with(4, &enc(&r)));
    }

    // wire_request: Init'ed enclave with the sealed target's identity
    let init = Request::Init {
        measurement: SEALED_MEASUREMENT.0,
        platform_secret: SEALED_SECRET,
        config: EnclaveConfig::default().to_bytes(),
    };
    let identity = Identity {
        key_id: ks.key_id,
        measurement: SEALED_MEASUREMENT.0,
        channel_public_key: [9; 32],
        public_key: ks.public_key.clone(),
        he_params: hetee_enclave::messages::he_params_bytes(&he),
        signing_public_key: [8; 32],
    };
    let evidence = SimPlatform::dev()
        .issue(SEALED_MEASUREMENT, false, identity.report_data())
        .encode()
        .unwrap();
    let (_, msg1) = ClientHandshake::new(
        &[9; 32],
        &Evidence::decode(&evidence).unwrap().hash().unwrap(),
    )
    .unwrap();
    let ct3 = tiny_cts[1].1.clone();
    let reqs: Vec<(&str, Vec<Request>)> = vec![
        ("init", vec![init.clone()]),
        ("status", vec![Request::Status]),
        (
            "create-keys",
            vec![init.clone(), Request::CreateKeys { he: he.clone() }],
        ),
        (
            "restore",
            vec![
                init.clone(),
                Request::RestoreKeys {
                    sealed: sealed_keys.clone(),
                },
                Request::RestoreModel {
                    sealed: sealed_model.clone(),
                },
                Request::Identity { key_id: ks.key_id },
            ],
        ),
        (
            "open-channel",
            vec![
                init.clone(),
                Request::RestoreKeys {
                    sealed: sealed_keys.clone(),
                },
                Request::OpenChannel {
                    key_id: ks.key_id,
                    evidence: evidence.clone(),
                    msg1: msg1.clone(),
                },
                Request::ChannelFinish {
                    session: [4; 16],
                    msg3: vec![5; 64],
                    payload: vec![6; 48],
                },
            ],
        ),
        (
            "query",
            vec![
                Request::StartQuery {
                    session: [4; 16],
                    model_id: rec.model_id,
                    payload: vec![6; 40],
                    input: vec![tiny_cts[0].1.clone()],
                },
                Request::StageResult {
                    session: [4; 16],
                    stage: 0,
                    ciphertexts: vec![ct3.clone()],
                },
                Request::CloseSession { session: [4; 16] },
            ],
        ),
        (
            "local",
            vec![
                Request::RegisterLocal {
                    schedule: Box::new(tiny.clone()),
                    checks: tiny_checks.clone(),
                },
                Request::StartLocalQuery {
                    model_id: rec.model_id,
                    input: vec![tiny_cts[0].1.clone()],
                },
                Request::StageResult {
                    session: [0; 16],
                    stage: 0,
                    ciphertexts: vec![ct3.clone()],
                },
                Request::Status,
            ],
        ),
    ];
    let codec = wire::codec();
    for (n, rs) in &reqs {
        let plain: Vec<u8> = rs.iter().flat_map(enc).collect();
        put("wire_request", n, &plain);
        let framed: Vec<u8> = rs
            .iter()
            .flat_map(|r| codec.encode(wire::KIND_REQUEST, &enc(r)).unwrap())
            .collect();
        put("wire_request", &format!("{n}-framed"), &framed);
    }
    put(
        "wire_request",
        "frame",
        &FrameCodec::new(1 << 20).encode(1, b"hello").unwrap(),
    );

    // channel_messages
    for (n, s, c) in &scheds {
        let m = ClientMessage::RegisterModel {
            key_id: ks.key_id,
            commitment: [3; 32],
            schedule: Box::new(s.clone()),
            checks: c.clone(),
            policy: OutputPolicy::Label,
            query_budget: None,
        };
        put("channel_messages", &format!("register-{n}"), &enc(&m));
        let plan = QueryPlan::of([8; 16], s).unwrap();
        put(
            "channel_messages",
            &format!("plan-{n}"),
            &enc(&EnclaveMessage::Plan(Box::new(plan))),
        );
    }
    put(
        "channel_messages",
        "hello",
        &enc(&ClientMessage::Hello { model_id: [1; 16] }),
    );
    put(
        "channel_messages",
        "query",
        &enc(&ClientMessage::Query {
            input_digest: [2; 32],
            images: 1,
        }),
    );
    put(
        "channel_messages",
        "thin-query",
        &enc(&ClientMessage::ThinQuery {
            images: vec![vec![0.25; 20]],
        }),
    );
    let result = QueryResult {
        model_id: [1; 16],
        commitment: [2; 32],
        input_digest: [3; 32],
        images: 1,
        classes: 3,
        policy: OutputPolicy::Logits,
        logits: vec![0.5, -1.0, 2.0],
        labels: Vec::new(),
    };
    put(
        "channel_messages",
        "result",
        &enc(&EnclaveMessage::Result {
            result,
            signature: vec![0; 64],
        }),
    );
    put(
        "channel_messages",
        "registered",
        &enc(&EnclaveMessage::Registered { model_id: [1; 16] }),
    );
    put(
        "channel_messages",
        "refused",
        &enc(&EnclaveMessage::Refused {
            message: "no".into(),
        }),
    );

    // evidence
    put("evidence", "sim", &evidence);
    put(
        "evidence",
        "sim-debug",
        &SimPlatform::dev()
            .issue(Measurement([1; 32]), true, [7; 64])
            .encode()
            .unwrap(),
    );
    match dcap_sample() {
        Some((quote, collateral)) => {
            let ev = Evidence::from_dcap_quote(quote.clone(), collateral.clone()).unwrap();
            put("evidence", "dcap", &ev.encode().unwrap());
            put("evidence", "dcap-quote", &quote);
            let cut = (quote.len() as u16).to_le_bytes();
            put(
                "evidence",
                "dcap-split",
                &[&cut[..], &quote, &collateral].concat(),
            );
        }
        None => println!("dcap-qvl's sample quote not found; no DCAP seeds"),
    }

    // npy
    let tmp = std::env::temp_dir().join(format!("hetee-seed-{}.npy", std::process::id()));
    for (n, shape) in [
        ("1x20", vec![1usize, 20]),
        ("2x1x4x4", vec![2, 1, 4, 4]),
        ("0", vec![0]),
        ("scalar", vec![]),
    ] {
        let len: usize = shape.iter().product();
        let data: Vec<f32> = (0..len).map(|i| i as f32 / 3.0).collect();
        hetee::data::write_npy(&tmp, &shape, &data).unwrap();
        put("npy", n, &std::fs::read(&tmp).unwrap());
    }
    let _ = std::fs::remove_file(&tmp);

    // onnx
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["models", "testdata/onnx"] {
        for f in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "onnx") {
                let name =
                    format!("{dir}-{}", p.file_name().unwrap().to_string_lossy()).replace('/', "-");
                put("onnx", &name, &std::fs::read(&p).unwrap());
            }
        }
    }

    // Sanity: the seeds do what they should.
    let mut e = Enclave::new();
    assert!(matches!(e.handle(init), Response::Ready));
    assert!(matches!(
        e.handle(Request::RestoreKeys {
            sealed: sealed_keys
        }),
        Response::KeysRestored { .. }
    ));
    assert!(matches!(
        e.handle(Request::RestoreModel {
            sealed: sealed_model
        }),
        Response::ModelRestored { .. }
    ));
    let _ = PublicKey::from_bytes(&ks.public_key, &par).unwrap();
}

fuzz_target!(
    init: {
        write_all();
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);
