//! The embedded store in the server's `--data-dir DIR` (file `DIR/hetee.redb`, a [`redb`] database).
//!
//! It holds opaque byte records keyed by id; the caller defines and (de)serialises the typed
//! records. Tables: `keysets` (public/evaluation key sets), `models` (model metadata),
//! `weights` (encrypted weights, same key as `models`) and `jobs` (small JSON job records).
//!
//! Every write is one redb write transaction, committed entirely or not at all and aborted on
//! any error, so a failed write (e.g. a full disk) leaves earlier data intact. Commits are
//! 2-phase (data fsynced before the header that makes it visible); only if the very last header
//! fsync fails can a write reported as failed still turn out to be stored.
//!
//! Recovery after I/O errors: once redb hits an I/O error it refuses all further work on that
//! handle (`PreviousIo`) until the database is closed and re-opened. [`RedbStore`] therefore marks
//! its handle broken after an I/O error, a failed commit or a panic inside redb, and re-opens
//! the database at the start of the next call (under a write lock, after in-flight calls
//! finish). Quick-repair commits make that re-open fast. If re-opening fails (e.g. the disk is
//! unusable) that call returns the error and the next call retries.
//!
//! All calls block (disk I/O, fsync on commit); call them from `spawn_blocking` in async code.

use std::fmt;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

pub(super) use super::redb_io::is_full_io;
use super::redb_io::{corrupt, io_err, map_io, map_redb, needs_reopen, open_file_db, probe};
use super::{StateRecord, Store, StoreError, StoreInfo, StoreUsage};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "hetee.redb";
/// File created, fsynced and removed by [`RedbStore::open`] to check that the data dir is writable.
pub const PROBE_FILE: &str = ".write-probe";
/// redb cache size (read cache 90 %, write buffer 10 %); bounds the memory the store keeps.
pub(super) const CACHE_BYTES: usize = 128 << 20;

type Def = TableDefinition<'static, &'static str, &'static [u8]>;
const KEYSETS: Def = TableDefinition::new("keysets");
const MODELS: Def = TableDefinition::new("models");
const WEIGHTS: Def = TableDefinition::new("weights");
const JOBS: Def = TableDefinition::new("jobs");
const STATES: Def = TableDefinition::new("model-states");

/// Opens the database; called at open and on every re-open after an I/O error.
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The embedded store: a redb database in the data dir. `Send + Sync`; share it via `Arc`.
pub struct RedbStore {
    dir: PathBuf,
    opener: Opener,
    /// The open database; `None` only after a failed re-open.
    db: RwLock<Option<Database>>,
    /// The current handle hit an I/O error (or a failed commit): re-open before the next use.
    broken: AtomicBool,
    /// The last I/O failure was a full disk (to classify redb's follow-up `PreviousIo`).
    last_full: AtomicBool,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore").field("dir", &self.dir).finish()
    }
}

/// Internal failure of an operation: a redb error (with "the handle must be re-opened") or a
/// ready store error such as `NotFound`. Boxed: `redb::Error` is large.
pub(super) enum Fail {
    Db(Box<redb::Error>, bool),
    Store(StoreError),
}

macro_rules! fail_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                let e = redb::Error::from(e);
                let reopen = needs_reopen(&e);
                Fail::Db(Box::new(e), reopen)
            }
        }
    )*};
}
fail_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError
);

impl From<redb::CommitError> for Fail {
    fn from(e: redb::CommitError) -> Self {
        // A failed commit does not roll back redb's in-memory allocator state: always re-open.
        Fail::Db(Box::new(e.into()), true)
    }
}

