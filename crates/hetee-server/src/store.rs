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
//! handle (`PreviousIo`) until the database is closed and re-opened. [`Store`] therefore marks
//! its handle broken after an I/O error, a failed commit or a panic inside redb, and re-opens
//! the database at the start of the next call (under a write lock, after in-flight calls
//! finish). Quick-repair commits make that re-open fast. If re-opening fails (e.g. the disk is
//! unusable) that call returns the error and the next call retries.
//!
//! All calls block (disk I/O, fsync on commit); call them from `spawn_blocking` in async code.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "hetee.redb";
/// File created, fsynced and removed by [`Store::open`] to check that the data dir is writable.
pub const PROBE_FILE: &str = ".write-probe";
/// redb cache size (read cache 90 %, write buffer 10 %); bounds the memory the store keeps.
const CACHE_BYTES: usize = 128 << 20;

type Def = TableDefinition<'static, &'static str, &'static [u8]>;
const KEYSETS: Def = TableDefinition::new("keysets");
const MODELS: Def = TableDefinition::new("models");
const WEIGHTS: Def = TableDefinition::new("weights");
const JOBS: Def = TableDefinition::new("jobs");
const STATES: Def = TableDefinition::new("model-states");

/// Errors of the store. Each message names what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir cannot be created or written (permissions, read-only filesystem, ...).
    #[error("data dir {} is not writable ({reason}); fix its permissions or pass another --data-dir", dir.display())]
    NotWritable {
        /// The data dir.
        dir: PathBuf,
        /// The underlying OS error.
        reason: String,
    },
    /// The disk (or quota, or maximum file size) is exhausted; the failed write left no trace.
    #[error("{what} failed: the data dir is full ({reason}): free space or move --data-dir; nothing was written")]
    Full {
        /// The operation that failed.
        what: String,
        /// The underlying OS error.
        reason: String,
    },
    /// The database file is damaged or not a hetee database.
    #[error("the store is corrupt: {reason}; restore the data dir from a backup or pass another --data-dir")]
    Corrupt {
        /// What is wrong, naming the file.
        reason: String,
    },
    /// Another process (or another [`Store`] in this process) has the database open.
    #[error("another hetee serve is using {} ({DB_FILE} is locked); stop it or pass another --data-dir", dir.display())]
    Locked {
        /// The data dir.
        dir: PathBuf,
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
    /// 500 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            StoreError::Full { .. } => 507,
            StoreError::NotFound { .. } => 404,
            _ => 500,
        }
    }
}

fn io_err(what: impl Into<String>, reason: impl fmt::Display) -> StoreError {
    StoreError::Io {
        what: what.into(),
        reason: reason.to_string(),
    }
}

fn not_writable(dir: &Path, reason: impl fmt::Display) -> StoreError {
    StoreError::NotWritable {
        dir: dir.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt { reason }
}

/// Record counts and database file size, as reported by [`Store::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreUsage {
    /// Number of stored models.
    pub models: u64,
    /// Number of stored key sets.
    pub keysets: u64,
    /// Number of stored job records.
    pub jobs: u64,
    /// Size of `DIR/hetee.redb` in bytes.
    pub file_bytes: u64,
}

/// Opens the database; called at open and on every re-open after an I/O error.
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The embedded store: a redb database in the data dir. `Send + Sync`; share it via `Arc`.
pub struct Store {
    dir: PathBuf,
    opener: Opener,
    /// The open database; `None` only after a failed re-open.
    db: RwLock<Option<Database>>,
    /// The current handle hit an I/O error (or a failed commit): re-open before the next use.
    broken: AtomicBool,
    /// The last I/O failure was a full disk (to classify redb's follow-up `PreviousIo`).
    last_full: AtomicBool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// Internal failure of an operation: a redb error (with "the handle must be re-opened") or a
/// ready store error such as `NotFound`. Boxed: `redb::Error` is large.
enum Fail {
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

fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::LockPoisoned(_)
    )
}

