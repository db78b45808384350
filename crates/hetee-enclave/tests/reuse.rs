//! Sessions that carry several queries: after a result, a data provider's
//! session is ready again for the same model on the same Noise channel.
//! Each query is admitted and spent on its own and gets its own signed
//! result bound to its own input; the channel's nonces refuse a replayed
//! or reordered query message; and a session that saw a failed check (or
//! any other refusal) is gone for good.

mod common;

use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::messages::{
    input_digest, thin_input_digest, AllowList, ModelId, ModelTerms, QueryResult,
};
use hetee_enclave::{EnclaveConfig, Request, Response};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn setup(query_budget: Option<u64>, lock_after: u32) -> Setup {
    let terms = ModelTerms {
        query_budget,
        lock_after,
        ..ModelTerms::default()
    };
    Setup::with_terms(EnclaveConfig::default(), terms, AllowList::Open)
}

/// One HE query of `x` on `dp`'s open session, with fresh input randomness
/// as a real client draws it; the result or the enclave's refusal.
fn he_query(s: &Setup, dp: &mut DataProvider, x: &[f32]) -> Result<QueryResult, String> {
    // A new query: a new id and a new seed (a retry would reuse both).
    dp.seed = rand::random();
    dp.query_id = rand::random();
    let id = s.model_id();
    let input = dp.encrypt(&s.keys.public_key, x);
    match dp.start(&s.enclave, id, &input) {
        Response::QueryStarted { input: None, .. } => {}
        other => return Err(error_of(other)),
    }
    match run_stages(&s.enclave, &s.host, dp.channel.session, input.clone()) {
        Response::Finished { payload } => {
            let r = dp.result(&s.keys, &payload);
            assert_eq!(
                r.input_digest,
                input_digest(&input),
                "bound to its own input"
            );
            Ok(r)
        }
        other => Err(error_of(other)),
    }
}

/// One thin query of `x` on `dp`'s open session.
fn thin_query(s: &Setup, dp: &mut DataProvider, x: &[f32]) -> Result<QueryResult, String> {
    dp.query_id = rand::random();
    let images = vec![x.to_vec()];
    let payload = dp.thin_payload(&images);
    let input = match s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: s.model_id(),
        payload,
        input: vec![],
    }) {
        Response::QueryStarted {
            input: Some(cts), ..
        } => cts,
        other => return Err(error_of(other)),
    };
    match run_stages(&s.enclave, &s.host, dp.channel.session, input) {
        Response::Finished { payload } => {
            let r = dp.result(&s.keys, &payload);
            assert_eq!(r.input_digest, thin_input_digest(&images));
            Ok(r)
        }
        other => Err(error_of(other)),
    }
}

fn spent(s: &Setup, client: &StaticKeypair, id: ModelId) -> u64 {
    let (r, _) = manage(
        &s.enclave,
        &s.keys,
        &hetee_enclave::messages::ClientMessage::ModelStatus { model_id: id },
    )
    .unwrap();
    r.spent
        .iter()
        .find(|(k, _)| k == client.public())
        .map_or(0, |(_, n)| *n)
}

#[test]
fn one_session_runs_several_queries_each_exact_and_each_spent() {
    let s = setup(Some(2), 1);
    let id = s.model_id();
    let client = StaticKeypair::generate().unwrap();
    let mut dp = hello_as(&s.enclave, &s.keys, Some(&client), id).unwrap();
    let session = dp.channel.session;

    // Two queries on one channel, one HE and one thin, on different inputs.
    let r1 = he_query(&s, &mut dp, &s.x).unwrap();
    assert_eq!(bits(&r1.logits), bits(&reference(&s.q, &s.x)));
    assert_eq!(spent(&s, &client, id), 1);
    let other = other_input();
    let r2 = thin_query(&s, &mut dp, &other).unwrap();
    assert_eq!(bits(&r2.logits), bits(&reference(&s.q, &other)));
    assert_ne!(r1.input_digest, r2.input_digest);
    assert_eq!(spent(&s, &client, id), 2);
    assert_eq!(dp.channel.session, session, "no new session was opened");

    // A budget of two refuses the third query, on the same session too,
    // and the refusal ends the session.
    let err = he_query(&s, &mut dp, &s.x).expect_err("a third query was allowed");
    assert!(err.contains("query budget for the model is spent"), "{err}");
    assert_eq!(spent(&s, &client, id), 2);
    let err = thin_query(&s, &mut dp, &s.x).unwrap_err();
    assert!(err.contains("unknown or closed session"), "{err}");
    assert_eq!(status(&s.enclave).sessions, 0);
}

