//! The attested protocol, driven in process through `Enclave::handle`: a
//! model provider registers over a Noise channel bound to the evidence, a
//! data provider queries over its own channel, and the host relays and
//! evaluates. Every refusal is checked by its message, and so is what it
//! does to the session it touched.
mod common;

use common::session_fixtures::*;
use common::*;
use hetee_attest::{ClientHandshake, Measurement, SimPlatform, StaticKeypair};
use hetee_enclave::budget;
use hetee_enclave::messages::{input_digest, ClientMessage, ModelTerms, QueryPlan};
use hetee_enclave::{Request, Response, Schedule};
use hetee_he::HeConfig;
use zeroize::Zeroizing;

// The budget is enforced only with the counting allocator installed.
#[global_allocator]
static METER: budget::Meter = budget::Meter;

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
