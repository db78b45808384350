//! Sealed blobs the host hands back to the enclave.
//!
//! The enclave runs on the simulated platform with measurement `[7; 32]`;
//! its sealing key is the platform's (`SimTee::sealing_key`). The first
//! input byte picks the mode, the rest is the payload:
//! - 0: `seal::unseal` of arbitrary bytes under the three labels
//!   (`keys-v2`, `model-v3`, `state-v1`: the host's view, forged blobs);
//! - 1 / 2 / 3: `RestoreKeys` / `RestoreModel` / `RestoreState` of arbitrary
//!   blobs through `Enclave::handle` (for a model, the fixed key set is
//!   restored first; for a state, the fixed key set and model);
//! - 4 / 5 / 6: the payload is the *plaintext* of a key set / model / model
//!   state: it is sealed with the platform's key (as if the sealing key had
//!   leaked) and restored. This reaches the `postcard` decoding of the
//!   snapshots, the schedule and check validation, `fhe`'s
//!   `SecretKey`/`PublicKey` deserializers and the state's replay check. A
//!   key set that restores is then used to encrypt and decrypt (what a
//!   query does); a state that restores is restored again and then an older
//!   copy (version 1) is offered.
//!
//! The fixed key set has key id `[0xAA; 16]` and the tiny test model's
//! parameters; the fixed model has id `[5; 16]` (see `seeds.rs`, which
//! writes the same plaintexts).
//!
//! Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use hetee_attest::platform::{Platform, SimTee};
use hetee_attest::seal::{seal, unseal};
use hetee_enclave::keys::Sealer;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};
use libfuzzer_sys::fuzz_target;

#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::{MEASUREMENT, STATE_LABEL};

struct Fixed {
    secret: [u8; 32],
    /// Sealed fixed key set and model, and the model's first state.
    keys: Vec<u8>,
    model: Vec<u8>,
    state: Vec<u8>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let secret = *SimTee::new(MEASUREMENT)
            .sealing_key()
            .expect("sim sealing key");
        let p = fixtures::sealed_plaintexts(&secret);
        let s = |label: &str, plain: &[u8]| seal(&secret, &MEASUREMENT, label, plain).unwrap();
        Fixed {
            secret,
            keys: s(fixtures::KEYS_LABEL, &p.keys),
            model: s(fixtures::MODEL_LABEL, &p.model),
            state: s(STATE_LABEL, &p.state),
        }
    })
}

fn enclave() -> Enclave {
    Enclave::new(Box::new(SimTee::new(MEASUREMENT)), EnclaveConfig::default())
}

fn with_keys() -> Enclave {
    let e = enclave();
    let r = e.handle(Request::RestoreKeys {
        sealed: fixed().keys.clone(),
    });
    assert!(matches!(r, Response::KeysRestored { .. }), "{r:?}");
    e
}

fn with_model() -> Enclave {
    let e = with_keys();
    let r = e.handle(Request::RestoreModel {
        sealed: fixed().model.clone(),
    });
    assert!(matches!(r, Response::ModelRestored { .. }), "{r:?}");
    e
}

/// Uses a restored key set the way a query does: encrypt, decrypt.
fn use_keys(secret: &[u8; 32], payload: &[u8]) {
    let sealer = Sealer {
        secret: zeroize::Zeroizing::new(*secret),
        measurement: MEASUREMENT,
    };
    let Ok(blob) = seal(secret, &MEASUREMENT, fixtures::KEYS_LABEL, payload) else {
        return;
    };
    let Ok(ks) = sealer.restore_keys(&blob) else {
        return;
    };
    let poly: Vec<i64> = (0..ks.par.degree() as i64).map(|i| i % 5 - 2).collect();
    let Ok(cts) = hetee_enclave::step::encrypt_all(&ks, &[poly]) else {
        return;
    };
    let _ = hetee_enclave::step::decrypt_all(&ks, &cts, 2);
}

fuzz_target!(
    init: {
        // The fixtures must restore, or the modes below test nothing.
        let r = with_model().handle(Request::RestoreState {
            sealed: fixed().state.clone(),
        });
        assert!(matches!(r, Response::StateRestored { .. }), "{r:?}");
    },
    |data: &[u8]| {
    let f = fixed();
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let seal_as = |label: &str| seal(&f.secret, &MEASUREMENT, label, payload).expect("seal");
    match mode % 7 {
        0 => {
            for label in [fixtures::KEYS_LABEL, fixtures::MODEL_LABEL, STATE_LABEL] {
                let _ = unseal(&f.secret, &MEASUREMENT, label, payload);
            }
        }
        1 => {
            let _ = enclave().handle(Request::RestoreKeys {
                sealed: payload.to_vec(),
            });
        }
        2 => {
            let _ = with_keys().handle(Request::RestoreModel {
                sealed: payload.to_vec(),
            });
        }
        3 => {
            let _ = with_model().handle(Request::RestoreState {
                sealed: payload.to_vec(),
            });
        }
        4 => {
            let sealed = seal_as(fixtures::KEYS_LABEL);
            let e = enclave();
            if let Response::KeysRestored { key_id } = e.handle(Request::RestoreKeys { sealed }) {
                let _ = e.handle(Request::Evidence { key_id });
                let _ = e.handle(Request::Status);
            }
            use_keys(&f.secret, payload);
        }
        5 => {
            let sealed = seal_as(fixtures::MODEL_LABEL);
            let e = with_keys();
            if let Response::ModelRestored { .. } = e.handle(Request::RestoreModel { sealed }) {
                let _ = e.handle(Request::RestoreState {
                    sealed: f.state.clone(),
                });
            }
        }
        _ => {
            let sealed = seal_as(STATE_LABEL);
            let e = with_model();
            if let Response::StateRestored { .. } = e.handle(Request::RestoreState {
                sealed: sealed.clone(),
            }) {
                let _ = e.handle(Request::RestoreState { sealed });
                let _ = e.handle(Request::RestoreState {
                    sealed: f.state.clone(),
                });
            }
        }
    }
});