/// Opens `def` for reading; `None` if it was never written to.
fn open_ro(
    txn: &ReadTransaction,
    def: Def,
) -> Result<Option<ReadOnlyTable<&'static str, &'static [u8]>>, Fail> {
    match txn.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl RedbStore {
    /// Opens the store in `dir`: creates `dir` if missing, probes that it is writable (creates,
    /// writes, fsyncs and removes `dir/.write-probe`), then opens or creates `dir/hetee.redb`.
    ///
    /// Errors: [`StoreError::NotWritable`], [`StoreError::Full`], [`StoreError::Locked`] (another
    /// process has it open), [`StoreError::Corrupt`], [`StoreError::Io`].
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        probe(dir)?;
        let owned = dir.to_path_buf();
        RedbStore::from_opener(dir, Box::new(move || open_file_db(&owned)))
    }

    /// Builds a store from `opener` and opens the database once.
    pub(super) fn from_opener(dir: &Path, opener: Opener) -> Result<RedbStore, StoreError> {
        let store = RedbStore {
            dir: dir.to_path_buf(),
            opener,
            db: RwLock::new(None),
            broken: AtomicBool::new(false),
            last_full: AtomicBool::new(false),
        };
        drop(store.handle()?);
        Ok(store)
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `opener`, turning a panic inside redb (damaged file) into [`StoreError::Corrupt`].
    fn open_db(&self) -> Result<Database, StoreError> {
        let file = self.dir.join(DB_FILE);
        catch_unwind(AssertUnwindSafe(|| (self.opener)()))
            .unwrap_or_else(|_| Err(corrupt(format!("redb panicked opening {}", file.display()))))
    }

    /// A read guard on an open, healthy database handle, (re-)opening it first if needed.
    /// (Our closures never panic while holding the lock, so poisoning is ignored.)
    fn handle(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() && !self.broken.load(Ordering::Acquire) {
            return Ok(guard);
        }
        drop(guard);
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() || self.broken.load(Ordering::Acquire) {
            *guard = None; // close the old handle first: it holds the file lock
            *guard = Some(self.open_db()?);
            self.broken.store(false, Ordering::Release);
        }
        drop(guard);
        Ok(self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the database; maps errors and marks the handle broken when redb needs a
    /// re-open. `what` describes the operation for error messages.
    fn run<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&Database) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let guard = self.handle()?;
        let Some(db) = guard.as_ref() else {
            return Err(io_err(what(), "the database could not be re-opened; retry"));
        };
        // A panic inside redb (an internal assertion on a damaged file) fails this call only;
        // the handle is re-opened on the next call.
        let Ok(result) = catch_unwind(AssertUnwindSafe(|| f(db))) else {
            self.broken.store(true, Ordering::Release);
            let file = self.dir.join(DB_FILE);
            return Err(corrupt(format!(
                "redb panicked during {} on {}",
                what(),
                file.display()
            )));
        };
        match result {
            Ok(v) => Ok(v),
            Err(Fail::Store(e)) => Err(e),
            Err(Fail::Db(e, reopen)) => {
                if let redb::Error::Io(io) = &*e {
                    self.last_full.store(is_full_io(io), Ordering::Release);
                }
                if reopen {
                    self.broken.store(true, Ordering::Release);
                }
                let prev_full = self.last_full.load(Ordering::Acquire);
                Err(map_redb(*e, &self.dir, &what(), prev_full))
            }
        }
    }

    /// Runs `f` in one write transaction: commits if `f` succeeds, aborts otherwise.
    ///
    /// Commits use redb's quick-repair mode (2-phase commit + saved allocator state): the data
    /// is fsynced before the header that makes it visible is written (an fsync failure in the
    /// first phase leaves no trace), and re-opening after an I/O error needs no full repair.
    pub(super) fn write<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.run(what, |db| {
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(true);
            match f(&txn) {
                Ok(v) => {
                    txn.commit()?;
                    Ok(v)
                }
                // After an I/O error redb may be in "needs recovery" state, where an explicit
                // abort() panics; dropping the transaction discards it safely in both states
                // (the handle is re-opened anyway). Otherwise abort explicitly.
                Err(e @ Fail::Db(_, true)) => {
                    drop(txn);
                    Err(e)
                }
                Err(e) => {
                    if txn.abort().is_err() {
                        self.broken.store(true, Ordering::Release);
                    }
                    Err(e)
                }
            }
        })
    }

    pub(super) fn put(
        &self,
        def: Def,
        kind: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.write(
            || format!("storing {kind} {key}"),
            |txn| {
                txn.open_table(def)?.insert(key, value)?;
                Ok(())
            },
        )
    }

    pub(super) fn get(
        &self,
        def: Def,
        kind: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(
            || format!("reading {kind} {key}"),
            |db| match open_ro(&db.begin_read()?, def)? {
                Some(table) => Ok(table.get(key)?.map(|v| v.value().to_vec())),
                None => Ok(None),
            },
        )
    }

    pub(super) fn list(&self, def: Def, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.run(
            || format!("listing {kind}s"),
            |db| {
                let mut out = Vec::new();
                if let Some(table) = open_ro(&db.begin_read()?, def)? {
                    for entry in table.iter()? {
                        let (k, v) = entry?;
                        out.push((k.value().to_string(), v.value().to_vec()));
                    }
                }
                Ok(out)
            },
        )
    }
}

