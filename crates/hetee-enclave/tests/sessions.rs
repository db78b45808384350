//! The attested protocol, driven in process through `Enclave::handle`: a
//! model provider registers over a Noise channel bound to the evidence, a
//! data provider queries over its own channel, and the host relays and
//! evaluates. Every refusal is checked by its message, and so is what it
//! does to the session it touched.

mod common;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use common::*;
use hetee_attest::{ClientHandshake, Measurement, SimPlatform, StaticKeypair};
use hetee_enclave::budget;
use hetee_enclave::messages::{
    input_digest, model_id, thin_input_digest, AllowList, ClientMessage, Incident, ModelId,
    ModelTerms, OutputPolicy, QueryPlan, Status,
};
use hetee_enclave::state::LOCKED;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_he::HeConfig;
use hetee_model::ir::{Layer, Model, Pads, Window};
use zeroize::Zeroizing;

// The budget is enforced only with the counting allocator installed.
#[global_allocator]
static METER: budget::Meter = budget::Meter;

/// The meter and the hard cap are process-wide: the budget tests run alone,
/// everything else may run in parallel.
static LOCK: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive access; on drop, puts the hard cap back to the default
/// config's (an enclave built with a 16 MiB budget lowers it for the whole
/// process).
struct Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

fn exclusive() -> Exclusive {
    let g = Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner()));
    // The budget counts the whole process. A failed test's backtrace leaves
    // its symbol cache allocated, which would fail these tests too.
    assert!(
        budget::current() < 4 << 20,
        "{} MiB already allocated before a budget test (another test failed?); \
         run it alone",
        budget::current() >> 20
    );
    g
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        attested_enclave(MEASUREMENT, EnclaveConfig::default());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A RegisterModel message under `keys` (open to everyone).
fn registration(
    keys: &Keys,
    commitment: [u8; 32],
    schedule: Schedule,
    weights: &[Vec<i8>],
    terms: ModelTerms,
) -> ClientMessage {
    ClientMessage::RegisterModel {
        key_id: keys.key_id,
        commitment,
        schedule: Box::new(schedule),
        weights: Zeroizing::new(weights.to_vec()),
        terms,
        allow: AllowList::Open,
    }
}

/// The owner's view of a model.
fn report(e: &Enclave, keys: &Keys, model_id: ModelId) -> hetee_enclave::messages::ModelReport {
    let (r, sealed) = manage(e, keys, &ClientMessage::ModelStatus { model_id }).unwrap();
    assert!(sealed.is_none(), "reading the status changed the state");
    r
}

fn counts(st: &Status) -> (usize, usize, usize) {
    (st.keysets, st.models, st.sessions)
}

#[test]
fn attested_query_matches_the_reference_bit_for_bit() {
    let _g = shared();
    let mut s = Setup::new();
    assert!(budget::is_metering());

    // The attested identity binds this key set's public key and parameters.
    let id = identity(&s.enclave, s.keys.key_id);
    assert_eq!(id.measurement, MEASUREMENT);
    assert_eq!(id.public_key, s.keys.public_key);
    assert_eq!(
        hetee_enclave::messages::he_params_from_bytes(&id.he_params).unwrap(),
        s.host.schedule.he
    );

    // The plan is the first stage's public structure.
    let id = s.model_id();
    let dp = hello(&s.enclave, &s.keys, id).unwrap();
    let want = QueryPlan::of(
        s.model_id(),
        s.keys.key_id,
        *s.keys.owner.public(),
        &s.host.schedule,
    )
    .unwrap();
    assert_eq!(dp.plan, want);
    // The data provider learns whose model it queries.
    assert_eq!(&dp.plan.owner, s.keys.owner.public());
    assert_eq!(dp.plan.classes, 3);
    s.enclave.handle(Request::CloseSession {
        session: dp.channel.session,
    });

    for x in [s.x.clone(), other_input()] {
        let got = s.query(&x).unwrap();
        assert_eq!(bits(&got), bits(&reference(&s.q, &x)));
    }
    // Finished sessions are gone; keys and model stay.
    let st = s.status();
    assert_eq!((st.keysets, st.models, st.sessions), (1, 1, 0));
}

#[test]
fn a_finished_session_takes_no_more_stages() {
    let _g = shared();
    let s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let session = dp.channel.session;
    let r = run_stages(&s.enclave, &s.host, session, input.clone());
    assert!(matches!(r, Response::Finished { .. }), "{}", short(&r));
    let again = s.enclave.handle(Request::StageResult {
        session,
        stage: 1,
        ciphertexts: s.host.evaluate(0, &input),
    });
    // The session waits for its next query: a stage is out of place there,
    // and ends it.
    assert!(error_of(again).contains("no query is running in this session"));
    assert_eq!(status(&s.enclave).sessions, 0);
}