/// True for "no space left" (ENOSPC), "file too large" (EFBIG) and "quota exceeded" (EDQUOT).
fn is_full_io(e: &io::Error) -> bool {
    const EFBIG: i32 = 27;
    const ENOSPC: i32 = 28;
    #[cfg(target_os = "linux")]
    const EDQUOT: i32 = 122;
    #[cfg(not(target_os = "linux"))]
    const EDQUOT: i32 = ENOSPC;
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge
    ) || matches!(e.raw_os_error(), Some(EFBIG | ENOSPC | EDQUOT))
}

fn is_read_only_io(e: &io::Error) -> bool {
    const EROFS: i32 = 30;
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    ) || e.raw_os_error() == Some(EROFS)
}

/// Maps an I/O error on the data dir `dir` during `what`.
fn map_io(e: &io::Error, dir: &Path, what: &str) -> StoreError {
    if is_full_io(e) {
        StoreError::Full {
            what: what.to_string(),
            reason: e.to_string(),
        }
    } else if is_read_only_io(e) {
        not_writable(dir, e)
    } else {
        io_err(what, format_args!("{e} (data dir {})", dir.display()))
    }
}

/// Maps a redb error during `what` on the data dir `dir`. `prev_full`: the I/O error that
/// poisoned the handle was a full disk (used for redb's `PreviousIo`).
fn map_redb(e: redb::Error, dir: &Path, what: &str, prev_full: bool) -> StoreError {
    let file = dir.join(DB_FILE);
    match e {
        redb::Error::Io(io) => map_io(&io, dir, what),
        redb::Error::PreviousIo if prev_full => StoreError::Full {
            what: what.to_string(),
            reason: "an earlier write ran out of space".to_string(),
        },
        redb::Error::PreviousIo => io_err(
            what,
            format_args!("an earlier I/O error on {}; retry", file.display()),
        ),
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            dir: dir.to_path_buf(),
        },
        redb::Error::Corrupted(msg) => corrupt(format!("{}: {msg}", file.display())),
        redb::Error::UpgradeRequired(v) => {
            corrupt(format!("{} has the old file format {v}", file.display()))
        }
        redb::Error::ValueTooLarge(n) => io_err(
            what,
            format_args!("a record of {n} bytes exceeds the 3 GiB limit; nothing was written"),
        ),
        other => io_err(what, format_args!("{other} ({})", file.display())),
    }
}

/// Maps an error of `Builder::create` / `create_with_backend`.
fn map_open_err(e: redb::DatabaseError, dir: &Path) -> StoreError {
    let file = dir.join(DB_FILE);
    if let redb::DatabaseError::Storage(redb::StorageError::Io(io)) = &e {
        if io.kind() == io::ErrorKind::InvalidData {
            return corrupt(format!("{} is not a hetee database", file.display()));
        }
    }
    map_redb(e.into(), dir, &format!("opening {}", file.display()), false)
}

/// Opens (or creates) `DIR/hetee.redb` as a plain file. Tables are created by the first write
/// to them; reads treat a missing table as empty, so opening never writes a transaction.
fn open_file_db(dir: &Path) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(dir.join(DB_FILE))
        .map_err(|e| map_open_err(e, dir))
}

/// Creates `dir` if missing and checks that a file can be created, written, fsynced and removed.
fn probe(dir: &Path) -> Result<(), StoreError> {
    // Everything except a full disk means "not writable".
    let probe_err = |e: io::Error, what: String| match is_full_io(&e) {
        true => map_io(&e, dir, &what),
        false => not_writable(dir, format_args!("{what}: {e}")),
    };
    fs::create_dir_all(dir).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotADirectory => " (a parent of it is a regular file)",
            io::ErrorKind::AlreadyExists => " (a file of that name exists)",
            _ => "",
        };
        probe_err(e, format!("cannot create it{hint}"))
    })?;
    let path = dir.join(PROBE_FILE);
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.write_all(b"hetee data dir write probe\n")?;
        f.sync_all()
    })();
    // NotFound: a concurrent probe (e.g. a second server on this dir) removed it already.
    let removed = fs::remove_file(&path).or_else(|e| match e.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    });
    written.map_err(|e| probe_err(e, format!("writing {}", path.display())))?;
    removed.map_err(|e| probe_err(e, format!("removing {}", path.display())))
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

