//! Replicas on different (simulated) CPUs joining one cluster with `hetee serve --join`: the
//! joining enclave obtains the cluster's sealing key from a running replica's enclave, the
//! hosts only relay (`POST /v1/peer/share`). On a shared PostgreSQL store (`HETEE_TEST_PG`,
//! skipped without it unless `HETEE_REQUIRE_PG`), a fourth replica on another CPU joins after
//! the upload and serves bit-exact; one on another CPU without `--join` fails clearly; a
//! restart of the joined replica (or of its enclave) needs no peer. On embedded stores (no database): an enclave of
//! another build is refused the key, an unreachable peer fails `serve` clearly, and
//! `--found-if-empty` founds only on an empty store.

mod common;

use std::path::Path;

use common::replicas::shared_store;
use common::*;

/// A replica on the shared store with its own data dir, its enclave on simulated CPU `cpu`.
fn replica(dir: &Path, store: &str, id: &str, cpu: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--store", store, "--replica-id", id, "--sim-cpu", cpu];
    args.extend_from_slice(extra);
    Server::start_with_args(&dir.join(id), &args)
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// `hetee infer` of `x` through `server`, checked byte for byte against `plain`.
fn assert_bit_exact(server: &Server, m: &str, id: &str, x: &Path, plain: &Path, tag: &str) {
    let y = x.with_file_name(format!("secure-{tag}.npy"));
    let out = infer(&server.addr, m, id, x, &y, &[]);
    assert!(out.status.success(), "{tag}: {}", describe(&out));
    assert!(
        bytes(&y) == bytes(plain),
        "{tag}: the secure results differ from hetee run --plaintext"
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_fourth_replica_on_another_cpu_joins_through_a_joined_one_and_serves_bit_exact() {
    let Some((_schema, store)) = shared_store("a replica joins the cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = measurement();
    // r1 founds the cluster on CPU A; r2 and r3 (CPUs B and C) join through it, before the
    // upload, and keep the key their enclave re-sealed.
    let r1 = replica(d, &store, "r1", "A", &[]);
    let r2 = replica(d, &store, "r2", "B", &["--join", &r1.addr]);
    let r3 = replica(d, &store, "r3", "C", &["--join", &r1.addr]);
    for r in ["r2", "r3"] {
        assert!(d.join(r).join("cluster-sealing-key").is_file(), "{r}");
    }
    assert!(!d.join("r1").join("cluster-sealing-key").exists());
    let id = upload_mnist(&r1.addr, &m, &d.join("owner.key"));
    let n = 8;
    let x = d.join("x.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let plain = d.join("plain.npy");
    run_plaintext("mnist", &x, &plain);
    assert_bit_exact(&r3, &m, &id, &x, &plain, "r3");

    // A replica on CPU E without --join finds a key set it cannot open: serve stops, clearly.
    let out = serve_exit(
        &d.join("lone"),
        &["--store", &store, "--replica-id", "lone", "--sim-cpu", "E"],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot open any of the 1 key sets") && err.contains("--join"),
        "{err}"
    );

    // After the upload, r4 on CPU D joins through r2 (itself joined) and serves the model.
    let r4 = replica(d, &store, "r4", "D", &["--join", &r2.addr]);
    assert_bit_exact(&r4, &m, &id, &x, &plain, "r4");
    for r in [&r1, &r2, &r3, &r4] {
        assert_eq!(r.health()["enclave"]["measurement"], m.as_str());
    }
    let log = r4.stop();
    assert!(log.contains("joined the cluster"), "{log}");
    let log = r2.stop();
    assert!(log.contains("shared the cluster's sealing key"), "{log}");

    // r4 restarts with its peer gone: its enclave takes back the key it re-sealed.
    drop(r1);
    let r4 = replica(d, &store, "r4", "D", &["--join", "127.0.0.1:9"]);
    assert_bit_exact(&r4, &m, &id, &x, &plain, "r4 restarted");
    // Its enclave dies: the next one gets the key the host holds before the store's records.
    let pid = r4.health()["enclave_pid"].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let h = r4.health();
    assert_eq!(h["enclave_starts"], 2, "{h}");
    assert_bit_exact(&r4, &m, &id, &x, &plain, "r4's enclave restarted");
    let log = r4.stop();
    assert!(
        log.contains("restored the cluster's sealing key kept"),
        "{log}"
    );
    // The kept key opens on CPU D only: moved to CPU F without a reachable peer, r4 fails.
    let out = serve_exit(
        &d.join("r4"),
        &["--store", &store, "--replica-id", "r4", "--sim-cpu", "F"],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("does not open in this enclave"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_enclave_of_another_build_or_an_unreachable_peer_gets_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r1 = Server::start_with_args(&d.join("r1"), &["--sim-cpu", "A"]);

    // Another memory budget is another measured config: r1's enclave refuses to share.
    let other = d.join("other");
    let out = serve_exit(
        &other,
        &[
            "--sim-cpu",
            "B",
            "--memory-budget-mib",
            "512",
            "--join",
            &r1.addr,
        ],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot join the cluster") && err.contains("measurement"),
        "{err}"
    );
    assert!(!other.join("cluster-sealing-key").exists());

    // A peer that does not answer (a closed port), then r1: the second one shares.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = serve_exit(&d.join("lost"), &["--sim-cpu", "C", "--join", &closed]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot join the cluster") && err.contains("cannot reach"),
        "{err}"
    );
    let both = format!("{closed},{}", r1.addr);
    let r2 = Server::start_with_args(&d.join("r2"), &["--sim-cpu", "C", "--join", &both]);
    assert!(d.join("r2").join("cluster-sealing-key").is_file());
    r2.stop();

    // --found-if-empty founds the cluster when no peer answers and the store is empty …
    let seed = d.join("seed");
    let s = Server::start_with_args(
        &seed,
        &["--sim-cpu", "D", "--join", &closed, "--found-if-empty"],
    );
    let m = measurement();
    upload_as(&s.addr, &m, "e2dm", &d.join("owner.key"), &[]);
    s.stop();
    // … but not when it holds key sets this enclave (now on CPU E) cannot open.
    let out = serve_exit(
        &seed,
        &["--sim-cpu", "E", "--join", &closed, "--found-if-empty"],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot join the cluster"),
        "{}",
        stderr(&out)
    );
}
