//! Whole sessions against a live enclave, past the Noise layer (issue 9,
//! item 8).
//!
//! One enclave per process (simulated platform, measurement `[7; 32]`) holds
//! the fixed key set of `common/fixtures.rs` (deterministic keys, owned by a
//! fixed owner key) and the tiny two-stage test model, registered once over
//! a real owner channel. Its Noise static key is random, so the client side
//! of every handshake is done per input, with fixed long-term client keys
//! (`StaticKeypair::from_private`). The data provider's input ciphertexts
//! are deterministic (fixed keys, fixed input seed), and so are the model
//! id and the honest stage-0 result; the seeds (`seeds.rs`) rely on that.
//!
//! Each input is a small program (see `Reader` for the encoding):
//!
//! ```text
//! input  := mode:u8 body
//! mode%4 == 0: flags:u8 msg:blob      first channel message; flags bit0: sent by the
//!                                     data provider (else the owner), bit1: not sealed
//!                                     (raw bytes past the handshake). If it was a hello
//!                                     that got a plan: kind:u8 query
//! mode%4 == 1..3: a real hello by the data provider, then query with kind = mode-1
//! query (kind%3):
//!   0: msg:blob inputs flags:u8       any ClientMessage (postcard, sealed) as the query;
//!                                     flags bit0: the host names another model
//!   1: images:u32 flags:u8 [seed:32] inputs   a Query built by the harness: the digest of
//!                                     the chosen inputs (bit1: corrupted), the fixed
//!                                     seed (bit0: the given one)
//!   2: count:u8 (n:u8 f32*)*          a ThinQuery of count%5 images (n == 0: 20 values)
//!   then StartQuery, and while it runs up to 4 ops; a query that finished leaves its
//!   session ready, and kind:u8 query follows on it (up to 3 queries a session)
//! inputs := c:u8 ...   c%5: 0 the valid input, 1 it with patches, 2 count:u8 blob*,
//!                      3 none, 4 the valid input twice
//! patches := n:u8 (pos:u32 xor:u8)*   n%9 byte flips, over the concatenated ciphertexts
//! op := o:u8 [stage:u32 if o&0x80] ...
//!   o%8 0..5: StageResult for the expected stage (or the given one), ciphertexts:
//!            0 honest (the host evaluates the stage), 1 honest + patches, 2 count:u8 blob*,
//!            3 none, 4 honest + one repeated, 5 the honest result of the previous stage
//!   o%8 6: StartQuery again with a raw payload blob; 7: CloseSession
//! blob := len:u32 bytes (len capped by what is left and by the field's limit)
//! ```
//!
//! The enclave must never panic; any response is fine. Two invariants are
//! asserted: a `Finished` payload opens on the data provider's channel and
//! holds a `Result`, and a `ChannelReply` to a hello holds a plan.
//!
//! A request that changes the enclave's lasting state (a registration, an
//! owner's change, a failed check that locks the model) marks the enclave
//! dirty; it is then rebuilt from the sealed key set, model and state, so
//! every input starts from the same state.
#![no_main]

use std::cell::RefCell;

use hetee_attest::platform::SimTee;
use hetee_attest::{ClientHandshake, Evidence, StaticKeypair, Transport};
use hetee_enclave::messages::{
    input_digest, AllowList, ClientMessage, EnclaveMessage, ModelTerms, RegisteredModel, SessionId,
};
use hetee_enclave::{Enclave, Request, Response};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::*;
#[path = "common/driver.rs"]
mod driver;
#[path = "common/reader.rs"]
mod reader;
use driver::{evidence, new_enclave, short, tracing};
use reader::Reader;

/// Largest channel message blob (a registration of the tiny model is ~2 KiB).
const MAX_MSG: usize = 64 << 10;
/// Largest raw ciphertext blob (a real one of the tiny model is ~100 KiB).
const MAX_CT: usize = 256 << 10;

/// What every enclave instance is rebuilt from.
struct Base {
    sealed_keys: Vec<u8>,
    registered: RegisteredModel,
    host: HostModel,
    /// The data provider's valid input (fixed seed) and the honest stage-0 result.
    input: Vec<Vec<u8>>,
    stage0: Vec<Vec<u8>>,
}

struct World {
    base: Base,
    enclave: Enclave,
    /// Evidence of the current enclave for the key set, and its channel key.
    evidence: Vec<u8>,
    channel_key: [u8; 32],
    dirty: bool,
    owner: StaticKeypair,
    provider: StaticKeypair,
}

