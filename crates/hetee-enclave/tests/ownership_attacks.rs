//! The decryption oracle of issue 9 and its relatives, mounted against the
//! enclave: a spy model registered under someone else's key set, a sparse
//! check vector, one-bit answers from failed checks, unlisted clients,
//! budgets reset by a restart, and an identity offered by the host. Each
//! attack is first shown to have a target (what it would recover), then
//! shown to recover nothing.

mod common;

use std::sync::Arc;

use common::*;
use fhe_traits::DeserializeParametrized;
use hetee_attest::platform::SimTee;
use hetee_attest::{Measurement, StaticKeypair};
use hetee_enclave::messages::{AllowList, ClientMessage, ModelTerms, OutputPolicy, SealedState};
use hetee_enclave::state::LOCKED;
use hetee_enclave::step::INTEGRITY_FAILURE;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use hetee_model::quant::StageOutput;
use hetee_model::QuantModel;
use zeroize::Zeroizing;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const NOT_OWNER: &str = "only the key set's owner";

/// The spy of issue 9: a one-stage model shaped like the victim's first
/// layer (shape and packing are public) whose outputs select input values
/// and are released as logits, compiled under the victim's HE parameters.
fn spy(s: &Setup) -> (QuantModel, Schedule) {
    let mut st = s.q.stages[0].clone();
    let n: usize = st.input_shape.iter().product();
    let m = st.out_channels;
    st.weight = vec![0; m * n];
    for o in 0..m.min(n) {
        st.weight[o * n + o] = 1;
    }
    st.bias = vec![0; m];
    st.post.clear();
    st.output = StageOutput::Logits;
    st.output_shape = st.linear_output_shape();
    st.acc_scale = vec![1.0; m];
    st.reads = hetee_model::TensorRef::Input;
    let q = QuantModel {
        input_shape: s.q.input_shape.clone(),
        input: s.q.input.clone(),
        stages: vec![st.clone()],
        joins: Vec::new(),
        output_shape: Vec::new(),
        softmax: false,
    };
    let mut schedule = s.host.schedule.clone();
    let mut layer = schedule.stages.swap_remove(0);
    layer.tail = hetee_model::quant::QuantStage {
        weight: Vec::new(),
        ..st
    };
    schedule.stages = vec![layer];
    (q, schedule)
}

/// Opens a channel to `keys`' key set as `who` and sends `msg`.
fn as_client(s: &mut Setup, who: &StaticKeypair, msg: &ClientMessage) -> Result<Opened, String> {
    connect_as(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        &s.keys.identity.channel_public_key,
        Some(who),
        msg,
    )
}

/// A query as the data provider `who`; its logits or the refusal.
fn query_as(s: &mut Setup, who: &StaticKeypair, x: &[f32]) -> Result<Vec<f32>, String> {
    let id = s.model_id();
    let mut dp = hello_as(&s.enclave, &s.keys, Some(who), id)?;
    let input = dp.encrypt(&s.keys.public_key, x);
    match dp.start(&s.enclave, id, &input) {
        Response::QueryStarted { .. } => {}
        Response::Error { message, .. } => return Err(message),
        other => panic!("StartQuery: {}", short(&other)),
    }
    match run_stages(&s.enclave, &s.host, dp.channel.session, input) {
        Response::Finished { payload } => Ok(dp.result(&s.keys, &payload).logits.to_vec()),
        Response::Error { message, .. } => Err(message),
        other => panic!("last stage: {}", short(&other)),
    }
}

/// A model's state as its owner reads it.
fn report(s: &mut Setup) -> hetee_enclave::messages::ModelReport {
    let id = s.model_id();
    let keys = s.keys.clone();
    manage(
        &s.enclave,
        &keys,
        &ClientMessage::ModelStatus { model_id: id },
    )
    .unwrap()
    .0
}

