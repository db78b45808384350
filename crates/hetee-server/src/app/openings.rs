//! Sessions of a model on their way: opened right now (`POST /v1/sessions`
//! in progress) or just opened. A burst of clients (say sixteen, each with
//! four queries in flight) opens its sessions one after another; the first
//! of them send their query while the others still open theirs. A stack
//! started then would hold only those first few and cost the host a whole
//! batch's products, so the stacker counts these sessions as still to come
//! (for at most its longest wait, as for any session).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hetee_proto::ids::ModelId;

#[derive(Default)]
struct Opening {
    /// `POST /v1/sessions` for the model in progress.
    in_progress: usize,
    /// When the last two of them ended (latest first).
    last: [Option<Instant>; 2],
}

/// Per model, the sessions being opened and when one last opened.
#[derive(Default)]
pub(super) struct Openings {
    models: Mutex<HashMap<ModelId, Opening>>,
}

/// One session open in progress; ends (counted as just opened) on drop,
/// whether the open succeeded or not.
pub(super) struct OpenGuard<'a> {
    openings: &'a Openings,
    model: ModelId,
}

impl Openings {
    fn with<R>(&self, model: &ModelId, f: impl FnOnce(&mut Opening) -> R) -> R {
        let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(*model).or_default())
    }

    /// Counts a session of `model` as being opened until the guard drops.
    pub(super) fn begin(&self, model: ModelId) -> OpenGuard<'_> {
        self.with(&model, |o| o.in_progress += 1);
        OpenGuard {
            openings: self,
            model,
        }
    }

    /// Sessions of `model` being opened, plus one while a burst of opens
    /// goes on: two sessions of it finished opening within `fresh` (the
    /// next client of the burst is likely about to open). A lone client's
    /// one open is not a burst: its query is not held back.
    pub(super) fn coming(&self, model: &ModelId, fresh: Duration) -> usize {
        self.with(model, |o| {
            let burst = o
                .last
                .iter()
                .all(|t| t.is_some_and(|t| t.elapsed() < fresh));
            o.in_progress + usize::from(burst)
        })
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.openings.with(&self.model, |o| {
            o.in_progress = o.in_progress.saturating_sub(1);
            o.last = [Some(Instant::now()), o.last[0]];
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_progress_and_a_burst_count_until_stale() {
        let o = Openings::default();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let fresh = Duration::from_millis(50);
        assert_eq!(o.coming(&a, fresh), 0);
        let g = o.begin(a);
        assert_eq!(o.coming(&a, fresh), 1);
        assert_eq!(o.coming(&b, fresh), 0, "another model's opens do not count");
        drop(g);
        // One open is a lone client, not a burst.
        assert_eq!(o.coming(&a, fresh), 0);
        drop(o.begin(a));
        // Two opens within `fresh`: a burst, one more client to come.
        assert_eq!(o.coming(&a, fresh), 1);
        assert_eq!(o.coming(&a, Duration::ZERO), 0);
        std::thread::sleep(fresh);
        assert_eq!(o.coming(&a, fresh), 0, "a burst ends after `fresh`");
    }
}
