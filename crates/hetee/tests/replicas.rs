//! Replicas: several `hetee serve` processes, each with its own enclave, sharing one PostgreSQL
//! store (`HETEE_TEST_PG`, one schema per test; skipped without it unless `HETEE_REQUIRE_PG`).
//! Also `GET /v1/health` on the default embedded store.

mod common;

use std::path::Path;
use std::process::Output;

use common::replicas::{replica, shared_store};
use common::*;

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn a_model_uploaded_through_one_replica_is_served_bit_exact_by_another() {
    let Some((_schema, store)) = shared_store("replicas serving one model") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    // Both replicas run before the upload: the second learns of the key set and the model
    // from the store when a client asks for them.
    let r1 = replica(dir.path(), &store, "r1");
    let r2 = replica(dir.path(), &store, "r2");
    let id = upload_mnist(&r1.addr, &m, &dir.path().join("owner.key"));
    let n = 8;
    let x = dir.path().join("x.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let (secure, plain) = (dir.path().join("secure.npy"), dir.path().join("plain.npy"));
    let out = infer(&r2.addr, &m, &id, &x, &secure, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    run_plaintext("mnist", &x, &plain);
    assert!(
        bytes(&secure) == bytes(&plain),
        "replica 2's results differ from hetee run --plaintext"
    );
    for (r, name) in [(&r1, "r1"), (&r2, "r2")] {
        let h = r.health();
        assert_eq!(h["replica_id"], name, "{h}");
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["models"], 1, "{h}");
        assert_eq!(h["store"]["kind"], "postgres", "{h}");
        assert_eq!(h["store"]["reachable"], true, "{h}");
        assert_eq!(h["enclave"]["alive"], true, "{h}");
        assert_eq!(h["enclave"]["measurement"], m.as_str(), "{h}");
    }
    // The database drops every connection (a restart, a network cut): the replicas connect
    // again on their next request, which does not fail.
    assert!(_schema.kill_connections("true") >= 1);
    let h = r2.health();
    assert_eq!(
        (&h["status"], &h["store"]["reachable"]),
        (&"ok".into(), &true.into()),
        "{h}"
    );
    let out = infer(&r2.addr, &m, &id, &x, &secure, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(bytes(&secure) == bytes(&plain));
    let log = r2.stop();
    assert!(log.contains("model loaded from the shared store"), "{log}");
}

/// `hetee infer` of one image (`dir/one.npy`) with the client key `key` through `server`.
fn one_query(server: &Server, m: &str, id: &str, dir: &Path, key: &Path, tag: &str) -> Output {
    let x = dir.join("one.npy");
    let y = dir.join(format!("y-{tag}.npy"));
    infer(
        &server.addr,
        m,
        id,
        &x,
        &y,
        &["--client-key", key.to_str().unwrap(), "--parallel", "1"],
    )
}

const SPENT: &str = "query budget for the model is spent";
const CONFLICT: &str = "another replica changed this model's state";

#[test]
fn replicas_racing_for_the_last_queries_of_a_budget_never_overspend_it() {
    let Some((_schema, store)) = shared_store("budget race between replicas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    let r1 = replica(dir.path(), &store, "r1");
    let r2 = replica(dir.path(), &store, "r2");
    let budget = 3;
    let id = upload_as(
        &r1.addr,
        &m,
        "e2dm",
        &dir.path().join("owner.key"),
        &["--query-budget", &budget.to_string(), "--max-batch", "1"],
    );
    let key = dir.path().join("client.key");
    write_f32(
        &dir.path().join("one.npy"),
        &[1, 1, 28, 28],
        &mnist_images(1),
    );
    public_key_hex(&key); // created once, before the racing clients read it
                          // Seven queries at once, spread over both replicas, for a budget of three.
    let results: Vec<(usize, Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..7)
            .map(|i| {
                let (r, key, dir, m, id) = (
                    if i % 2 == 0 { &r1 } else { &r2 },
                    &key,
                    dir.path(),
                    &m,
                    &id,
                );
                s.spawn(move || (i, one_query(r, m, id, dir, key, &format!("race{i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ok = 0;
    for (i, out) in &results {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "racing query {i}: {}",
            if out.status.success() {
                "ran"
            } else {
                err.trim()
            }
        );
        if out.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(SPENT) || err.contains(CONFLICT),
                "query {i} failed otherwise: {}",
                describe(out)
            );
        }
    }
    assert!(ok <= budget, "{ok} queries ran on a budget of {budget}");
    // Retrying one at a time, alternating replicas, spends exactly what is left.
    let mut tries = 0;
    while ok < budget {
        tries += 1;
        assert!(tries <= 10, "the budget was never used up");
        let r = if tries % 2 == 0 { &r1 } else { &r2 };
        let out = one_query(r, &m, &id, dir.path(), &key, &format!("retry{tries}"));
        if out.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(CONFLICT), "{}", describe(&out));
        }
    }
    // Spent, as every replica sees it.
    for (r, tag) in [(&r1, "after1"), (&r2, "after2")] {
        let out = one_query(r, &m, &id, dir.path(), &key, tag);
        assert!(
            !out.status.success(),
            "an extra query ran: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(SPENT),
            "{}",
            describe(&out)
        );
    }
    // Another client key has its own budget, through either replica.
    let other = dir.path().join("other.key");
    public_key_hex(&other);
    let out = one_query(&r2, &m, &id, dir.path(), &other, "other");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn health_reports_the_replica_its_enclave_and_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let m = measurement();
    // The default: the embedded store, a random replica id kept in the data dir.
    let server = Server::start(&data);
    let h = server.health();
    let id = h["replica_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("r-") && id.len() == 14, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["enclave"]["alive"], true, "{h}");
    assert_eq!(h["enclave"]["measurement"], m.as_str(), "{h}");
    assert_eq!(h["measurement"], m.as_str(), "{h}");
    assert_eq!(h["store"]["kind"], "redb", "{h}");
    assert_eq!(h["store"]["reachable"], true, "{h}");
    assert!(h["enclave_pid"].as_u64().unwrap() > 0, "{h}");
    server.stop();
    // Restarted, the replica keeps its id; --replica-id overrides it.
    let server = Server::start(&data);
    assert_eq!(server.health()["replica_id"], id.as_str());
    server.stop();
    let server = Server::start_with_args(&data, &["--replica-id", "eu-west-1a"]);
    assert_eq!(server.health()["replica_id"], "eu-west-1a");
    server.stop();

    // A store that stops answering makes the replica report itself degraded, with 503.
    let Some((schema, store)) = shared_store("health of an unreachable store") else {
        return;
    };
    let server = replica(dir.path(), &store, "pg1");
    assert_eq!(server.health()["store"]["reachable"], true);
    drop(schema); // drops the schema and every table in it
    let url = format!("http://{}/v1/health", server.addr);
    let err = ureq::get(&url).call().unwrap_err();
    assert!(matches!(err, ureq::Error::StatusCode(503)), "{err}");
    let mut resp = ureq::get(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let h: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["store"]["reachable"], false, "{h}");
    assert!(
        h["store"]["error"].as_str().unwrap().contains("failed"),
        "{h}"
    );
    assert_eq!(h["enclave"]["alive"], true, "{h}");
}

/// `hetee model <cmd> --model-id ID` as the owner in `key`, through `server`.
fn model_cmd(cmd: &str, server: &Server, m: &str, id: &str, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "model",
        cmd,
        "--model-id",
        id,
        "--server",
        &server.addr,
        "--expect-measurement",
        m,
        "--allow-sim",
        "--client-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    hetee(&args)
}

#[test]
fn an_owners_change_through_one_replica_holds_on_the_others() {
    let Some((_schema, store)) = shared_store("owner changes across replicas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = measurement();
    let r1 = replica(d, &store, "r1");
    let r2 = replica(d, &store, "r2");
    let (owner, a, b) = (d.join("owner.key"), d.join("a.key"), d.join("b.key"));
    let list = |name: &str, keys: &[&Path]| {
        let p = d.join(name);
        let lines: Vec<String> = keys.iter().map(|k| public_key_hex(k)).collect();
        std::fs::write(&p, lines.join("\n")).unwrap();
        p
    };
    let only_a = list("only-a.txt", &[&a]);
    let only_b = list("only-b.txt", &[&b]);
    let id = upload_as(
        &r1.addr,
        &m,
        "e2dm",
        &owner,
        &[
            "--query-budget",
            "5",
            "--max-batch",
            "1",
            "--allow-clients",
            only_a.to_str().unwrap(),
        ],
    );
    write_f32(&d.join("one.npy"), &[1, 1, 28, 28], &mnist_images(1));
    let out = one_query(&r2, &m, &id, d, &a, "a1");
    assert!(out.status.success(), "{}", describe(&out));
    // The owner changes the allow list through replica 2 …
    let out = model_cmd(
        "allow",
        &r2,
        &m,
        &id,
        &owner,
        &["--allow-clients", only_b.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    // … and replica 1 enforces it.
    let out = one_query(&r1, &m, &id, d, &a, "a2");
    assert!(
        !out.status.success(),
        "a removed client ran: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow list"),
        "{}",
        describe(&out)
    );
    let out = one_query(&r1, &m, &id, d, &b, "b1");
    assert!(out.status.success(), "{}", describe(&out));
    // One state, whichever replica reports it: both queries counted once.
    let out = model_cmd("status", &r1, &m, &id, &owner, &["--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spent = |k: &Path| {
        st["spent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["client"] == public_key_hex(k).as_str())
            .and_then(|e| e["queries"].as_u64())
    };
    assert_eq!((spent(&a), spent(&b)), (Some(1), Some(1)), "{st}");
    assert_eq!(st["allow"], serde_json::json!([public_key_hex(&b)]), "{st}");
}
