//! Not a fuzzer: writes valid encodings into `corpus/<target>/seed-*` so the
//! fuzzers start past the first bytes, then exits. Run it with
//! `cargo fuzz run seeds` (it is built with the fuzz targets, so it costs no
//! separate build). The SGX, TDX and SEV-SNP evidence seeds are the sample
//! quotes and report in `crates/hetee-attest/tests/data`.
#![no_main]
// The init block exits before the (empty) fuzz loop.
#![allow(unreachable_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_attest::frame::FrameCodec;
use hetee_attest::layout::{snp_cert_table, SnpCertKind};
use hetee_attest::platform::{Platform, SimTee};
use hetee_attest::{ClientHandshake, Evidence, Measurement, SimPlatform};
use hetee_enclave::messages::{
    input_digest, AllowList, ClientMessage, EnclaveMessage, Incident, ModelReport, ModelTerms,
    OutputPolicy, QueryPlan, QueryResult,
};
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_he::codec::ciphertext_to_bytes;
use hetee_he::HeConfig;
use hetee_model::QuantModel;
use hetee_proto::wire;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use zeroize::Zeroizing;

#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

/// A conv model from the repository's ONNX test files.
fn onnx_model(path: &Path) -> Option<QuantModel> {
    let bytes = std::fs::read(path).ok()?;
    let m = hetee_onnx::import_onnx_bytes(&bytes, "seed").ok()?;
    let per: usize = m.input_shape.iter().product();
    let calib: Vec<f32> = (0..4 * per).map(|i| (i % 13) as f32 / 13.0).collect();
    hetee_model::quantize(&m, &calib).ok()
}

/// Compiled schedules with their quantized models.
fn schedules() -> Vec<(String, Schedule, QuantModel)> {
    let (tiny, _) = tiny_model();
    let mut out = vec![
        (
            "tiny".to_string(),
            Schedule::compile(&tiny, 1).unwrap(),
            tiny.clone(),
        ),
        (
            "tiny-b4".to_string(),
            Schedule::compile(&tiny, 4).unwrap(),
            tiny,
        ),
    ];
    for f in [
        "testdata/onnx/deep_conv.onnx",
        "testdata/onnx/avgpool.onnx",
        "models/mnist.onnx",
    ] {
        if let Some(q) = onnx_model(&root().join(f)) {
            if let Ok(s) = Schedule::compile(&q, 2) {
                let name = Path::new(f)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((name, s, q));
            }
        }
    }
    out
}

fn weights(q: &QuantModel) -> Zeroizing<Vec<Vec<i8>>> {
    Zeroizing::new(q.stages.iter().map(|s| s.weight.clone()).collect())
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

/// Minimal standard base64 (the PEM certificates of the SNP sample).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    out
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|b| base64(b.split("-----END CERTIFICATE-----").next().unwrap()))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Writes the `session` target's input encoding (see session.rs).
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn blob(self, b: &[u8]) -> Self {
        self.u32(b.len() as u32).raw(b)
    }
}

