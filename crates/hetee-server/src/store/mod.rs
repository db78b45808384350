//! The host's store: key sets, encrypted models, model states and job records.
//!
//! [`Store`] is the interface the rest of the server uses; two implementations:
//! - [`RedbStore`]: the embedded default, one [`redb`] file in `--data-dir` (nothing to install,
//!   one server per data dir);
//! - [`PgStore`]: PostgreSQL (`hetee serve --store postgres://…`), which several replicas can
//!   share.
//!
//! What the store holds is opaque to it: sealed blobs (key sets, model secrets, model states)
//! only the enclave can open, HE-encrypted weights, and small metadata records the server
//! encodes. Every write is atomic (all of it or nothing), so a failed or interrupted write never
//! leaves half a model visible. All calls block; call them from `spawn_blocking` in async code.
//!
//! [`open`] picks the implementation from a `--store` spec.

use std::path::Path;

pub mod postgres;
pub mod redb;
mod redb_io;

pub use self::postgres::PgStore;
pub use self::redb::{RedbStore, DB_FILE, PROBE_FILE};

/// Errors of a store. Each message names what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir cannot be created or written (permissions, read-only filesystem, ...).
    #[error("data dir {} is not writable ({reason}); fix its permissions or pass another --data-dir", dir.display())]
    NotWritable {
        /// The data dir.
        dir: std::path::PathBuf,
        /// The underlying OS error.
        reason: String,
    },
    /// The disk (or quota, or maximum file size) is exhausted; the failed write left no trace.
    #[error("{what} failed: the {place} is full ({reason}): {fix}; nothing was written")]
    Full {
        /// The operation that failed.
        what: String,
        /// What is full: `data dir` or `database server`.
        place: &'static str,
        /// How to fix it.
        fix: &'static str,
        /// The underlying error.
        reason: String,
    },
    /// The database is damaged or not a hetee database.
    #[error("the store is corrupt: {reason}; restore it from a backup or use another store")]
    Corrupt {
        /// What is wrong, naming the file or table.
        reason: String,
    },
    /// Another process (or another [`RedbStore`] in this process) has the database open.
    #[error("another hetee serve is using {} ({DB_FILE} is locked); stop it or pass another --data-dir", dir.display())]
    Locked {
        /// The data dir.
        dir: std::path::PathBuf,
    },
    /// The database server cannot be reached or the connection was lost; the next call
    /// connects again.
    #[error(
        "{what} failed: the store at {location} is unreachable ({reason}); retry when it is back"
    )]
    Unavailable {
        /// The operation that failed.
        what: String,
        /// The database, without its password.
        location: String,
        /// The underlying error.
        reason: String,
    },
    /// The database schema is newer than this build knows.
    #[error("the store's schema is version {found}, newer than this hetee knows ({known}); upgrade hetee")]
    SchemaTooNew {
        /// The version the database is at.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// The `--store` spec is not understood.
    #[error("--store {spec:?}: {reason}")]
    BadSpec {
        /// What was given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The record does not exist.
    #[error("{what} not found")]
    NotFound {
        /// The missing record, e.g. `model m1`.
        what: String,
    },
    /// Any other I/O or database error.
    #[error("{what} failed: {reason}")]
    Io {
        /// The operation that failed.
        what: String,
        /// The underlying error.
        reason: String,
    },
}

impl StoreError {
    /// True if the error is a full disk / quota / file-size limit ([`StoreError::Full`]).
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }

    /// The HTTP status the server should answer with: 507 for `Full`, 404 for `NotFound`,
    /// 503 for `Unavailable`, 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::Full { .. } => 507,
            StoreError::NotFound { .. } => 404,
            StoreError::Unavailable { .. } => 503,
            _ => 500,
        }
    }
}

/// Record counts and bytes used, as reported by [`Store::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// Number of stored models (uploads and registered models).
    pub models: u64,
    /// Number of stored key sets.
    pub keysets: u64,
    /// Number of stored job records.
    pub jobs: u64,
    /// Bytes on disk: the redb file, or the PostgreSQL tables with their indexes.
    pub file_bytes: u64,
}

