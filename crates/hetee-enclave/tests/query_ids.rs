//! Idempotent queries on a budgeted model: a retry (same client key, same
//! query id, same input) of a query that spent runs without spending again,
//! on the same enclave or on another replica that loaded the sealed state;
//! the same id with another input is refused; only the last
//! `MAX_RECENT_QUERIES` ids of a client are remembered.

mod common;

use common::restart::restart;
use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::messages::{
    input_digest, AllowList, ClientKey, ClientMessage, ModelReport, ModelTerms, SealedState,
};
use hetee_enclave::query_ids::{ID_REUSED, MAX_RECENT_QUERIES};
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn budgeted(budget: u64) -> Setup {
    let terms = ModelTerms {
        query_budget: Some(budget),
        ..ModelTerms::default()
    };
    Setup::with_terms(EnclaveConfig::default(), terms, AllowList::Open)
}

fn report(e: &Enclave, keys: &Keys, s: &Setup) -> ModelReport {
    let msg = ClientMessage::ModelStatus {
        model_id: s.model_id(),
    };
    manage(e, keys, &msg).unwrap().0
}

fn spent(r: &ModelReport, client: &ClientKey) -> u64 {
    r.spent
        .iter()
        .find(|(k, _)| k == client)
        .map_or(0, |(_, n)| *n)
}

/// How a query's start went: its sealed state (`None`: nothing spent), or
/// the refusal.
type Started = Result<Option<SealedState>, String>;

fn started(r: Response) -> Started {
    match r {
        Response::QueryStarted { state, .. } => Ok(state),
        Response::Error { message, .. } => Err(message),
        other => panic!("StartQuery: {}", short(&other)),
    }
}

/// `who`'s HE query of `x` with this id and seed, started on `e`.
fn start_he(
    e: &Enclave,
    keys: &Keys,
    s: &Setup,
    who: &StaticKeypair,
    id_seed: ([u8; 16], [u8; 32]),
    x: &[f32],
) -> (DataProvider, Vec<Vec<u8>>, Started) {
    let mut dp = hello_as(e, keys, Some(who), s.model_id()).unwrap();
    (dp.query_id, dp.seed) = id_seed;
    let input = dp.encrypt(&keys.public_key, x);
    let r = started(dp.start(e, s.model_id(), &input));
    (dp, input, r)
}

/// `who`'s thin query of `x` with this id, started on `e`.
fn start_thin_as(
    e: &Enclave,
    s: &Setup,
    who: &StaticKeypair,
    query_id: [u8; 16],
    x: &[f32],
) -> (DataProvider, Started) {
    let mut dp = hello_as(e, &s.keys, Some(who), s.model_id()).unwrap();
    dp.query_id = query_id;
    let payload = dp.thin_payload(&[x.to_vec()]);
    let r = started(e.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: s.model_id(),
        payload,
        input: vec![],
    }));
    (dp, r)
}

fn close(e: &Enclave, dp: &DataProvider) {
    e.handle(Request::CloseSession {
        session: dp.channel.session,
    });
}

/// Runs a started HE query to its end and closes its session (which
/// would otherwise stay open for another query); its logits.
fn finish(
    e: &Enclave,
    keys: &Keys,
    s: &Setup,
    mut dp: DataProvider,
    input: Vec<Vec<u8>>,
) -> Vec<f32> {
    let digest = input_digest(&input);
    match run_stages(e, &s.host, dp.channel.session, input) {
        Response::Finished { payload } => {
            let r = dp.result(keys, &payload);
            assert_eq!(r.input_digest, digest);
            close(e, &dp);
            r.logits.to_vec()
        }
        other => panic!("stages: {}", short(&other)),
    }
}

