//! The enclave targets' driver helpers (`session`, `stack`): a fresh
//! enclave on the simulated platform, its evidence for the fixed key set,
//! tracing, and a short form of a response.
#![allow(dead_code)]

use hetee_attest::platform::SimTee;
use hetee_enclave::{Enclave, EnclaveConfig, Request, Response};

use super::fixtures::{FIXED_KEY_ID, MEASUREMENT};

/// An enclave on the simulated platform of [`MEASUREMENT`].
pub fn new_enclave() -> Enclave {
    Enclave::new(Box::new(SimTee::new(MEASUREMENT)), EnclaveConfig::default())
}

/// The fixed key set's evidence and channel key.
pub fn evidence(e: &mut Enclave) -> (Vec<u8>, [u8; 32]) {
    match e.handle(Request::Evidence {
        key_id: FIXED_KEY_ID,
    }) {
        Response::Evidence { identity, evidence } => (evidence, identity.channel_public_key),
        other => panic!("Evidence: {other:?}"),
    }
}

/// `HETEE_FUZZ_TRACE=1` prints every response (to check what seeds reach).
pub fn tracing() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("HETEE_FUZZ_TRACE").is_some())
}

/// A response without its (large) ciphertexts.
pub fn short(r: &Response) -> String {
    match r {
        Response::NextInput { stage, ciphertexts } => {
            format!("NextInput(stage {stage}, {} cts)", ciphertexts.len())
        }
        Response::QueryStarted { input, state } => format!(
            "QueryStarted(thin: {}, state: {:?})",
            input.is_some(),
            state.as_ref().map(|s| s.version)
        ),
        Response::StackStarted {
            started,
            deferred,
            refused,
            state,
            ..
        } => format!(
            "StackStarted(started {}, deferred {}, refused {:?}, state: {:?})",
            started.len(),
            deferred.len(),
            refused.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>(),
            state.as_ref().map(|s| s.version)
        ),
        Response::StackFinished { payloads } => format!("StackFinished({})", payloads.len()),
        Response::ChannelReply {
            registered, state, ..
        } => format!(
            "ChannelReply(registered: {}, state: {:?})",
            registered.is_some(),
            state.as_ref().map(|s| s.version)
        ),
        Response::Error { message, state } => format!(
            "Error({message}; state: {:?})",
            state.as_ref().map(|s| s.version)
        ),
        Response::Finished { .. } => "Finished".into(),
        other => {
            let s = format!("{other:?}");
            s.chars().take(120).collect()
        }
    }
}