impl Store {
    /// Opens the store in `dir`: creates `dir` if missing, probes that it is writable (creates,
    /// writes, fsyncs and removes `dir/.write-probe`), then opens or creates `dir/hetee.redb`.
    ///
    /// Errors: [`StoreError::NotWritable`], [`StoreError::Full`], [`StoreError::Locked`] (another
    /// process has it open), [`StoreError::Corrupt`], [`StoreError::Io`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        probe(dir)?;
        let owned = dir.to_path_buf();
        Store::from_opener(dir, Box::new(move || open_file_db(&owned)))
    }

    /// Builds a store from `opener` and opens the database once.
    fn from_opener(dir: &Path, opener: Opener) -> Result<Store, StoreError> {
        let store = Store {
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
    fn write<T>(
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

    fn put(&self, def: Def, kind: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(
            || format!("storing {kind} {key}"),
            |txn| {
                txn.open_table(def)?.insert(key, value)?;
                Ok(())
            },
        )
    }

    fn get(&self, def: Def, kind: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(
            || format!("reading {kind} {key}"),
            |db| match open_ro(&db.begin_read()?, def)? {
                Some(table) => Ok(table.get(key)?.map(|v| v.value().to_vec())),
                None => Ok(None),
            },
        )
    }

    fn list(&self, def: Def, kind: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
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

    /// Stores (or replaces) the key set record `key_id`.
    pub fn put_keyset(&self, key_id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put(KEYSETS, "keyset", key_id, record)
    }

    /// The key set record `key_id`, if stored.
    pub fn keyset(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(KEYSETS, "keyset", key_id)
    }

    /// All key set records as `(key_id, record)`, sorted by id.
    pub fn keysets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(KEYSETS, "keyset")
    }

    /// Stores (or replaces) model `model_id`: its metadata and its weights, atomically in one
    /// transaction (both are written or neither).
    pub fn put_model(&self, model_id: &str, meta: &[u8], weights: &[u8]) -> Result<(), StoreError> {
        self.write(
            || format!("storing model {model_id}"),
            |txn| {
                txn.open_table(MODELS)?.insert(model_id, meta)?;
                txn.open_table(WEIGHTS)?.insert(model_id, weights)?;
                Ok(())
            },
        )
    }

    /// Replaces the metadata of model `model_id`; [`StoreError::NotFound`] if there is no such
    /// model. The weights are untouched.
    pub fn set_model_meta(&self, model_id: &str, meta: &[u8]) -> Result<(), StoreError> {
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

    /// The metadata of model `model_id`, if stored.
    pub fn model_meta(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(MODELS, "model", model_id)
    }

    /// The weights of model `model_id`, if stored.
    pub fn model_weights(&self, model_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(WEIGHTS, "weights of model", model_id)
    }

    /// The metadata of all models as `(model_id, meta)`, sorted by id (no weights).
    pub fn models(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(MODELS, "model")
    }

    /// Deletes model `model_id` (metadata and weights, atomically). Returns whether it existed.
    pub fn delete_model(&self, model_id: &str) -> Result<bool, StoreError> {
        self.write(
            || format!("deleting model {model_id}"),
            |txn| {
                let meta = txn.open_table(MODELS)?.remove(model_id)?.is_some();
                let weights = txn.open_table(WEIGHTS)?.remove(model_id)?.is_some();
                Ok(meta || weights)
            },
        )
    }

    /// Stores (or replaces) the job record `job_id` (a small JSON document).
    pub fn put_job(&self, job_id: &str, meta: &[u8]) -> Result<(), StoreError> {
        self.put(JOBS, "job", job_id, meta)
    }

    /// The job record `job_id`, if stored.
    pub fn job(&self, job_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(JOBS, "job", job_id)
    }

    /// All job records as `(job_id, meta)`, sorted by id.
    pub fn jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.list(JOBS, "job")
    }

    /// Record counts and the size of the database file.
    pub fn usage(&self) -> Result<StoreUsage, StoreError> {
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

mod states;
#[cfg(test)]
mod tests;