/// The client side of a handshake; `Err` when the enclave refuses.
fn connect(
    w: &mut World,
    provider: bool,
    first: &[u8],
    raw: bool,
) -> Result<(SessionId, Transport, Response), ()> {
    let client = if provider { &w.provider } else { &w.owner };
    let prologue = Evidence::decode(&w.evidence).unwrap().hash().unwrap();
    let (hs, msg1) = ClientHandshake::with_client_key(client, &w.channel_key, &prologue).unwrap();
    let (session, msg2) = match w.enclave.handle(Request::OpenChannel {
        key_id: FIXED_KEY_ID,
        evidence: w.evidence.clone(),
        msg1,
    }) {
        Response::ChannelOpened { session, msg2 } => (session, msg2),
        other => panic!("OpenChannel refused a valid handshake: {other:?}"),
    };
    let (mut tx, msg3) = hs.finish(&msg2).expect("client finish");
    let payload = if raw {
        first.to_vec()
    } else {
        tx.seal(first).unwrap()
    };
    let r = w.enclave.handle(Request::ChannelFinish {
        session,
        msg3,
        payload,
    });
    w.note(&r);
    Ok((session, tx, r))
}

impl World {
    fn new() -> World {
        let secret = {
            use hetee_attest::platform::Platform;
            *SimTee::new(MEASUREMENT).sealing_key().unwrap()
        };
        let (keys_plain, public_key) = fixed_keys_plaintext();
        let sealed_keys =
            hetee_attest::seal::seal(&secret, &MEASUREMENT, KEYS_LABEL, &keys_plain).unwrap();
        let mut enclave = new_enclave();
        let r = enclave.handle(Request::RestoreKeys {
            sealed: sealed_keys.clone(),
        });
        assert!(matches!(r, Response::KeysRestored { .. }), "{r:?}");
        let (evidence, channel_key) = evidence(&mut enclave);
        let (q, x) = tiny_model();
        let schedule = tiny_schedule();
        let host = HostModel::new(&q, &schedule, &public_key);
        let mut w = World {
            base: Base {
                sealed_keys,
                registered: RegisteredModel {
                    model_id: [0; 16],
                    upload_id: [0; 16],
                    sealed: Vec::new(),
                    state: hetee_enclave::messages::SealedState {
                        model_id: [0; 16],
                        version: 0,
                        sealed: Vec::new(),
                    },
                },
                host,
                input: Vec::new(),
                stage0: Vec::new(),
            },
            enclave,
            evidence,
            channel_key,
            dirty: false,
            owner: owner_key(),
            provider: data_provider_key(),
        };
        let msg = register_message(&w.base.host);
        let (_, _, r) =
            connect(&mut w, false, &postcard::to_allocvec(&msg).unwrap(), false).expect("register");
        w.base.registered = match r {
            Response::ChannelReply {
                registered: Some(reg),
                ..
            } => reg,
            other => panic!("registration refused: {other:?}"),
        };
        assert_eq!(w.base.registered.model_id, model_id());
        // The data provider's input, as a real one makes it.
        let plan = hetee_enclave::messages::QueryPlan::of(
            model_id(),
            FIXED_KEY_ID,
            *owner_key().public(),
            &schedule,
        )
        .unwrap();
        let par = schedule.he.build().unwrap();
        let pk = fhe_traits::DeserializeParametrized::from_bytes(&public_key, &par).unwrap();
        let polys = plan.pack_input(&[&x]).unwrap();
        w.base.input =
            hetee_enclave::input_binding::encrypt_input(&pk, &par, &polys, &INPUT_SEED).unwrap();
        w.base.stage0 = w.base.host.evaluate(0, &w.base.input).unwrap();
        w.dirty = false;
        w
    }

    /// Marks the enclave dirty if `r` changed its lasting state.
    fn note(&mut self, r: &Response) {
        if tracing() {
            eprintln!("session: {}", short(r));
        }
        let changed = match r {
            Response::ChannelReply {
                registered, state, ..
            } => registered.is_some() || state.is_some(),
            Response::Error { state, .. } => state.is_some(),
            Response::QueryStarted { state, .. } => state
                .as_ref()
                .is_some_and(|s| s.version != self.base.registered.state.version),
            _ => false,
        };
        self.dirty |= changed;
    }

