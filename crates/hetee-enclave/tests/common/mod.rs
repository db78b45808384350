//! Shared helpers of the enclave's integration tests: a tiny quantized model,
//! the host's side (encrypted weights, linear stages) and an in-process
//! client that drives the attested flow through [`Enclave::handle`].
#![allow(dead_code)]

mod data_provider;
pub mod ownership;
pub mod restart;
pub mod session_fixtures;

pub use data_provider::*;

use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use fhe::bfv::{BfvParameters, Encoding, Plaintext, PublicKey};
use fhe_traits::{DeserializeParametrized, FheEncoder, FheEncrypter};
use hetee_attest::platform::SimTee;
use hetee_attest::{ClientHandshake, Measurement, SimPlatform, StaticKeypair, Transport};
use hetee_enclave::messages::{
    input_digest, weights_commitment, AllowList, ClientMessage, EnclaveMessage, Identity, KeyId,
    ModelId, ModelReport, ModelTerms, OutputPolicy, QueryPlan, QueryResult, RegisteredModel,
    SessionId,
};
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::eval::ExtendedCiphertext;
use hetee_he::{Evaluator, HeConfig};
use hetee_model::ir::{Layer, Model};
use hetee_model::QuantModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The measurement every test enclave's platform reports (unless a test wants another).
pub const MEASUREMENT: [u8; 32] = [7; 32];

/// A two-stage dense model (20 -> 8 -> ReLU -> 3) and one input.
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

/// Another input of the tiny model.
pub fn other_input() -> Vec<f32> {
    (0..20).map(|i| ((i * 5) % 11) as f32 / 11.0).collect()
}

/// What the reference implementation says.
pub fn reference(q: &QuantModel, x: &[f32]) -> Vec<f32> {
    hetee_model::reference::run_quantized(q, x).unwrap()
}

/// A fresh enclave on the simulated platform with this measurement.
pub fn attested_enclave(measurement: [u8; 32], config: EnclaveConfig) -> Enclave {
    Enclave::new(Box::new(SimTee::new(Measurement(measurement))), config)
}

/// The error message of a response, or a panic naming what came instead.
pub fn error_of(r: Response) -> String {
    match r {
        Response::Error { message, .. } => message,
        other => panic!("expected an error, got {}", short(&other)),
    }
}

/// A response's variant name (responses can be megabytes of ciphertext).
pub fn short(r: &Response) -> String {
    match r {
        Response::KeysCreated { .. } => "KeysCreated".into(),
        Response::KeysRestored { .. } => "KeysRestored".into(),
        Response::Evidence { .. } => "Evidence".into(),
        Response::StateRestored { version, .. } => format!("StateRestored({version})"),
        Response::ChannelOpened { .. } => "ChannelOpened".into(),
        Response::ChannelReply { .. } => "ChannelReply".into(),
        Response::ModelRestored { .. } => "ModelRestored".into(),
        Response::QueryStarted { input, .. } => {
            format!("QueryStarted(thin: {})", input.is_some())
        }
        Response::NextInput { stage, .. } => format!("NextInput(stage {stage})"),
        Response::Finished { .. } => "Finished".into(),
        Response::StackStarted { started, .. } => format!("StackStarted({})", started.len()),
        Response::StackFinished { payloads } => format!("StackFinished({})", payloads.len()),
        Response::Closed => "Closed".into(),
        Response::PeerOffer { .. } => "PeerOffer".into(),
        Response::SealingKeyShared { .. } => "SealingKeyShared".into(),
        Response::SealingKeyAdopted { .. } => "SealingKeyAdopted".into(),
        Response::SealingKeyRestored => "SealingKeyRestored".into(),
        Response::Status(s) => format!("{s:?}"),
        Response::Error { message, state } => {
            format!(
                "Error({message}; state: {:?})",
                state.as_ref().map(|s| s.version)
            )
        }
    }
}

/// Encrypts polynomials under a serialized public key; serialized ciphertexts.
pub fn encrypt_under(
    public_key: &[u8],
    par: &Arc<BfvParameters>,
    polys: &[Vec<i64>],
) -> Vec<Vec<u8>> {
    encrypt_with(public_key, par, polys, &mut rand::rng())
}

