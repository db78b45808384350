//! Tests of the redb store alone: bad data dirs, the lock, disk-full simulation.

use crate::store::redb::*;
use crate::store::redb_io::*;
use crate::store::{Store, StoreError};
use redb::backends::FileBackend;
use redb::StorageBackend;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A simulated disk: growing the file beyond `limit` bytes fails with ENOSPC, and so does
/// fsync while `sync_full` is set.
#[derive(Debug, Default)]
struct Disk {
    limit: AtomicU64,
    sync_full: AtomicBool,
}

#[derive(Debug)]
struct Quota {
    inner: FileBackend,
    disk: Arc<Disk>,
}

fn enospc(fail: bool) -> io::Result<()> {
    match fail {
        true => Err(io::Error::from_raw_os_error(28)),
        false => Ok(()),
    }
}

impl Quota {
    fn check(&self, end: u64) -> io::Result<()> {
        enospc(end > self.disk.limit.load(Ordering::SeqCst))
    }
}

impl StorageBackend for Quota {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(len)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        enospc(self.disk.sync_full.load(Ordering::SeqCst))?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset + data.len() as u64)?;
        self.inner.write(offset, data)
    }
}

fn quota_store(dir: &Path, disk: Arc<Disk>) -> Result<RedbStore, StoreError> {
    let owned = dir.to_path_buf();
    let opener = move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(owned.join(DB_FILE))
            .map_err(|e| map_io(&e, &owned, "opening"))?;
        let inner = FileBackend::new(file).map_err(|e| map_open_err(e, &owned))?;
        let disk = disk.clone();
        redb::Builder::new()
            .create_with_backend(Quota { inner, disk })
            .map_err(|e| map_open_err(e, &owned))
    };
    RedbStore::from_opener(dir, Box::new(opener))
}

fn kv(k: &str, v: &[u8]) -> (String, Vec<u8>) {
    (k.to_string(), v.to_vec())
}

#[test]
fn open_twice_is_locked() {
    let tmp = tempdir();
    let first = RedbStore::open(tmp.path()).unwrap();
    let err = RedbStore::open(tmp.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("another hetee serve is using") && msg.contains("--data-dir"));
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    drop(first);
    RedbStore::open(tmp.path()).unwrap();
}

#[test]
fn open_reports_unusable_data_dirs_clearly() {
    let tmp = tempdir();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    for (dir, hint) in [
        (file.join("sub"), "regular file"),
        (file.clone(), "file of"),
    ] {
        let err = RedbStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.display().to_string()) && msg.contains(hint),
            "{msg}"
        );
        assert!(msg.contains("pass another --data-dir"), "{msg}");
    }
    // Read-only filesystems (as root too): missing dir, and existing dir refusing the probe.
    for dir in ["/proc/hetee-store-test", "/proc"] {
        let err = RedbStore::open(Path::new(dir)).unwrap_err();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("data dir {dir} is not")),
            "{err}"
        );
    }

    let garbage = tmp.path().join("garbage");
    fs::create_dir(&garbage).unwrap();
    fs::write(garbage.join(DB_FILE), vec![0x42; 8192]).unwrap();
    let err = RedbStore::open(&garbage).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not a hetee database"), "{err}");
}