#[test]
fn out_of_order_stages_close_the_session() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();

    // Stage 1 first.
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let session = dp.channel.session;
    let out0 = s.host.evaluate(0, &input);
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session,
        stage: 1,
        ciphertexts: out0.clone(),
    }));
    assert!(msg.contains("stage 1 out of order (expected 0)"), "{msg}");
    assert_eq!(s.status().sessions, 0);
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");

    // Stage 0 twice.
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let session = dp.channel.session;
    let out0 = s.host.evaluate(0, &input);
    let next = match s.enclave.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0.clone(),
    }) {
        Response::NextInput {
            stage: 1,
            ciphertexts,
        } => ciphertexts,
        other => panic!("{}", short(&other)),
    };
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0,
    }));
    assert!(msg.contains("stage 0 out of order (expected 1)"), "{msg}");
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session,
        stage: 1,
        ciphertexts: s.host.evaluate(1, &next),
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");

    // A stage result before the query started (session only said hello).
    let dp = hello(&s.enclave, &s.keys, id).unwrap();
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: vec![],
    }));
    assert!(msg.contains("no query is running"), "{msg}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn wrong_ciphertext_count_closes_the_session() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let mut out0 = s.host.evaluate(0, &input);
    out0.push(out0[0].clone());
    let msg = error_of(s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: out0,
    }));
    assert!(msg.contains("ciphertexts, got"), "{msg}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn input_other_than_the_digest_is_refused() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let committed = dp.encrypt(&s.keys.public_key, &s.x);
    // The host swaps in another encryption (of another image).
    let swapped = dp.encrypt(&s.keys.public_key, &other_input());
    assert_ne!(input_digest(&committed), input_digest(&swapped));
    let payload = dp.query_payload(&committed);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload: payload.clone(),
        input: swapped,
    }));
    assert!(msg.contains("not the ones the data provider sent"), "{msg}");
    // The session is gone, even with the right input now.
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload,
        input: committed,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn start_query_for_another_model_is_refused() {
    let _g = shared();
    let mut s = Setup::new();
    // A second model under the same key set (batch 2: other packing,
    // other weights, other commitment).
    let schedule2 = Schedule::compile(&s.q, 2).unwrap();
    let host2 = HostModel::new(&s.q, &schedule2, &s.keys.public_key);
    let reg2 = register(&s.enclave, &s.keys, &host2);
    assert_ne!(reg2.model_id, s.model_id());
    assert_eq!(s.status().models, 2);

    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    let msg = error_of(dp.start(&s.enclave, reg2.model_id, &input));
    assert!(msg.contains("another model than the session's"), "{msg}");
    assert_eq!(s.status().sessions, 0);

    // The second model works on its own (one image padded to a batch of 2).
    let logits = query(&s.enclave, &s.keys, &host2, reg2.model_id, &s.x).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&s.q, &s.x)));
}

#[test]
fn evidence_must_be_this_enclaves_for_this_key_set() {
    let _g = shared();
    let mut s = Setup::new();
    let hello_msg = ClientMessage::Hello {
        model_id: s.model_id(),
    };
    let ck = s.keys.identity.channel_public_key;
    let rd = s.keys.identity.report_data();
    let key_id = s.keys.key_id;

    // Another measurement.
    let ev = evidence_for([8; 32], rd);
    let err = connect_with(&s.enclave, key_id, &ev, &ck, &hello_msg)
        .err()
        .expect("evidence of another measurement was accepted");
    assert!(err.contains("not this enclave's"), "{err}");

    // Report data of another key set of the same enclave.
    let other = create_keys(&s.enclave, &s.host.schedule.he);
    assert_ne!(other.identity.report_data(), rd);
    let err = connect_with(&s.enclave, key_id, &other.evidence, &ck, &hello_msg)
        .err()
        .expect("evidence of another key set was accepted");
    assert!(err.contains("not this enclave's"), "{err}");

    // Zeroed report data, and bytes that are not evidence.
    let ev = evidence_for(MEASUREMENT, [0; 64]);
    let err = connect_with(&s.enclave, key_id, &ev, &ck, &hello_msg)
        .err()
        .expect("evidence without the key binding was accepted");
    assert!(err.contains("not this enclave's"), "{err}");
    let (_, msg1) = ClientHandshake::new(&ck, &[0; 32]).unwrap();
    let msg = error_of(s.enclave.handle(Request::OpenChannel {
        key_id,
        evidence: b"HTEV garbage".to_vec(),
        msg1,
    }));
    assert!(msg.contains("evidence"), "{msg}");

    // An unknown key set.
    let err = connect_with(&s.enclave, [3; 16], &s.keys.evidence, &ck, &hello_msg)
        .err()
        .expect("an unknown key set was accepted");
    assert!(err.contains("unknown key set"), "{err}");

    assert_eq!(s.status().sessions, 0);
    // The right evidence still works.
    assert!(connect(&s.enclave, &s.keys, &hello_msg).is_ok());
}

