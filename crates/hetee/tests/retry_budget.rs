//! No result counted twice against a budget: two `hetee serve` replicas on one PostgreSQL
//! store (`HETEE_TEST_PG`; skipped without it unless `HETEE_REQUIRE_PG`), a model whose budget
//! is exactly the number of queries, and a replica killed with SIGKILL after its enclave spent a
//! query and before the answer reached the client. The client's retry on the other replica
//! carries the same query id and encryption seed (the same ciphertexts): it runs without
//! spending, every query gets its result bit for bit `hetee run --plaintext`, and the budget is
//! spent exactly at the end.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::relay::{Hooks, Tapped};
use common::replicas::{model_status, shared_store, spent_by, two_replicas_with_budget};
use common::*;
use hetee::client::channel::load_or_create_key;
use hetee::client::failover::Replicas;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;
use hetee_proto::api::QueryDone;
use hetee_proto::bodies::QueryBody;

/// A replica that, armed, lets one query run to its end on the replica (its enclave
/// spends the budget and the server stores the state), then kills the replica with SIGKILL and
/// gives the client what a dead replica gives: its answer is lost.
struct DiesAfterSpending {
    addr: String,
    pid: u32,
    /// Shared by the replicas: one answer is lost in the run.
    armed: Arc<AtomicBool>,
}

impl Hooks for DiesAfterSpending {
    fn query(&self, api: &Api, session: &str, req: &QueryBody) -> Result<QueryDone> {
        let done = api.query(session, req);
        if !self.armed.swap(false, Ordering::SeqCst) {
            return done;
        }
        assert!(done.is_ok(), "the query to be lost failed on its own");
        let killed = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&self.addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the killed replica still listens"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // What the client sees of a replica that died before answering.
        api.query(session, req)
    }
}

/// The logits in a float32 `.npy` file (its data is its last `n` × 4 bytes).
fn npy_tail(path: &std::path::Path, n: usize) -> Vec<u32> {
    let b = std::fs::read(path).unwrap();
    b[b.len() - 4 * n..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn a_retry_after_a_replica_died_past_the_spend_is_not_counted_twice() {
    let Some((_schema, store)) = shared_store("retry after a spend") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = measurement();
    let n = 4;
    let (r1, r2, id, key, client) = two_replicas_with_budget(d, &store, "mnist", n);
    let owner = d.join("owner.key");
    let x = d.join("x.npy");
    let images = mnist_images(n);
    write_f32(&x, &[n, 1, 28, 28], &images);
    let plain = d.join("plain.npy");
    run_plaintext("mnist", &x, &plain);

    let armed = Arc::new(AtomicBool::new(true));
    let relays = [&r1, &r2]
        .iter()
        .map(|r| {
            let relay: Arc<dyn Relay> = Arc::new(Tapped {
                api: Api::connect(&r.addr, None).unwrap(),
                hooks: DiesAfterSpending {
                    addr: r.addr.clone(),
                    pid: r.child.id(),
                    armed: armed.clone(),
                },
            });
            (r.addr.clone(), relay)
        })
        .collect();
    let trust = Trust::new(&m, true).unwrap();
    let replicas =
        Replicas::over(relays, &trust, &id, Some(load_or_create_key(&key).unwrap())).unwrap();
    let per = images.len() / n;
    let mut logits = Vec::new();
    for (i, img) in images.chunks(per).enumerate() {
        let a = replicas
            .query(&[img], false)
            .unwrap_or_else(|e| panic!("query {i}: {e:#}"));
        logits.extend(a.logits.concat());
    }
    assert!(!armed.load(Ordering::SeqCst), "no answer was lost");
    let retried = replicas.retried();
    assert!(!retried.is_empty(), "no query was retried");
    eprintln!("retried attempts: {retried:?}");
    let bits: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        bits,
        npy_tail(&plain, logits.len()),
        "differs from the reference"
    );

    // Each query counted once: the budget is spent exactly, and one more query is refused.
    let alive = if TcpStream::connect(&r1.addr).is_ok() {
        &r1
    } else {
        &r2
    };
    let st = model_status(&alive.addr, &m, &id, &owner);
    assert_eq!(spent_by(&st, &client), n as u64, "{st}");
    let err = replicas
        .query(&[&images[..per]], false)
        .err()
        .expect("a query past the budget ran");
    assert!(
        format!("{err:#}").contains("query budget for the model is spent"),
        "{err:#}"
    );
}