#[test]
fn a_session_between_queries_takes_no_stage_and_closes_on_request() {
    let s = setup(None, 1);
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    he_query(&s, &mut dp, &s.x).unwrap();
    // Ready again: a stage result now is out of place and ends the session.
    let r = s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 1,
        ciphertexts: vec![],
    });
    assert!(error_of(r).contains("no query is running"));
    assert!(he_query(&s, &mut dp, &s.x)
        .unwrap_err()
        .contains("unknown or closed session"));

    // The host closes an idle session; its next query is refused.
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    he_query(&s, &mut dp, &s.x).unwrap();
    assert_eq!(status(&s.enclave).sessions, 1, "ready for the next query");
    s.enclave.handle(Request::CloseSession {
        session: dp.channel.session,
    });
    assert!(he_query(&s, &mut dp, &s.x)
        .unwrap_err()
        .contains("unknown or closed session"));
}

#[test]
fn attack_a_replayed_query_message_on_a_reused_session_is_refused() {
    let s = setup(None, 1);
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    let payload = dp.query_payload(&input);
    let start = |payload: Vec<u8>| {
        s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: id,
            payload,
            input: input.clone(),
        })
    };
    assert!(matches!(
        start(payload.clone()),
        Response::QueryStarted { .. }
    ));
    let Response::Finished { payload: result } =
        run_stages(&s.enclave, &s.host, dp.channel.session, input.clone())
    else {
        panic!("the first query did not finish");
    };
    // The host sends the first query's message again, to run (and spend)
    // the same query a second time: the channel's nonce has moved on.
    let err = error_of(start(payload));
    assert!(err.contains("channel"), "{err}");
    assert_eq!(
        status(&s.enclave).sessions,
        0,
        "the replay ended the session"
    );
    // The client still opens its first result (its own nonces are intact).
    let r = dp.result(&s.keys, &result);
    assert_eq!(bits(&r.logits), bits(&reference(&s.q, &s.x)));
}

#[test]
fn attack_reordered_query_messages_on_a_reused_session_are_refused() {
    let s = setup(None, 1);
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    he_query(&s, &mut dp, &s.x).unwrap();
    // The client seals two queries; the host delivers the second first.
    let images = vec![s.x.clone()];
    let _second = dp.thin_payload(&images);
    let third = dp.thin_payload(&[other_input()]);
    let r = s.enclave.handle(Request::StartQuery {
        session: dp.channel.session,
        model_id: id,
        payload: third,
        input: vec![],
    });
    let err = error_of(r);
    assert!(err.contains("channel"), "{err}");
    assert_eq!(
        status(&s.enclave).sessions,
        0,
        "the reordering ended the session"
    );
}

#[test]
fn a_session_that_failed_a_check_cannot_be_reused() {
    // Five failed checks lock the model: one leaves it serving, so what
    // refuses the session below is the incident, not the lock.
    let s = setup(None, 5);
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    he_query(&s, &mut dp, &s.x).unwrap();
    // The second query on the session: the host evaluates stage 0 on other
    // ciphertexts than the committed input.
    dp.seed = rand::random();
    let input = dp.encrypt(&s.keys.public_key, &s.x);
    let other = dp.encrypt(&s.keys.public_key, &other_input());
    assert!(matches!(
        dp.start(&s.enclave, id, &input),
        Response::QueryStarted { input: None, .. }
    ));
    let r = s.enclave.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &other),
    });
    assert!(error_of(r).contains("failed the check"));
    // The session is gone: its next query is refused, not run.
    let err = he_query(&s, &mut dp, &s.x).unwrap_err();
    assert!(err.contains("unknown or closed session"), "{err}");
    // The model still serves new sessions.
    let mut fresh = hello(&s.enclave, &s.keys, id).unwrap();
    let r = he_query(&s, &mut fresh, &s.x).unwrap();
    assert_eq!(bits(&r.logits), bits(&reference(&s.q, &s.x)));
}