#[test]
fn a_client_with_the_wrong_enclave_key_gets_no_channel() {
    let _g = shared();
    let mut s = Setup::new();
    let hello_msg = ClientMessage::Hello {
        model_id: s.model_id(),
    };
    let impostor = StaticKeypair::generate().unwrap();
    match connect_with(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        impostor.public(),
        &hello_msg,
    ) {
        Ok(o) => panic!("a channel to the wrong key gave {:?}", o.reply),
        Err(e) => assert!(
            e.contains("Noise handshake failed at enclave reading message 1"),
            "{e}"
        ),
    }
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn evidence_swapped_by_the_host_breaks_the_handshake() {
    let _g = shared();
    let mut s = Setup::new();
    // The client verified the non-debug evidence; the host shows the enclave
    // a debug variant (same measurement and report data, other hash).
    let id = &s.keys.identity;
    let debug_ev = SimPlatform::dev()
        .issue(Measurement(id.measurement), true, id.report_data())
        .encode()
        .unwrap();
    assert_ne!(debug_ev, s.keys.evidence);
    let prologue = hetee_attest::Evidence::decode(&s.keys.evidence)
        .unwrap()
        .hash()
        .unwrap();
    let (hs, msg1) = ClientHandshake::new(&id.channel_public_key, &prologue).unwrap();
    match s.enclave.handle(Request::OpenChannel {
        key_id: s.keys.key_id,
        evidence: debug_ev,
        msg1,
    }) {
        Response::Error { message, .. } => assert!(
            message.contains("Noise handshake failed at enclave reading message 1"),
            "{message}"
        ),
        Response::ChannelOpened { msg2, .. } => {
            assert!(hs.finish(&msg2).is_err(), "the handshake survived a swap")
        }
        other => panic!("{}", short(&other)),
    }
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn query_before_hello_and_unknown_models_are_refused() {
    let _g = shared();
    let mut s = Setup::new();
    let q = ClientMessage::Query {
        query_id: [0; 16],
        input_digest: [0; 32],
        images: 1,
        seed: Zeroizing::new([0; 32]),
    };
    let err = connect(&s.enclave, &s.keys, &q)
        .err()
        .expect("a query without hello was accepted");
    assert!(err.contains("must follow a hello"), "{err}");

    let err = connect(
        &s.enclave,
        &s.keys,
        &ClientMessage::Hello { model_id: [1; 16] },
    )
    .err()
    .expect("hello to an unknown model was accepted");
    assert!(err.contains("unknown model"), "{err}");

    // A second Hello instead of the Query in a ready session.
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let payload = seal_msg(&mut dp.channel.tx, &ClientMessage::Hello { model_id: id });
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload,
        input: vec![],
    }));
    assert!(msg.contains("expected the data provider's query"), "{msg}");

    // StartQuery on a session whose handshake never finished.
    let (_hs, msg1) = ClientHandshake::new(
        &s.keys.identity.channel_public_key,
        &hetee_attest::Evidence::decode(&s.keys.evidence)
            .unwrap()
            .hash()
            .unwrap(),
    )
    .unwrap();
    let session = match s.enclave.handle(Request::OpenChannel {
        key_id: s.keys.key_id,
        evidence: s.keys.evidence.clone(),
        msg1,
    }) {
        Response::ChannelOpened { session, .. } => session,
        other => panic!("{}", short(&other)),
    };
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session,
        model_id: id,
        payload: vec![0; 40],
        input: vec![],
    }));
    assert!(msg.contains("cannot start a query now"), "{msg}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn bad_registrations_are_refused() {
    let _g = shared();
    let mut s = Setup::new();
    let other = create_keys(&s.enclave, &s.host.schedule.he);
    let before = s.status().models;

    // The model names another key set than its channel's.
    let msg = register_message(&other, &s.host);
    let err = connect(&s.enclave, &s.keys, &msg).err().expect("accepted");
    assert!(err.contains("another key set than its channel"), "{err}");

    // HE parameters that are not the key set's.
    // (Same degree, so the schedule itself is consistent; other modulus.)
    let mut schedule = s.host.schedule.clone();
    schedule.he = HeConfig::for_accumulator_bound(1 << 24).unwrap();
    assert_eq!(schedule.he.degree, s.host.schedule.he.degree);
    assert_ne!(schedule.he, s.host.schedule.he);
    let msg = registration(
        &s.keys,
        [5; 32],
        schedule,
        &s.host.plain_weights,
        ModelTerms::default(),
    );
    let err = connect(&s.enclave, &s.keys, &msg).err().expect("accepted");
    assert!(err.contains("not its key set's"), "{err}");

    // An inconsistent schedule.
    let mut schedule = s.host.schedule.clone();
    schedule.stages[0].tail.bias.pop();
    let msg = registration(
        &s.keys,
        [5; 32],
        schedule,
        &s.host.plain_weights,
        ModelTerms::default(),
    );
    let err = connect(&s.enclave, &s.keys, &msg).err().expect("accepted");
    assert!(err.contains("bias"), "{err}");

    let st = s.status();
    assert_eq!((st.models, st.sessions), (before, 0));

    // A Hello over a channel of another key set than the model's.
    let id = s.model_id();
    let err = connect(&s.enclave, &other, &ClientMessage::Hello { model_id: id })
        .err()
        .expect("accepted");
    assert!(err.contains("not under this channel's key set"), "{err}");
}

// --- Owners: registration and management ---------------------------------

const NOT_OWNER: &str = "only the key set's owner may register or manage its models";
const UNLISTED: &str = "this client key is not on the model's allow list";

/// Replaces the local-mode test (local mode is gone): registering is the
/// key set owner's alone. Another key, even one that owns a key set of its
/// own in the same enclave, is refused and nothing is stored.
#[test]
fn only_the_key_set_owner_registers_models() {
    let _g = shared();
    let mut s = Setup::new();
    let mallory = Arc::new(StaticKeypair::generate().unwrap());
    let own = create_keys_for(&s.enclave, &s.host.schedule.he, mallory.clone());
    let before = s.status();
    assert_eq!(counts(&before), (2, 1, 0));

    // A new upload under the victim's key set (batch 2: other commitment).
    let host2 = HostModel::new(
        &s.q,
        &Schedule::compile(&s.q, 2).unwrap(),
        &s.keys.public_key,
    );
    let msg = register_message(&s.keys, &host2);
    let anonymous = StaticKeypair::generate().unwrap();
    for (name, who) in [("a fresh key", &anonymous), ("another owner", &*mallory)] {
        let err = connect_as(
            &s.enclave,
            s.keys.key_id,
            &s.keys.evidence,
            &s.keys.identity.channel_public_key,
            Some(who),
            &msg,
        )
        .err()
        .unwrap_or_else(|| panic!("{name} registered a model under another's key set"));
        assert!(err.contains(NOT_OWNER), "{name}: {err}");
        assert_eq!(counts(&s.status()), counts(&before), "{name}");
    }
    // Nor through a channel to a key set it owns.
    let err = connect(&s.enclave, &own, &msg)
        .err()
        .expect("registered under another key set than the channel's");
    assert!(err.contains("another key set than its channel"), "{err}");
    assert_eq!(counts(&s.status()), counts(&before));

    // The owner can.
    let reg = register(&s.enclave, &s.keys, &host2);
    assert_ne!(reg.model_id, s.model_id());
    assert_eq!(s.status().models, before.models + 1);
}

