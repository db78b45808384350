//! Fixtures shared by the enclave targets (`sealed`, `session`) and the seed
//! generator: the simulated platform's measurement, the tiny test model of
//! the enclave's integration tests, fixed client keys, the plaintexts of a
//! fixed key set / model / state, and the host's side of a model.
#![allow(dead_code)]

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_attest::{Measurement, StaticKeypair};
use hetee_enclave::freivalds::StageCheck;
use hetee_enclave::keys::{ModelRecord, Sealer};
use hetee_enclave::messages::{weights_commitment, AllowList, ModelTerms};
use hetee_enclave::state::ModelState;
use hetee_enclave::Schedule;
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::eval::ExtendedCiphertext;
use hetee_he::Evaluator;
use hetee_model::ir::{Layer, Model};
use hetee_model::QuantModel;
use rand::SeedableRng;

/// The measurement of every fuzzed enclave's simulated platform.
pub const MEASUREMENT: Measurement = Measurement([7; 32]);
/// Sealing labels (`hetee_enclave::keys`; private there).
pub const KEYS_LABEL: &str = "keys-v2";
pub const MODEL_LABEL: &str = "model-v3";
pub const STATE_LABEL: &str = hetee_enclave::state::STATE_LABEL;

/// The fixed key set id, model id and commitment of the sealed fixtures.
pub const FIXED_KEY_ID: [u8; 16] = [0xAA; 16];
pub const FIXED_MODEL_ID: [u8; 16] = [5; 16];
pub const FIXED_COMMITMENT: [u8; 32] = [3; 32];

/// Private halves of the fixed long-term client keys.
pub const OWNER_PRIVATE: [u8; 32] = [0x11; 32];
pub const DATA_PROVIDER_PRIVATE: [u8; 32] = [0x22; 32];
/// The data provider's fixed input-encryption seed.
pub const INPUT_SEED: [u8; 32] = [0x33; 32];

pub fn owner_key() -> StaticKeypair {
    StaticKeypair::from_private(&OWNER_PRIVATE)
}

pub fn data_provider_key() -> StaticKeypair {
    StaticKeypair::from_private(&DATA_PROVIDER_PRIVATE)
}

/// The enclave tests' two-stage dense model (20 -> 8 -> ReLU -> 3) and one input.
pub fn tiny_model() -> (QuantModel, Vec<f32>) {
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
        inputs: Vec::new(),
    };
    let calib: Vec<f32> = (0..5 * 20).map(|i| (i % 7) as f32 / 7.0).collect();
    (
        hetee_model::quantize(&m, &calib).unwrap(),
        calib[..20].to_vec(),
    )
}

/// The plaintexts the enclave seals for the fixed key set, model and state.
pub struct Plaintexts {
    pub keys: Vec<u8>,
    pub model: Vec<u8>,
    pub state: Vec<u8>,
}

/// The `postcard` layout of `hetee_enclave::keys::KeysSnapshot` (private
/// there): the plaintext of a sealed key set. `sealed_plaintexts` checks
/// that the enclave restores it.
#[derive(serde::Serialize)]
struct KeysSnapshot {
    key_id: [u8; 16],
    he: hetee_he::HeConfig,
    owner: [u8; 32],
    secret_key: Vec<u8>,
    public_key: Vec<u8>,
}

/// The tiny model's schedule (batch 1).
pub fn tiny_schedule() -> Schedule {
    Schedule::compile(&tiny_model().0, 1).unwrap()
}

