//! The relatives of issue 9's decryption oracle that go through the
//! enclave's restart and sealed state: one-bit answers from failed checks
//! (the lock, sealed so it survives a restart), budgets reset by a restart,
//! a rollback to an older sealed state (possible without a counter), and an
//! identity offered by the host. The registration and ownership attacks are
//! in `ownership_attacks.rs`.

mod common;

use common::ownership::{bits, query_as, report, setup_with};
use common::*;
use hetee_attest::platform::SimTee;
use hetee_attest::{Measurement, StaticKeypair};
use hetee_enclave::messages::{AllowList, ClientMessage, ModelTerms, OutputPolicy, SealedState};
use hetee_enclave::state::LOCKED;
use hetee_enclave::step::INTEGRITY_FAILURE;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};

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
