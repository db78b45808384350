//! Sealing: key sets, models and model states registered in one enclave
//! instance keep working in a restarted one with the same measurement (same
//! keys: ciphertexts made before the restart still decrypt; same budgets,
//! locks and allow lists), and nothing else can unseal them. The enclave's
//! identity and sealing key come from its platform, never from the host.

mod common;

use common::restart::*;
use common::*;
use hetee_attest::platform::{Platform, SimTee};
use hetee_attest::{Evidence, Measurement, PlatformKind, Policy, SimVerifier, StaticKeypair};
use hetee_enclave::messages::{
    key_set_binding, AllowList, ClientMessage, Incident, ModelTerms, OutputPolicy, SealedState,
};
use hetee_enclave::state::LOCKED;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response, Schedule};
use zeroize::Zeroizing;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What the host keeps across an enclave restart.
struct Stored {
    setup: Setup,
    /// An input encrypted (under the old public key) before the restart.
    old_input: Vec<Vec<u8>>,
    /// The seed its data provider encrypted it with (the provider keeps it).
    old_seed: [u8; 32],
    logits: Vec<f32>,
    /// The newest sealed state of the model.
    state: SealedState,
}

fn before_restart() -> Stored {
    let setup = Setup::new();
    let id = setup.model_id();
    let (logits, state) = query_as(
        &setup.enclave,
        &setup.keys,
        &setup.host,
        id,
        None,
        &setup.x.clone(),
    )
    .unwrap();
    assert_eq!(bits(&logits), bits(&reference(&setup.q, &setup.x)));
    // No budget: a query changes nothing in the state, so nothing new is sealed.
    assert!(state.is_none(), "an unbudgeted query sealed a new state");
    let state = setup.registered.state.clone();
    let dp = hello(&setup.enclave, &setup.keys, id).unwrap();
    let old_input = dp.encrypt(&setup.keys.public_key, &setup.x);
    let old_seed = dp.seed;
    Stored {
        old_seed,
        setup,
        old_input,
        logits,
        state,
    }
}

#[test]
fn restarted_enclave_restores_keys_and_model_and_old_ciphertexts_still_work() {
    let Stored {
        setup: old,
        old_input,
        old_seed,
        logits,
        state,
    } = before_restart();
    let Setup {
        enclave,
        q,
        x,
        keys: old_keys,
        host,
        registered,
    } = old;
    drop(enclave);

    // Restart: same measurement, so the platform gives the same sealing key.
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    match restore_keys(&e, &old_keys.sealed) {
        Response::KeysRestored { key_id } => assert_eq!(key_id, old_keys.key_id),
        other => panic!("RestoreKeys: {}", short(&other)),
    }
    match restore_model(&e, &registered.sealed) {
        Response::ModelRestored { model_id } => assert_eq!(model_id, registered.model_id),
        other => panic!("RestoreModel: {}", short(&other)),
    }
    let st = status(&e);
    assert_eq!((st.keysets, st.models, st.sessions), (1, 1, 0));

    // Same HE public key and owner; the channel key is new, so new evidence.
    let keys = reattest(&e, &old_keys);
    assert_ne!(
        keys.identity.channel_public_key,
        old_keys.identity.channel_public_key
    );

    // Without its state the model takes no query.
    let err = hello(&e, &keys, registered.model_id)
        .err()
        .expect("a model without its state was queried");
    assert!(
        err.contains("the model's state is not loaded; the host must restore it"),
        "{err}"
    );
    assert_eq!(status(&e).sessions, 0);
    match restore_state(&e, &state.sealed) {
        Response::StateRestored { model_id, version } => {
            assert_eq!((model_id, version), (registered.model_id, 1))
        }
        other => panic!("RestoreState: {}", short(&other)),
    }

    // A query with the input and the weights encrypted before the restart.
    // The same data provider sends its input again: it still has the seed.
    let mut dp = hello(&e, &keys, registered.model_id).unwrap();
    dp.seed = old_seed;
    let r = dp.start(&e, registered.model_id, &old_input);
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    match run_stages(&e, &host, dp.channel.session, old_input) {
        // Signed with the restarted enclave's (new, attested) result key.
        Response::Finished { payload } => {
            assert_eq!(bits(&dp.result(&keys, &payload).logits), bits(&logits))
        }
        other => panic!("{}", short(&other)),
    }
    // And a fresh one.
    let got = query(&e, &keys, &host, registered.model_id, &x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&q, &x)));

    // The restored upload is still registered once.
    let err = connect(&e, &keys, &register_message(&keys, &host))
        .err()
        .expect("a restored upload was registered again");
    assert!(err.contains("already registered"), "{err}");
}