/// One registration per upload (key set + commitment): the owner cannot
/// change a registered model's terms or schedule by registering it again.
#[test]
fn an_upload_is_registered_once() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let again = [
        register_message(&s.keys, &s.host),
        register_message_with(&s.keys, &s.host, OutputPolicy::Label, Some(1)),
        registration(
            &s.keys,
            s.host.commitment(),
            Schedule::compile(&s.q, 2).unwrap(),
            &s.host.plain_weights,
            ModelTerms::default(),
        ),
    ];
    for msg in &again {
        let err = connect(&s.enclave, &s.keys, msg)
            .err()
            .expect("an upload was registered twice");
        assert!(
            err.contains("this upload is already registered; a model's secrets never change"),
            "{err}"
        );
    }
    assert_eq!(counts(&s.status()), (1, 1, 0));
    // The model keeps its terms: all logits, no budget.
    let r = report(&s.enclave, &s.keys, id);
    assert_eq!(r.terms, ModelTerms::default());
    let x = s.x.clone();
    for _ in 0..2 {
        assert_eq!(bits(&s.query(&x).unwrap()), bits(&reference(&s.q, &x)));
    }
}

#[test]
fn the_owner_manages_its_model_and_nobody_else_can() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();

    let r = report(&s.enclave, &s.keys, id);
    assert_eq!(r.model_id, id);
    assert_eq!((r.version, r.locked, r.failures), (1, false, 0));
    assert_eq!(r.terms, ModelTerms::default());
    assert_eq!(r.allow, AllowList::Open);
    assert!(r.spent.is_empty() && r.incidents.is_empty());

    // Another key: every management message is refused and changes nothing.
    let mallory = Arc::new(StaticKeypair::generate().unwrap());
    let listed = AllowList::Only(vec![*mallory.public()]);
    let msgs = [
        ClientMessage::ModelStatus { model_id: id },
        ClientMessage::Unlock { model_id: id },
        ClientMessage::SetAllowList {
            model_id: id,
            allow: listed.clone(),
        },
    ];
    for msg in &msgs {
        let err = connect_as(
            &s.enclave,
            s.keys.key_id,
            &s.keys.evidence,
            &s.keys.identity.channel_public_key,
            Some(&mallory),
            msg,
        )
        .err()
        .unwrap_or_else(|| panic!("a non-owner's {msg:?} was accepted"));
        assert!(err.contains(NOT_OWNER), "{err}");
    }
    // Owning another key set does not help either.
    let own = create_keys_for(&s.enclave, &s.host.schedule.he, mallory.clone());
    for msg in &msgs {
        let err = connect(&s.enclave, &own, msg)
            .err()
            .unwrap_or_else(|| panic!("{msg:?} through another key set was accepted"));
        assert!(err.contains("no such model under this key set"), "{err}");
    }
    assert_eq!(s.status().sessions, 0);
    let r = report(&s.enclave, &s.keys, id);
    assert_eq!((r.version, r.locked), (1, false));
    assert_eq!(r.allow, AllowList::Open);

    // The owner's changes each give a new version and sealed state.
    let (r, sealed) = manage(&s.enclave, &s.keys, &ClientMessage::Unlock { model_id: id }).unwrap();
    let sealed = sealed.expect("unlock gives a new sealed state");
    assert_eq!((r.version, sealed.version, sealed.model_id), (2, 2, id));
    assert!(!r.locked);
    let (r, sealed) = manage(
        &s.enclave,
        &s.keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: listed.clone(),
        },
    )
    .unwrap();
    assert_eq!((r.version, sealed.unwrap().version), (3, 3));
    assert_eq!(r.allow, listed);
    assert_eq!(report(&s.enclave, &s.keys, id).allow, listed);

    // An unknown model.
    let err = connect(
        &s.enclave,
        &s.keys,
        &ClientMessage::ModelStatus { model_id: [9; 16] },
    )
    .err()
    .expect("the status of an unknown model");
    assert!(err.contains("no such model under this key set"), "{err}");
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn the_allow_list_refuses_unlisted_keys_at_hello() {
    let _g = shared();
    let alice = StaticKeypair::generate().unwrap();
    let bob = StaticKeypair::generate().unwrap();
    let mut s = Setup::with_terms(
        EnclaveConfig::default(),
        ModelTerms::default(),
        AllowList::Only(vec![*alice.public()]),
    );
    let id = s.model_id();
    let x = s.x.clone();
    for (name, who) in [("bob", Some(&bob)), ("a fresh key", None)] {
        let err = hello_as(&s.enclave, &s.keys, who, id)
            .err()
            .unwrap_or_else(|| panic!("{name} said hello to a model that does not list it"));
        assert!(err.contains(UNLISTED), "{name}: {err}");
        assert_eq!(s.status().sessions, 0);
    }
    let (logits, _) = query_as(&s.enclave, &s.keys, &s.host, id, Some(&alice), &x).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&s.q, &x)));
}

#[test]
fn set_allow_list_takes_effect_for_new_sessions() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let x = s.x.clone();
    let alice = StaticKeypair::generate().unwrap();
    let bob = StaticKeypair::generate().unwrap();
    // Bob said hello while the model was open to everyone.
    let mut bob_ready = hello_as(&s.enclave, &s.keys, Some(&bob), id).unwrap();

    let set = |e: &Enclave, keys: &Keys, allow: AllowList| {
        let (r, sealed) = manage(
            e,
            keys,
            &ClientMessage::SetAllowList {
                model_id: id,
                allow: allow.clone(),
            },
        )
        .unwrap();
        assert_eq!(r.allow, allow);
        assert!(sealed.is_some());
    };
    set(
        &mut s.enclave,
        &s.keys,
        AllowList::Only(vec![*alice.public()]),
    );

    let err = hello_as(&s.enclave, &s.keys, Some(&bob), id)
        .err()
        .expect("an unlisted key said hello");
    assert!(err.contains(UNLISTED), "{err}");
    // The session that said hello before is admitted again when its query
    // starts, and closed.
    let input = bob_ready.encrypt(&s.keys.public_key, &x);
    let msg = error_of(bob_ready.start(&s.enclave, id, &input));
    assert!(msg.contains(UNLISTED), "{msg}");
    assert_eq!(s.status().sessions, 0);
    assert!(query_as(&s.enclave, &s.keys, &s.host, id, Some(&alice), &x).is_ok());

    // Open again: bob may query.
    set(&s.enclave, &s.keys, AllowList::Open);
    let (logits, _) = query_as(&s.enclave, &s.keys, &s.host, id, Some(&bob), &x).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&s.q, &x)));
}

