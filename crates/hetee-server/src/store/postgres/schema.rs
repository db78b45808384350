//! Versioned migrations of the PostgreSQL store.
//!
//! `schema_version` lists the migrations applied. At open, [`migrate`] takes a transaction-level
//! advisory lock (per schema), applies every migration newer than the newest applied one in
//! order and records it, all in one transaction: replicas opening the store at the same time
//! wait for each other, and a failed migration leaves nothing behind. Never edit a migration
//! once released; append a new one.

use postgres::Client;

use super::Fail;
use crate::store::StoreError;

/// The migrations, in order: `(version, SQL)`.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE keysets (
         id text PRIMARY KEY,
         record bytea NOT NULL
     );
     CREATE TABLE models (
         id text PRIMARY KEY,
         meta bytea NOT NULL,
         weights_len bigint NOT NULL
     );
     CREATE TABLE weight_chunks (
         model_id text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
         seq integer NOT NULL,
         data bytea NOT NULL,
         PRIMARY KEY (model_id, seq)
     );
     CREATE TABLE jobs (
         id text PRIMARY KEY,
         record bytea NOT NULL
     );
     CREATE TABLE model_states (
         model_id text PRIMARY KEY,
         version bigint NOT NULL,
         sealed bytea NOT NULL
     );",
)];

/// The newest schema version this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Applies the migrations the database lacks (see the module docs).
pub(super) fn migrate(client: &mut Client) -> Result<(), Fail> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('hetee-migrate:' || current_schema()))",
        &[],
    )?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
    if current > latest() {
        return Err(Fail::Store(StoreError::SchemaTooNew {
            found: current,
            known: latest(),
        }));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )?;
    }
    tx.commit()?;
    Ok(())
}