/// [`encrypt_under`] with the given randomness.
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

/// A key set as the host and the clients see it, and its owner's key.
#[derive(Clone)]
pub struct Keys {
    pub key_id: KeyId,
    pub public_key: Vec<u8>,
    pub sealed: Vec<u8>,
    pub identity: Identity,
    /// Encoded evidence the enclave's (simulated) platform issued for it.
    pub evidence: Vec<u8>,
    /// The model provider who owns the key set.
    pub owner: Arc<StaticKeypair>,
}

/// Evidence of the simulated platform for an identity.
pub fn evidence_for(measurement: [u8; 32], report_data: [u8; 64]) -> Vec<u8> {
    SimPlatform::dev()
        .issue(Measurement(measurement), false, report_data)
        .encode()
        .unwrap()
}

/// CreateKeys (owned by a fresh model-provider key) + evidence.
pub fn create_keys(e: &Enclave, he: &HeConfig) -> Keys {
    create_keys_for(e, he, Arc::new(StaticKeypair::generate().unwrap()))
}

/// CreateKeys owned by `owner` + evidence.
pub fn create_keys_for(e: &Enclave, he: &HeConfig, owner: Arc<StaticKeypair>) -> Keys {
    let (key_id, public_key, sealed) = match e.handle(Request::CreateKeys {
        he: he.clone(),
        owner: *owner.public(),
    }) {
        Response::KeysCreated {
            key_id,
            public_key,
            sealed,
        } => (key_id, public_key, sealed),
        other => panic!("CreateKeys: {}", short(&other)),
    };
    let (identity, evidence) = evidence(e, key_id);
    assert_eq!(identity.public_key, public_key);
    assert_eq!(&identity.owner, owner.public());
    Keys {
        key_id,
        public_key,
        sealed,
        identity,
        evidence,
        owner,
    }
}

/// The identity of a key set and the platform's evidence for it.
pub fn evidence(e: &Enclave, key_id: KeyId) -> (Identity, Vec<u8>) {
    match e.handle(Request::Evidence { key_id }) {
        Response::Evidence { identity, evidence } => (identity, evidence),
        other => panic!("Evidence: {}", short(&other)),
    }
}

/// A key set as clients see it after the enclave restarted (or in another
/// enclave that restored it): same key set and owner, the identity and
/// evidence this enclave gives now (its channel and result keys are new).
pub fn reattest(e: &Enclave, keys: &Keys) -> Keys {
    let (identity, evidence) = evidence(e, keys.key_id);
    assert_eq!(identity.public_key, keys.public_key);
    assert_eq!(&identity.owner, keys.owner.public());
    Keys {
        identity,
        evidence,
        ..keys.clone()
    }
}

/// The identity of a key set.
pub fn identity(e: &Enclave, key_id: KeyId) -> Identity {
    evidence(e, key_id).0
}

/// A client's end of an open channel.
pub struct Channel {
    pub session: SessionId,
    pub tx: Transport,
}

/// What the enclave answered to a channel's first message.
pub struct Opened {
    pub channel: Channel,
    pub reply: EnclaveMessage,
    pub registered: Option<RegisteredModel>,
    pub state: Option<hetee_enclave::messages::SealedState>,
}

/// Seals a client message.
pub fn seal_msg(tx: &mut Transport, m: &ClientMessage) -> Vec<u8> {
    tx.seal(&postcard::to_allocvec(m).unwrap()).unwrap()
}

/// Opens an enclave message.
pub fn open_msg(tx: &mut Transport, payload: &[u8]) -> EnclaveMessage {
    postcard::from_bytes(&tx.open(payload).unwrap()).unwrap()
}

/// The full client side of a channel: handshake against `enclave_key` with
/// `evidence` as prologue, then `first` as the first message. Any refusal
/// comes back as `Err` with what the enclave (or the handshake) said.
pub fn connect_with(
    e: &Enclave,
    key_id: KeyId,
    evidence: &[u8],
    enclave_key: &[u8; 32],
    first: &ClientMessage,
) -> Result<Opened, String> {
    connect_as(e, key_id, evidence, enclave_key, None, first)
}