// --- Sessions ------------------------------------------------------------

#[test]
fn interleaved_sessions_of_two_clients_both_succeed() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let xs = [s.x.clone(), other_input()];
    let mut dps: Vec<DataProvider> = (0..2)
        .map(|_| hello(&s.enclave, &s.keys, id).unwrap())
        .collect();
    assert_ne!(dps[0].channel.session, dps[1].channel.session);
    let mut inputs: Vec<Vec<Vec<u8>>> = dps
        .iter()
        .zip(&xs)
        .map(|(dp, x)| dp.encrypt(&s.keys.public_key, x))
        .collect();
    for (dp, input) in dps.iter_mut().zip(&inputs) {
        assert!(matches!(
            dp.start(&s.enclave, id, input),
            Response::QueryStarted { input: None, .. }
        ));
    }
    // A model provider's handshake in the middle of it.
    let other = HostModel::new(
        &s.q,
        &Schedule::compile(&s.q, 2).unwrap(),
        &s.keys.public_key,
    );
    register(&s.enclave, &s.keys, &other);

    let stages = s.host.schedule.stages.len();
    let mut payloads = [None, None];
    for k in 0..stages {
        for i in [1, 0] {
            let ciphertexts = s.host.evaluate(k, &inputs[i]);
            match s.enclave.handle(Request::StageResult {
                session: dps[i].channel.session,
                stage: k as u32,
                ciphertexts,
            }) {
                Response::NextInput { ciphertexts, .. } if k + 1 < stages => {
                    inputs[i] = ciphertexts
                }
                Response::Finished { payload } if k + 1 == stages => payloads[i] = Some(payload),
                other => panic!("client {i} stage {k}: {}", short(&other)),
            }
        }
    }
    for i in 0..2 {
        let r = dps[i].result(&s.keys, payloads[i].as_ref().unwrap());
        assert_eq!(
            bits(&r.logits),
            bits(&reference(&s.q, &xs[i])),
            "client {i}"
        );
    }
    assert_ne!(
        bits(&reference(&s.q, &xs[0])),
        bits(&reference(&s.q, &xs[1]))
    );
    // Each result was sealed to its own channel only.
    assert!(dps[0]
        .channel
        .tx
        .open(payloads[1].as_ref().unwrap())
        .is_err());
    // Both sessions wait for their clients' next queries.
    assert_eq!(s.status().sessions, 2);
}

#[test]
fn close_session_forgets_it() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    assert_eq!(s.status().sessions, 1);
    assert!(matches!(
        s.enclave.handle(Request::CloseSession {
            session: dp.channel.session
        }),
        Response::Closed
    ));
    assert_eq!(s.status().sessions, 0);
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    let msg = error_of(dp.start(&s.enclave, id, &input));
    assert!(msg.contains("unknown or closed session"), "{msg}");
}

// --- Integrity, thin queries, policies, budgets --------------------------

/// The refusal of a failed check: the one fixed message, and the model's
/// new sealed state (the incident is logged).
fn failed_check(r: Response) -> hetee_enclave::messages::SealedState {
    match r {
        Response::Error {
            message,
            state: Some(state),
        } => {
            assert_eq!(
                message,
                "integrity: the host's stage result failed the check; session closed"
            );
            state
        }
        other => panic!("expected a failed check, got {}", short(&other)),
    }
}

#[test]
fn a_wrong_stage_result_fails_the_freivalds_check() {
    let _g = shared();
    // Three failed checks lock the model: two leave it serving.
    let terms = ModelTerms {
        lock_after: 3,
        ..ModelTerms::default()
    };
    let mut s = Setup::with_terms(EnclaveConfig::default(), terms, AllowList::Open);
    let id = s.model_id();
    let client = StaticKeypair::generate().unwrap();

    // The host evaluates stage 0 on other ciphertexts than the committed input.
    let mut dp = hello_as(&s.enclave, &s.keys, Some(&client), id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    let other = dp.encrypt(&s.keys.public_key, &other_input());
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let state = failed_check(s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &other),
    }));
    assert_eq!((state.model_id, state.version), (id, 2));
    assert_eq!(s.status().sessions, 0);

    // Stage 0 is right but stage 1 gets the input of another query.
    let client2 = StaticKeypair::generate().unwrap();
    let mut dp = hello_as(&s.enclave, &s.keys, Some(&client2), id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let session = dp.channel.session;
    let r = s.enclave.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &input),
    });
    assert!(
        matches!(r, Response::NextInput { stage: 1, .. }),
        "{}",
        short(&r)
    );
    let mut dp2 = hello(&s.enclave, &s.keys, id).unwrap();
    let input2 = dp2.encrypt(&s.keys.public_key, &other_input());
    assert!(matches!(
        dp2.start(&s.enclave, id, &input2),
        Response::QueryStarted { input: None, .. }
    ));
    let Response::NextInput {
        ciphertexts: next2, ..
    } = s.enclave.handle(Request::StageResult {
        session: dp2.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &input2),
    })
    else {
        panic!("stage 0 of the second query failed")
    };
    let state = failed_check(s.enclave.handle(Request::StageResult {
        session,
        stage: 1,
        ciphertexts: s.host.evaluate(1, &next2),
    }));
    assert_eq!(state.version, 3);
    // The other query is unaffected.
    let r = run_stages_from(&s.enclave, &s.host, dp2.channel.session, 1, next2);
    let Response::Finished { payload } = r else {
        panic!("{}", short(&r))
    };
    let got = dp2.result(&s.keys, &payload).logits;
    assert_eq!(bits(&got), bits(&reference(&s.q, &other_input())));

    // Both failures are logged for the owner; below the threshold, the
    // model still serves.
    let r = report(&s.enclave, &s.keys, id);
    assert_eq!((r.version, r.failures, r.locked), (3, 2, false));
    assert_eq!(
        r.incidents,
        vec![
            Incident {
                seq: 1,
                stage: 0,
                client: *client.public()
            },
            Incident {
                seq: 2,
                stage: 1,
                client: *client2.public()
            },
        ]
    );
    let x = s.x.clone();
    assert_eq!(bits(&s.query(&x).unwrap()), bits(&reference(&s.q, &x)));
}

