//! A full session table: clients keep their sessions between queries, so
//! the enclave makes room for a new client by closing the session that has
//! waited longest with nothing in progress, and never a running query.

mod common;

use common::*;
use hetee_attest::ClientHandshake;
use hetee_enclave::enclave::MAX_SESSIONS;
use hetee_enclave::{Request, Response};

/// Message 1 of a handshake that is never finished: a half-open session.
fn half_open(s: &Setup) -> Result<(), String> {
    let prologue = hetee_attest::Evidence::decode(&s.keys.evidence)
        .and_then(|ev| ev.hash())
        .unwrap();
    let (_hs, msg1) = ClientHandshake::new(&s.keys.identity.channel_public_key, &prologue).unwrap();
    match s.enclave.handle(Request::OpenChannel {
        key_id: s.keys.key_id,
        evidence: s.keys.evidence.clone(),
        msg1,
    }) {
        Response::ChannelOpened { .. } => Ok(()),
        Response::Error { message, .. } => Err(message),
        other => panic!("OpenChannel: {}", short(&other)),
    }
}

#[test]
fn a_full_table_closes_the_longest_idle_session_and_never_a_running_query() {
    let mut s = Setup::new();
    let id = s.model_id();
    // A: said hello, then idle (the oldest idle session).
    let mut a = hello(&s.enclave, &s.keys, id).unwrap();
    // B: a query in progress.
    let mut b = hello(&s.enclave, &s.keys, id).unwrap();
    let input_b = b.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        b.start(&s.enclave, id, &input_b),
        Response::QueryStarted { .. }
    ));
    // Fill the table with half-open handshakes.
    while s.status().sessions < MAX_SESSIONS {
        half_open(&s).unwrap();
    }

    // A new client gets in: A, idle longest, is closed for it.
    let mut c = hello(&s.enclave, &s.keys, id).unwrap();
    assert_eq!(s.status().sessions, MAX_SESSIONS);
    let input_a = a.encrypt(&s.keys.public_key, &s.x);
    let err = error_of(a.start(&s.enclave, id, &input_a));
    assert!(err.contains("unknown or closed session"), "{err}");

    // More clients: the oldest half-open handshakes go, B's query does not.
    for _ in 0..3 {
        half_open(&s).unwrap();
    }
    let want = reference(&s.q, &s.x);
    for (dp, input) in [(&mut b, input_b), (&mut c, Vec::new())] {
        let input = if input.is_empty() {
            let input = dp.encrypt(&s.keys.public_key, &s.x);
            assert!(matches!(
                dp.start(&s.enclave, id, &input),
                Response::QueryStarted { .. }
            ));
            input
        } else {
            input
        };
        let session = dp.channel.session;
        match run_stages(&s.enclave, &s.host, session, input) {
            Response::Finished { payload } => {
                let r = dp.result(&s.keys, &payload);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&r.logits), bits(&want));
            }
            other => panic!("the query did not finish: {}", short(&other)),
        }
    }
}

#[test]
fn a_table_full_of_running_queries_refuses_new_clients() {
    let mut s = Setup::new();
    let id = s.model_id();
    let mut running = Vec::new();
    // Running queries only (every session started a thin query).
    while s.status().sessions < MAX_SESSIONS {
        running.push(start_thin(&s.enclave, &s.keys, id, std::slice::from_ref(&s.x)).unwrap());
    }
    let err = half_open(&s).unwrap_err();
    assert!(err.contains("none is idle"), "{err}");
    assert_eq!(s.status().sessions, MAX_SESSIONS);
}