fn session_seeds() {
    let (q, x) = tiny_model();
    let schedule = tiny_schedule();
    let (_, public_key) = fixed_keys_plaintext();
    let host = HostModel::new(&q, &schedule, &public_key);
    let terms = ModelTerms::default();
    let model_id = hetee_enclave::messages::model_id(
        &FIXED_KEY_ID,
        &host.commitment(),
        &hetee_enclave::messages::registration_digest(&host.schedule, &host.plain_weights, &terms),
    );
    let plan = QueryPlan::of(model_id, FIXED_KEY_ID, *owner_key().public(), &schedule).unwrap();
    let par = schedule.he.build().unwrap();
    let pk = PublicKey::from_bytes(&public_key, &par).unwrap();
    let polys = plan.pack_input(&[&x]).unwrap();
    let input =
        hetee_enclave::input_binding::encrypt_input(&pk, &par, &polys, &INPUT_SEED).unwrap();
    let query = ClientMessage::Query {
        query_id: [0x51; 16],
        input_digest: input_digest(&input),
        images: 1,
        seed: Zeroizing::new(INPUT_SEED),
    };
    let register = |commitment: [u8; 32], terms: ModelTerms, allow: AllowList| {
        enc(&ClientMessage::RegisterModel {
            key_id: FIXED_KEY_ID,
            commitment,
            schedule: Box::new(schedule.clone()),
            weights: weights(&q),
            terms,
            allow,
        })
    };
    let dp = *data_provider_key().public();
    let t = "session";
    // Full queries: fuzzed-message kind with a valid Query, structured, thin.
    put(
        t,
        "query-msg",
        &W::default()
            .u8(1)
            .blob(&enc(&query))
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(0)
            .0,
    );
    put(
        t,
        "query",
        &W::default().u8(2).u32(1).u8(0).u8(0).u8(0).u8(0).0,
    );
    put(
        t,
        "query-replay-stage",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(5)
            .u8(0x85)
            .u32(0)
            .0,
    );
    put(
        t,
        "query-forged-stage0",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(0)
            .u8(1)
            .u8(1)
            .u32(12345)
            .u8(1)
            .0,
    );
    put(
        t,
        "query-forged-stage1",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(1)
            .u8(2)
            .u32(777)
            .u8(4)
            .u32(99)
            .u8(0x80)
            .0,
    );
    put(
        t,
        "query-patched-input",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(1)
            .u8(1)
            .u32(4242)
            .u8(1)
            .u8(0)
            .0,
    );
    put(
        t,
        "query-blob-stage",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(0)
            .u8(2)
            .u8(1)
            .blob(&[0; 64])
            .0,
    );
    put(
        t,
        "query-ops",
        &W::default()
            .u8(2)
            .u32(1)
            .u8(0)
            .u8(0)
            .u8(6)
            .blob(b"x")
            .u8(7)
            .u8(0)
            .0,
    );
    put(
        t,
        "query-two-inputs",
        &W::default().u8(2).u32(1).u8(0).u8(4).u8(0).0,
    );
    put(
        t,
        "query-bad-digest",
        &W::default().u8(2).u32(1).u8(2).u8(0).u8(0).0,
    );
    let mut thin = W::default().u8(3).u8(1).u8(0);
    for v in &x {
        thin = thin.raw(&v.to_le_bytes());
    }
    put(t, "thin", &thin.u8(0).u8(0).0);
    let thin_msg = ClientMessage::ThinQuery {
        query_id: [0x52; 16],
        images: Zeroizing::new(vec![x.clone()]),
    };
    put(
        t,
        "thin-msg",
        &W::default().u8(1).blob(&enc(&thin_msg)).u8(3).u8(0).u8(0).0,
    );
    // First messages of a channel.
    let hello = enc(&ClientMessage::Hello { model_id });
    put(
        t,
        "first-hello",
        &W::default()
            .u8(0)
            .u8(1)
            .blob(&hello)
            .u8(1)
            .u32(1)
            .u8(0)
            .u8(0)
            .0,
    );
    put(
        t,
        "first-hello-owner",
        &W::default().u8(0).u8(0).blob(&hello).0,
    );
    put(t, "first-raw", &W::default().u8(0).u8(3).blob(&hello).0);
    put(
        t,
        "first-register",
        &W::default()
            .u8(0)
            .u8(0)
            .blob(&register([9; 32], terms, AllowList::Open))
            .0,
    );
    put(
        t,
        "first-register-topk",
        &W::default()
            .u8(0)
            .u8(0)
            .blob(&register(
                [10; 32],
                ModelTerms {
                    policy: OutputPolicy::TopK(2),
                    query_budget: Some(3),
                    lock_after: 2,
                },
                AllowList::Only(vec![dp]),
            ))
            .0,
    );
    put(
        t,
        "first-register-again",
        &W::default()
            .u8(0)
            .u8(0)
            .blob(&register(host.commitment(), terms, AllowList::Open))
            .0,
    );
    put(
        t,
        "first-register-by-provider",
        &W::default()
            .u8(0)
            .u8(1)
            .blob(&register([9; 32], terms, AllowList::Open))
            .0,
    );
    for (n, m) in [
        ("status", ClientMessage::ModelStatus { model_id }),
        ("unlock", ClientMessage::Unlock { model_id }),
        (
            "allow",
            ClientMessage::SetAllowList {
                model_id,
                allow: AllowList::Only(vec![dp, [1; 32]]),
            },
        ),
    ] {
        put(
            t,
            &format!("first-{n}"),
            &W::default().u8(0).u8(0).blob(&enc(&m)).0,
        );
    }
    put(
        t,
        "first-query",
        &W::default().u8(0).u8(1).blob(&enc(&query)).0,
    );
}

