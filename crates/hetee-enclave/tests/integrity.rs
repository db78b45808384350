//! Integrity checks, thin queries, output policies and query budgets over
//! the attested protocol: a wrong stage result fails the Freivalds check and
//! locks the model, registrations need well-formed terms, budgets are per
//! client key.
mod common;

use common::session_fixtures::*;
use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::budget;
use hetee_enclave::messages::{
    thin_input_digest, AllowList, ClientMessage, Incident, ModelTerms, OutputPolicy,
};
use hetee_enclave::state::LOCKED;
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};

// The budget is enforced only with the counting allocator installed.
#[global_allocator]
static METER: budget::Meter = budget::Meter;

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
