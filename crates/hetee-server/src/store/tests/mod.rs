//! Tests of the stores: one suite ([`suite`]) that every [`Store`] implementation passes, run
//! against redb ([`redb`]) and PostgreSQL ([`postgres`]) by [`store_suite!`], plus the tests
//! specific to each implementation.

use std::sync::Arc;

use super::Store;

mod postgres;
mod redb;
mod suite;

/// A store under test: opens it (again) on the same data, so tests can check persistence.
pub(super) trait Backend {
    /// Opens the store. Drop the previous handle first (redb allows one per data dir).
    fn open(&self) -> Arc<dyn Store>;
}

/// Instantiates every test of [`suite`] for a backend: `$backend` is an expression giving
/// `Option<impl Backend>` (`None` skips, e.g. no PostgreSQL configured).
#[macro_export]
#[doc(hidden)]
macro_rules! store_suite {
    ($backend:expr) => {
        $crate::store_suite!(@tests $backend;
            every_record_round_trips_and_persists,
            updating_missing_model_meta_is_not_found,
            large_weights_round_trip_in_chunks,
            replacing_a_model_leaves_no_stale_weights,
            the_store_is_shared_across_threads,
            the_newest_model_state_wins_whatever_the_order_of_writes,
            of_concurrent_writers_of_one_state_version_exactly_one_wins,
            info_and_ping_describe_the_store,
        );
    };
    (@tests $backend:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                if let Some(backend) = $backend {
                    super::suite::$name(&backend);
                }
            }
        )*
    };
}