/// A deterministic BFV key set for the tiny model (seeded randomness),
/// id [`FIXED_KEY_ID`], owned by [`owner_key`]: the `postcard` plaintext the
/// enclave seals, and the serialized public key.
pub fn fixed_keys_plaintext() -> (Vec<u8>, Vec<u8>) {
    use fhe::bfv::SecretKey;
    use fhe_traits::Serialize as _;
    let he = tiny_schedule().he;
    let par = he.build().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let sk = SecretKey::random(&par, &mut rng);
    let secret_key = sk.to_bytes();
    // `PublicKey::new` draws its `a` from the thread's rng; an encryption of
    // zero by the prepared key with seeded randomness is deterministic. A
    // public key is the protobuf message { 1: ciphertext }.
    let ops = hetee_he::secret::SecretOps::from_secret_key_bytes(&par, &secret_key).unwrap();
    let zero = ops.encrypt(&[], &mut rng).unwrap();
    let ct = zero.to_bytes();
    let mut public_key = vec![0x0A];
    let mut n = ct.len();
    while n >= 0x80 {
        public_key.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    public_key.push(n as u8);
    public_key.extend_from_slice(&ct);
    let pk = PublicKey::from_bytes(&public_key, &par).expect("fixture public key");
    assert_eq!(pk.to_bytes(), public_key);
    let snap = KeysSnapshot {
        key_id: FIXED_KEY_ID,
        he,
        owner: *owner_key().public(),
        secret_key,
        public_key,
    };
    (postcard::to_allocvec(&snap).unwrap(), snap.public_key)
}

/// The plaintexts of the fixed key set ([`fixed_keys_plaintext`]), the
/// fixed model record under it (id [`FIXED_MODEL_ID`], checks drawn with a
/// fixed seed) and its first state. `secret` is the platform's sealing key:
/// the key plaintext is checked against what the enclave's own `Sealer`
/// restores.
pub fn sealed_plaintexts(secret: &[u8; 32]) -> Plaintexts {
    let (q, _) = tiny_model();
    let schedule = tiny_schedule();
    let sealer = Sealer {
        secret: zeroize::Zeroizing::new(*secret),
        measurement: MEASUREMENT,
    };
    let (keys, public_key) = fixed_keys_plaintext();
    let blob = hetee_attest::seal::seal(secret, &MEASUREMENT, KEYS_LABEL, &keys).unwrap();
    let ks = sealer
        .restore_keys(&blob)
        .expect("the fixture's key snapshot layout is out of date");
    assert_eq!(ks.key_id, FIXED_KEY_ID);
    assert_eq!(ks.public_key, public_key);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let rec = ModelRecord {
        model_id: FIXED_MODEL_ID,
        key_id: FIXED_KEY_ID,
        commitment: FIXED_COMMITMENT,
        schedule,
        checks: q
            .stages
            .iter()
            .map(|st| StageCheck::draw(st, &mut rng))
            .collect(),
        terms: ModelTerms::default(),
    };
    let state = ModelState::new(FIXED_MODEL_ID, AllowList::Open);
    Plaintexts {
        keys,
        model: postcard::to_allocvec(&rec).unwrap(),
        state: postcard::to_allocvec(&state).unwrap(),
    }
}

/// Encrypts polynomials under a serialized public key with `rng`.
pub fn encrypt_with<R: rand::RngCore + rand::CryptoRng>(
    public_key: &[u8],
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
    rng: &mut R,
) -> Vec<Vec<u8>> {
    let pk = PublicKey::from_bytes(public_key, par).unwrap();
    polys
        .iter()
        .map(|p| {
            let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), par).unwrap();
            ciphertext_to_bytes(&pk.try_encrypt(&pt, rng).unwrap())
        })
        .collect()
}

/// The host's copy of a model: weight ciphertexts (as uploaded) and their
/// extended form for evaluation (as in the enclave's integration tests).
pub struct HostModel {
    pub schedule: Schedule,
    pub par: Arc<BfvParameters>,
    pub ev: Evaluator,
    pub uploaded: Vec<Vec<Vec<u8>>>,
    pub plain_weights: Vec<Vec<i8>>,
    weights: Vec<Vec<ExtendedCiphertext>>,
}

impl HostModel {
    pub fn new(q: &QuantModel, schedule: &Schedule, public_key: &[u8]) -> Self {
        let par = schedule.he.build().unwrap();
        let ev = Evaluator::new(&par).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
        let uploaded: Vec<Vec<Vec<u8>>> = (0..schedule.stages.len())
            .map(|k| {
                let polys = schedule.pack_stage_weights(k, &q.stages[k].weight).unwrap();
                encrypt_with(public_key, &par, &polys, &mut rng)
            })
            .collect();
        let weights = uploaded
            .iter()
            .map(|w| {
                let cts: Vec<_> = w
                    .iter()
                    .map(|b| ciphertext_from_bytes(b, &par, 2).unwrap())
                    .collect();
                ev.extend_all(&cts).unwrap()
            })
            .collect();
        HostModel {
            schedule: schedule.clone(),
            par,
            ev,
            uploaded,
            plain_weights: q.stages.iter().map(|s| s.weight.clone()).collect(),
            weights,
        }
    }

    pub fn commitment(&self) -> [u8; 32] {
        weights_commitment(&self.uploaded)
    }

    /// Evaluates linear stage `k` on serialized inputs; `None` if an input
    /// does not decode (the host would refuse it too).
    pub fn evaluate(&self, k: usize, input: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let cts: Vec<_> = input
            .iter()
            .map(|b| ciphertext_from_bytes(b, &self.par, 2).ok())
            .collect::<Option<_>>()?;
        let outs = self
            .ev
            .evaluate_plan(
                &self.schedule.stages.get(k)?.packing.product_plan(),
                &self.ev.extend_all(&cts).ok()?,
                self.weights.get(k)?,
            )
            .ok()?;
        Some(outs.iter().map(ciphertext_to_bytes).collect())
    }
}
