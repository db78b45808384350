//! Stacked queries (`Request::StartStack`) against a live enclave.
//!
//! Built like `session.rs`: one enclave per process (simulated platform,
//! measurement `[7; 32]`) holds the fixed key set of `common/fixtures.rs`
//! and two registrations of the tiny model, made once over a real owner
//! channel: model A at batch 1 (`session.rs`'s) and model B at batch
//! [`BATCH`], the one stacks run on. Each input opens a few real data
//! provider sessions, then drives stacks as a small program (see `Reader`
//! in `session.rs` for `u8`, `u32`, `blob`; past the end every read gives
//! zeros / nothing):
//!
//! ```text
//! input   := n:u8 kind:u8{1 + n%6}  ops
//!   kind%8 0..4: a hello to model B; 5: a hello to model A (another model);
//!              6: a handshake left unfinished; 7: a hello to B, then a single
//!              thin query of one image started on it (a running session)
//! ops     := (o:u8 ...)*  at most 8
//!   o%4 0: StartStack  sel:u8 m:u8 member{1 + m%8}
//!          sel%8 == 6: model A, 7: an unknown model, else model B
//!   o%4 1: StageResult on a running group g:u8, then kind:u8 [stage:u32 if kind&0x80]
//!          kind%6: 0 honest (the host evaluates the stage), 1 honest + patches,
//!          2 count:u8 blob*, 3 none, 4 the previous stage's ciphertexts,
//!          5 honest + one repeated
//!   o%4 2: CloseSession t:u8 (t%2: 0 a group, 1 a session); i:u8
//!   o%4 3: StartStack on model B naming every deferred member, empty payloads,
//!          then e:u8 (e%4 == 3: one more member)
//! member  := i:u8 p:u8 ...   i%(n+1): session i, or n: an unknown id
//!   p%6: 0 a ThinQuery: c:u8, c%7 images, each v:u8 (v&1 == 0: the fixed
//!          image v>>1; else len:u8 (0 means 20) and len f32 as u32)
//!        1 a real HE Query (sealed)   2 raw blob   3 empty
//!        4 the payload of the previous member   5 a sealed Hello
//! patches := n:u8 (pos:u32 xor:u8)*
//! ```
//!
//! The enclave must never panic. Asserted: `started`, `deferred` and
//! `refused` are disjoint, hold only named sessions, and each named session
//! once; every `StackFinished` payload is for a started member, opens on that
//! member's own channel and holds a `Result` for the stack's model whose
//! `images` and input digest are those of the thin query the member sealed.
//! A stack on model A (batch 1) is legitimate for sessions that said hello
//! to A.
//!
//! A request that changes the enclave's lasting state marks it dirty; it is
//! then rebuilt from the sealed key set, models and states.
#![no_main]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use hetee_attest::platform::SimTee;
use hetee_attest::{ClientHandshake, Evidence, StaticKeypair, Transport};
use hetee_enclave::messages::{
    thin_input_digest, AllowList, ClientMessage, EnclaveMessage, ModelTerms, RegisteredModel,
    SessionId,
};
use hetee_enclave::{Enclave, Request, Response, Schedule};
use hetee_proto::host::StackMember;
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

/// Model B's batch: the most images one stack holds.
const BATCH: usize = 4;
/// Largest raw blob (a real stage ciphertext of the tiny model is ~100 KiB).
const MAX_CT: usize = 256 << 10;
/// Largest raw payload blob.
const MAX_MSG: usize = 16 << 10;

/// One registration: what the host stores, and its model id.
struct Reg {
    registered: RegisteredModel,
}

struct World {
    sealed_keys: Vec<u8>,
    /// Model A (batch 1) and model B (batch [`BATCH`]).
    a: Reg,
    b: Reg,
    host_a: HostModel,
    host_b: HostModel,
    enclave: Enclave,
    evidence: Vec<u8>,
    channel_key: [u8; 32],
    dirty: bool,
    owner: StaticKeypair,
    provider: StaticKeypair,
}