/// [`connect_with`] with a long-term client key (`None`: a fresh one).
pub fn connect_as(
    e: &Enclave,
    key_id: KeyId,
    evidence: &[u8],
    enclave_key: &[u8; 32],
    client: Option<&StaticKeypair>,
    first: &ClientMessage,
) -> Result<Opened, String> {
    let prologue = hetee_attest::Evidence::decode(evidence)
        .and_then(|ev| ev.hash())
        .map_err(|e| format!("client evidence: {e}"))?;
    let (hs, msg1) = match client {
        Some(k) => ClientHandshake::with_client_key(k, enclave_key, &prologue),
        None => ClientHandshake::new(enclave_key, &prologue),
    }
    .map_err(|e| format!("client: {e}"))?;
    let (session, msg2) = match e.handle(Request::OpenChannel {
        key_id,
        evidence: evidence.to_vec(),
        msg1,
    }) {
        Response::ChannelOpened { session, msg2 } => (session, msg2),
        Response::Error { message, .. } => return Err(message),
        other => panic!("OpenChannel: {}", short(&other)),
    };
    let (mut tx, msg3) = hs
        .finish(&msg2)
        .map_err(|e| format!("client finish: {e}"))?;
    let payload = seal_msg(&mut tx, first);
    match e.handle(Request::ChannelFinish {
        session,
        msg3,
        payload,
    }) {
        Response::ChannelReply {
            payload,
            registered,
            state,
        } => {
            let reply = open_msg(&mut tx, &payload);
            Ok(Opened {
                channel: Channel { session, tx },
                reply,
                registered,
                state,
            })
        }
        Response::Error { message, .. } => Err(message),
        other => panic!("ChannelFinish: {}", short(&other)),
    }
}

/// [`connect_with`] using the key set's own evidence and channel key, as
/// the key set's owner.
pub fn connect(e: &Enclave, keys: &Keys, first: &ClientMessage) -> Result<Opened, String> {
    connect_as(
        e,
        keys.key_id,
        &keys.evidence,
        &keys.identity.channel_public_key,
        Some(&keys.owner),
        first,
    )
}

/// An owner's management message; the model's report and new sealed state.
pub fn manage(
    e: &Enclave,
    keys: &Keys,
    msg: &ClientMessage,
) -> Result<(ModelReport, Option<hetee_enclave::messages::SealedState>), String> {
    let opened = connect(e, keys, msg)?;
    match opened.reply {
        EnclaveMessage::Report(r) => Ok((*r, opened.state)),
        other => panic!("expected a report, got {other:?}"),
    }
}

/// The host's copy of a model: weight ciphertexts (as uploaded) and their
/// extended form for evaluation.
pub struct HostModel {
    pub schedule: Schedule,
    pub par: Arc<BfvParameters>,
    pub ev: Evaluator,
    /// Uploaded weight ciphertexts, per stage.
    pub uploaded: Vec<Vec<Vec<u8>>>,
    /// The model provider's plaintext weights (sent to the enclave over the
    /// channel at registration; the host never sees them).
    pub plain_weights: Vec<Vec<i8>>,
    weights: Vec<Vec<ExtendedCiphertext>>,
}

impl HostModel {
    /// The model provider encrypts `q`'s packed weights under `public_key`.
    /// The encryption randomness is seeded, so the same model under the
    /// same key always gives the same ciphertexts (and commitment).
    pub fn new(q: &QuantModel, schedule: &Schedule, public_key: &[u8]) -> Self {
        let par = schedule.he.build().unwrap();
        let ev = Evaluator::new(&par).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2024);
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

    /// Commitment of the uploaded weights.
    pub fn commitment(&self) -> [u8; 32] {
        weights_commitment(&self.uploaded)
    }

    /// Evaluates linear stage `k` on serialized inputs.
    pub fn evaluate(&self, k: usize, input: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let cts: Vec<_> = input
            .iter()
            .map(|b| ciphertext_from_bytes(b, &self.par, 2).unwrap())
            .collect();
        let outs = self
            .ev
            .evaluate_plan(
                &self.schedule.stages[k].packing.product_plan(),
                &self.ev.extend_all(&cts).unwrap(),
                &self.weights[k],
            )
            .unwrap();
        outs.iter().map(ciphertext_to_bytes).collect()
    }
}