#[test]
fn a_failed_check_locks_the_model_until_its_owner_unlocks_it() {
    let _g = shared();
    let mut s = Setup::new();
    assert_eq!(s.registered.state.version, 1);
    let id = s.model_id();
    let x = s.x.clone();
    // A session that said hello before the failure.
    let mut early = hello(&s.enclave, &s.keys, id).unwrap();

    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &x);
    let other = dp.encrypt(&s.keys.public_key, &other_input());
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let state = failed_check(s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &other),
    }));
    assert_eq!(state.version, 2);

    // Locked (the default threshold is one failure): no hello, and no
    // query from a session that said hello before.
    let err = s.query(&x).expect_err("a locked model answered");
    assert_eq!(err, format!("protocol: {LOCKED}"));
    let early_input = early.encrypt(&s.keys.public_key, &x);
    let msg = error_of(early.start(&s.enclave, id, &early_input));
    assert!(msg.contains(LOCKED), "{msg}");
    assert_eq!(s.status().sessions, 0);

    let r = report(&s.enclave, &s.keys, id);
    assert_eq!((r.version, r.failures, r.locked), (2, 1, true));
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(r.incidents[0].stage, 0);

    let (r, sealed) = manage(&s.enclave, &s.keys, &ClientMessage::Unlock { model_id: id }).unwrap();
    assert_eq!((r.version, r.failures, r.locked), (3, 0, false));
    assert!(r.incidents.is_empty());
    assert_eq!(sealed.unwrap().version, 3);
    assert_eq!(bits(&s.query(&x).unwrap()), bits(&reference(&s.q, &x)));
}

/// [`run_stages`] from stage `k`.
fn run_stages_from(
    e: &hetee_enclave::Enclave,
    host: &HostModel,
    session: hetee_enclave::messages::SessionId,
    k: usize,
    input: Vec<Vec<u8>>,
) -> Response {
    let mut inputs = input;
    for k in k..host.schedule.stages.len() {
        match e.handle(Request::StageResult {
            session,
            stage: k as u32,
            ciphertexts: host.evaluate(k, &inputs),
        }) {
            Response::NextInput { ciphertexts, .. } => inputs = ciphertexts,
            other => return other,
        }
    }
    panic!("no result")
}

/// The enclave draws the checks itself from the weights it is sent: the
/// weights must fit the schedule, and the terms must make sense.
#[test]
fn registration_needs_well_formed_weights_and_terms() {
    let _g = shared();
    let mut s = Setup::new();
    let w = s.host.plain_weights.clone();
    let bad_weights: Vec<(&str, Vec<Vec<i8>>)> = vec![
        ("0 weight tensors for 2 stages", vec![]),
        ("1 weight tensors for 2 stages", w[..1].to_vec()),
        ("3 weight tensors for 2 stages", {
            let mut v = w.clone();
            v.push(w[1].clone());
            v
        }),
        ("stage 1: the weights do not fit the layer", {
            let mut v = w.clone();
            v[1].pop();
            v
        }),
        ("stage 0: the weights do not fit the layer", {
            let mut v = w.clone();
            v[0].push(1);
            v
        }),
        (
            "stage 0: the weights do not fit the layer",
            vec![w[1].clone(), w[0].clone()],
        ),
    ];
    // A commitment of no registered upload, so that nothing else refuses it.
    let fresh = [6; 32];
    for (what, bad) in bad_weights {
        let msg = registration(
            &s.keys,
            fresh,
            s.host.schedule.clone(),
            &bad,
            ModelTerms::default(),
        );
        let err = connect(&s.enclave, &s.keys, &msg).err().expect("accepted");
        assert!(err.contains(what), "{what}: {err}");
    }
    for (what, terms) in [
        (
            "the lock threshold must be at least 1",
            ModelTerms {
                lock_after: 0,
                ..ModelTerms::default()
            },
        ),
        (
            "top-4 of 3 classes",
            ModelTerms {
                policy: OutputPolicy::TopK(4),
                ..ModelTerms::default()
            },
        ),
    ] {
        let msg = registration(&s.keys, fresh, s.host.schedule.clone(), &w, terms);
        let err = connect(&s.enclave, &s.keys, &msg).err().expect("accepted");
        assert!(err.contains(what), "{what}: {err}");
    }
    assert_eq!(counts(&s.status()), (1, 1, 0));
    // The same upload with well-formed weights and terms is accepted.
    let msg = registration(
        &s.keys,
        fresh,
        s.host.schedule.clone(),
        &w,
        ModelTerms {
            policy: OutputPolicy::TopK(3),
            ..ModelTerms::default()
        },
    );
    assert!(connect(&s.enclave, &s.keys, &msg).is_ok());
    assert_eq!(s.status().models, 2);
}

