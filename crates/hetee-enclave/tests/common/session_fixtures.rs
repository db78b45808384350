//! Helpers of the session tests (`sessions.rs`, `owners.rs`,
//! `integrity.rs`, `memory_budget.rs`): the process-wide lock that lets the
//! memory-budget tests run alone, and registration and status shorthands.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hetee_enclave::budget;
use hetee_enclave::messages::{AllowList, ClientMessage, ModelId, ModelTerms, Status};
use hetee_enclave::{Enclave, EnclaveConfig, Schedule};
use zeroize::Zeroizing;

use super::{attested_enclave, manage, Keys, MEASUREMENT};

/// The meter and the hard cap are process-wide: the budget tests run alone,
/// everything else may run in parallel.
static LOCK: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive access; on drop, puts the hard cap back to the default
/// config's (an enclave built with a 16 MiB budget lowers it for the whole
/// process).
pub struct Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

pub fn exclusive() -> Exclusive {
    let g = Exclusive(LOCK.write().unwrap_or_else(|e| e.into_inner()));
    // The budget counts the whole process. A failed test's backtrace leaves
    // its symbol cache allocated, which would fail these tests too.
    assert!(
        budget::current() < 4 << 20,
        "{} MiB already allocated before a budget test (another test failed?); \
         run it alone",
        budget::current() >> 20
    );
    g
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        attested_enclave(MEASUREMENT, EnclaveConfig::default());
    }
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A RegisterModel message under `keys` (open to everyone).
pub fn registration(
    keys: &Keys,
    commitment: [u8; 32],
    schedule: Schedule,
    weights: &[Vec<i8>],
    terms: ModelTerms,
) -> ClientMessage {
    ClientMessage::RegisterModel {
        key_id: keys.key_id,
        commitment,
        schedule: Box::new(schedule),
        weights: Zeroizing::new(weights.to_vec()),
        terms,
        allow: AllowList::Open,
    }
}

/// The owner's view of a model.
pub fn report(e: &Enclave, keys: &Keys, model_id: ModelId) -> hetee_enclave::messages::ModelReport {
    let (r, sealed) = manage(e, keys, &ClientMessage::ModelStatus { model_id }).unwrap();
    assert!(sealed.is_none(), "reading the status changed the state");
    r
}

pub fn counts(st: &Status) -> (usize, usize, usize) {
    (st.keysets, st.models, st.sessions)
}

/// The refusal of a registration or management message from anyone but
/// the key set's owner.
pub const NOT_OWNER: &str = "only the key set's owner may register or manage its models";
