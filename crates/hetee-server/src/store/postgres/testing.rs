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

    /// The DSN with this schema as the search path, as `hetee serve --store` takes it. Its
    /// connections carry the schema's name as their application name, so that
    /// [`TestSchema::kill_connections`] finds them and no other test's.
    pub fn dsn_with_search_path(&self) -> String {
        let sep = if self.dsn.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-csearch_path%3D{}&application_name={}",
            self.dsn, self.name, self.name
        )
    }

    /// The test database's DSN with connections named after this schema (see
    /// [`TestSchema::kill_connections`]), for [`PgStore::open_in_schema`](super::PgStore::open_in_schema).
    pub fn tagged_dsn(&self) -> String {
        let sep = if self.dsn.contains('?') { '&' } else { '?' };
        format!("{}{sep}application_name={}", self.dsn, self.name)
    }

    /// Terminates the connections opened through [`TestSchema::tagged_dsn`] or
    /// [`TestSchema::dsn_with_search_path`] that match the SQL `condition` on
    /// `pg_stat_activity` (as a database restart or a network cut would); returns how many.
    pub fn kill_connections(&self, condition: &str) -> usize {
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid() AND ({condition})"
        );
        Client::connect(&self.dsn, NoTls)
            .and_then(|mut c| c.query(&sql, &[&self.name]))
            .map(|rows| rows.len())
            .unwrap_or_else(|e| panic!("cannot kill the test's connections: {e}"))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.dsn, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