/// The tiny model registered with `terms` and `allow`.
fn setup_with(terms: ModelTerms, allow: AllowList) -> Setup {
    let mut s = Setup::new();
    let schedule = s.host.schedule.clone();
    let keys = create_keys(&s.enclave, &schedule.he);
    let host = HostModel::new(&s.q, &schedule, &keys.public_key);
    let msg = register_message_terms(&keys, &host, terms, allow);
    s.registered = register_with(&s.enclave, &keys, &msg);
    s.keys = keys;
    s.host = host;
    s
}

/// Issue 9's attack 1. The host registers the spy under the victim's key
/// set (refused: the key set is the model provider's), then under a key
/// set of its own, where it feeds the victim's ciphertexts in as a stage
/// result: they decrypt under the wrong key and fail the enclave's check.
#[test]
fn attack_host_registers_a_spy_under_another_providers_key_set() {
    let mut s = Setup::new();
    let victim_id = s.model_id();
    let (spy_q, spy_schedule) = spy(&s);
    let host_key = StaticKeypair::generate().unwrap();
    // The target: a victim's query in flight, its input and stage result.
    let mut victim = hello(&s.enclave, &s.keys, victim_id).unwrap();
    let victim_input = victim.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        victim.start(&s.enclave, victim_id, &victim_input),
        Response::QueryStarted { .. }
    ));
    let victim_result = s.host.evaluate(0, &victim_input);

    // (a) Under the victim's key set: refused, nothing stored.
    let spy_host = HostModel::new(&spy_q, &spy_schedule, &s.keys.public_key);
    let before = status(&s.enclave);
    let msg = register_message(&s.keys, &spy_host);
    let err = as_client(&mut s, &host_key, &msg)
        .err()
        .expect("the host registered a model under the victim's key set");
    assert!(err.contains(NOT_OWNER), "{err}");
    let after = status(&s.enclave);
    assert_eq!(
        (before.models, before.sessions),
        (after.models, after.sessions)
    );

    // (b) Under the host's own key set: registered, but the victim's
    // ciphertexts are no results of it.
    let host_keys = create_keys_for(
        &s.enclave,
        &s.host.schedule.he,
        Arc::new(StaticKeypair::generate().unwrap()),
    );
    let own_host = HostModel::new(&spy_q, &spy_schedule, &host_keys.public_key);
    let lenient = ModelTerms {
        lock_after: 1_000_000,
        ..ModelTerms::default()
    };
    let msg = register_message_terms(&host_keys, &own_host, lenient, AllowList::Open);
    let own = register_with(&s.enclave, &host_keys, &msg);
    // The victim's input as a stage result: switched to the output level,
    // with a zero third polynomial (what issue 9's spy sent).
    let input_as_result: Vec<Vec<u8>> = victim_input
        .iter()
        .map(|c| {
            use fhe::bfv::Ciphertext;
            let mut ct = hetee_he::codec::ciphertext_from_bytes(c, &s.host.par, 2).unwrap();
            ct.switch_to_level(hetee_he::eval::output_level(&s.host.par))
                .unwrap();
            let mut zero = ct[1].clone();
            zero -= &ct[1];
            let ct3 =
                Ciphertext::new(vec![ct[0].clone(), ct[1].clone(), zero], &s.host.par).unwrap();
            hetee_he::codec::ciphertext_to_bytes(&ct3)
        })
        .collect();
    let count = spy_schedule.stages[0].packing.output_count();
    let mut padded = input_as_result.clone();
    padded.resize(count, input_as_result[0].clone());
    padded.truncate(count);
    for forged in [victim_result.clone(), padded] {
        let mut spy_dp = hello(&s.enclave, &host_keys, own.model_id).unwrap();
        let input = spy_dp.encrypt(&host_keys.public_key, &s.x);
        assert!(matches!(
            spy_dp.start(&s.enclave, own.model_id, &input),
            Response::QueryStarted { .. }
        ));
        let r = s.enclave.handle(Request::StageResult {
            session: spy_dp.channel.session,
            stage: 0,
            ciphertexts: forged,
        });
        match r {
            Response::Error { message, .. } => assert_eq!(message, INTEGRITY_FAILURE),
            other => panic!("the spy released: {}", short(&other)),
        }
    }
    // The victim's query is unaffected.
    match run_stages(&s.enclave, &s.host, victim.channel.session, victim_input) {
        Response::Finished { payload } => {
            let r = victim.result(&s.keys, &payload);
            assert_eq!(bits(&r.logits), bits(&reference(&s.q, &s.x)));
        }
        other => panic!("the victim's query failed: {}", short(&other)),
    }
}

