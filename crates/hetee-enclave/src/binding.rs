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

use std::sync::mpsc::{channel, sync_channel, Receiver, SendError, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use zeroize::Zeroizing;

use crate::enclave::lock;
use crate::input_binding::{input_masks, made_with_masks};
use crate::keys::KeySet;

/// A check to run on [`checkers`].
type Check = Box<dyn FnOnce() + Send>;

/// The checks' own threads, fed through a channel. A stage result waits
/// for its verdict, possibly on a thread of the global pool: were the
/// checks queued there, every such thread could be waiting for a check
/// that none of them is free to run. Plain threads blocked on a channel,
/// not a rayon pool: an idle rayon thread yields the CPU some thirty
/// times before it sleeps, and on a small machine those yields took
/// turns with the enclave's and the host's own work after every check.
/// `None` if no thread can start: the check then runs at the start.
fn checkers() -> Option<&'static Mutex<Sender<Check>>> {
    static CHECKERS: OnceLock<Option<Mutex<Sender<Check>>>> = OnceLock::new();
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
            (started > 0).then(|| Mutex::new(tx))
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
        let job: Check = Box::new(job);
        // A send fails only if every checker is gone: run it here then.
        let unsent = match checkers() {
            Some(tx) => lock(tx).send(job).err().map(|SendError(job)| job),
            None => Some(job),
        };
        if let Some(job) = unsent {
            job();
        }
        BindingVerdict(rx)
    }

    /// Waits for the verdict: whether the input was made with the seed (a
    /// check that could not run counts as failed).
    pub fn holds(self) -> bool {
        self.0.recv().unwrap_or(false)
    }
}