/// The simulated platform with the same measurement on another machine: its
/// sealing key differs (a real TEE's sealing keys are per CPU).
struct OtherMachine(SimTee);

impl Platform for OtherMachine {
    fn kind(&self) -> PlatformKind {
        self.0.kind()
    }
    fn measurement(&self) -> Measurement {
        self.0.measurement()
    }
    fn evidence(&self, report_data: &[u8; 64]) -> hetee_attest::Result<Evidence> {
        self.0.evidence(report_data)
    }
    fn sealing_key(&self) -> hetee_attest::Result<Zeroizing<[u8; 32]>> {
        let mut k = self.0.sealing_key()?;
        k[0] ^= 1;
        Ok(k)
    }
}

/// A platform that gives no sealing key (as TDX in this build).
struct NoSealing(SimTee);

impl Platform for NoSealing {
    fn kind(&self) -> PlatformKind {
        self.0.kind()
    }
    fn measurement(&self) -> Measurement {
        self.0.measurement()
    }
    fn evidence(&self, report_data: &[u8; 64]) -> hetee_attest::Result<Evidence> {
        self.0.evidence(report_data)
    }
    fn sealing_key(&self) -> hetee_attest::Result<Zeroizing<[u8; 32]>> {
        Err(hetee_attest::Error::Platform(
            "no sealing key on this test platform".into(),
        ))
    }
}

#[test]
fn another_measurement_or_platform_cannot_unseal() {
    let Stored { setup, state, .. } = before_restart();
    let (sealed_keys, sealed_model) = (setup.keys.sealed.clone(), setup.registered.sealed.clone());

    let same = || SimTee::new(Measurement(MEASUREMENT));
    let mut other_measurement = attested_enclave([8; 32], EnclaveConfig::default());
    let mut other_machine = Enclave::new(Box::new(OtherMachine(same())), EnclaveConfig::default());
    assert_eq!(other_machine.measurement(), Measurement(MEASUREMENT));
    let mut no_sealing = Enclave::new(Box::new(NoSealing(same())), EnclaveConfig::default());
    for (name, e, want) in [
        ("other measurement", &mut other_measurement, "cannot unseal"),
        ("other machine", &mut other_machine, "cannot unseal"),
        (
            "no sealing key",
            &mut no_sealing,
            "TEE platform: no sealing key on this test platform",
        ),
    ] {
        let msg = error_of(restore_keys(e, &sealed_keys));
        assert!(msg.contains(want), "{name}: {msg}");
        let msg = error_of(restore_model(e, &sealed_model));
        assert!(msg.contains(want), "{name}: {msg}");
        let msg = error_of(restore_state(e, &state.sealed));
        assert!(msg.contains(want), "{name}: {msg}");
        let st = status(e);
        assert_eq!((st.keysets, st.models), (0, 0), "{name}");
    }
    // Without a sealing key nothing can be kept: the enclave makes no key set.
    let msg = error_of(no_sealing.handle(Request::CreateKeys {
        he: setup.host.schedule.he.clone(),
        owner: [1; 32],
    }));
    assert!(msg.contains("no sealing key"), "{msg}");
    assert_eq!(status(&no_sealing).keysets, 0);

    // The same measurement on the same platform can.
    restart(MEASUREMENT, &setup.keys, &sealed_model, &state);
}

