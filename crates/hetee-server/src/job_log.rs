//! The record of every query (`jobs` in the store), written off the query
//! path: a query hands its record to one writer thread and answers at once;
//! the writer stores whatever has queued in one transaction. A durable
//! commit per query cost more than a millisecond on its response. Records
//! still queued when the process dies are lost; they are informational.
//! The writer lingers up to [`LINGER`] after a record for more to come, so
//! that one-at-a-time queries do not each pay a durable commit (about a
//! millisecond of CPU and a disk flush, on cores the queries share).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

use crate::store::Store;

/// Most records stored in one transaction.
const MAX_BATCH: usize = 256;

/// Longest a record waits for others to share its transaction.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// A job's id and its record.
type Record = (String, Vec<u8>);

/// Writes job records to a store from its own thread.
pub struct JobLog {
    tx: Mutex<Option<Sender<Record>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl JobLog {
    /// Starts the writer for `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = channel();
        let writer = std::thread::Builder::new()
            .name("job-log".into())
            .spawn(move || write_all(store.as_ref(), &rx))
            .map_err(|e| warn!(error = %e, "cannot start the job log; query records are not kept"))
            .ok();
        JobLog {
            tx: Mutex::new(writer.as_ref().map(|_| tx)),
            writer: Mutex::new(writer),
        }
    }

    /// Queues the record `record` of job `id`.
    pub fn record(&self, id: String, record: Vec<u8>) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            if tx.send((id, record)).is_err() {
                warn!("the job log's writer stopped; a query record is lost");
            }
        }
    }

    /// Stores every queued record, then stops the writer.
    pub fn flush_and_stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for JobLog {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

fn write_all(store: &dyn Store, rx: &Receiver<Record>) {
    while let Ok(first) = rx.recv() {
        let deadline = std::time::Instant::now() + LINGER;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => batch.push(r),
                // Time is up, or the log is stopping: store what is here.
                Err(_) => break,
            }
        }
        if let Err(e) = store.put_jobs(&batch) {
            warn!(error = %e, records = batch.len(), "cannot record jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    #[test]
    fn every_record_reaches_the_store_in_batches_and_nothing_is_lost_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let log = JobLog::start(store.clone());
        let n = 3 * MAX_BATCH + 7;
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in (t..n).step_by(4) {
                        log.record(format!("{i:05}"), i.to_string().into_bytes());
                    }
                });
            }
        });
        log.flush_and_stop();
        let jobs = store.jobs().unwrap();
        assert_eq!(jobs.len(), n);
        for (i, (id, record)) in jobs.iter().enumerate() {
            assert_eq!(id, &format!("{i:05}"));
            assert_eq!(record, &i.to_string().into_bytes());
        }
        // Records after the stop go nowhere, without a panic.
        log.record("late".into(), b"{}".to_vec());
        assert_eq!(store.job("late").unwrap(), None);
    }

    #[test]
    fn a_lone_record_is_stored_after_the_linger_without_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let log = JobLog::start(store.clone());
        log.record("one".into(), b"{}".to_vec());
        let start = std::time::Instant::now();
        while store.job("one").unwrap().is_none() {
            assert!(start.elapsed() < LINGER * 50, "the record was not stored");
            std::thread::sleep(LINGER / 10);
        }
        drop(log);
    }
}