/// Attack 2: a data provider (who can open channels to the key set) tries
/// the same, and the owner's other messages, through its own channel.
#[test]
fn attack_data_provider_registers_or_manages_through_its_own_channel() {
    let mut s = Setup::new();
    let id = s.model_id();
    let dp_key = StaticKeypair::generate().unwrap();
    // The data provider may query.
    let x = s.x.clone();
    let got = query_as(&mut s, &dp_key, &x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&s.q, &s.x)));
    let (spy_q, spy_schedule) = spy(&s);
    let spy_host = HostModel::new(&spy_q, &spy_schedule, &s.keys.public_key);
    let before = status(&s.enclave);
    let attempts = [
        register_message(&s.keys, &spy_host),
        ClientMessage::ModelStatus { model_id: id },
        ClientMessage::Unlock { model_id: id },
        ClientMessage::SetAllowList {
            model_id: id,
            allow: AllowList::Only(vec![*dp_key.public()]),
        },
    ];
    for msg in &attempts {
        let err = as_client(&mut s, &dp_key, msg)
            .err()
            .expect("a data provider acted as the owner");
        assert!(err.contains(NOT_OWNER), "{err}");
    }
    let after = status(&s.enclave);
    assert_eq!(
        (before.models, before.sessions),
        (after.models, after.sessions)
    );
    // The owner's state did not move.
    let r = report(&mut s);
    assert_eq!(r.allow, AllowList::Open);
    assert_eq!(r.version, 1);
}

/// Attack 3: the registrant used to choose `r`; an `r` that is zero at
/// some outputs let forged values through there. Now the enclave draws `r`
/// over every output: a +1 at any single output of any stage is refused.
#[test]
fn attack_forged_output_that_a_sparse_r_would_skip_is_refused() {
    let terms = ModelTerms {
        lock_after: 1_000_000,
        ..ModelTerms::default()
    };
    let s = setup_with(terms, AllowList::Open);
    let id = s.model_id();
    for k in 0..s.host.schedule.stages.len() {
        let outputs: usize = s.host.schedule.stages[k]
            .tail
            .linear_output_shape()
            .iter()
            .product();
        let positions = s.host.schedule.stages[k].packing.output_count();
        let n = s.host.schedule.he.degree;
        // Where each linear output is read: label every coefficient.
        let labels: Vec<Vec<i64>> = (0..positions)
            .map(|p| (0..n).map(|i| (p * n + i + 1) as i64).collect())
            .collect();
        let read = s.host.schedule.unpack_stage_output(k, &labels).unwrap();
        assert_eq!(read[0].len(), outputs);
        for (j, &label) in read[0].iter().enumerate() {
            let (p, i) = ((label - 1) as usize / n, (label - 1) as usize % n);
            let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
            let mut input = dp.encrypt(&s.keys.public_key, &s.x);
            assert!(matches!(
                dp.start(&s.enclave, id, &input),
                Response::QueryStarted { .. }
            ));
            for stage in 0..k {
                match s.enclave.handle(Request::StageResult {
                    session: dp.channel.session,
                    stage: stage as u32,
                    ciphertexts: s.host.evaluate(stage, &input),
                }) {
                    Response::NextInput { ciphertexts, .. } => input = ciphertexts,
                    other => panic!("{}", short(&other)),
                }
            }
            let mut forged = s.host.evaluate(k, &input);
            let mut delta = vec![0i64; n];
            delta[i] = 1;
            let pk = fhe::bfv::PublicKey::from_bytes(&s.keys.public_key, &s.host.par).unwrap();
            forged[p] = plus(&forged[p], &delta, &pk, &s.host.par);
            match s.enclave.handle(Request::StageResult {
                session: dp.channel.session,
                stage: k as u32,
                ciphertexts: forged,
            }) {
                Response::Error { message, .. } => {
                    assert_eq!(message, INTEGRITY_FAILURE, "stage {k} output {j}")
                }
                other => panic!("stage {k} output {j} + 1 went through: {}", short(&other)),
            }
        }
    }
}

