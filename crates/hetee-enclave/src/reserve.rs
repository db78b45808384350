//! Encryptions of zero made ahead, so that a query's re-encryption costs
//! the enclave only the message's half ([`hetee_he::encrypt`]).
//!
//! Every key set keeps a small [`Reserve`], filled once a query has
//! encrypted under it. One refill thread per enclave tops the reserves up
//! to [`TARGET`] whenever a query takes from one (and looks again every
//! [`RESCAN`], for a wake-up it missed). It
//! runs at the scheduler's idle priority (`SCHED_IDLE` on Linux), so it only
//! uses CPU time that neither the enclave's queries nor the host's products
//! want; when the machine is saturated (batches, stacks) the reserve runs
//! dry and a query makes its encryptions itself, as before. It never fills
//! while the enclave uses more than half its memory budget.
//!
//! Each entry is taken out of the reserve by value and consumed by one
//! encryption, so none is ever used twice; the entries are zeroized when
//! dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;

use hetee_he::encrypt::ZeroEncryption;
use hetee_he::secret::SecretOps;

use crate::budget;
use crate::enclave::lock;
use crate::keys::KeySet;

/// Encryptions of zero a key set keeps ready: two queries' worth of the
/// bundled models' largest stage inputs.
pub const TARGET: usize = 16;

/// How often the refill thread looks at the reserves without being woken.
pub const RESCAN: std::time::Duration = std::time::Duration::from_millis(100);

/// One key set's encryptions of zero.
#[derive(Default)]
pub struct Reserve {
    zeros: Mutex<Vec<ZeroEncryption>>,
    /// Set by the first encryption: only key sets in use are filled.
    used: AtomicBool,
    /// Encryptions that took their zero from the reserve.
    from_reserve: AtomicU64,
    /// Encryptions that found the reserve empty and made their own.
    made_inline: AtomicU64,
    /// The refill thread to wake when an entry is taken.
    refill: Mutex<Option<Weak<Shared>>>,
}

impl Reserve {
    /// Up to `n` encryptions of zero from the reserve (fewer when it holds
    /// fewer); the rest are the caller's to make ([`Self::make`]).
    pub fn take(&self, n: usize) -> Vec<ZeroEncryption> {
        self.used.store(true, Ordering::Relaxed);
        let taken: Vec<ZeroEncryption> = {
            let mut zeros = lock(&self.zeros);
            let keep = zeros.len().saturating_sub(n);
            zeros.split_off(keep)
        };
        self.from_reserve
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        self.wake();
        taken
    }

    /// An encryption of zero made now, because the reserve had none left.
    pub fn make(&self, ops: &SecretOps) -> Result<ZeroEncryption, hetee_he::HeError> {
        self.made_inline.fetch_add(1, Ordering::Relaxed);
        ops.zero_encryption(&mut rand::rng())
    }

    /// Entries ready now.
    pub fn ready(&self) -> usize {
        lock(&self.zeros).len()
    }

    /// What the reserve has done so far.
    pub fn stats(&self) -> ReserveStats {
        ReserveStats {
            ready: self.ready(),
            from_reserve: self.from_reserve.load(Ordering::Relaxed),
            made_inline: self.made_inline.load(Ordering::Relaxed),
        }
    }

    fn wake(&self) {
        // (`refill` is only ever locked by queries and `watch`.)
        let shared = lock(&self.refill).as_ref().and_then(Weak::upgrade);
        if let Some(shared) = shared {
            // Not waiting on the idle-priority thread for its state's lock:
            // if it holds it, it is awake; a wake-up lost this way is made
            // up by its periodic rescan (`RESCAN`).
            if let Ok(mut st) = shared.state.try_lock() {
                st.wanted = true;
            }
            shared.wake.notify_one();
        }
    }
}

/// A reserve's counters (no secret in them: the host can count the
/// enclave's encryptions from the ciphertexts it receives anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveStats {
    /// Encryptions of zero ready now.
    pub ready: usize,
    /// Encryptions that took their zero from the reserve.
    pub from_reserve: u64,
    /// Encryptions that made their own (the reserve was empty).
    pub made_inline: u64,
}

#[derive(Default)]
struct State {
    keysets: Vec<Weak<KeySet>>,
    wanted: bool,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// CPU time the thread spent making entries (µs).
    made_us: AtomicU64,
    /// Entries made.
    made: AtomicU64,
}

/// The enclave's refill thread; stops when dropped.
pub struct Refiller {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Refiller {
    /// Starts the thread (`None` if the platform cannot start one: queries
    /// then make every encryption themselves).
    pub fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hetee-reserve".into())
            .spawn(move || {
                idle_priority();
                run(&worker)
            })
            .ok();
        Refiller { shared, thread }
    }

    /// Entries made so far and the CPU time making them took (µs), over
    /// every key set: enclave time that no query waits for, but enclave
    /// time all the same.
    pub fn made_ahead(&self) -> (u64, u64) {
        (
            self.shared.made.load(Ordering::Relaxed),
            self.shared.made_us.load(Ordering::Relaxed),
        )
    }

    /// Keeps `ks`'s reserve filled once it is in use.
    pub fn watch(&self, ks: &Arc<KeySet>) {
        *lock(&ks.reserve.refill) = Some(Arc::downgrade(&self.shared));
        let mut st = lock(&self.shared.state);
        st.keysets.push(Arc::downgrade(ks));
    }
}

impl Drop for Refiller {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let live: Vec<Arc<KeySet>> = {
            let mut st = lock(&shared.state);
            if !st.wanted && !st.stop {
                st = match shared.wake.wait_timeout(st, RESCAN) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            if st.stop {
                return;
            }
            st.wanted = false;
            st.keysets.retain(|w| w.strong_count() > 0);
            st.keysets
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|ks| ks.reserve.used.load(Ordering::Relaxed))
                .collect()
        };
        for ks in live {
            while ks.reserve.ready() < TARGET && room() {
                if lock(&shared.state).stop {
                    return;
                }
                let cpu = thread_cpu_us();
                let made = ks.ops.zero_encryption(&mut rand::rng());
                shared
                    .made_us
                    .fetch_add(thread_cpu_us().saturating_sub(cpu), Ordering::Relaxed);
                match made {
                    Ok(z) => {
                        shared.made.fetch_add(1, Ordering::Relaxed);
                        lock(&ks.reserve.zeros).push(z)
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// The CPU time this thread has run (µs): the refill thread's own, not
/// the wall time it spent preempted at idle priority (0 where the clock
/// is missing).
#[cfg(unix)]
fn thread_cpu_us() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to; no other memory is passed.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64).saturating_mul(1_000_000) + t.tv_nsec as u64 / 1_000
}

#[cfg(not(unix))]
fn thread_cpu_us() -> u64 {
    0
}

/// Whether the enclave has room for more entries: below half its budget
/// (always, when the meter is not installed).
fn room() -> bool {
    budget::current() < budget::budget() / 2
}

/// Lowers the calling thread to the idle scheduling class (nice 19 where
/// that is refused). Best effort: a platform that ignores it only makes
/// the refill compete as an ordinary thread.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread with a valid parameter.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}