#[test]
fn thin_query_matches_the_reference() {
    let _g = shared();
    let s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let images = vec![s.x.clone()];
    let payload = dp.thin_payload(&images);
    let input = match s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload,
        input: vec![],
    }) {
        Response::QueryStarted {
            input: Some(cts), ..
        } => cts,
        other => panic!("{}", short(&other)),
    };
    let Response::Finished { payload } = run_stages(&s.enclave, &s.host, dp.channel.session, input)
    else {
        panic!("thin query failed")
    };
    let r = dp.result(&s.keys, &payload);
    assert_eq!(r.input_digest, thin_input_digest(&images));
    assert_eq!(bits(&r.logits), bits(&reference(&s.q, &s.x)));

    // A thin query with ciphertexts attached is refused.
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let payload = dp.thin_payload(&images);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload,
        input: vec![vec![0; 8]],
    }));
    assert!(msg.contains("carries no ciphertexts"), "{msg}");
}

#[test]
fn label_policy_and_query_budget_per_client_key() {
    let _g = shared();
    let (q, x) = tiny_model();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&e, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let reg = register_with(
        &e,
        &keys,
        &register_message_with(&keys, &host, OutputPolicy::Label, Some(2)),
    );
    let id = reg.model_id;
    let want = reference(&q, &x);
    let best = (0..want.len())
        .max_by(|&a, &b| want[a].total_cmp(&want[b]).then(b.cmp(&a)))
        .unwrap() as u32;

    let alice = StaticKeypair::generate().unwrap();
    let run = |e: &hetee_enclave::Enclave, who: &StaticKeypair| -> Result<_, String> {
        let mut dp = hello_as(e, &keys, Some(who), id)?;
        let input = dp.encrypt(&keys.public_key, &x);
        match dp.start(e, id, &input) {
            Response::QueryStarted { input: None, .. } => {}
            other => return Err(error_of(other)),
        }
        match run_stages(e, &host, dp.channel.session, input) {
            Response::Finished { payload } => Ok(dp.result(&keys, &payload)),
            other => Err(error_of(other)),
        }
    };
    for _ in 0..2 {
        let r = run(&e, &alice).unwrap();
        assert_eq!(r.policy, OutputPolicy::Label);
        assert!(r.logits.is_empty(), "the label policy released logits");
        assert_eq!(*r.labels, vec![best]);
    }
    let err = run(&e, &alice).expect_err("a third query was allowed");
    assert!(err.contains("query budget for the model is spent"), "{err}");
    // Another client key has its own budget.
    let bob = StaticKeypair::generate().unwrap();
    assert_eq!(*run(&e, &bob).unwrap().labels, vec![best]);
    // The owner sees what each key spent: one state version per query.
    let r = report(&e, &keys, id);
    let mut spent = vec![(*alice.public(), 2), (*bob.public(), 1)];
    spent.sort();
    assert_eq!(r.spent, spent);
    assert_eq!(r.version, 1 + 3);
}

/// Before key sets had owners, anyone who could open a channel could
/// register a model under any key set. Registering again with the victim's
/// key set and commitment (both known to the host) gave the victim's model
/// id, and the enclave replaced the victim's schedule, checks and policy
/// with the attacker's: with a one-stage schedule that releases stage 0's
/// accumulators, one-hot queries then returned the first layer's weights.
/// Now only the owner registers, and an upload is registered once.
#[test]
fn re_registration_cannot_replace_a_registered_model() {
    let _g = shared();
    let mut s = Setup::new();
    let id = s.model_id();
    let victim = s.query(&s.x.clone()).unwrap();

    let mut evil = s.host.schedule.clone();
    evil.stages.truncate(1);
    let tail = &mut evil.stages[0].tail;
    tail.post.clear();
    tail.output = hetee_model::quant::StageOutput::Logits;
    tail.output_shape = tail.linear_output_shape();
    tail.bias.iter_mut().for_each(|b| *b = 0);
    let attack = registration(
        &s.keys,
        s.host.commitment(),
        evil,
        &s.host.plain_weights[..1],
        ModelTerms::default(),
    );
    // The attacker (any key but the owner's) is refused as a non-owner...
    let attacker = StaticKeypair::generate().unwrap();
    let err = connect_as(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        &s.keys.identity.channel_public_key,
        Some(&attacker),
        &attack,
    )
    .err()
    .expect("a non-owner re-registered the victim's upload");
    assert!(err.contains(NOT_OWNER), "{err}");
    // ...and the owner's own key could not replace the model either.
    let err = connect(&s.enclave, &s.keys, &attack)
        .err()
        .expect("an upload was registered twice");
    assert!(err.contains("already registered"), "{err}");
    assert_eq!(s.status().models, 1);

    let mut one_hot = vec![0f32; s.x.len()];
    one_hot[0] = 1.0;
    let dp = hello(&s.enclave, &s.keys, id).unwrap();
    assert_eq!(
        dp.plan.classes, 3,
        "the victim's model now has another plan"
    );
    assert_eq!(
        bits(&s.query(&one_hot).unwrap()),
        bits(&reference(&s.q, &one_hot))
    );
    assert_eq!(bits(&s.query(&s.x.clone()).unwrap()), bits(&victim));
}

// --- Memory budget -------------------------------------------------------

const SMALL: EnclaveConfig = EnclaveConfig {
    memory_budget_mib: 16,
};

