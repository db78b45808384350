//! Sealing: key sets and models registered in one enclave instance keep
//! working in a restarted one with the same measurement and platform (same
//! keys: ciphertexts made before the restart still decrypt), and nothing
//! else can unseal them.

mod common;

use common::*;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};

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
}

fn before_restart() -> Stored {
    let mut setup = Setup::new();
    let id = setup.model_id();
    let logits = setup.query(&setup.x.clone()).unwrap();
    assert_eq!(bits(&logits), bits(&reference(&setup.q, &setup.x)));
    let dp = hello(&mut setup.enclave, &setup.keys, id).unwrap();
    let old_input = dp.encrypt(&setup.keys.public_key, &setup.x);
    let old_seed = dp.seed;
    Stored {
        old_seed,
        setup,
        old_input,
        logits,
    }
}

fn restore_keys(e: &mut Enclave, sealed: &[u8]) -> Response {
    e.handle(Request::RestoreKeys {
        sealed: sealed.to_vec(),
    })
}

fn restore_model(e: &mut Enclave, sealed: &[u8]) -> Response {
    e.handle(Request::RestoreModel {
        sealed: sealed.to_vec(),
    })
}

#[test]
fn restarted_enclave_restores_keys_and_model_and_old_ciphertexts_still_work() {
    let Stored {
        setup: old,
        old_input,
        old_seed,
        logits,
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

    // Restart: same measurement and platform secret.
    let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    match restore_keys(&mut e, &old_keys.sealed) {
        Response::KeysRestored { key_id } => assert_eq!(key_id, old_keys.key_id),
        other => panic!("RestoreKeys: {}", short(&other)),
    }
    match restore_model(&mut e, &registered.sealed) {
        Response::ModelRestored { model_id } => assert_eq!(model_id, registered.model_id),
        other => panic!("RestoreModel: {}", short(&other)),
    }
    let st = status(&mut e);
    assert_eq!((st.keysets, st.models, st.sessions), (1, 1, 0));

    // Same HE public key; the channel key is new, so new evidence.
    let id = identity(&mut e, old_keys.key_id);
    assert_eq!(id.public_key, old_keys.public_key);
    let keys = Keys {
        evidence: evidence_for(id.measurement, id.report_data()),
        identity: id,
        ..old_keys.clone()
    };

    // A query with the input and the weights encrypted before the restart.
    // The same data provider sends its input again: it still has the seed.
    let mut dp = hello(&mut e, &keys, registered.model_id).unwrap();
    dp.seed = old_seed;
    let r = dp.start(&mut e, registered.model_id, &old_input);
    assert!(
        matches!(r, Response::QueryStarted { input: None }),
        "{}",
        short(&r)
    );
    match run_stages(&mut e, &host, dp.channel.session, old_input) {
        // Signed with the restarted enclave's (new, attested) result key.
        Response::Finished { payload } => {
            assert_eq!(bits(&dp.result(&keys, &payload).logits), bits(&logits))
        }
        other => panic!("{}", short(&other)),
    }
    // And a fresh one.
    let got = query(&mut e, &keys, &host, registered.model_id, &x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&q, &x)));
}

#[test]
fn another_measurement_or_platform_cannot_unseal() {
    let Stored { setup, .. } = before_restart();
    let (sealed_keys, sealed_model) = (setup.keys.sealed.clone(), setup.registered.sealed.clone());

    let mut other_measurement = attested_enclave([8; 32], EnclaveConfig::default());
    let mut other_platform = Enclave::new();
    assert!(matches!(
        other_platform.handle(Request::Init {
            measurement: MEASUREMENT,
            platform_secret: [10; 32],
            config: EnclaveConfig::default().to_bytes(),
        }),
        Response::Ready
    ));
    // Local mode: the development measurement and secret.
    let mut local = Enclave::new();
    for (name, e) in [
        ("other measurement", &mut other_measurement),
        ("other platform", &mut other_platform),
        ("local mode", &mut local),
    ] {
        let msg = error_of(restore_keys(e, &sealed_keys));
        assert!(msg.contains("cannot unseal"), "{name}: {msg}");
        let msg = error_of(restore_model(e, &sealed_model));
        assert!(msg.contains("cannot unseal"), "{name}: {msg}");
        let st = status(e);
        assert_eq!((st.keysets, st.models), (0, 0), "{name}");
    }
}