/// `ct + Enc(delta)` at the output level of a stage result.
fn plus(
    ct: &[u8],
    delta: &[i64],
    pk: &fhe::bfv::PublicKey,
    par: &Arc<fhe::bfv::BfvParameters>,
) -> Vec<u8> {
    use fhe::bfv::{Ciphertext, Encoding, Plaintext};
    use fhe_traits::{FheEncoder, FheEncrypter};
    let c = hetee_he::codec::ciphertext_from_bytes(ct, par, 3).unwrap();
    let level = hetee_he::eval::output_level(par);
    let pt = Plaintext::try_encode(delta, Encoding::poly(), par).unwrap();
    let mut e: Ciphertext = pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
    e.switch_to_level(level).unwrap();
    let mut zero = e[1].clone();
    zero -= &e[1];
    let e = Ciphertext::new(vec![e[0].clone(), e[1].clone(), zero], par).unwrap();
    hetee_he::codec::ciphertext_to_bytes(&(&c + &e))
}

/// Attack 4: every failed check used to be a one-bit answer, unlimited in
/// the host's own sessions with fresh client keys. Now one failed check
/// locks the model for every key, fresh ones and running sessions
/// included, until the owner, who sees the incident, unlocks it; and the
/// lock is sealed, so it survives a restart.
#[test]
fn attack_failed_check_locks_the_model_for_every_key() {
    let mut s = Setup::new();
    let id = s.model_id();
    let honest_key = StaticKeypair::generate().unwrap();
    // A bystander mid-query, and a query of the host's own.
    let mut by = hello_as(&s.enclave, &s.keys, Some(&honest_key), id).unwrap();
    let by_input = by.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        by.start(&s.enclave, id, &by_input),
        Response::QueryStarted { .. }
    ));
    let host_key = StaticKeypair::generate().unwrap();
    let host_public = *host_key.public();
    let mut own = hello_as(&s.enclave, &s.keys, Some(&host_key), id).unwrap();
    let own_input = own.encrypt(&s.keys.public_key, &other_input());
    assert!(matches!(
        own.start(&s.enclave, id, &own_input),
        Response::QueryStarted { .. }
    ));
    // One forged bit: the honest result scaled by 2.
    let doubled: Vec<Vec<u8>> = s
        .host
        .evaluate(0, &own_input)
        .iter()
        .map(|c| {
            let ct = hetee_he::codec::ciphertext_from_bytes(c, &s.host.par, 3).unwrap();
            hetee_he::codec::ciphertext_to_bytes(&(&ct + &ct))
        })
        .collect();
    let state: SealedState = match s.enclave.handle(Request::StageResult {
        session: own.channel.session,
        stage: 0,
        ciphertexts: doubled,
    }) {
        Response::Error {
            message,
            state: Some(state),
        } => {
            assert_eq!(message, INTEGRITY_FAILURE);
            state
        }
        other => panic!(
            "the forgery was not refused with a new state: {}",
            short(&other)
        ),
    };
    // Every way on is refused with the one fixed message.
    let r = s.enclave.handle(Request::StageResult {
        session: by.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &by_input),
    });
    assert_eq!(
        error_of(r),
        format!("protocol: {LOCKED}"),
        "running session"
    );
    for who in [
        honest_key,
        host_key,
        StaticKeypair::generate().unwrap(),
        StaticKeypair::generate().unwrap(),
    ] {
        let err = hello_as(&s.enclave, &s.keys, Some(&who), id).err();
        assert_eq!(err.as_deref(), Some(format!("protocol: {LOCKED}").as_str()));
    }
    // The owner sees the incident.
    let r = report(&mut s);
    assert!(r.locked);
    assert_eq!(r.failures, 1);
    assert_eq!(r.incidents.len(), 1);
    assert_eq!(r.incidents[0].stage, 0);
    assert_eq!(r.incidents[0].client, host_public);
    assert_eq!(r.version, state.version);

    // The lock survives a restart: a fresh enclave restores the sealed state.
    restart(&mut s, &state);
    let err = hello(&s.enclave, &s.keys, id).err();
    assert_eq!(err.as_deref(), Some(format!("protocol: {LOCKED}").as_str()));

    // The owner unlocks; queries are answered again, bit for bit.
    let keys = s.keys.clone();
    let (r, new_state) =
        manage(&s.enclave, &keys, &ClientMessage::Unlock { model_id: id }).unwrap();
    assert!(!r.locked && r.incidents.is_empty());
    assert!(new_state.unwrap().version > state.version);
    let x = s.x.clone();
    assert_eq!(bits(&s.query(&x).unwrap()), bits(&reference(&s.q, &x)));
}