    /// A fresh enclave restored from the sealed key set, model and state.
    fn rebuild(&mut self) {
        let mut e = new_enclave();
        let reg = &self.base.registered;
        for req in [
            Request::RestoreKeys {
                sealed: self.base.sealed_keys.clone(),
            },
            Request::RestoreModel {
                sealed: reg.sealed.clone(),
            },
            Request::RestoreState {
                sealed: reg.state.sealed.clone(),
            },
        ] {
            let r = e.handle(req);
            assert!(!matches!(r, Response::Error { .. }), "rebuild: {r:?}");
        }
        (self.evidence, self.channel_key) = evidence(&mut e);
        self.enclave = e;
        self.dirty = false;
    }
}

/// The model id of the tiny model registered by [`register_message`].
fn model_id() -> [u8; 16] {
    thread_local!(static ID: [u8; 16] = {
        let (q, _) = tiny_model();
        let s = tiny_schedule();
        let (_, pk) = fixed_keys_plaintext();
        let host = HostModel::new(&q, &s, &pk);
        hetee_enclave::messages::model_id(
            &FIXED_KEY_ID,
            &host.commitment(),
            &hetee_enclave::messages::registration_digest(
                &host.schedule,
                &host.plain_weights,
                &ModelTerms::default(),
            ),
        )
    });
    ID.with(|i| *i)
}