/// The RegisterModel message of a host model.
pub fn register_message(keys: &Keys, host: &HostModel) -> ClientMessage {
    register_message_with(keys, host, OutputPolicy::Logits, None)
}

/// Same with a policy and a query budget.
pub fn register_message_with(
    keys: &Keys,
    host: &HostModel,
    policy: OutputPolicy,
    query_budget: Option<u64>,
) -> ClientMessage {
    register_message_terms(
        keys,
        host,
        ModelTerms {
            policy,
            query_budget,
            lock_after: 1,
        },
        AllowList::Open,
    )
}

/// Same with any terms and allow list.
pub fn register_message_terms(
    keys: &Keys,
    host: &HostModel,
    terms: ModelTerms,
    allow: AllowList,
) -> ClientMessage {
    ClientMessage::RegisterModel {
        key_id: keys.key_id,
        commitment: host.commitment(),
        schedule: Box::new(host.schedule.clone()),
        weights: zeroize::Zeroizing::new(host.plain_weights.clone()),
        terms,
        allow,
    }
}

/// The model provider registers `host`'s model; returns what the host stores.
pub fn register(e: &Enclave, keys: &Keys, host: &HostModel) -> RegisteredModel {
    register_with(e, keys, &register_message(keys, host))
}

/// Registers with the given RegisterModel message.
pub fn register_with(e: &Enclave, keys: &Keys, msg: &ClientMessage) -> RegisteredModel {
    let opened = connect(e, keys, msg).unwrap();
    let reg = opened
        .registered
        .expect("registration gives a sealed model");
    match opened.reply {
        EnclaveMessage::Registered { model_id } => assert_eq!(model_id, reg.model_id),
        other => panic!("expected Registered, got {other:?}"),
    }
    reg
}

/// Attested enclave with one key set and the tiny model registered.
pub struct Setup {
    pub enclave: Enclave,
    pub q: QuantModel,
    pub x: Vec<f32>,
    pub keys: Keys,
    pub host: HostModel,
    pub registered: RegisteredModel,
}

impl Setup {
    /// Everything up to a registered model.
    pub fn new() -> Self {
        Self::with_config(EnclaveConfig::default())
    }

    /// Same with another enclave config.
    pub fn with_config(config: EnclaveConfig) -> Self {
        Self::with_terms(config, ModelTerms::default(), AllowList::Open)
    }

    /// Same with the model registered under these terms and allow list.
    pub fn with_terms(config: EnclaveConfig, terms: ModelTerms, allow: AllowList) -> Self {
        let (q, x) = tiny_model();
        let schedule = Schedule::compile(&q, 1).unwrap();
        let enclave = attested_enclave(MEASUREMENT, config);
        let keys = create_keys(&enclave, &schedule.he);
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        let registered = register_with(
            &enclave,
            &keys,
            &register_message_terms(&keys, &host, terms, allow),
        );
        assert_eq!(
            registered.model_id,
            hetee_enclave::messages::model_id(
                &keys.key_id,
                &host.commitment(),
                &hetee_enclave::messages::registration_digest(
                    &host.schedule,
                    &host.plain_weights,
                    &terms
                )
            )
        );
        Setup {
            enclave,
            q,
            x,
            keys,
            host,
            registered,
        }
    }

    /// The model id.
    pub fn model_id(&self) -> ModelId {
        self.registered.model_id
    }

    /// A whole query.
    pub fn query(&mut self, x: &[f32]) -> Result<Vec<f32>, String> {
        let id = self.model_id();
        query(&self.enclave, &self.keys, &self.host, id, x)
    }

    /// Enclave counters.
    pub fn status(&mut self) -> hetee_enclave::messages::Status {
        status(&self.enclave)
    }
}

/// Enclave counters.
pub fn status(e: &Enclave) -> hetee_enclave::messages::Status {
    match e.handle(Request::Status) {
        Response::Status(s) => s,
        other => panic!("Status: {}", short(&other)),
    }
}