/// The host restarts the enclave: a fresh one on the same platform gets
/// the setup's key set, model and `state` back; the clients fetch its new
/// evidence (its channel and signing keys are new).
fn restart(s: &mut Setup, state: &SealedState) {
    let fresh = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    restore(&fresh, s, state);
    s.enclave = fresh;
    let (identity, ev) = evidence(&s.enclave, s.keys.key_id);
    s.keys.identity = identity;
    s.keys.evidence = ev;
}

/// Restores a setup's key set, model and `state` into `e`.
fn restore(e: &Enclave, s: &Setup, state: &SealedState) {
    let r = e.handle(Request::RestoreKeys {
        sealed: s.keys.sealed.clone(),
    });
    assert!(matches!(r, Response::KeysRestored { .. }), "{}", short(&r));
    let r = e.handle(Request::RestoreModel {
        sealed: s.registered.sealed.clone(),
    });
    assert!(matches!(r, Response::ModelRestored { .. }), "{}", short(&r));
    let r = e.handle(Request::RestoreState {
        sealed: state.sealed.clone(),
    });
    assert!(matches!(r, Response::StateRestored { .. }), "{}", short(&r));
}

/// Attack 5: a data provider the owner did not list is refused, whatever
/// key it makes up; the owner can change the list later.
#[test]
fn attack_unlisted_data_provider_key_is_refused() {
    let listed = StaticKeypair::generate().unwrap();
    let mut s = setup_with(
        ModelTerms::default(),
        AllowList::Only(vec![*listed.public()]),
    );
    let x = s.x.clone();
    let want = bits(&reference(&s.q, &x));
    assert_eq!(bits(&query_as(&mut s, &listed, &x).unwrap()), want);
    let stranger = StaticKeypair::generate().unwrap();
    for _ in 0..3 {
        let err = query_as(&mut s, &StaticKeypair::generate().unwrap(), &x).unwrap_err();
        assert!(err.contains("not on the model's allow list"), "{err}");
    }
    let err = query_as(&mut s, &stranger, &x).unwrap_err();
    assert!(err.contains("not on the model's allow list"), "{err}");
    // The owner swaps the list: the stranger is in, the first key out.
    let id = s.model_id();
    let keys = s.keys.clone();
    let (r, state) = manage(
        &s.enclave,
        &keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: AllowList::Only(vec![*stranger.public()]),
        },
    )
    .unwrap();
    assert_eq!(r.allow, AllowList::Only(vec![*stranger.public()]));
    assert!(state.is_some());
    assert_eq!(bits(&query_as(&mut s, &stranger, &x).unwrap()), want);
    let err = query_as(&mut s, &listed, &x).unwrap_err();
    assert!(err.contains("not on the model's allow list"), "{err}");
}