#[test]
fn tampered_truncated_or_mixed_up_blobs_are_refused() {
    let Stored { setup, state, .. } = before_restart();
    let (sealed_keys, sealed_model) = (setup.keys.sealed.clone(), setup.registered.sealed.clone());
    let sealed_state = state.sealed.clone();
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());

    let flip = |b: &[u8], at: usize| {
        let mut v = b.to_vec();
        v[at] ^= 1;
        v
    };
    for bad in [
        flip(&sealed_keys, sealed_keys.len() / 2),
        flip(&sealed_keys, sealed_keys.len() - 1),
        sealed_keys[..sealed_keys.len() - 1].to_vec(),
        sealed_keys[..10].to_vec(),
        Vec::new(),
        sealed_model.clone(),
        sealed_state.clone(),
    ] {
        let msg = error_of(restore_keys(&e, &bad));
        assert!(msg.contains("cannot unseal"), "{msg}");
    }
    assert!(matches!(
        restore_keys(&e, &sealed_keys),
        Response::KeysRestored { .. }
    ));
    for bad in [
        flip(&sealed_model, sealed_model.len() / 2),
        flip(&sealed_model, 0),
        sealed_model[..sealed_model.len() - 1].to_vec(),
        sealed_model[..10].to_vec(),
        sealed_keys.clone(),
        sealed_state.clone(),
    ] {
        let msg = error_of(restore_model(&e, &bad));
        assert!(msg.contains("cannot unseal"), "{msg}");
    }
    let st = status(&e);
    assert_eq!((st.keysets, st.models), (1, 0));
    assert!(matches!(
        restore_model(&e, &sealed_model),
        Response::ModelRestored { .. }
    ));
    for bad in [
        flip(&sealed_state, sealed_state.len() / 2),
        flip(&sealed_state, 0),
        sealed_state[..sealed_state.len() - 1].to_vec(),
        Vec::new(),
        sealed_keys.clone(),
        sealed_model.clone(),
    ] {
        let msg = error_of(restore_state(&e, &bad));
        assert!(msg.contains("cannot unseal"), "{msg}");
    }
    // No state was loaded by any of them.
    let keys = reattest(&e, &setup.keys);
    let err = hello(&e, &keys, state.model_id)
        .err()
        .expect("queried without a state");
    assert!(err.contains("state is not loaded"), "{err}");
    assert!(matches!(
        restore_state(&e, &sealed_state),
        Response::StateRestored { version: 1, .. }
    ));
    assert!(hello(&e, &keys, state.model_id).is_ok());
}

#[test]
fn a_model_needs_its_keys_restored_first_and_a_state_its_model() {
    let Stored { setup, state, .. } = before_restart();
    let e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let msg = error_of(restore_model(&e, &setup.registered.sealed));
    assert!(msg.contains("restore the model's key set first"), "{msg}");
    assert_eq!(status(&e).models, 0);

    // Another key set (same parameters) is not its key set.
    let other = create_keys(&e, &setup.host.schedule.he);
    assert_ne!(other.key_id, setup.keys.key_id);
    let msg = error_of(restore_model(&e, &setup.registered.sealed));
    assert!(msg.contains("restore the model's key set first"), "{msg}");

    assert!(matches!(
        restore_keys(&e, &setup.keys.sealed),
        Response::KeysRestored { .. }
    ));
    let msg = error_of(restore_state(&e, &state.sealed));
    assert!(msg.contains("restore the state's model first"), "{msg}");
    assert!(matches!(
        restore_model(&e, &setup.registered.sealed),
        Response::ModelRestored { .. }
    ));
    assert!(matches!(
        restore_state(&e, &state.sealed),
        Response::StateRestored { version: 1, .. }
    ));
    let st = status(&e);
    assert_eq!((st.keysets, st.models), (2, 1));
}

/// Replaces the test of `Init` (removed): the host cannot give the enclave
/// an identity. Its measurement and evidence are the platform's, the
/// evidence binds each key set's owner, and the config is fixed at start.
#[test]
fn identity_and_evidence_come_from_the_platform_and_bind_the_owner() {
    let (q, _) = tiny_model();
    let he = Schedule::compile(&q, 1).unwrap().he;
    let m = Measurement([0x42; 32]);
    let config = EnclaveConfig {
        memory_budget_mib: 64,
    };
    let e = Enclave::new(Box::new(SimTee::new(m)), config);
    assert_eq!(e.measurement(), m);
    assert_eq!(status(&e).memory_budget, 64 << 20);

    let alice = std::sync::Arc::new(StaticKeypair::generate().unwrap());
    let bob = std::sync::Arc::new(StaticKeypair::generate().unwrap());
    let a = create_keys_for(&e, &he, alice.clone());
    let b = create_keys_for(&e, &he, bob.clone());
    for (keys, owner) in [(&a, &alice), (&b, &bob)] {
        let id = &keys.identity;
        assert_eq!(id.measurement, m.0);
        assert_eq!(&id.owner, owner.public());
        let ev = Evidence::decode(&keys.evidence).unwrap();
        assert_eq!(ev.platform, PlatformKind::Sim);
        assert_eq!(ev.measurement, m);
        assert!(!ev.debug);
        assert_eq!(ev.report_data, id.report_data());
        // First half: channel key, HE public key and parameters; second
        // half: key set, owner and result-signing key.
        assert_eq!(
            ev.report_data[..32],
            hetee_attest::report_data(&id.channel_public_key, &id.public_key_hash(), &id.he_params)
                [..32]
        );
        assert_eq!(
            ev.report_data[32..],
            key_set_binding(&id.key_id, owner.public(), &id.signing_public_key)
        );
        let policy = Policy {
            allow_sim: true,
            ..Policy::new(m)
        };
        policy
            .check(&SimVerifier::dev(), &ev, &id.report_data(), 0)
            .unwrap();
        // A client expecting another owner (or key set) rejects the evidence.
        let mut forged = id.clone();
        forged.owner = [0xAA; 32];
        let err = policy
            .check(&SimVerifier::dev(), &ev, &forged.report_data(), 0)
            .unwrap_err();
        assert!(err.to_string().contains("report data"), "{err}");
        // A client pinning another measurement too.
        assert!(Policy {
            allow_sim: true,
            ..Policy::new(Measurement(MEASUREMENT))
        }
        .check(&SimVerifier::dev(), &ev, &id.report_data(), 0)
        .is_err());
    }
    // Same enclave, same parameters: only the owner (and key id) differ.
    assert_eq!(a.identity.channel_public_key, b.identity.channel_public_key);
    assert_ne!(
        a.identity.report_data()[32..],
        b.identity.report_data()[32..]
    );

    // The config is measured: another budget, another measurement.
    let bin = b"enclave";
    assert_ne!(
        hetee_attest::measure(bin, &config.to_bytes()),
        hetee_attest::measure(bin, &EnclaveConfig::default().to_bytes())
    );
    assert_eq!(
        EnclaveConfig::from_bytes(&config.to_bytes()).unwrap(),
        config
    );
    let err =
        EnclaveConfig::from_bytes(b"hetee-enclave v2\ntransport=stdio\nmemory_budget_mib=1\n")
            .unwrap_err();
    assert!(
        err.to_string().contains("malformed enclave config"),
        "{err}"
    );
}