/// The client's half of a handshake, up to message 3 (not sent).
fn open_channel(w: &World, provider: bool) -> (SessionId, hetee_attest::ClientHandshake, Vec<u8>) {
    let client = if provider { &w.provider } else { &w.owner };
    let prologue = Evidence::decode(&w.evidence).unwrap().hash().unwrap();
    let (hs, msg1) = ClientHandshake::with_client_key(client, &w.channel_key, &prologue).unwrap();
    match w.enclave.handle(Request::OpenChannel {
        key_id: FIXED_KEY_ID,
        evidence: w.evidence.clone(),
        msg1,
    }) {
        Response::ChannelOpened { session, msg2 } => (session, hs, msg2),
        other => panic!("OpenChannel refused a valid handshake: {other:?}"),
    }
}

/// A whole handshake whose first message is `first` (sealed).
fn connect(w: &mut World, provider: bool, first: &[u8]) -> (SessionId, Transport, Response) {
    let (session, hs, msg2) = open_channel(w, provider);
    let (mut tx, msg3) = hs.finish(&msg2).expect("client finish");
    let payload = tx.seal(first).unwrap();
    let r = w.enclave.handle(Request::ChannelFinish {
        session,
        msg3,
        payload,
    });
    w.note(&r);
    (session, tx, r)
}