/// Attack 6 (enclave side; the server side is in the `hetee` crate's
/// tests): budgets used to live in enclave memory, so restarting the
/// enclave reset them. Now they are sealed with the model's state and
/// restored, and an enclave holding a newer state refuses an older one.
#[test]
fn attack_budget_survives_an_enclave_restart() {
    let terms = ModelTerms {
        policy: OutputPolicy::Logits,
        query_budget: Some(2),
        lock_after: 1,
    };
    let mut s = setup_with(terms, AllowList::Open);
    let dp = StaticKeypair::generate().unwrap();
    let x = s.x.clone();
    let mut states = Vec::new();
    for _ in 0..2 {
        let id = s.model_id();
        let mut q = hello_as(&s.enclave, &s.keys, Some(&dp), id).unwrap();
        let input = q.encrypt(&s.keys.public_key, &x);
        match q.start(&s.enclave, id, &input) {
            Response::QueryStarted { state, .. } => states.push(state.unwrap()),
            other => panic!("{}", short(&other)),
        }
        assert!(matches!(
            run_stages(&s.enclave, &s.host, q.channel.session, input),
            Response::Finished { .. }
        ));
    }
    let err = query_as(&mut s, &dp, &x).unwrap_err();
    assert!(err.contains("budget"), "{err}");
    // The host restarts the enclave and restores what it stored.
    restart(&mut s, &states[1]);
    // Replaying the older state into it is refused.
    let r = s.enclave.handle(Request::RestoreState {
        sealed: states[0].sealed.clone(),
    });
    assert!(error_of(r).contains("is a replay"));
    let err = query_as(&mut s, &dp, &x).unwrap_err();
    assert!(err.contains("budget"), "{err}");
    // Another key still has its own budget.
    let other = StaticKeypair::generate().unwrap();
    assert_eq!(
        bits(&query_as(&mut s, &other, &x).unwrap()),
        bits(&reference(&s.q, &x))
    );
    // Sealed state opens only under the same measurement.
    let elsewhere = attested_enclave([8; 32], EnclaveConfig::default());
    let r = elsewhere.handle(Request::RestoreState {
        sealed: states[1].sealed.clone(),
    });
    assert!(error_of(r).contains("cannot unseal"));
}

/// What the sealed state cannot stop on the simulated platform (no
/// monotonic counter): a host that restarts the enclave and restores an
/// older copy of the state gets the budget spent back. README Security
/// states this; the owner sees the version go back.
#[test]
fn rollback_to_an_older_sealed_state_is_possible_without_a_counter() {
    let terms = ModelTerms {
        query_budget: Some(1),
        ..ModelTerms::default()
    };
    let mut s = setup_with(terms, AllowList::Open);
    let first = s.registered.state.clone();
    let dp = StaticKeypair::generate().unwrap();
    let x = s.x.clone();
    query_as(&mut s, &dp, &x).unwrap();
    assert!(query_as(&mut s, &dp, &x).is_err());
    restart(&mut s, &first);
    assert!(query_as(&mut s, &dp, &x).is_ok());
    assert_eq!(report(&mut s).version, first.version + 1);
}