/// Seeds of the `stack` target (see stack.rs for the encoding): honest
/// stacks driven to `StackFinished`, deferred members run in a second
/// stack, and stacks that name what a host might slip in.
fn stack_seeds() {
    let t = "stack";
    // A thin member: session i, c fixed images with seeds from `first`.
    let thin = |w: W, i: u8, c: u8, first: u8| {
        let mut w = w.u8(i).u8(0).u8(c);
        for k in 0..c {
            w = w.u8((first + k) << 1);
        }
        w
    };
    let stages = |w: W, g: u8| w.u8(1).u8(g).u8(0).u8(1).u8(g).u8(0);
    // Three sessions, 1 + 2 + 1 images: a full batch, both stages honest.
    let w = W::default().u8(2).u8(0).u8(0).u8(0).u8(0).u8(0).u8(2);
    let w = thin(thin(thin(w, 0, 1, 1), 1, 2, 2), 2, 1, 4);
    put(t, "full-batch", &stages(w, 0).0);
    // One session with four images.
    let w = thin(W::default().u8(0).u8(0).u8(0).u8(0).u8(0), 0, 4, 10);
    put(t, "one-member", &stages(w, 0).0);
    // 3 + 2 + 1 images: the second and third wait; a second stack runs them.
    let w = W::default().u8(2).u8(0).u8(0).u8(0).u8(0).u8(0).u8(2);
    let w = thin(thin(thin(w, 0, 3, 20), 1, 2, 23), 2, 1, 25);
    let w = stages(w, 0).u8(3).u8(0);
    put(t, "deferred", &stages(w, 0).0);
    // Two stacks running at once, their stages interleaved.
    let w = W::default().u8(1).u8(0).u8(0).u8(0).u8(0).u8(0);
    let w = thin(w, 0, 2, 30).u8(0).u8(0).u8(0);
    let w = thin(w, 1, 3, 32);
    let w = w
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(1)
        .u8(0)
        .u8(0);
    put(t, "two-groups", &w.0);
    // Six sessions: B, B, A (another model), an unfinished handshake, a
    // running single query, B; named with an HE query, the A session, the
    // handshake, the running one, an unknown id, a copied payload and two
    // honest members; then both stages.
    let w = W::default().u8(5).u8(0).u8(0).u8(5).u8(6).u8(7).u8(0);
    let w = w.u8(0).u8(0).u8(7);
    let w = thin(w, 0, 1, 40);
    let w = w.u8(1).u8(1); // session 1: an HE query
    let w = thin(w, 2, 1, 41); // model A's session
    let w = w.u8(3).u8(3).u8(4).u8(3).u8(6).u8(3); // handshake, running, unknown
    let w = w.u8(5).u8(4); // session 5: the previous member's payload
    let w = thin(w, 5, 2, 42); // session 5 again: the stack is refused
    put(t, "mixed-refused", &w.0);
    let w = W::default().u8(5).u8(0).u8(0).u8(5).u8(6).u8(7).u8(0);
    let w = w.u8(0).u8(0).u8(6);
    let w = thin(w, 0, 1, 40);
    let w = w
        .u8(1)
        .u8(1)
        .u8(2)
        .u8(3)
        .u8(3)
        .u8(3)
        .u8(4)
        .u8(3)
        .u8(6)
        .u8(3);
    let w = thin(w, 5, 2, 42);
    put(t, "mixed", &stages(w, 0).0);
    // A patched stage 0 (a failed check), and a stage out of order.
    let w = thin(W::default().u8(0).u8(0).u8(0).u8(0).u8(0), 0, 2, 50);
    put(
        t,
        "patched",
        &w.u8(1).u8(0).u8(1).u8(1).u32(12345).u8(0x5A).0,
    );
    let w = thin(W::default().u8(0).u8(0).u8(0).u8(0).u8(0), 0, 2, 50);
    put(t, "wrong-stage", &w.u8(1).u8(0).u8(0x84).u32(1).0);
    // A thin image of raw values (NaN), and a close of the group mid-way.
    let w = W::default().u8(1).u8(0).u8(0).u8(0).u8(0).u8(1);
    let mut w = w.u8(0).u8(0).u8(1).u8(1).u8(20);
    for k in 0..20u32 {
        w = w.u32(if k == 7 {
            f32::NAN.to_bits()
        } else {
            (k as f32 / 20.0).to_bits()
        });
    }
    let w = thin(w, 1, 1, 60);
    put(t, "nan-image", &stages(w, 0).0);
    let w = thin(W::default().u8(0).u8(0).u8(0).u8(0).u8(0), 0, 1, 70);
    put(
        t,
        "close-group",
        &w.u8(1).u8(0).u8(0).u8(2).u8(0).u8(0).u8(1).u8(0).u8(0).0,
    );
}

