//! An enclave restarted (or another replica of one measurement, which
//! seals alike on the simulated platform) from what the host stores: the
//! sealed key set, model and model state.

use hetee_enclave::messages::SealedState;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};

use super::{attested_enclave, short, Keys};

/// The host hands the enclave a sealed key set.
pub fn restore_keys(e: &Enclave, sealed: &[u8]) -> Response {
    e.handle(Request::RestoreKeys {
        sealed: sealed.to_vec(),
    })
}

/// The host hands the enclave a sealed model record.
pub fn restore_model(e: &Enclave, sealed: &[u8]) -> Response {
    e.handle(Request::RestoreModel {
        sealed: sealed.to_vec(),
    })
}

/// The host hands the enclave a sealed model state.
pub fn restore_state(e: &Enclave, sealed: &[u8]) -> Response {
    e.handle(Request::RestoreState {
        sealed: sealed.to_vec(),
    })
}

/// A fresh enclave with `measurement` that restores the key set, the model
/// and the state `state`; asserts each step.
pub fn restart(measurement: [u8; 32], keys: &Keys, model: &[u8], state: &SealedState) -> Enclave {
    let e = attested_enclave(measurement, EnclaveConfig::default());
    match restore_keys(&e, &keys.sealed) {
        Response::KeysRestored { key_id } => assert_eq!(key_id, keys.key_id),
        other => panic!("RestoreKeys: {}", short(&other)),
    }
    match restore_model(&e, model) {
        Response::ModelRestored { model_id } => assert_eq!(model_id, state.model_id),
        other => panic!("RestoreModel: {}", short(&other)),
    }
    match restore_state(&e, &state.sealed) {
        Response::StateRestored { model_id, version } => {
            assert_eq!((model_id, version), (state.model_id, state.version))
        }
        other => panic!("RestoreState: {}", short(&other)),
    }
    e
}
