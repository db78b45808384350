//! The input binding of an HE query, checked beside the host's first stage.
//!
//! A data provider's input ciphertexts must be the ones its seed makes
//! ([`crate::input_binding`]): otherwise a host that is also a client could
//! replay a victim's input in its own session and receive the victim's
//! result. Re-making them (`fhe`'s public-key encryption under the seed,
//! about half a millisecond) does not need to hold up the query's start.
//! The enclave decrypts the input, admits and spends the query, answers the
//! start at once and makes the check on a worker thread while the host
//! evaluates stage 0; the stage-0 result is not decrypted, and nothing is
//! computed from it, until the verdict is in. A failed check closes the
//! session there, with nothing released.
//!
//! Spending before the verdict takes nothing from an honest data provider:
//! the host cannot change the ciphertexts of a provider's session (their
//! digest is inside the provider's sealed query and is checked before the
//! spend), so the check fails only in the session of a client that sent
//! ciphertexts it did not make, and that client pays for its own query.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use crate::input_binding::{input_masks, made_with_masks};
use crate::keys::KeySet;

/// The checks' own threads. A stage result waits for its verdict, possibly
/// on a thread of the global pool: were the checks queued there, every such
/// thread could be waiting for a check that none of them is free to run.
/// `None` if the threads cannot start: the check then runs at the start.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .thread_name(|i| format!("hetee-binding-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The pending verdict of one query's input binding.
pub struct BindingVerdict(Receiver<bool>);

impl BindingVerdict {
    /// Starts the check that `input` is the encryption of `polys` under
    /// `seed` with the key set's public key, on a worker thread.
    pub fn spawn(
        keys: Arc<KeySet>,
        seed: Zeroizing<[u8; 32]>,
        polys: Zeroizing<Vec<Vec<i64>>>,
        input: Vec<Vec<u8>>,
    ) -> Self {
        let (tx, rx) = sync_channel(1);
        let job = move || {
            let ok = input_masks(&keys.pk, &keys.par, &seed, input.len())
                .and_then(|masks| made_with_masks(&keys.par, &polys, masks, &input))
                .unwrap_or(false);
            // The session may be gone already: then nobody waits.
            let _ = tx.send(ok);
        };
        match pool() {
            Some(p) => p.spawn(job),
            None => job(),
        }
        BindingVerdict(rx)
    }

    /// Waits for the verdict: whether the input was made with the seed (a
    /// check that could not run counts as failed).
    pub fn holds(self) -> bool {
        self.0.recv().unwrap_or(false)
    }
}