#[test]
fn tampered_truncated_or_mixed_up_blobs_are_refused() {
    let Stored { setup, .. } = before_restart();
    let (sealed_keys, sealed_model) = (setup.keys.sealed.clone(), setup.registered.sealed.clone());
    let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());

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
    ] {
        let msg = error_of(restore_keys(&mut e, &bad));
        assert!(msg.contains("cannot unseal"), "{msg}");
    }
    assert!(matches!(
        restore_keys(&mut e, &sealed_keys),
        Response::KeysRestored { .. }
    ));
    for bad in [
        flip(&sealed_model, sealed_model.len() / 2),
        flip(&sealed_model, 0),
        sealed_model[..sealed_model.len() - 1].to_vec(),
        sealed_model[..10].to_vec(),
        sealed_keys.clone(),
    ] {
        let msg = error_of(restore_model(&mut e, &bad));
        assert!(msg.contains("cannot unseal"), "{msg}");
    }
    let st = status(&mut e);
    assert_eq!((st.keysets, st.models), (1, 0));
    assert!(matches!(
        restore_model(&mut e, &sealed_model),
        Response::ModelRestored { .. }
    ));
}

#[test]
fn a_model_needs_its_keys_restored_first() {
    let Stored { setup, .. } = before_restart();
    let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let msg = error_of(restore_model(&mut e, &setup.registered.sealed));
    assert!(msg.contains("restore the model's key set first"), "{msg}");
    assert_eq!(status(&mut e).models, 0);

    // Another key set (same parameters) is not its key set.
    let other = create_keys(&mut e, &setup.host.schedule.he);
    assert_ne!(other.key_id, setup.keys.key_id);
    let msg = error_of(restore_model(&mut e, &setup.registered.sealed));
    assert!(msg.contains("restore the model's key set first"), "{msg}");

    assert!(matches!(
        restore_keys(&mut e, &setup.keys.sealed),
        Response::KeysRestored { .. }
    ));
    assert!(matches!(
        restore_model(&mut e, &setup.registered.sealed),
        Response::ModelRestored { .. }
    ));
    let st = status(&mut e);
    assert_eq!((st.keysets, st.models), (2, 1));
}

#[test]
fn init_is_only_accepted_as_the_first_request() {
    let init = || init_request(MEASUREMENT, EnclaveConfig::default());
    // Twice.
    let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let msg = error_of(e.handle(init()));
    assert!(
        msg.contains("Init must be the enclave's first request"),
        "{msg}"
    );

    // After any other request.
    let mut e = Enclave::new();
    assert!(matches!(e.handle(Request::Status), Response::Status(_)));
    let msg = error_of(e.handle(init()));
    assert!(
        msg.contains("Init must be the enclave's first request"),
        "{msg}"
    );

    // After keys and a model are loaded in a running enclave.
    let Stored { mut setup, .. } = before_restart();
    let msg = error_of(setup.enclave.handle(init()));
    assert!(msg.contains("first request"), "{msg}");
    // ...which keeps serving.
    let x = setup.x.clone();
    assert_eq!(
        bits(&setup.query(&x).unwrap()),
        bits(&reference(&setup.q, &x))
    );

    // A malformed config is refused (and a later Init is still not first).
    let mut e = Enclave::new();
    let msg = error_of(e.handle(Request::Init {
        measurement: MEASUREMENT,
        platform_secret: PLATFORM_SECRET,
        config: b"hetee-enclave v2\ntransport=stdio\nmemory_budget_mib=1\n".to_vec(),
    }));
    assert!(msg.contains("malformed enclave config"), "{msg}");
}
