//! The input of an HE query, opened and checked beside the host's first
//! stage.
//!
//! A data provider's input ciphertexts must be the ones its seed makes
//! ([`crate::input_binding`]): otherwise a host that is also a client could
//! replay a victim's input in its own session and receive the victim's
//! result. Re-making them (`fhe`'s public-key encryption under the seed,
//! about half a millisecond) does not need to hold up the query's start,
//! and neither does the input's decryption (the stage-0 check and the
//! skip connections need it in the clear, but only once stage 0's result
//! is in). The enclave checks the input's digest, admits and spends the
//! query and answers the start at once; on a worker thread, while the host
//! evaluates stage 0, it decrypts the input, checks its range and its
//! binding, and lays out the query's values. The stage-0 result is
//! decrypted meanwhile (the input is in the clear in the enclave already),
//! but nothing is computed from it, and nothing leaves, until that is
//! done. A failed check closes the session there, with nothing released.
//!
//! Spending before the verdict takes nothing from an honest data provider:
//! the host cannot change the ciphertexts of a provider's session (their
//! digest is inside the provider's sealed query and is checked before the
//! spend), so a check fails only in the session of a client that sent
//! ciphertexts it did not make (or a malformed or out-of-range input), and
//! that client pays for its own query.

use std::sync::mpsc::{channel, sync_channel, Receiver, SendError, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use zeroize::Zeroizing;

use hetee_model::graph::Values;

use crate::enclave::lock;
use crate::input_binding::{input_masks, made_with_masks};
use crate::keys::{KeySet, ModelRecord};
use crate::step::{decrypt_one, start_values_here};
use crate::EnclaveError;

/// A check to run on [`checkers`].
type Check = Box<dyn FnOnce() + Send>;

/// The checks' own threads, fed through a channel. A stage result waits
/// for its check, possibly on a thread of the global pool: were the
/// checks queued there, or did a check call into it, every such thread
/// could be waiting for a check that none of them is free to run. So a
/// check runs whole on its thread: the decryption, the masks and the
/// values are sequential (`tests/binding.rs` holds every global-pool
/// thread while checks run). Plain threads blocked on a channel, not a
/// rayon pool: an idle rayon thread yields the CPU some thirty times
/// before it sleeps, beside the host's stage 0 (served e2dm, 4 pairs:
/// 5.14 ms on a rayon pool against 4.84 on plain threads). `None` if no
/// thread can start: the check then runs at the start.
fn checkers() -> Option<&'static Sender<Check>> {
    static CHECKERS: OnceLock<Option<Sender<Check>>> = OnceLock::new();
    CHECKERS
        .get_or_init(|| {
            let (tx, rx) = channel::<Check>();
            let rx = Arc::new(Mutex::new(rx));
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let started = (0..threads)
                .filter(|i| {
                    let rx = rx.clone();
                    std::thread::Builder::new()
                        .name(format!("hetee-binding-{i}"))
                        .spawn(move || loop {
                            let next = lock(&rx).recv();
                            match next {
                                Ok(check) => check(),
                                Err(_) => return,
                            }
                        })
                        .is_ok()
                })
                .count();
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// The pending outcome of one HE query's input: its values, or why it
/// was refused.
pub struct BindingVerdict(Receiver<Result<Vec<Values>, EnclaveError>>);

impl BindingVerdict {
    /// Starts opening `input` on a worker thread: decrypted under the key
    /// set, within the model's input range, and the encryption of what it
    /// decrypts to under `seed` with the key set's public key.
    pub fn spawn(
        keys: Arc<KeySet>,
        model: Arc<ModelRecord>,
        seed: Zeroizing<[u8; 32]>,
        input: Vec<Vec<u8>>,
    ) -> Self {
        let (tx, rx) = sync_channel(1);
        let job = move || {
            // The session may be gone already: then nobody waits.
            let _ = tx.send(open_input(&keys, &model, &seed, &input));
        };
        let job: Check = Box::new(job);
        // A send fails only if every checker is gone: run it here then.
        let unsent = match checkers() {
            Some(tx) => tx.send(job).err().map(|SendError(job)| job),
            None => Some(job),
        };
        if let Some(job) = unsent {
            job();
        }
        BindingVerdict(rx)
    }

    /// Waits for the outcome: the query's values, or the refusal (a check
    /// that could not run is a refusal).
    pub fn wait(self) -> Result<Vec<Values>, EnclaveError> {
        self.0.recv().unwrap_or_else(|_| {
            Err(EnclaveError::Protocol(
                "the input check stopped; session closed".into(),
            ))
        })
    }
}

/// Refusal of an input its session's data provider did not make.
const NOT_MADE_BY_THE_PROVIDER: &str =
    "the input ciphertexts were not made by this session's data provider; session closed";

/// Decrypts and checks an HE query's input, on this thread alone (a
/// checker must not wait for a pool: see [`checkers`]).
fn open_input(
    keys: &KeySet,
    model: &ModelRecord,
    seed: &Zeroizing<[u8; 32]>,
    input: &[Vec<u8>],
) -> Result<Vec<Values>, EnclaveError> {
    let schedule = &model.schedule;
    let polys = Zeroizing::new(
        input
            .iter()
            .map(|b| decrypt_one(keys, b, 2))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let x = Zeroizing::new(schedule.unpack_stage_input(0, &polys)?);
    if !in_range(&x, schedule.input.min, schedule.input.max) {
        return Err(EnclaveError::Protocol(
            "the input holds values outside the model's input range; session closed".into(),
        ));
    }
    let made = input_masks(&keys.pk, &keys.par, seed, input.len())
        .and_then(|masks| made_with_masks(&keys.par, &polys, masks, input))
        .unwrap_or(false);
    if !made {
        return Err(EnclaveError::Protocol(NOT_MADE_BY_THE_PROVIDER.into()));
    }
    start_values_here(schedule, &x)
}

/// Whether every value lies in `[min, max]` (one pass, no early exit).
fn in_range(x: &[Vec<i64>], min: i64, max: i64) -> bool {
    let bad = x.iter().flatten().fold(0i64, |acc, &v| {
        acc | v.wrapping_sub(min) | max.wrapping_sub(v)
    });
    bad >= 0
}