#[test]
fn full_disk_errors_are_recognised_in_every_redb_wrapper() {
    let dir = Path::new("/srv/hetee");
    let storage = |code| redb::StorageError::Io(io::Error::from_raw_os_error(code));
    for code in [28, 27] {
        let errors: [redb::Error; 5] = [
            storage(code).into(),
            redb::CommitError::Storage(storage(code)).into(),
            redb::TransactionError::Storage(storage(code)).into(),
            redb::TableError::Storage(storage(code)).into(),
            redb::DatabaseError::Storage(storage(code)).into(),
        ];
        for e in errors {
            let err = map_redb(e, dir, "storing model m", false);
            assert!(err.is_full() && err.http_status() == 507, "{err}");
            let msg = err.to_string();
            assert!(msg.starts_with("storing model m failed: the data dir is full"));
            assert!(msg.contains("free space or move --data-dir; nothing was written"));
        }
    }
    let Fail::Db(e, reopen) = Fail::from(redb::CommitError::Storage(storage(28))) else {
        panic!("not a redb failure")
    };
    assert!(reopen && map_redb(*e, dir, "x", false).is_full());
    for kind in [io::ErrorKind::StorageFull, io::ErrorKind::FileTooLarge] {
        assert!(map_redb(redb::Error::Io(kind.into()), dir, "x", false).is_full());
    }
    assert!(map_redb(redb::Error::PreviousIo, dir, "x", true).is_full());
    let err = map_redb(redb::Error::PreviousIo, dir, "x", false);
    assert!(!err.is_full() && err.http_status() == 500);
    let err = map_redb(redb::Error::DatabaseAlreadyOpen, dir, "x", false);
    assert!(matches!(err, StoreError::Locked { .. }));
    let denied = redb::Error::Io(io::ErrorKind::PermissionDenied.into());
    let err = map_redb(denied, dir, "x", false);
    let msg = err.to_string();
    assert!(
        msg.starts_with("data dir /srv/hetee is not writable ("),
        "{msg}"
    );
    assert!(
        msg.ends_with("); fix its permissions or pass another --data-dir"),
        "{msg}"
    );
    let err = map_redb(redb::Error::Io(io::Error::other("boom")), dir, "x", false);
    assert!(matches!(err, StoreError::Io { .. }) && err.http_status() == 500);
}

#[test]
fn disk_full_write_changes_nothing_and_store_recovers() {
    let tmp = tempdir();
    let disk = Arc::new(Disk::default());
    disk.limit.store(u64::MAX, Ordering::SeqCst);
    let s = quota_store(tmp.path(), disk.clone()).unwrap();
    s.put_model("m1", b"meta1", &[1; 1000]).unwrap();
    s.put_job("j1", b"{}").unwrap();
    let len = fs::metadata(tmp.path().join(DB_FILE)).unwrap().len();
    disk.limit.store(len, Ordering::SeqCst); // the disk is full: the file cannot grow
    let big = vec![7u8; 8 << 20];
    for _ in 0..2 {
        let err = s.put_model("m2", b"meta2", &big).unwrap_err();
        assert!(err.is_full() && err.http_status() == 507, "{err}");
        assert!(err
            .to_string()
            .starts_with("storing model m2 failed: the data dir is full"));
        // Reads still work (the store re-opens redb); put_model was atomic: nothing of m2.
        assert_eq!(s.model_meta("m2").unwrap(), None);
        assert_eq!(s.model_weights("m2").unwrap(), None);
        assert_eq!(s.model_weights("m1").unwrap(), Some(vec![1; 1000]));
        assert_eq!(s.models().unwrap(), vec![kv("m1", b"meta1")]);
    }
    disk.limit.store(u64::MAX, Ordering::SeqCst); // space is back
    s.put_model("m2", b"meta2", &big).unwrap();
    assert_eq!(s.model_weights("m2").unwrap(), Some(big));
    // ENOSPC reported by fsync during the commit (delayed allocation, NFS, thin volumes).
    disk.sync_full.store(true, Ordering::SeqCst);
    let err = s.put_job("j2", b"{}").unwrap_err();
    assert!(err.is_full(), "{err}");
    disk.sync_full.store(false, Ordering::SeqCst);
    assert_eq!(s.job("j2").unwrap(), None); // 2-phase commit: the data fsync failed first
    assert_eq!(s.models().unwrap().len(), 2);
    s.put_job("j3", b"{}").unwrap();
    drop(s);
    let s = RedbStore::open(tmp.path()).unwrap();
    assert_eq!(s.models().unwrap().len(), 2);
    assert_eq!(s.job("j1").unwrap(), Some(b"{}".to_vec()));
    assert_eq!(s.job("j3").unwrap(), Some(b"{}".to_vec()));
}

/// The suite every store passes, on a redb store in a temp dir.
pub(super) struct Redb(tempfile::TempDir);

impl super::Backend for Redb {
    fn open(&self) -> std::sync::Arc<dyn Store> {
        std::sync::Arc::new(RedbStore::open(&self.0.path().join("data/nested")).unwrap())
    }
}

fn redb() -> Option<Redb> {
    Some(Redb(tempdir()))
}

crate::store_suite!(redb());