#[test]
fn keys_over_the_memory_budget_are_refused_and_rolled_back() {
    let _g = exclusive();
    let (q, _) = tiny_model();
    let he4 = Schedule::compile(&q, 1).unwrap().he;
    let he8 = HeConfig::for_accumulator_bound(1 << 40).unwrap();
    assert_eq!((he4.degree, he8.degree), (4096, 8192));

    let e = attested_enclave(MEASUREMENT, SMALL);
    assert_eq!(status(&e).memory_budget, 16 << 20);
    // N = 4096 keys fit (about 8 MiB).
    let keys = create_keys(&e, &he4);
    assert!(budget::peak() < 16 << 20);
    let before = status(&e);
    assert_eq!(before.keysets, 1);

    // N = 8192 keys take about 60 MiB.
    let msg = error_of(e.handle(Request::CreateKeys {
        he: he8.clone(),
        owner: [1; 32],
    }));
    assert!(msg.contains("memory budget of 16 MiB exceeded"), "{msg}");
    assert!(budget::peak() > 16 << 20);
    let after = status(&e);
    assert_eq!(after.keysets, 1);
    assert!(
        after.memory_current < before.memory_current + (1 << 20),
        "not freed: {before:?} -> {after:?}"
    );
    // Still serving the key set it has.
    assert_eq!(identity(&e, keys.key_id).public_key, keys.public_key);
    drop(e);

    // The same request is fine with the default budget.
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let r = e.handle(Request::CreateKeys {
        he: he8,
        owner: [1; 32],
    });
    assert!(matches!(r, Response::KeysCreated { .. }), "{}", short(&r));
}

/// An MNIST-sized CNN: conv 5x5 (16) -> ReLU -> max pool -> conv 5x5 (32)
/// -> ReLU -> dense as a conv (10).
fn mnist_like() -> (hetee_model::QuantModel, Vec<f32>) {
    let mut seed = 1u64;
    let mut w = |n: usize| {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect::<Vec<_>>()
    };
    let mut conv = |m: usize, c: usize, k: usize| Layer::Conv2d {
        weight: w(m * c * k * k),
        bias: w(m),
        out_channels: m,
        in_channels: c,
        window: Window {
            kernel: (k, k),
            strides: (1, 1),
            pads: Pads::default(),
            dilations: (1, 1),
        },
    };
    let layers = vec![
        conv(16, 1, 5),
        Layer::Relu,
        Layer::MaxPool(Window {
            kernel: (2, 2),
            strides: (2, 2),
            pads: Pads::default(),
            dilations: (1, 1),
        }),
        conv(32, 16, 5),
        Layer::Relu,
        conv(10, 32, 8),
    ];
    let m = Model {
        input_shape: vec![1, 28, 28],
        node_names: (0..layers.len()).map(|i| format!("l{i}")).collect(),
        inputs: Vec::new(),
        layers,
    };
    let calib: Vec<f32> = (0..4 * 784).map(|i| (i % 251) as f32 / 251.0).collect();
    (
        hetee_model::quantize(&m, &calib).unwrap(),
        calib[..784].to_vec(),
    )
}

#[test]
fn a_stage_over_the_memory_budget_closes_its_session() {
    let _g = exclusive();
    let (q, x) = mnist_like();
    // 16 images per query: stage 0 has 56 output ciphertexts, and the
    // enclave's step on them needs several MiB on top of its key set.
    let schedule = Schedule::compile(&q, 16).unwrap();
    assert_eq!(schedule.he.degree, 4096);

    let e = attested_enclave(MEASUREMENT, SMALL);
    let keys = create_keys(&e, &schedule.he);
    // The host's copy of the model lives in this process too: register with
    // its commitment, then drop it so it does not count against the budget.
    let (commitment, weights) = {
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        (host.commitment(), host.plain_weights.clone())
    };
    let msg = registration(
        &keys,
        commitment,
        schedule.clone(),
        &weights,
        ModelTerms::default(),
    );
    let opened = connect(&e, &keys, &msg).unwrap();
    let id = opened.registered.unwrap().model_id;
    let digest =
        hetee_enclave::messages::registration_digest(&schedule, &weights, &ModelTerms::default());
    assert_eq!(id, model_id(&keys.key_id, &commitment, &digest));
    let mut dp = hello(&e, &keys, id).unwrap();
    let input = dp.encrypt(&keys.public_key, &x);
    let r = dp.start(&e, id, &input);
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let session = dp.channel.session;

    // The host evaluates stage 0 (same seeded weights, same commitment).
    let out0 = {
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        assert_eq!(host.commitment(), commitment);
        host.evaluate(0, &input)
    };
    assert_eq!(out0.len(), schedule.stages[0].packing.output_count());
    let before = status(&e);
    assert_eq!((before.keysets, before.models, before.sessions), (1, 1, 1));
    assert!(before.memory_current < 16 << 20, "{before:?}");

    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0.clone(),
    }));
    assert!(msg.contains("memory budget of 16 MiB exceeded"), "{msg}");
    assert!(budget::peak() > 16 << 20);
    let after = status(&e);
    assert_eq!((after.keysets, after.models, after.sessions), (1, 1, 0));
    assert!(
        after.memory_current < before.memory_current + (1 << 20),
        "not freed: {before:?} -> {after:?}"
    );
    let msg = error_of(e.handle(Request::StageResult {
        session,
        stage: 0,
        ciphertexts: out0,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
}

/// Rolling back a request that went over the budget must not remove state
/// that existed before it. Here a RestoreKeys of a key set that is already
/// loaded goes over the budget, and `Enclave::roll_back` removes the key set
/// by its id: the one loaded earlier is gone too.
#[test]
fn a_refused_restore_keeps_what_was_loaded() {
    let _g = exclusive();
    let (q, _) = tiny_model();
    let he = Schedule::compile(&q, 1).unwrap().he;
    let e = attested_enclave(MEASUREMENT, SMALL);
    let a = create_keys(&e, &he);
    let b = create_keys(&e, &he);
    assert_eq!(status(&e).keysets, 2);
    // About 15 MiB are in use; restoring A again needs about 8 more.
    let msg = error_of(e.handle(Request::RestoreKeys {
        sealed: a.sealed.clone(),
    }));
    assert!(msg.contains("memory budget"), "{msg}");
    assert_eq!(identity(&e, b.key_id).public_key, b.public_key);
    match e.handle(Request::Evidence { key_id: a.key_id }) {
        Response::Evidence { identity, .. } => assert_eq!(identity.public_key, a.public_key),
        other => panic!("key set A was lost: {}", short(&other)),
    }
}
