//! Per-member work of a stacked query on two threads. A stack of 64 thin
//! queries opens 64 channel messages when it starts and signs and seals 64
//! results when it ends; each member's work is its own (its channel, its
//! result), so half of it runs on a second thread while the host's cores
//! wait for the enclave anyway.

/// Fewest items worth a second thread (a thread costs about as much as
/// one member's work).
const MIN_PARALLEL: usize = 4;

/// The cores, read once: `available_parallelism` reads the cgroup's files
/// on every call (about 60 µs here, per query result before this).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f` applied to every item, in order; the second half of the items on a
/// second thread when there are enough of them and a second core (or on
/// this thread if the second one cannot be started).
pub(crate) fn map_ordered<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    if items.len() < MIN_PARALLEL || cores() < 2 {
        return items.into_iter().map(f).collect();
    }
    let mut first = items;
    // The second half waits in a slot: if no thread can be started, this
    // thread takes it back.
    let second = std::sync::Mutex::new(Some(first.split_off(first.len() / 2)));
    let take = || {
        let mut slot = second.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().unwrap_or_default()
    };
    let f = &f;
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("enclave-member".into())
            .spawn_scoped(s, || take().into_iter().map(f).collect::<Vec<R>>());
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        match other {
            Ok(handle) => match handle.join() {
                Ok(rest) => out.extend(rest),
                // `f` panicked on the other thread: as if on this one.
                Err(p) => std::panic::resume_unwind(p),
            },
            Err(_) => out.extend(take().into_iter().map(f)),
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_of_few_and_many_items() {
        for n in [0, 1, 3, 4, 5, 64, 101] {
            let items: Vec<usize> = (0..n).collect();
            let out = map_ordered(items, |i| i * 3);
            assert_eq!(out, (0..n).map(|i| i * 3).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