#[test]
fn attack_a_retry_after_a_spent_but_unanswered_query_is_not_charged_twice() {
    // A budget of exactly two queries for two logical queries.
    let s = budgeted(2);
    let alice = StaticKeypair::generate().unwrap();
    let who = *alice.public();
    let first = (rand::random(), rand::random());
    // Replica 1 starts (and spends) the first query, then dies before the
    // stages: the client never gets its result.
    let (_, input1, r) = start_he(&s.enclave, &s.keys, &s, &alice, first, &s.x);
    let stored = r.unwrap().expect("a budgeted query spends");
    assert_eq!(stored.version, 2);

    // Replica 2 loads what replica 1 stored; the client retries there, in a
    // new session, with the same id and seed: the same ciphertexts, and
    // nothing spent again.
    let e2 = restart(MEASUREMENT, &s.keys, &s.registered.sealed, &stored);
    let keys2 = reattest(&e2, &s.keys);
    let (dp, input2, r) = start_he(&e2, &keys2, &s, &alice, first, &s.x);
    assert_eq!(
        input2, input1,
        "the same seed must give the same ciphertexts"
    );
    assert_eq!(r.unwrap(), None, "the retry spent again");
    let logits = finish(&e2, &keys2, &s, dp, input2);
    assert_eq!(bits(&logits), bits(&reference(&s.q, &s.x)));
    let r = report(&e2, &keys2, &s);
    assert_eq!((spent(&r, &who), r.version), (1, 2));

    // The second logical query spends the rest of the budget...
    let second = (rand::random(), rand::random());
    let (dp, input, r) = start_he(&e2, &keys2, &s, &alice, second, &other_input());
    assert!(r.unwrap().is_some());
    finish(&e2, &keys2, &s, dp, input);
    // ...and a third is refused.
    let third = (rand::random(), rand::random());
    let (dp, _, r) = start_he(&e2, &keys2, &s, &alice, third, &s.x);
    assert!(r.unwrap_err().contains("budget for the model is spent"));
    close(&e2, &dp);
    // A retry of the first still runs with the budget spent (its result
    // is the one already paid for), and spends nothing.
    let (dp, input, r) = start_he(&e2, &keys2, &s, &alice, first, &s.x);
    assert_eq!(r.unwrap(), None);
    assert_eq!(bits(&finish(&e2, &keys2, &s, dp, input)), bits(&logits));
    let r = report(&e2, &keys2, &s);
    assert_eq!((spent(&r, &who), r.version), (2, 3));
    assert_eq!(status(&e2).sessions, 0);
}

#[test]
fn attack_reusing_a_query_id_with_another_input_is_refused() {
    let s = budgeted(5);
    let e = &s.enclave;
    let alice = StaticKeypair::generate().unwrap();
    let who = *alice.public();
    let id: [u8; 16] = rand::random();
    let seed: [u8; 32] = rand::random();
    let (dp, input, r) = start_he(e, &s.keys, &s, &alice, (id, seed), &s.x);
    assert!(r.unwrap().is_some());
    finish(e, &s.keys, &s, dp, input);
    let version = report(e, &s.keys, &s).version;

    // The same id on another input would be a free query: refused.
    let (dp, _, r) = start_he(e, &s.keys, &s, &alice, (id, seed), &other_input());
    assert!(r.unwrap_err().contains(ID_REUSED));
    close(e, &dp);
    // The same input under another seed is other ciphertexts: refused too
    // (a retry must reuse the seed).
    let (dp, _, r) = start_he(e, &s.keys, &s, &alice, (id, rand::random()), &s.x);
    assert!(r.unwrap_err().contains(ID_REUSED));
    close(e, &dp);
    // A thin query under an HE query's id has another digest: refused.
    let (dp, r) = start_thin_as(e, &s, &alice, id, &s.x);
    assert!(r.unwrap_err().contains(ID_REUSED));
    close(e, &dp);
    let r = report(e, &s.keys, &s);
    assert_eq!(
        (spent(&r, &who), r.version),
        (1, version),
        "a refusal spent"
    );

    // Thin queries the same way: another image under a spent id is refused,
    // the same image runs free.
    let thin_id: [u8; 16] = rand::random();
    let (dp, r) = start_thin_as(e, &s, &alice, thin_id, &s.x);
    assert!(r.unwrap().is_some());
    close(e, &dp);
    let (dp, r) = start_thin_as(e, &s, &alice, thin_id, &other_input());
    assert!(r.unwrap_err().contains(ID_REUSED));
    close(e, &dp);
    let (dp, r) = start_thin_as(e, &s, &alice, thin_id, &s.x);
    assert_eq!(r.unwrap(), None);
    close(e, &dp);
    assert_eq!(spent(&report(e, &s.keys, &s), &who), 2);

    // Ids are per client key: another key reusing alice's id (a host
    // cannot see it, another client could guess it) is a new query of its
    // own, charged to it, and alice's record stays.
    let bob = StaticKeypair::generate().unwrap();
    let (dp, input, r) = start_he(e, &s.keys, &s, &bob, (id, rand::random()), &other_input());
    assert!(r.unwrap().is_some());
    let logits = finish(e, &s.keys, &s, dp, input);
    assert_eq!(bits(&logits), bits(&reference(&s.q, &other_input())));
    let r = report(e, &s.keys, &s);
    assert_eq!((spent(&r, &who), spent(&r, bob.public())), (2, 1));
    let (dp, _, r) = start_he(e, &s.keys, &s, &alice, (id, seed), &s.x);
    assert_eq!(r.unwrap(), None);
    close(e, &dp);
    assert_eq!(status(e).sessions, 0);
}

