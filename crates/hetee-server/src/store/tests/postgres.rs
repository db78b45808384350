//! The suite against PostgreSQL (`HETEE_TEST_PG`, one schema per test), and what only the
//! PostgreSQL store does: migrations, chunks, lost connections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::store::postgres::testing::{test_dsn, TestSchema};
use crate::store::postgres::{PgStore, CHUNK_BYTES, MIGRATIONS};
use crate::store::{Store, StoreError};

/// The suite on a schema of its own.
pub(super) struct Pg(TestSchema);

impl super::Backend for Pg {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::open_in_schema(&self.0.dsn, &self.0.name).unwrap())
    }
}

fn pg() -> Option<Pg> {
    test_dsn("the PostgreSQL store suite").map(|dsn| Pg(TestSchema::new(&dsn)))
}

crate::store_suite!(pg());

fn schema(test: &str) -> Option<TestSchema> {
    test_dsn(test).map(|dsn| TestSchema::new(&dsn))
}

fn client(t: &TestSchema) -> Client {
    let mut c = Client::connect(&t.dsn, NoTls).unwrap();
    c.batch_execute(&format!("SET search_path TO {}", t.name))
        .unwrap();
    c
}

#[test]
fn migrations_apply_once_in_order_and_a_newer_schema_is_refused() {
    let Some(t) = schema("migrations") else {
        return;
    };
    let s = PgStore::open_in_schema(&t.dsn, &t.name).unwrap();
    drop(s);
    // Re-opening (a restart, a second replica) applies nothing twice.
    let _again = PgStore::open_in_schema(&t.dsn, &t.name).unwrap();
    let mut c = client(&t);
    let versions: Vec<i32> = c
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, known);
    // Every table is in the test's schema (none went to the default one).
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&t.name],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 6);
    // A database migrated by a newer hetee is not touched.
    c.execute("INSERT INTO schema_version (version) VALUES (9999)", &[])
        .unwrap();
    let err = PgStore::open_in_schema(&t.dsn, &t.name).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 9999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade hetee"), "{err}");
}

#[test]
fn replicas_opening_together_migrate_once() {
    let Some(t) = schema("concurrent migrations") else {
        return;
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (dsn, name) = (t.dsn.clone(), t.name.clone());
            std::thread::spawn(move || PgStore::open_in_schema(&dsn, &name).map(drop))
        })
        .collect();
    for th in threads {
        th.join().unwrap().unwrap();
    }
    let n: i64 = client(&t)
        .query_one("SELECT count(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, MIGRATIONS.len() as i64);
}

#[test]
fn weights_are_stored_in_chunks_of_one_mib() {
    let Some(t) = schema("chunks") else { return };
    let s = PgStore::open_in_schema(&t.dsn, &t.name).unwrap();
    let w = vec![9u8; 2 * CHUNK_BYTES + 1];
    s.put_model("m", b"meta", &w).unwrap();
    let sizes: Vec<i32> = client(&t)
        .query(
            "SELECT length(data) FROM weight_chunks WHERE model_id = 'm' ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sizes, vec![CHUNK_BYTES as i32, CHUNK_BYTES as i32, 1]);
    // A missing chunk is reported, not returned as shorter weights.
    client(&t)
        .execute(
            "DELETE FROM weight_chunks WHERE model_id = 'm' AND seq = 1",
            &[],
        )
        .unwrap();
    let err = s.model_weights("m").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn an_unreachable_database_is_a_clear_503_not_a_hang() {
    // A closed port on loopback: nothing listens on port 1.
    let t0 = Instant::now();
    let err = PgStore::open("postgres://hetee:secret@127.0.0.1:1/hetee").unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert_eq!(err.http_status(), 503);
    let msg = err.to_string();
    assert!(msg.contains("postgres://127.0.0.1:1/hetee") && msg.contains("unreachable"));
    assert!(msg.contains("refused"), "the cause is named: {msg}");
    assert!(!msg.contains("secret"), "the password leaked: {msg}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let err = PgStore::open("postgres://u:secret@[oops").unwrap_err();
    assert!(matches!(err, StoreError::BadSpec { .. }), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = crate::store::open(Some("mysql://u:secret@db/x"), Path::new("/nonexistent"));
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("expected postgres://") && !err.contains("secret"),
        "{err}"
    );
}

/// A store whose connections [`TestSchema::kill_connections`] can find.
fn tagged_store(t: &TestSchema) -> PgStore {
    PgStore::open_in_schema(&t.tagged_dsn(), &t.name).unwrap()
}

#[test]
fn connections_lost_while_idle_are_replaced_without_failing_a_call() {
    let Some(t) = schema("reconnect") else { return };
    let s = tagged_store(&t);
    s.put_job("j1", b"{}").unwrap();
    // A database restart or a network cut kills the pooled connections …
    assert!(t.kill_connections("true") >= 1);
    // … and the next calls connect again.
    assert_eq!(s.job("j1").unwrap(), Some(b"{}".to_vec()));
    s.put_job("j2", b"{}").unwrap();
    assert_eq!(s.jobs().unwrap().len(), 2);
}

#[test]
fn a_model_write_cut_off_midway_leaves_nothing_visible() {
    let Some(t) = schema("atomic model write") else {
        return;
    };
    let s = Arc::new(tagged_store(&t));
    s.put_model("old", b"meta", b"w").unwrap();
    // Hold the chunk table so the write stops after its metadata row …
    let mut blocker = client(&t);
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE weight_chunks IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.put_model("new", b"meta", &vec![1u8; 3 * CHUNK_BYTES]))
    };
    // … then cut its connection, as a crash of the server or the network would, and the new
    // one it retries on: the call fails as unreachable.
    let t0 = Instant::now();
    let mut killed = 0;
    while !writer.is_finished() {
        killed += t.kill_connections("wait_event_type = 'Lock'");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the write never failed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(killed >= 1);
    let err = writer.join().unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert_eq!(err.http_status(), 503);
    tx.commit().unwrap();
    assert_eq!(s.model_meta("new").unwrap(), None);
    assert_eq!(s.model_weights("new").unwrap(), None);
    assert_eq!(s.models().unwrap().len(), 1);
    s.put_model("new", b"meta", b"w").unwrap(); // the store works on
}