fn write_all() {
    let scheds = schedules();
    // The `ciphertext` target's parameters.
    let ct_par = HeConfig::for_accumulator_bound(1 << 20)
        .unwrap()
        .build()
        .unwrap();
    for (n, b) in &ciphertexts(&ct_par) {
        put("ciphertext", n, b);
    }
    // The tiny model's parameters (the enclave seeds).
    let he = scheds[0].1.he.clone();
    let par = he.build().unwrap();
    let tiny_cts = ciphertexts(&par);

    // sealed: mode byte + payload, under the simulated platform's sealing key.
    let secret = *SimTee::new(MEASUREMENT).sealing_key().unwrap();
    let plain = sealed_plaintexts(&secret);
    let seal =
        |label: &str, p: &[u8]| hetee_attest::seal::seal(&secret, &MEASUREMENT, label, p).unwrap();
    let sealed_keys = seal(KEYS_LABEL, &plain.keys);
    let sealed_model = seal(MODEL_LABEL, &plain.model);
    let sealed_state = seal(STATE_LABEL, &plain.state);
    let with = |m: u8, b: &[u8]| [&[m][..], b].concat();
    put("sealed", "unseal-keys", &with(0, &sealed_keys));
    put("sealed", "unseal-state", &with(0, &sealed_state));
    put("sealed", "restore-keys", &with(1, &sealed_keys));
    put("sealed", "restore-model", &with(2, &sealed_model));
    put("sealed", "restore-state", &with(3, &sealed_state));
    put("sealed", "plain-keys", &with(4, &plain.keys));
    put("sealed", "plain-model", &with(5, &plain.model));
    put("sealed", "plain-state", &with(6, &plain.state));
    let mut busy =
        hetee_enclave::state::ModelState::new(FIXED_MODEL_ID, AllowList::Only(vec![[4; 32]]));
    busy.spend(
        &[4; 32],
        &ModelTerms {
            query_budget: Some(5),
            ..ModelTerms::default()
        },
    );
    busy.record_failure(1, [4; 32], &ModelTerms::default());
    put("sealed", "plain-state-locked", &with(6, &enc(&busy)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (n, s, q) in &scheds[1..] {
        let rec = hetee_enclave::keys::ModelRecord {
            model_id: FIXED_MODEL_ID,
            key_id: FIXED_KEY_ID,
            commitment: FIXED_COMMITMENT,
            schedule: s.clone(),
            checks: q
                .stages
                .iter()
                .map(|st| hetee_enclave::freivalds::StageCheck::draw(st, &mut rng))
                .collect(),
            terms: ModelTerms {
                policy: OutputPolicy::TopK(2),
                query_budget: Some(4),
                lock_after: 3,
            },
        };
        put("sealed", &format!("plain-model-{n}"), &with(5, &enc(&rec)));
    }

    // wire_request: request sequences for a fresh enclave on the simulated platform.
    let evidence = SimPlatform::dev()
        .issue(MEASUREMENT, false, [6; 64])
        .encode()
        .unwrap();
    let (_, msg1) = ClientHandshake::with_client_key(
        &owner_key(),
        &[9; 32],
        &Evidence::decode(&evidence).unwrap().hash().unwrap(),
    )
    .unwrap();
    let ct3 = tiny_cts[1].1.clone();
    let owner = *owner_key().public();
    let reqs: Vec<(&str, Vec<Request>)> = vec![
        ("status", vec![Request::Status]),
        (
            "create-keys",
            vec![
                Request::CreateKeys {
                    he: he.clone(),
                    owner,
                },
                Request::Status,
            ],
        ),
        (
            "restore",
            vec![
                Request::RestoreKeys {
                    sealed: sealed_keys.clone(),
                },
                Request::RestoreModel {
                    sealed: sealed_model.clone(),
                },
                Request::RestoreState {
                    sealed: sealed_state.clone(),
                },
                Request::Evidence {
                    key_id: FIXED_KEY_ID,
                },
            ],
        ),
        (
            "open-channel",
            vec![
                Request::RestoreKeys {
                    sealed: sealed_keys.clone(),
                },
                Request::OpenChannel {
                    key_id: FIXED_KEY_ID,
                    evidence: evidence.clone(),
                    msg1: msg1.clone(),
                },
                Request::ChannelFinish {
                    session: [4; 16],
                    msg3: vec![5; 64],
                    payload: vec![6; 48],
                },
                Request::CloseSession { session: [4; 16] },
            ],
        ),
        (
            "query",
            vec![
                Request::StartQuery {
                    session: [4; 16],
                    model_id: FIXED_MODEL_ID,
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
    for (n, s, q) in &scheds {
        let m = ClientMessage::RegisterModel {
            key_id: FIXED_KEY_ID,
            commitment: [3; 32],
            schedule: Box::new(s.clone()),
            weights: weights(q),
            terms: ModelTerms {
                policy: OutputPolicy::Label,
                query_budget: None,
                lock_after: 1,
            },
            allow: AllowList::Open,
        };
        put("channel_messages", &format!("register-{n}"), &enc(&m));
        let plan = QueryPlan::of([8; 16], FIXED_KEY_ID, owner, s).unwrap();
        put(
            "channel_messages",
            &format!("plan-{n}"),
            &enc(&EnclaveMessage::Plan(Box::new(plan))),
        );
    }
    let msgs = [
        ("hello", ClientMessage::Hello { model_id: [1; 16] }),
        (
            "query",
            ClientMessage::Query {
                query_id: [4; 16],
                input_digest: [2; 32],
                images: 1,
                seed: Zeroizing::new([3; 32]),
            },
        ),
        (
            "thin-query",
            ClientMessage::ThinQuery {
                query_id: [5; 16],
                images: Zeroizing::new(vec![vec![0.25; 20]]),
            },
        ),
        ("status", ClientMessage::ModelStatus { model_id: [1; 16] }),
        ("unlock", ClientMessage::Unlock { model_id: [1; 16] }),
        (
            "allow",
            ClientMessage::SetAllowList {
                model_id: [1; 16],
                allow: AllowList::Only(vec![[4; 32]]),
            },
        ),
    ];
    for (n, m) in &msgs {
        put("channel_messages", n, &enc(m));
    }
    let result = QueryResult {
        model_id: [1; 16],
        commitment: [2; 32],
        input_digest: [3; 32],
        images: 1,
        classes: 3,
        policy: OutputPolicy::Logits,
        logits: Zeroizing::new(vec![0.5, -1.0, 2.0]),
        labels: Zeroizing::new(Vec::new()),
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
        "report",
        &enc(&EnclaveMessage::Report(Box::new(ModelReport {
            model_id: [1; 16],
            version: 3,
            locked: true,
            failures: 1,
            terms: ModelTerms::default(),
            allow: AllowList::Open,
            spent: vec![([4; 32], 2)],
            incidents: vec![Incident {
                seq: 1,
                stage: 0,
                client: [4; 32],
            }],
        }))),
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
    let data = root().join("crates/hetee-attest/tests/data");
    let read = |f: &str| std::fs::read(data.join(f)).unwrap();
    let split = |kind: u8, proof: &[u8], collateral: &[u8]| {
        let cut = (proof.len() as u16).to_le_bytes();
        [&[kind][..], &cut[..], proof, collateral].concat()
    };
    let (sgx, sgx_col) = (read("sgx_quote"), read("sgx_quote_collateral.json"));
    let ev = Evidence::from_dcap_quote(sgx.clone(), sgx_col.clone()).unwrap();
    put("evidence", "sgx", &ev.encode().unwrap());
    put("evidence", "sgx-quote", &sgx);
    put("evidence", "sgx-split", &split(0, &sgx, &sgx_col));
    let (tdx, tdx_col) = (read("tdx_quote"), read("tdx_quote_collateral.json"));
    let ev = Evidence::from_tdx_quote(tdx.clone(), tdx_col.clone()).unwrap();
    put("evidence", "tdx", &ev.encode().unwrap());
    put("evidence", "tdx-quote", &tdx);
    put("evidence", "tdx-split", &split(1, &tdx, &tdx_col));
    let report = unhex(&String::from_utf8(read("snp_report_milan.hex")).unwrap());
    let certs = pem_certs(&String::from_utf8(read("snp_cert_chain_milan.pem")).unwrap());
    let vcek = read("snp_vcek_milan.der");
    let table = snp_cert_table(&[
        (SnpCertKind::Vcek, &vcek),
        (SnpCertKind::Ask, &certs[0]),
        (SnpCertKind::Ark, &certs[1]),
    ]);
    let ev = Evidence::from_snp_report(report.clone(), table.clone()).unwrap();
    put("evidence", "snp", &ev.encode().unwrap());
    put("evidence", "snp-report", &report);
    put("evidence", "snp-cert-table", &table);
    put("evidence", "snp-split", &split(2, &report, &table));

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
    for dir in ["models", "testdata/onnx"] {
        for f in std::fs::read_dir(root().join(dir)).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "onnx") {
                let name =
                    format!("{dir}-{}", p.file_name().unwrap().to_string_lossy()).replace('/', "-");
                put("onnx", &name, &std::fs::read(&p).unwrap());
            }
        }
    }

    session_seeds();
    stack_seeds();

    // Sanity: the sealed seeds restore.
    let e = Enclave::new(Box::new(SimTee::new(MEASUREMENT)), EnclaveConfig::default());
    for (req, what) in [
        (
            Request::RestoreKeys {
                sealed: sealed_keys,
            },
            "keys",
        ),
        (
            Request::RestoreModel {
                sealed: sealed_model,
            },
            "model",
        ),
        (
            Request::RestoreState {
                sealed: sealed_state,
            },
            "state",
        ),
    ] {
        let r = e.handle(req);
        assert!(!matches!(r, Response::Error { .. }), "{what}: {r:?}");
    }
}

fuzz_target!(
    init: {
        write_all();
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);
