//! The enclave's memory meter: a counting global allocator. The enclave
//! binary installs [`Meter`] as its `#[global_allocator]`. A request that
//! runs alone (key sets, models, restores) is checked by its exact peak; a
//! query step that runs alongside others is refused if any allocation went
//! over the budget while it ran. Whatever went over is rolled back. A hard cap, a few times the budget,
//! makes the allocator fail outright as a last resort.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static HARD_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static EXCESS: AtomicUsize = AtomicUsize::new(0);

/// The allocator: the system allocator plus two counters and a hard cap.
pub struct Meter;

fn admit(extra: usize) -> bool {
    CURRENT.load(Ordering::Relaxed).saturating_add(extra) <= HARD_CAP.load(Ordering::Relaxed)
}

fn grow(extra: usize) {
    let now = CURRENT.fetch_add(extra, Ordering::Relaxed) + extra;
    PEAK.fetch_max(now, Ordering::Relaxed);
    if now > BUDGET.load(Ordering::Relaxed) {
        EXCESS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// only adds bookkeeping on atomics.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Bytes allocated now (0 if [`Meter`] is not the global allocator).
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Highest [`current`] since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from the current level.
pub fn reset_peak() {
    PEAK.store(current(), Ordering::Relaxed);
}

/// Sets the budget: every allocation that takes [`current`] above it
/// counts one [`excess_events`].
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// The budget [`set_budget`] set (`usize::MAX` if none).
pub fn budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// How many allocations went over the budget so far. A request that runs
/// alongside others went over its share if this changed while it ran
/// (whoever allocated: requests overlapping an excess are all refused).
pub fn excess_events() -> usize {
    EXCESS.load(Ordering::Relaxed)
}

/// Sets the hard cap beyond which allocations fail (the process aborts).
pub fn set_hard_cap(bytes: usize) {
    HARD_CAP.store(bytes, Ordering::Relaxed);
}

/// Whether [`Meter`] is counting (i.e. installed as the global allocator).
pub fn is_metering() -> bool {
    let probe = std::hint::black_box(vec![0u8; 64]);
    let on = current() >= probe.len();
    drop(probe);
    on
}