fn register(w: &mut World, host: &HostModel) -> RegisteredModel {
    let msg = ClientMessage::RegisterModel {
        key_id: FIXED_KEY_ID,
        commitment: host.commitment(),
        schedule: Box::new(host.schedule.clone()),
        weights: Zeroizing::new(host.plain_weights.clone()),
        terms: ModelTerms::default(),
        allow: AllowList::Open,
    };
    let (_, _, r) = connect(w, false, &postcard::to_allocvec(&msg).unwrap());
    match r {
        Response::ChannelReply {
            registered: Some(reg),
            ..
        } => reg,
        other => panic!("registration refused: {}", short(&other)),
    }
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
        let (q, _) = tiny_model();
        let host_a = HostModel::new(&q, &tiny_schedule(), &public_key);
        let schedule_b = Schedule::compile(&q, BATCH).unwrap();
        let host_b = HostModel::new(&q, &schedule_b, &public_key);
        let empty = || Reg {
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
        };
        let mut w = World {
            sealed_keys,
            a: empty(),
            b: empty(),
            host_a,
            host_b,
            enclave,
            evidence,
            channel_key,
            dirty: false,
            owner: owner_key(),
            provider: data_provider_key(),
        };
        // The same hosts again (seeded): `w` holds the first copies.
        let (host_a, host_b) = (
            HostModel::new(&q, &tiny_schedule(), &public_key),
            HostModel::new(&q, &schedule_b, &public_key),
        );
        w.a.registered = register(&mut w, &host_a);
        w.b.registered = register(&mut w, &host_b);
        assert_ne!(w.a.registered.model_id, w.b.registered.model_id);
        w.dirty = false;
        w
    }

    fn model_a(&self) -> [u8; 16] {
        self.a.registered.model_id
    }

    fn model_b(&self) -> [u8; 16] {
        self.b.registered.model_id
    }

    /// Marks the enclave dirty if `r` changed its lasting state.
    fn note(&mut self, r: &Response) {
        if tracing() {
            eprintln!("stack: {}", short(r));
        }
        let changed = match r {
            Response::ChannelReply {
                registered, state, ..
            } => registered.is_some() || state.is_some(),
            Response::Error { state, .. } => state.is_some(),
            Response::QueryStarted { state, .. } | Response::StackStarted { state, .. } => {
                state.is_some()
            }
            _ => false,
        };
        self.dirty |= changed;
    }

    /// A fresh enclave restored from the sealed key set, models and states.
    fn rebuild(&mut self) {
        let e = new_enclave();
        let mut reqs = vec![Request::RestoreKeys {
            sealed: self.sealed_keys.clone(),
        }];
        for reg in [&self.a.registered, &self.b.registered] {
            reqs.push(Request::RestoreModel {
                sealed: reg.sealed.clone(),
            });
            reqs.push(Request::RestoreState {
                sealed: reg.state.sealed.clone(),
            });
        }
        for req in reqs {
            let r = e.handle(req);
            assert!(!matches!(r, Response::Error { .. }), "rebuild: {r:?}");
        }
        let mut e = e;
        (self.evidence, self.channel_key) = evidence(&mut e);
        self.enclave = e;
        self.dirty = false;
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

/// A data provider's session, as the harness knows it.
struct Provider {
    id: SessionId,
    /// `None` for a handshake left unfinished or a refused hello.
    tx: Option<Transport>,
    /// Messages sealed on the channel since the hello.
    sealed: usize,
    /// The images of the first message sealed since the hello, if it was a
    /// thin query: the only one the enclave can open.
    first_thin: Option<Vec<Vec<f32>>>,
}

impl Provider {
    fn seal(&mut self, msg: &ClientMessage) -> Vec<u8> {
        let Some(tx) = self.tx.as_mut() else {
            return postcard::to_allocvec(msg).unwrap();
        };
        if self.sealed == 0 {
            if let ClientMessage::ThinQuery { images, .. } = msg {
                self.first_thin = Some(images.to_vec());
            }
        }
        self.sealed += 1;
        tx.seal(&postcard::to_allocvec(msg).unwrap()).unwrap()
    }
}

/// A stacked query in progress.
struct Group {
    id: SessionId,
    model_id: [u8; 16],
    started: Vec<SessionId>,
    expected: u32,
    current: Vec<Vec<u8>>,
    previous: Vec<Vec<u8>>,
}

fn image(seed: u8) -> Vec<f32> {
    (0..20)
        .map(|i| (((i + 3) * 7919 + seed as usize * 104_729) % 1009) as f32 / 1009.0)
        .collect()
}

fn thin_images(r: &mut Reader) -> Vec<Vec<f32>> {
    (0..r.byte() % 7)
        .map(|_| {
            let v = r.byte();
            if v & 1 == 0 {
                return image(v >> 1);
            }
            let n = match r.byte() {
                0 => 20,
                n => n as usize,
            };
            (0..n)
                .map(|_| f32::from_le_bytes(r.u32().to_le_bytes()))
                .collect()
        })
        .collect()
}

/// Opens the sessions of one input.
fn open_sessions(r: &mut Reader, w: &mut World) -> Vec<Provider> {
    let n = 1 + r.byte() as usize % 6;
    (0..n)
        .map(|_| {
            let kind = r.byte() % 8;
            if kind == 6 {
                let (id, _, _) = open_channel(w, true);
                return Provider {
                    id,
                    tx: None,
                    sealed: 0,
                    first_thin: None,
                };
            }
            let model_id = if kind == 5 { w.model_a() } else { w.model_b() };
            let hello = ClientMessage::Hello { model_id };
            let (id, mut tx, resp) = connect(w, true, &postcard::to_allocvec(&hello).unwrap());
            let plan = match resp {
                Response::ChannelReply { payload, .. } => {
                    let plain = tx.open(&payload).expect("a channel reply must open");
                    let msg: EnclaveMessage =
                        postcard::from_bytes(&plain).expect("a channel reply must decode");
                    matches!(msg, EnclaveMessage::Plan(_))
                }
                _ => false,
            };
            assert!(plan, "a hello to a registered model must get a plan");
            let mut p = Provider {
                id,
                tx: Some(tx),
                sealed: 0,
                first_thin: None,
            };
            if kind == 7 {
                let msg = ClientMessage::ThinQuery {
                    query_id: id,
                    images: Zeroizing::new(vec![image(0)]),
                };
                let payload = p.seal(&msg);
                // Not for a stack: the harness expects nothing of it.
                p.first_thin = None;
                let resp = w.enclave.handle(Request::StartQuery {
                    session: id,
                    model_id,
                    payload,
                    input: Vec::new(),
                });
                w.note(&resp);
            }
            p
        })
        .collect()
}

/// Sends a `StartStack` and checks its answer; a started stack joins `groups`.
fn start_stack(
    w: &mut World,
    model_id: [u8; 16],
    members: Vec<StackMember>,
    providers: &mut [Provider],
    groups: &mut Vec<Group>,
    deferred: &mut Vec<SessionId>,
    opened: &mut HashMap<SessionId, Vec<Vec<f32>>>,
) {
    let named: Vec<SessionId> = members.iter().map(|m| m.session).collect();
    let resp = w.enclave.handle(Request::StartStack { model_id, members });
    w.note(&resp);
    let Response::StackStarted {
        group,
        batch,
        input,
        started,
        deferred: later,
        refused,
        ..
    } = resp
    else {
        return;
    };
    // Model A (batch 1) stacks too, the sessions that said hello to it.
    let want = if model_id == w.model_b() {
        BATCH
    } else {
        assert_eq!(model_id, w.model_a(), "a stack started on an unknown model");
        1
    };
    assert_eq!(batch as usize, want);
    let named_set: HashSet<SessionId> = named.iter().copied().collect();
    let mut seen = HashSet::new();
    for s in started
        .iter()
        .chain(later.iter())
        .chain(refused.iter().map(|(s, _)| s))
    {
        assert!(named_set.contains(s), "an answer names an unnamed session");
        assert!(
            seen.insert(*s),
            "a session is in more than one of started / deferred / refused"
        );
    }
    assert_eq!(
        seen.len(),
        named_set.len(),
        "a named session is in none of started / deferred / refused"
    );
    assert_eq!(
        started.first(),
        Some(&group),
        "the group is the first started member"
    );
    let mut images = 0;
    for s in started.iter().chain(later.iter()) {
        // A member newly opened must have sealed a thin query first.
        if !opened.contains_key(s) {
            let p = providers
                .iter()
                .find(|p| p.id == *s)
                .expect("the enclave opened a session the harness does not know");
            let x = p.first_thin.clone().expect(
                "the enclave opened a query the member did not seal as its first thin query",
            );
            opened.insert(*s, x);
        }
    }
    for s in &started {
        images += opened[s].len();
    }
    assert!(images >= 1 && images <= want, "{images} images stacked");
    deferred.retain(|s| !named_set.contains(s));
    deferred.extend(later.iter().copied());
    groups.push(Group {
        id: group,
        model_id,
        started,
        expected: 0,
        current: input,
        previous: Vec::new(),
    });
}

fn member(r: &mut Reader, w: &World, providers: &mut [Provider], previous: &[u8]) -> StackMember {
    let i = r.byte() as usize % (providers.len() + 1);
    let p = r.byte() % 6;
    let Some(prov) = providers.get_mut(i) else {
        let unknown = SessionId::from([9u8; 16]);
        let payload = match p {
            2 => r.blob(MAX_MSG).to_vec(),
            4 => previous.to_vec(),
            _ => Vec::new(),
        };
        return StackMember {
            session: unknown,
            payload,
        };
    };
    let payload = match p {
        0 => {
            let images = thin_images(r);
            let query_id = prov.id;
            prov.seal(&ClientMessage::ThinQuery {
                query_id,
                images: Zeroizing::new(images),
            })
        }
        1 => prov.seal(&ClientMessage::Query {
            query_id: prov.id,
            input_digest: [0x44; 32],
            images: 1,
            seed: Zeroizing::new(INPUT_SEED),
        }),
        2 => r.blob(MAX_MSG).to_vec(),
        3 => Vec::new(),
        4 => previous.to_vec(),
        _ => prov.seal(&ClientMessage::Hello {
            model_id: w.model_b(),
        }),
    };
    StackMember {
        session: prov.id,
        payload,
    }
}

fn run(data: &[u8], w: &mut World) {
    let mut r = Reader(data);
    let mut providers = open_sessions(&mut r, w);
    let mut groups: Vec<Group> = Vec::new();
    let mut deferred: Vec<SessionId> = Vec::new();
    let mut opened: HashMap<SessionId, Vec<Vec<f32>>> = HashMap::new();
    let stages = w.host_b.schedule.stages.len();
    for _ in 0..8 {
        let Some(o) = r.u8() else { break };
        match o % 4 {
            0 => {
                let sel = r.byte() % 8;
                let model_id = match sel {
                    6 => w.model_a(),
                    7 => [0xEE; 16],
                    _ => w.model_b(),
                };
                let n = 1 + r.byte() as usize % 8;
                let mut members: Vec<StackMember> = Vec::with_capacity(n);
                for _ in 0..n {
                    let prev = members
                        .last()
                        .map(|m| m.payload.clone())
                        .unwrap_or_default();
                    members.push(member(&mut r, w, &mut providers, &prev));
                }
                start_stack(
                    w,
                    model_id,
                    members,
                    &mut providers,
                    &mut groups,
                    &mut deferred,
                    &mut opened,
                );
            }
            1 => {
                if groups.is_empty() {
                    continue;
                }
                let g = r.byte() as usize % groups.len();
                let kind = r.byte();
                let grp = &groups[g];
                let stage = if kind & 0x80 != 0 {
                    r.u32()
                } else {
                    grp.expected
                };
                let honest = |w: &World, grp: &Group| -> Vec<Vec<u8>> {
                    if stage as usize >= stages {
                        return Vec::new();
                    }
                    let host = if grp.model_id == w.model_a() {
                        &w.host_a
                    } else {
                        &w.host_b
                    };
                    host.evaluate(stage as usize, &grp.current)
                        .unwrap_or_default()
                };
                let cts = match kind % 6 {
                    0 => honest(w, grp),
                    1 => {
                        let mut v = honest(w, grp);
                        r.patch(&mut v);
                        v
                    }
                    2 => r.blobs(MAX_CT),
                    3 => Vec::new(),
                    4 => grp.previous.clone(),
                    _ => {
                        let mut v = honest(w, grp);
                        if let Some(c) = v.first().cloned() {
                            v.push(c);
                        }
                        v
                    }
                };
                let resp = w.enclave.handle(Request::StageResult {
                    session: grp.id,
                    stage,
                    ciphertexts: cts.clone(),
                });
                w.note(&resp);
                match resp {
                    Response::NextInput { stage, ciphertexts } => {
                        let grp = &mut groups[g];
                        grp.expected = stage;
                        grp.previous = cts;
                        grp.current = ciphertexts;
                    }
                    Response::StackFinished { payloads } => {
                        let grp = groups.remove(g);
                        check_finished(&grp, payloads, &mut providers, &opened);
                    }
                    Response::Finished { .. } => panic!("a stacked query answered Finished"),
                    _ => {
                        // The enclave closes the group on any refusal.
                        groups.remove(g);
                    }
                }
            }
            2 => {
                let t = r.byte();
                let i = r.byte() as usize;
                let session = if t % 2 == 0 {
                    if groups.is_empty() {
                        continue;
                    }
                    groups.remove(i % groups.len()).id
                } else {
                    let s = providers[i % providers.len()].id;
                    groups.retain(|g| g.id != s);
                    deferred.retain(|d| *d != s);
                    s
                };
                let resp = w.enclave.handle(Request::CloseSession { session });
                w.note(&resp);
            }
            _ => {
                let mut members: Vec<StackMember> = deferred
                    .iter()
                    .map(|s| StackMember {
                        session: *s,
                        payload: Vec::new(),
                    })
                    .collect();
                if r.byte() % 4 == 3 {
                    members.push(member(&mut r, w, &mut providers, &[]));
                }
                if members.is_empty() {
                    continue;
                }
                let model_b = w.model_b();
                start_stack(
                    w,
                    model_b,
                    members,
                    &mut providers,
                    &mut groups,
                    &mut deferred,
                    &mut opened,
                );
            }
        }
    }
    for p in &providers {
        let _ = w.enclave.handle(Request::CloseSession { session: p.id });
    }
}

/// Every payload of a finished stack: one per started member, in order,
/// opening on that member's own channel into a `Result` bound to its images.
fn check_finished(
    grp: &Group,
    payloads: Vec<(SessionId, Vec<u8>)>,
    providers: &mut [Provider],
    opened: &HashMap<SessionId, Vec<Vec<f32>>>,
) {
    let sessions: Vec<SessionId> = payloads.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sessions, grp.started,
        "StackFinished is not for the started members"
    );
    for (session, payload) in payloads {
        let p = providers
            .iter_mut()
            .find(|p| p.id == session)
            .expect("a payload for an unknown session");
        let tx =
            p.tx.as_mut()
                .expect("a payload for a session without a channel");
        let plain = tx
            .open(&payload)
            .expect("a StackFinished payload must open on its member's channel");
        let msg: EnclaveMessage =
            postcard::from_bytes(&plain).expect("a StackFinished payload must decode");
        let EnclaveMessage::Result { result, .. } = msg else {
            panic!("a StackFinished payload is not a Result: {msg:?}");
        };
        let images = &opened[&session];
        assert_eq!(result.images as usize, images.len(), "images of the member");
        assert_eq!(
            result.input_digest,
            thin_input_digest(images),
            "input digest of the member"
        );
        assert_eq!(result.model_id, grp.model_id);
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
                    w.dirty = st.models != 2 || st.sessions != 0 || st.keysets != 1;
                }
            }
            if w.dirty {
                if tracing() {
                    eprintln!("stack: rebuild");
                }
                w.rebuild();
            }
        });
    }
);
