//! Test support: the PostgreSQL the tests use, and a throwaway schema per test.
//!
//! Tests read the DSN from `HETEE_TEST_PG` (`.ci/run` starts a cluster and sets it). Without it
//! they skip with a message, unless `HETEE_REQUIRE_PG` is set (CI), in which case they fail:
//! a missing or unreachable database must not pass silently.

use std::sync::atomic::{AtomicU64, Ordering};

use postgres::{Client, NoTls};

/// The environment variable with the test database's DSN.
pub const DSN_VAR: &str = "HETEE_TEST_PG";
/// Set (to anything but `0`) when the PostgreSQL tests must run.
pub const REQUIRE_VAR: &str = "HETEE_REQUIRE_PG";

/// The test database's DSN, or `None` (with a message on stderr) to skip a test.
///
/// Panics when `HETEE_REQUIRE_PG` is set and the DSN is missing or the database unreachable.
pub fn test_dsn(test: &str) -> Option<String> {
    let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    let Some(dsn) = std::env::var(DSN_VAR).ok().filter(|d| !d.is_empty()) else {
        assert!(
            !required,
            "{REQUIRE_VAR} is set but {DSN_VAR} is not: set it to the test database's DSN"
        );
        eprintln!("skipping {test}: set {DSN_VAR}=postgres://… to run it against PostgreSQL");
        return None;
    };
    match Client::connect(&dsn, NoTls) {
        Ok(_) => Some(dsn),
        Err(e) if required => panic!(
            "{REQUIRE_VAR} is set but {DSN_VAR} is unreachable: {}",
            super::with_causes(&e)
        ),
        Err(e) => {
            eprintln!(
                "skipping {test}: {DSN_VAR} is unreachable ({})",
                super::with_causes(&e)
            );
            None
        }
    }
}

/// A schema of its own for one test (so tests run in parallel), dropped with everything in it
/// when this guard is dropped.
#[derive(Debug)]
pub struct TestSchema {
    /// The database.
    pub dsn: String,
    /// The schema's name.
    pub name: String,
}

impl TestSchema {
    /// A fresh, unique schema name in the database at `dsn` (created by
    /// [`PgStore::open_in_schema`](super::PgStore::open_in_schema)).
    pub fn new(dsn: &str) -> TestSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "hetee_t{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestSchema {
            dsn: dsn.to_string(),
            name,
        }
    }

    /// The DSN with this schema as the search path, as `hetee serve --store` takes it.
    pub fn dsn_with_search_path(&self) -> String {
        let sep = if self.dsn.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.dsn, self.name)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.dsn, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