impl Store for RedbStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "redb".into(),
            location: self.dir.join(DB_FILE).display().to_string(),
        }
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.run(
            || "reading the store".into(),
            |db| {
                db.begin_read()?;
                Ok(())
            },
        )
    }

    fn put_keyset(&self, key_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put(KEYSETS, "keyset", key_id, record)
    }

    fn keyset(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(KEYSETS, "keyset", key_id)
    }

    fn keysets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(KEYSETS, "keyset")
    }

    fn put_model(&self, model_id: &str, meta: &[u8], weights: &[u8]) -> Result<(), StoreError> {
        self.write(
            || format!("storing model {model_id}"),
            |txn| {
                txn.open_table(MODELS)?.insert(model_id, meta)?;
                txn.open_table(WEIGHTS)?.insert(model_id, weights)?;
                Ok(())
            },
        )
    }

    fn set_model_meta(&self, model_id: &str, meta: &[u8]) -> Result<(), StoreError> {
        self.write(
            || format!("updating model {model_id}"),
            |txn| {
                let mut table = txn.open_table(MODELS)?;
                if table.get(model_id)?.is_none() {
                    return Err(Fail::Store(StoreError::NotFound {
                        what: format!("model {model_id}"),
                    }));
                }
                table.insert(model_id, meta)?;
                Ok(())
            },
        )
    }

    fn model_meta(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(MODELS, "model", model_id)
    }

    fn model_weights(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(WEIGHTS, "weights of model", model_id)
    }

    fn models(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(MODELS, "model")
    }

    fn delete_model(&self, model_id: &str) -> Result<bool, StoreError> {
        self.write(
            || format!("deleting model {model_id}"),
            |txn| {
                let meta = txn.open_table(MODELS)?.remove(model_id)?.is_some();
                let weights = txn.open_table(WEIGHTS)?.remove(model_id)?.is_some();
                Ok(meta || weights)
            },
        )
    }

    fn put_job(&self, job_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put(JOBS, "job", job_id, record)
    }

    fn put_jobs(&self, jobs: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.write(
            || format!("storing {} job records", jobs.len()),
            |txn| {
                let mut table = txn.open_table(JOBS)?;
                for (id, record) in jobs {
                    table.insert(id.as_str(), record.as_slice())?;
                }
                Ok(())
            },
        )
    }

    fn job(&self, job_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(JOBS, "job", job_id)
    }

    fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(JOBS, "job")
    }

    fn put_state(&self, model_id: &str, version: u64, sealed: &[u8]) -> Result<bool, StoreError> {
        self.write(
            || format!("storing the state of model {model_id}"),
            |txn| {
                let mut table = txn.open_table(STATES)?;
                let held = table
                    .get(model_id)?
                    .and_then(|v| decode_state(model_id, v.value()))
                    .map(|r| r.version);
                if held.is_some_and(|h| h >= version) {
                    return Ok(false);
                }
                let mut value = version.to_le_bytes().to_vec();
                value.extend_from_slice(sealed);
                table.insert(model_id, value.as_slice())?;
                Ok(true)
            },
        )
    }

    fn state(&self, model_id: &str) -> Result<Option<StateRecord>, StoreError> {
        Ok(self
            .get(STATES, "model state", model_id)?
            .and_then(|v| decode_state(model_id, &v)))
    }

    fn states(&self) -> Result<Vec<StateRecord>, StoreError> {
        Ok(self
            .list(STATES, "model state")?
            .into_iter()
            .filter_map(|(k, v)| decode_state(&k, &v))
            .collect())
    }

    fn usage(&self) -> Result<StoreUsage, StoreError> {
        let (models, keysets, jobs) = self.run(
            || "reading the store usage".to_string(),
            |db| {
                let txn = db.begin_read()?;
                let count = |def| -> Result<u64, Fail> {
                    Ok(open_ro(&txn, def)?
                        .map(|t| t.len())
                        .transpose()?
                        .unwrap_or(0))
                };
                Ok((count(MODELS)?, count(KEYSETS)?, count(JOBS)?))
            },
        )?;
        let file = self.dir.join(DB_FILE);
        let what = || format!("reading the size of {}", file.display());
        let file_bytes = fs::metadata(&file)
            .map_err(|e| map_io(&e, &self.dir, &what()))?
            .len();
        Ok(StoreUsage {
            models,
            keysets,
            jobs,
            file_bytes,
        })
    }
}

/// A stored state value: the version (8 bytes, little endian), then the sealed blob.
fn decode_state(model_id: &str, value: &[u8]) -> Option<StateRecord> {
    let version = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    Some(StateRecord {
        model_id: model_id.to_string(),
        version,
        sealed: value[8..].to_vec(),
    })
}
