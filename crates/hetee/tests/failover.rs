//! Clients with several servers: three `hetee serve` replicas on one PostgreSQL store
//! (`HETEE_TEST_PG`; skipped without it unless `HETEE_REQUIRE_PG`), one of them killed with
//! SIGKILL while queries are in flight. Every input still gets exactly its result (bit for bit
//! `hetee run --plaintext`), the model and its budget state survive, every query counts once
//! against the budget (a retry after its replica died reuses the query's id and input), and the
//! killed replica comes back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::replicas::{
    addrs, infer_command, model_status, replica, shared_store, spent_by, stored_state_version,
    two_replicas_with_budget,
};
use common::*;

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// The lines `hetee infer` printed about attempts retried on another server.
fn retried_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.contains("were retried in a new session"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

/// The model of the kill test: its server side (ct×ct and enclave steps) takes most of a
/// query's time, so a replica killed mid-run is likely to have queries mid-evaluation.
const MODEL: &str = "mnist";

#[test]
fn killing_a_replica_mid_run_loses_no_query_and_keeps_the_budget_consistent() {
    let Some((schema, store)) = shared_store("failover under kill -9") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = measurement();
    let r1 = replica(d, &store, "r1");
    let mut r2 = replica(d, &store, "r2");
    let r3 = replica(d, &store, "r3");
    let owner = d.join("owner.key");
    // A budget of exactly the queries this test sends (50 + 200 + 20): a query counted twice
    // would leave the last ones without a result.
    let budget = 50 + 200 + 20;
    let id = upload_as(
        &r1.addr,
        &m,
        MODEL,
        &owner,
        &["--max-batch", "1", "--query-budget", &budget.to_string()],
    );
    let key = d.join("client.key");
    let client = public_key_hex(&key);
    let key_arg = key.to_str().unwrap();

    // 50 images through replicas 2 and 3 (which learn the model from the store).
    let n = 50;
    let x = d.join("x50.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let (secure, plain) = (d.join("secure50.npy"), d.join("plain50.npy"));
    run_plaintext(MODEL, &x, &plain);
    let out = infer_command(
        &addrs(&[&r2, &r3]),
        &m,
        &id,
        &x,
        &secure,
        &["--client-key", key_arg],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        same_bytes(&secure, &plain),
        "replicas 2 and 3 differ from the reference"
    );
    let before = model_status(&r1.addr, &m, &id, &owner);
    assert_eq!(spent_by(&before, &client), n as u64, "{before}");

    // 200 queries over the three replicas, 4 in flight; replica 2 is killed (SIGKILL) once a
    // quarter of them have spent their budget (as the shared store shows), mid-run.
    let n = 200;
    let x = d.join("x200.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let (secure, plain) = (d.join("secure200.npy"), d.join("plain200.npy"));
    run_plaintext(MODEL, &x, &plain);
    let servers = addrs(&[&r1, &r2, &r3]);
    let v0 = stored_state_version(&schema, &id);
    let flags = ["--client-key", key_arg, "--parallel", "6"];
    let mut run = infer_command(&servers, &m, &id, &x, &secure, &flags)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_state_version(&schema, &id) < v0 + n as u64 / 4 {
        assert!(Instant::now() < deadline, "the run does not progress");
        assert!(run.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r2_addr = r2.addr.clone();
    r2.child.kill().unwrap(); // SIGKILL to the real `hetee serve` process
    r2.child.wait().unwrap();
    let in_flight = run.try_wait().unwrap().is_none();
    assert!(in_flight, "the run ended before replica 2 was killed");
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        same_bytes(&secure, &plain),
        "results differ from the reference after the kill"
    );
    let retried = retried_lines(&err);
    eprintln!("retried attempts:\n{}", retried.join("\n"));
    assert!(
        retried.iter().any(|l| l.contains(&r2_addr)),
        "no query noticed that replica 2 died: {err}"
    );
    let cut = retried
        .iter()
        .filter(|l| l.contains(&r2_addr) && !l.contains("Connection refused"))
        .count();
    eprintln!("requests to replica 2 cut by the kill: {cut}");
    for l in &retried {
        assert!(
            l.contains("cannot reach the server")
                || l.contains("answered 5")
                || l.contains("another replica changed"),
            "an attempt failed without a clear reason: {l}"
        );
    }

    // The model and its budget state live on: one state, every spend the enclaves made counted
    // once (each stored spend is one state version), and each query spent once, however many
    // of its attempts reached an enclave.
    let after = model_status(&addrs(&[&r3, &r1]), &m, &id, &owner);
    let spends = after["version"].as_u64().unwrap() - before["version"].as_u64().unwrap();
    let spent = spent_by(&after, &client) - spent_by(&before, &client);
    assert_eq!(
        spent, spends,
        "spent count and stored spends disagree: {after}"
    );
    assert_eq!(
        spent,
        n as u64,
        "{spent} queries counted for {n} results ({} retried attempts)",
        retried.len()
    );

    // Replica 2 restarted (same id, same store) serves again, bit-exact, on its own.
    let started = Instant::now();
    let r2 = replica(d, &store, "r2");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(r2.health()["replica_id"], "r2");
    let n = 20;
    let x = d.join("x20.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let (secure, plain) = (d.join("secure20.npy"), d.join("plain20.npy"));
    run_plaintext(MODEL, &x, &plain);
    let out = infer_command(&r2.addr, &m, &id, &x, &secure, &["--client-key", key_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        same_bytes(&secure, &plain),
        "the restarted replica 2 differs from the reference"
    );
    // The budget is now spent exactly: one more query is refused.
    let st = model_status(&r2.addr, &m, &id, &owner);
    assert_eq!(spent_by(&st, &client), budget as u64, "{st}");
    let x = d.join("x1.npy");
    write_f32(&x, &[1, 1, 28, 28], &mnist_images(1));
    let out = infer_command(
        &r2.addr,
        &m,
        &id,
        &x,
        &d.join("y1.npy"),
        &["--client-key", key_arg],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("query budget for the model is spent"), "{err}");
}

#[test]
fn a_query_refused_by_the_model_is_not_retried_and_names_its_inputs() {
    let Some((_schema, store)) = shared_store("failover refusals") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = measurement();
    let budget = 3;
    let (r1, r2, id, key, _) = two_replicas_with_budget(d, &store, "e2dm", budget);
    let owner = d.join("owner.key");
    // A dead address first: the client skips it. Five inputs, a budget of three, one at a time.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let x = d.join("x5.npy");
    write_f32(&x, &[5, 1, 28, 28], &mnist_images(5));
    let servers = format!("{dead},{}", addrs(&[&r1, &r2]));
    let out = infer_command(
        &servers,
        &m,
        &id,
        &x,
        &d.join("y.npy"),
        &["--client-key", key.to_str().unwrap(), "--parallel", "1"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 of 5 inputs got no result (inputs 3-4)")
            && err.contains("query budget for the model is spent"),
        "{err}"
    );
    assert!(!d.join("y.npy").exists(), "an output was written");
    let st = model_status(&addrs(&[&r2]), &m, &id, &owner);
    assert_eq!(spent_by(&st, &public_key_hex(&key)), budget as u64, "{st}");
}