#[test]
fn attack_the_65th_query_id_evicts_the_first_which_is_charged_again() {
    let s = budgeted(1_000);
    let e = &s.enclave;
    let alice = StaticKeypair::generate().unwrap();
    let who = *alice.public();
    let ids: Vec<[u8; 16]> = (0..=MAX_RECENT_QUERIES).map(|_| rand::random()).collect();
    assert_eq!(ids.len(), 65);
    for id in &ids {
        let (dp, r) = start_thin_as(e, &s, &alice, *id, &s.x);
        assert!(r.unwrap().is_some());
        close(e, &dp);
    }
    assert_eq!(spent(&report(e, &s.keys, &s), &who), 65);
    // The 65th evicted the first: its retry is a new query and spends
    // (documented in hetee_enclave::query_ids).
    let (dp, r) = start_thin_as(e, &s, &alice, ids[0], &s.x);
    assert!(r.unwrap().is_some(), "an evicted id was not charged");
    close(e, &dp);
    assert_eq!(spent(&report(e, &s.keys, &s), &who), 66);
    // The newest 64 (ids[0] again, ids[2..]) are remembered; ids[1] went
    // out when ids[0] came back.
    for id in [ids[0], ids[2], ids[64]] {
        let (dp, r) = start_thin_as(e, &s, &alice, id, &s.x);
        assert_eq!(r.unwrap(), None, "a recent id was charged again");
        close(e, &dp);
    }
    let (dp, r) = start_thin_as(e, &s, &alice, ids[1], &s.x);
    assert!(r.unwrap().is_some());
    close(e, &dp);
    assert_eq!(spent(&report(e, &s.keys, &s), &who), 67);
}

#[test]
fn unbudgeted_models_remember_no_query_ids() {
    let s = Setup::new();
    let alice = StaticKeypair::generate().unwrap();
    let id: [u8; 16] = rand::random();
    // The same id on two inputs: nothing is counted, nothing refused.
    for x in [s.x.clone(), other_input()] {
        let (dp, input, r) = start_he(&s.enclave, &s.keys, &s, &alice, (id, rand::random()), &x);
        assert_eq!(r.unwrap(), None);
        assert_eq!(
            bits(&finish(&s.enclave, &s.keys, &s, dp, input)),
            bits(&reference(&s.q, &x))
        );
    }
}

/// The input binding is checked beside the host's stage 0, after the
/// spend. A client that sends another provider's ciphertexts (which it did
/// not make: the binding fails) pays for its own refused query; the
/// provider whose ciphertexts they were is charged for its own query only,
/// and gets its result, bit-exact.
#[test]
fn attack_a_replayed_input_is_paid_for_by_the_replayer_alone() {
    let s = budgeted(3);
    let e = &s.enclave;
    let victim = StaticKeypair::generate().unwrap();
    let spy = StaticKeypair::generate().unwrap();
    let (mut v, input, r) = start_he(
        e,
        &s.keys,
        &s,
        &victim,
        (rand::random(), rand::random()),
        &s.x,
    );
    r.unwrap();
    // The spy binds the digest of the victim's ciphertexts in its own
    // session, under its own seed.
    let mut dp = hello_as(e, &s.keys, Some(&spy), s.model_id()).unwrap();
    let payload = dp.query_payload(&input);
    started(e.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: s.model_id(),
        payload,
        input: input.clone(),
    }))
    .unwrap();
    let msg = error_of(e.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &input),
    }));
    assert!(
        msg.contains("not made by this session's data provider"),
        "{msg}"
    );
    let r = report(e, &s.keys, &s);
    assert_eq!(spent(&r, spy.public()), 1);
    assert_eq!(spent(&r, victim.public()), 1);
    // The victim's query runs to its result.
    match run_stages(e, &s.host, v.channel.session, input) {
        Response::Finished { payload } => {
            let got = v.result(&s.keys, &payload);
            assert_eq!(bits(&got.logits), bits(&reference(&s.q, &s.x)));
        }
        other => panic!("the victim's query: {}", short(&other)),
    }
}