/// The newest sealed state of one model (lock, incidents, budgets, allow list), as the enclave
/// sealed it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateRecord {
    /// The model (hex id).
    pub model_id: String,
    /// The state's version; it only grows.
    pub version: u64,
    /// The sealed state.
    pub sealed: Vec<u8>,
}

/// Which implementation a store is and where its data lives, for health reports and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreInfo {
    /// `redb` or `postgres`.
    pub kind: String,
    /// The data dir, or the database without its password.
    pub location: String,
}

/// The store interface the server depends on. Implementations are `Send + Sync`; share one
/// through `Arc<dyn Store>`. Ids are lower-case hex strings; records are opaque bytes.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which implementation this is and where its data lives.
    fn info(&self) -> StoreInfo;

    /// Checks that the store answers (a cheap read).
    fn ping(&self) -> Result<(), StoreError>;

    /// Stores (or replaces) the key set record `key_id`.
    fn put_keyset(&self, key_id: &str, record: &[u8]) -> Result<(), StoreError>;

    /// The key set record `key_id`, if stored.
    fn keyset(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// All key set records as `(key_id, record)`, sorted by id.
    fn keysets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Stores (or replaces) model `model_id`: its metadata and its weights, atomically (both
    /// are visible or neither).
    fn put_model(&self, model_id: &str, meta: &[u8], weights: &[u8]) -> Result<(), StoreError>;

    /// Replaces the metadata of model `model_id`; [`StoreError::NotFound`] if there is no such
    /// model. The weights are untouched.
    fn set_model_meta(&self, model_id: &str, meta: &[u8]) -> Result<(), StoreError>;

    /// The metadata of model `model_id`, if stored.
    fn model_meta(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The weights of model `model_id`, if stored.
    fn model_weights(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The metadata of all models as `(model_id, meta)`, sorted by id (no weights).
    fn models(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The ids of all models, sorted (what [`Store::models`] lists, without the metadata).
    fn model_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.models()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Deletes model `model_id` (metadata and weights, atomically). Returns whether it existed.
    fn delete_model(&self, model_id: &str) -> Result<bool, StoreError>;

    /// Stores (or replaces) the job record `job_id` (a small JSON document).
    fn put_job(&self, job_id: &str, record: &[u8]) -> Result<(), StoreError>;

    /// Stores several job records, in one transaction where the store can.
    fn put_jobs(&self, jobs: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        for (id, record) in jobs {
            self.put_job(id, record)?;
        }
        Ok(())
    }

    /// The job record `job_id`, if stored.
    fn job(&self, job_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// All job records as `(job_id, record)`, sorted by id.
    fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Stores a model's sealed state if the store holds no version of it yet or an older one,
    /// as one atomic compare-and-set: of two writers of the same version (two replicas that
    /// started from the same state) exactly one wins. Returns whether it was stored.
    fn put_state(&self, model_id: &str, version: u64, sealed: &[u8]) -> Result<bool, StoreError>;

    /// The newest stored state of model `model_id`, if any.
    fn state(&self, model_id: &str) -> Result<Option<StateRecord>, StoreError>;

    /// Every stored model state, sorted by model id.
    fn states(&self) -> Result<Vec<StateRecord>, StoreError>;

    /// The version of every stored model state as `(model_id, version)`, sorted by model id
    /// (what [`Store::states`] lists, without the sealed blobs).
    fn state_versions(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .states()?
            .into_iter()
            .map(|r| (r.model_id, r.version))
            .collect())
    }

    /// Record counts and bytes used.
    fn usage(&self) -> Result<StoreUsage, StoreError>;
}

/// Opens the store named by a `--store` spec:
/// - `None` (the default): the embedded [`RedbStore`] in `data_dir`;
/// - `postgres://…` or `postgresql://…`: [`PgStore`] at that DSN (migrated on open).
pub fn open(spec: Option<&str>, data_dir: &Path) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match spec {
        None | Some("") | Some("redb") => Ok(std::sync::Arc::new(RedbStore::open(data_dir)?)),
        Some(dsn) if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") => {
            Ok(std::sync::Arc::new(PgStore::open(dsn)?))
        }
        Some(other) => Err(StoreError::BadSpec {
            spec: self::postgres::without_credentials(other),
            reason: "expected postgres://user@host:port/db (or omit --store for the embedded \
                     store in --data-dir)"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests;