/// Budgets, allow lists and locks live in the sealed state: a fresh enclave
/// with the same measurement that restores the newest state enforces them;
/// an enclave that holds a newer state refuses an older one.
#[test]
fn budgets_allow_lists_and_locks_survive_a_restart() {
    let terms = ModelTerms {
        policy: OutputPolicy::Logits,
        query_budget: Some(2),
        lock_after: 1,
    };
    let s = Setup::with_terms(EnclaveConfig::default(), terms, AllowList::Open);
    let id = s.model_id();
    let sealed_model = s.registered.sealed.clone();
    let [alice, bob, carol] = [(); 3].map(|_| StaticKeypair::generate().unwrap());
    let x = s.x.clone();
    let want = bits(&reference(&s.q, &x));
    let run = |e: &Enclave, keys: &Keys, who: &StaticKeypair| {
        query_as(e, keys, &s.host, id, Some(who), &x).map(|(l, st)| {
            assert_eq!(bits(&l), want);
            st
        })
    };
    let spent = "this client's query budget for the model is spent";
    let unlisted = "this client key is not on the model's allow list";

    // Enclave A: alice spends her budget; the owner lists alice and bob.
    let mut newest = s.registered.state.clone();
    assert_eq!(newest.version, 1);
    for v in [2, 3] {
        newest = run(&s.enclave, &s.keys, &alice).unwrap().unwrap();
        assert_eq!(newest.version, v);
    }
    let err = run(&s.enclave, &s.keys, &alice).unwrap_err();
    assert!(err.contains(spent), "{err}");
    let allow = AllowList::Only(vec![*alice.public(), *bob.public()]);
    let (report, sealed) = manage(
        &s.enclave,
        &s.keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: allow.clone(),
        },
    )
    .unwrap();
    newest = sealed.expect("a new allow list gives a new sealed state");
    assert_eq!((report.version, newest.version), (4, 4));
    let v4 = newest.clone();
    drop(s.enclave);

    // Enclave B, restarted from version 4.
    let e = restart(MEASUREMENT, &s.keys, &sealed_model, &newest);
    let keys = reattest(&e, &s.keys);
    let err = run(&e, &keys, &alice).unwrap_err();
    assert!(err.contains(spent), "{err}");
    let err = run(&e, &keys, &carol).unwrap_err();
    assert!(err.contains(unlisted), "{err}");
    newest = run(&e, &keys, &bob).unwrap().unwrap();
    assert_eq!(newest.version, 5);
    let (report, sealed) = manage(&e, &keys, &ClientMessage::ModelStatus { model_id: id }).unwrap();
    assert!(sealed.is_none(), "reading the status changed the state");
    assert_eq!(report.version, 5);
    assert_eq!(report.allow, allow);
    assert_eq!(report.terms, terms);
    let mut want_spent = vec![(*alice.public(), 2), (*bob.public(), 1)];
    want_spent.sort();
    assert_eq!(report.spent, want_spent);
    assert!(!report.locked);

    // Bob's next query fails its check (the host evaluates another input):
    // the model locks, and the refusal carries the new sealed state.
    let mut dp = hello_as(&e, &keys, Some(&bob), id).unwrap();
    let input = dp.encrypt(&keys.public_key, &x);
    let other = dp.encrypt(&keys.public_key, &other_input());
    match dp.start(&e, id, &input) {
        Response::QueryStarted {
            input: None,
            state: Some(state),
        } => assert_eq!(state.version, 6),
        other => panic!("{}", short(&other)),
    }
    newest = match e.handle(Request::StageResult {
        session: dp.channel.session,
        stage: 0,
        ciphertexts: s.host.evaluate(0, &other),
    }) {
        Response::Error {
            message,
            state: Some(state),
        } => {
            assert!(message.contains("integrity"), "{message}");
            state
        }
        other => panic!("a failed check gave {}", short(&other)),
    };
    assert_eq!((newest.model_id, newest.version), (id, 7));
    let v7 = newest.clone();
    drop(e);

    // Enclave C, restarted from version 7: still locked, with the incident.
    let e = restart(MEASUREMENT, &s.keys, &sealed_model, &newest);
    let keys = reattest(&e, &s.keys);
    let err = run(&e, &keys, &alice).unwrap_err();
    assert!(err.contains(LOCKED), "{err}");
    let (report, _) = manage(&e, &keys, &ClientMessage::ModelStatus { model_id: id }).unwrap();
    assert!(report.locked);
    assert_eq!((report.version, report.failures), (7, 1));
    assert_eq!(
        report.incidents,
        vec![Incident {
            seq: 1,
            stage: 0,
            client: *bob.public()
        }]
    );
    assert_eq!(
        report
            .spent
            .iter()
            .find(|(k, _)| k == bob.public())
            .unwrap()
            .1,
        2
    );

    // The owner unlocks and opens the model to everyone: carol may query,
    // alice's budget is still spent.
    let (report, sealed) = manage(&e, &keys, &ClientMessage::Unlock { model_id: id }).unwrap();
    assert!(!report.locked && report.incidents.is_empty() && report.failures == 0);
    assert_eq!(sealed.unwrap().version, 8);
    let (_, sealed) = manage(
        &e,
        &keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: AllowList::Open,
        },
    )
    .unwrap();
    assert_eq!(sealed.unwrap().version, 9);
    newest = run(&e, &keys, &carol).unwrap().unwrap();
    assert_eq!(newest.version, 10);
    let err = run(&e, &keys, &alice).unwrap_err();
    assert!(err.contains(spent), "{err}");

    // The host replays older states into the enclave holding version 10.
    for old in [&v4, &v7] {
        let msg = error_of(restore_state(&e, &old.sealed));
        assert!(
            msg.contains(&format!(
                "a newer state (version 10) of this model is loaded; version {} is a replay",
                old.version
            )),
            "{msg}"
        );
    }
    let (report, _) = manage(&e, &keys, &ClientMessage::ModelStatus { model_id: id }).unwrap();
    assert_eq!((report.version, report.locked), (10, false));
    assert_eq!(report.allow, AllowList::Open);
    // The newest copy itself may be restored again.
    assert!(matches!(
        restore_state(&e, &newest.sealed),
        Response::StateRestored { version: 10, .. }
    ));
    drop(e);

    // Another measurement cannot unseal the state.
    let other = attested_enclave([8; 32], EnclaveConfig::default());
    let msg = error_of(restore_state(&other, &newest.sealed));
    assert!(msg.contains("cannot unseal"), "{msg}");

    // What a fresh enclave cannot tell (no monotonic counter): an older
    // copy restored after a restart. Its owner sees the version go back.
    let e = restart(MEASUREMENT, &s.keys, &sealed_model, &v7);
    let keys = reattest(&e, &s.keys);
    let (report, _) = manage(&e, &keys, &ClientMessage::ModelStatus { model_id: id }).unwrap();
    assert_eq!((report.version, report.locked), (7, true));
    // Once it holds the newest copy again, the older one is refused.
    assert!(matches!(
        restore_state(&e, &newest.sealed),
        Response::StateRestored { version: 10, .. }
    ));
    let msg = error_of(restore_state(&e, &v7.sealed));
    assert!(msg.contains("is a replay"), "{msg}");
}