fn register_message(host: &HostModel) -> ClientMessage {
    ClientMessage::RegisterModel {
        key_id: FIXED_KEY_ID,
        commitment: host.commitment(),
        schedule: Box::new(host.schedule.clone()),
        weights: Zeroizing::new(host.plain_weights.clone()),
        terms: ModelTerms::default(),
        allow: AllowList::Open,
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// A data provider's open session.
struct Session {
    id: SessionId,
    tx: Transport,
}

fn inputs(r: &mut Reader, w: &World) -> Vec<Vec<u8>> {
    match r.byte() % 5 {
        0 => w.base.input.clone(),
        1 => {
            let mut v = w.base.input.clone();
            r.patch(&mut v);
            v
        }
        2 => r.blobs(MAX_CT),
        3 => Vec::new(),
        _ => [w.base.input.clone(), w.base.input.clone()].concat(),
    }
}

/// The query of a session that said hello (or finished its last query),
/// then up to four stage ops; the session again if its query finished.
fn query(r: &mut Reader, w: &mut World, mut s: Session, kind: u8) -> Option<Session> {
    let mut model = model_id();
    let (payload, input) = match kind % 3 {
        0 => {
            let msg = r.blob(MAX_MSG);
            let input = inputs(r, w);
            if r.byte() & 1 == 1 {
                model[0] ^= 1;
            }
            (s.tx.seal(msg).unwrap(), input)
        }
        1 => {
            let images = r.u32();
            let flags = r.byte();
            let mut seed = INPUT_SEED;
            if flags & 1 == 1 {
                let b = r.bytes(32);
                seed[..b.len()].copy_from_slice(b);
            }
            let input = inputs(r, w);
            let mut digest = input_digest(&input);
            if flags & 2 == 2 {
                digest[0] ^= 1;
            }
            let msg = ClientMessage::Query {
                query_id: s.id,
                input_digest: digest,
                images,
                seed: Zeroizing::new(seed),
            };
            (
                s.tx.seal(&postcard::to_allocvec(&msg).unwrap()).unwrap(),
                input,
            )
        }
        _ => {
            let images: Vec<Vec<f32>> = (0..r.byte() % 5)
                .map(|_| {
                    let n = match r.byte() {
                        0 => 20,
                        n => n as usize,
                    };
                    (0..n)
                        .map(|_| f32::from_le_bytes(r.u32().to_le_bytes()))
                        .collect()
                })
                .collect();
            let msg = ClientMessage::ThinQuery {
                query_id: s.id,
                images: Zeroizing::new(images),
            };
            (
                s.tx.seal(&postcard::to_allocvec(&msg).unwrap()).unwrap(),
                Vec::new(),
            )
        }
    };
    let valid_input = input == w.base.input;
    let resp = w.enclave.handle(Request::StartQuery {
        session: s.id,
        model_id: model,
        payload,
        input: input.clone(),
    });
    w.note(&resp);
    let mut current = match resp {
        Response::QueryStarted { input: thin, .. } => thin.unwrap_or(input),
        _ => return None,
    };
    let stages = w.base.host.schedule.stages.len();
    let mut expected = 0u32;
    let mut previous: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        let Some(o) = r.u8() else { break };
        let stage = if o & 0x80 != 0 { r.u32() } else { expected };
        let honest = |w: &World, current: &[Vec<u8>]| -> Vec<Vec<u8>> {
            if (stage as usize) >= stages {
                return Vec::new();
            }
            if stage == 0 && valid_input && expected == 0 {
                return w.base.stage0.clone();
            }
            w.base
                .host
                .evaluate(stage as usize, current)
                .unwrap_or_default()
        };
        let cts = match o % 8 {
            0 => honest(w, &current),
            1 => {
                let mut v = honest(w, &current);
                r.patch(&mut v);
                v
            }
            2 => r.blobs(MAX_CT),
            3 => Vec::new(),
            4 => {
                let mut v = honest(w, &current);
                if let Some(c) = v.first().cloned() {
                    v.push(c);
                }
                v
            }
            5 => previous.clone(),
            6 => {
                let payload = r.blob(MAX_MSG).to_vec();
                let resp = w.enclave.handle(Request::StartQuery {
                    session: s.id,
                    model_id: model,
                    payload,
                    input: current.clone(),
                });
                w.note(&resp);
                continue;
            }
            _ => {
                let resp = w.enclave.handle(Request::CloseSession { session: s.id });
                w.note(&resp);
                continue;
            }
        };
        let resp = w.enclave.handle(Request::StageResult {
            session: s.id,
            stage,
            ciphertexts: cts.clone(),
        });
        w.note(&resp);
        match resp {
            Response::NextInput { stage, ciphertexts } => {
                expected = stage;
                previous = cts;
                current = ciphertexts;
            }
            Response::Finished { payload } => {
                let plain = s.tx.open(&payload).expect("a Finished payload must open");
                let msg: EnclaveMessage =
                    postcard::from_bytes(&plain).expect("a Finished payload must decode");
                assert!(matches!(msg, EnclaveMessage::Result { .. }), "{msg:?}");
                return Some(s);
            }
            _ => {
                previous = cts;
            }
        }
    }
    None
}

/// A real hello by the data provider; the session if it got a plan.
fn hello(w: &mut World, opened: &mut Vec<SessionId>) -> Option<Session> {
    let msg = ClientMessage::Hello {
        model_id: model_id(),
    };
    let (id, tx, r) = connect(w, true, &postcard::to_allocvec(&msg).unwrap(), false).ok()?;
    opened.push(id);
    ready(id, tx, r)
}

/// The session if `r` answered a hello with a plan.
fn ready(id: SessionId, mut tx: Transport, r: Response) -> Option<Session> {
    let Response::ChannelReply { payload, .. } = r else {
        return None;
    };
    let plain = tx.open(&payload).expect("a channel reply must open");
    let msg: EnclaveMessage = postcard::from_bytes(&plain).expect("a channel reply must decode");
    match msg {
        EnclaveMessage::Plan(_) => Some(Session { id, tx }),
        _ => None,
    }
}

fn run(data: &[u8], w: &mut World) {
    let mut r = Reader(data);
    let mut opened = Vec::new();
    let mode = r.byte() % 4;
    let session = if mode == 0 {
        let flags = r.byte();
        let msg = r.blob(MAX_MSG);
        let provider = flags & 1 == 1;
        match connect(w, provider, msg, flags & 2 == 2) {
            Ok((id, tx, resp)) => {
                opened.push(id);
                ready(id, tx, resp).map(|s| (s, r.byte()))
            }
            Err(()) => None,
        }
    } else {
        hello(w, &mut opened).map(|s| (s, mode - 1))
    };
    // A finished query leaves its session ready: up to three queries on it.
    let mut next = session;
    for _ in 0..3 {
        let Some((s, kind)) = next else { break };
        next = query(&mut r, w, s, kind).and_then(|s| r.u8().map(|k| (s, k)));
    }
    for session in opened {
        let _ = w.enclave.handle(Request::CloseSession { session });
    }
}

fuzz_target!(
    init: {
        WORLD.with(|w| *w.borrow_mut() = Some(World::new()));
    },
    |data: &[u8]| {
        WORLD.with(|w| {
            let mut w = w.borrow_mut();
            let w = w.get_or_insert_with(World::new);
            run(data, w);
            if !w.dirty {
                if let Response::Status(st) = w.enclave.handle(Request::Status) {
                    w.dirty = st.models != 1 || st.sessions != 0 || st.keysets != 1;
                }
            }
            if w.dirty {
                if tracing() {
                    eprintln!("session: rebuild");
                }
                w.rebuild();
            }
        });
    }
);
