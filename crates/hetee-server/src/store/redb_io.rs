//! The file-system side of [`RedbStore`](super::RedbStore): mapping I/O and redb errors to
//! [`StoreError`], probing the data dir, opening the database file.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use redb::Database;

use super::redb::{CACHE_BYTES, DB_FILE, PROBE_FILE};
use super::StoreError;

/// A full data dir during `what`.
fn full(what: &str, reason: String) -> StoreError {
    StoreError::Full {
        what: what.to_string(),
        place: "data dir",
        fix: "free space or move --data-dir",
        reason,
    }
}

pub(super) fn io_err(what: impl Into<String>, reason: impl fmt::Display) -> StoreError {
    StoreError::Io {
        what: what.into(),
        reason: reason.to_string(),
    }
}

pub(super) fn not_writable(dir: &Path, reason: impl fmt::Display) -> StoreError {
    StoreError::NotWritable {
        dir: dir.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(super) fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt { reason }
}

pub(super) fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::LockPoisoned(_)
    )
}

/// True for "no space left" (ENOSPC), "file too large" (EFBIG) and "quota exceeded" (EDQUOT).
pub(super) fn is_full_io(e: &io::Error) -> bool {
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

pub(super) fn is_read_only_io(e: &io::Error) -> bool {
    const EROFS: i32 = 30;
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    ) || e.raw_os_error() == Some(EROFS)
}

/// Maps an I/O error on the data dir `dir` during `what`.
pub(super) fn map_io(e: &io::Error, dir: &Path, what: &str) -> StoreError {
    if is_full_io(e) {
        full(what, e.to_string())
    } else if is_read_only_io(e) {
        not_writable(dir, e)
    } else {
        io_err(what, format_args!("{e} (data dir {})", dir.display()))
    }
}

/// Maps a redb error during `what` on the data dir `dir`. `prev_full`: the I/O error that
/// poisoned the handle was a full disk (used for redb's `PreviousIo`).
pub(super) fn map_redb(e: redb::Error, dir: &Path, what: &str, prev_full: bool) -> StoreError {
    let file = dir.join(DB_FILE);
    match e {
        redb::Error::Io(io) => map_io(&io, dir, what),
        redb::Error::PreviousIo if prev_full => {
            full(what, "an earlier write ran out of space".into())
        }
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
pub(super) fn map_open_err(e: redb::DatabaseError, dir: &Path) -> StoreError {
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
pub(super) fn open_file_db(dir: &Path) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(dir.join(DB_FILE))
        .map_err(|e| map_open_err(e, dir))
}

/// Creates `dir` if missing and checks that a file can be created, written, fsynced and removed.
pub(super) fn probe(dir: &Path) -> Result<(), StoreError> {
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