/// Attack 7: the host used to hand the enclave its measurement and sealing
/// secret in `Init`. Now there is no such request: the measurement,
/// evidence and sealing key come from the platform. A legacy `Init` frame
/// is refused and changes nothing; blobs sealed under a host-chosen
/// secret or by another measurement do not open.
#[test]
fn attack_enclave_ignores_identity_offered_by_the_host() {
    let chosen_measurement = [0xee; 32];
    let chosen_secret = [0x11; 32];
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    // The legacy Init request, in the old wire encoding (variant 0).
    let mut legacy = vec![0u8];
    legacy.extend_from_slice(&chosen_measurement);
    legacy.extend_from_slice(&chosen_secret);
    let config = EnclaveConfig::default().to_bytes();
    legacy.push(config.len() as u8);
    legacy.extend_from_slice(&config);
    let codec = hetee_proto::wire::codec();
    let mut input = Vec::new();
    codec
        .write(&mut input, hetee_proto::wire::KIND_REQUEST, &legacy)
        .unwrap();
    let mut output = Vec::new();
    hetee_enclave::stream::serve(&e, &mut input.as_slice(), &mut output, 1).unwrap();
    let answer = codec
        .read_kind(&mut output.as_slice(), hetee_proto::wire::KIND_RESPONSE)
        .unwrap();
    let (_, answer) = hetee_proto::wire::decode_response(&answer).unwrap();
    assert!(
        matches!(answer, Response::Error { .. }),
        "{}",
        short(&answer)
    );
    // The identity is the platform's.
    let keys = create_keys(&e, &Schedule::compile(&tiny_model().0, 1).unwrap().he);
    assert_eq!(keys.identity.measurement, MEASUREMENT);
    let ev = hetee_attest::Evidence::decode(&keys.evidence).unwrap();
    assert_eq!(ev.measurement, Measurement(MEASUREMENT));
    assert_eq!(ev.report_data, keys.identity.report_data());
    // A key set sealed with the host's chosen secret and measurement (what
    // the old Init made the enclave use) does not open.
    let forged_keys = hetee_enclave::keys::Sealer {
        secret: zeroize::Zeroizing::new(chosen_secret),
        measurement: Measurement(MEASUREMENT),
    }
    .create_keys(keys.identity_he(), [0; 32])
    .unwrap()
    .1;
    let r = e.handle(Request::RestoreKeys {
        sealed: forged_keys,
    });
    assert!(error_of(r).contains("cannot unseal"));
    // Nor does one sealed by an enclave whose platform has the host's
    // chosen measurement.
    let other = Enclave::new(
        Box::new(SimTee::new(Measurement(chosen_measurement))),
        EnclaveConfig::default(),
    );
    let theirs = create_keys(&other, &keys.identity_he());
    let r = e.handle(Request::RestoreKeys {
        sealed: theirs.sealed,
    });
    assert!(error_of(r).contains("cannot unseal"));
    // The enclave's own blob opens in a fresh enclave on the same platform.
    let again = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let r = again.handle(Request::RestoreKeys {
        sealed: keys.sealed.clone(),
    });
    assert!(matches!(r, Response::KeysRestored { .. }), "{}", short(&r));
}

trait IdentityHe {
    fn identity_he(&self) -> hetee_he::HeConfig;
}

impl IdentityHe for Keys {
    fn identity_he(&self) -> hetee_he::HeConfig {
        hetee_enclave::messages::he_params_from_bytes(&self.identity.he_params).unwrap()
    }
}

/// The checks are drawn from the weights sent at registration, not from
/// anything the host or a registrant chooses.
#[test]
fn attack_registration_with_other_weights_than_uploaded_fails_its_own_checks() {
    // The owner (colluding with the host) registers weights that differ from
    // the uploaded ones, hoping the checks then pass a forged evaluation:
    // the enclave checks against the weights it was given, so the host's
    // evaluation of the uploaded weights fails and nothing is released.
    let s = Setup::new();
    let schedule = s.host.schedule.clone();
    let keys = create_keys(&s.enclave, &schedule.he);
    let host = HostModel::new(&s.q, &schedule, &keys.public_key);
    // A weight that this input exercises: output 0, a nonzero input value.
    let xq = s.q.input.quantize(&s.x).unwrap();
    let j = xq.iter().position(|&v| v != 0).unwrap();
    let mut msg = register_message(&keys, &host);
    if let ClientMessage::RegisterModel { weights, .. } = &mut msg {
        let mut w: Vec<Vec<i8>> = weights.to_vec();
        w[0][j] = w[0][j].wrapping_add(1);
        *weights = Zeroizing::new(w);
    }
    let reg = register_with(&s.enclave, &keys, &msg);
    let got = query(&s.enclave, &keys, &host, reg.model_id, &s.x.clone());
    assert_eq!(got.unwrap_err(), INTEGRITY_FAILURE);
}
