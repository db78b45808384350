//! The deployment under faults: an enclave killed mid-query restarts and
//! unseals, an uploaded model survives a server restart, malformed,
//! oversized and out-of-order requests get a 4xx while other sessions go on,
//! and an unusable or full data dir is a clear error that corrupts nothing.

mod common;

use std::process::Command;

use common::deploy::*;
use common::*;
use hetee::client::channel::Session;
use hetee::client::data_provider::Target;
use hetee::client::http::Api;
use hetee::client::trust::verify;
use hetee_proto::api::{b64, ModelInfo, OpenSession, RunQuery};
use hetee_proto::messages::{id_from_hex, ClientMessage, EnclaveMessage};

#[test]
fn enclave_killed_mid_query_restarts_unseals_and_serves_the_next_query() {
    let ServedMnist {
        api,
        id,
        m,
        server,
        dir: _dir,
    } = served_mnist();
    let t = trust(&m);
    let q = quantized_mnist();
    let x = mnist_images(1);
    let target = target(&api, &m, &id);
    let want = hetee_model::reference::run_quantized(&q, &x).unwrap();
    assert_eq!(target.query(&[&x]).unwrap().logits[0], want);

    // A session is open in the enclave when it dies: its query fails clearly.
    let info: ModelInfo = api.get(&format!("/v1/models/{id}")).unwrap();
    let keys = verify(&info.keys, &t).unwrap();
    let model = id_from_hex(&id).unwrap();
    let (mut s, plan) = Session::open(
        &api,
        &keys,
        Some(&model),
        &ClientMessage::Hello { model_id: model },
    )
    .unwrap();
    assert!(matches!(plan, EnclaveMessage::Plan(_)));
    let pid = server.health()["enclave_pid"].as_u64().unwrap();
    assert!(pid > 0);
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let payload = s
        .seal(&ClientMessage::Query {
            query_id: [0; 16],
            input_digest: [0; 32],
            images: 1,
            seed: zeroize::Zeroizing::new([0; 32]),
        })
        .unwrap();
    let r: anyhow::Result<serde_json::Value> = api.post(
        &format!("/v1/sessions/{}/query", s.id),
        &RunQuery {
            payload: b64(&payload),
            input: vec![b64(&[0u8; 8])],
        },
    );
    let e = r.expect_err("a query survived its enclave").to_string();
    assert!(
        e.contains("enclave died")
            || e.contains("unknown or closed session")
            || e.contains("input ciphertexts"),
        "{e}"
    );

    // Killed while computing: queries run back to back while the enclave dies.
    let api2 = relay(&api);
    let t2 = t.clone();
    let id2 = id.clone();
    let x2 = x.clone();
    let runner = std::thread::spawn(move || {
        let target = Target::connect(api2, &t2, &id2, None).unwrap();
        (0..30)
            .map(|_| target.query(&[&x2]).map(|a| a.logits))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    let pid2 = server.health()["enclave_pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &pid2.to_string()])
        .status()
        .unwrap();
    let results = runner.join().unwrap();
    for r in &results {
        match r {
            Ok(l) => assert_eq!(l[0], want),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("enclave died") || e.contains("restarted") || e.contains("channel"),
                    "unclear error: {e}"
                )
            }
        }
    }
    // After the restart the model is unsealed and queries succeed.
    let target = Target::connect(relay(&api), &t, &id, None).unwrap();
    assert_eq!(target.query(&[&x]).unwrap().logits[0], want);
    assert!(server.health()["enclave_starts"].as_u64().unwrap() >= 2);
}

#[test]
fn an_uploaded_model_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let m = measurement();
    let server = Server::start(&data);
    let id = upload_mnist(&server.addr, &m, &dir.path().join("owner.key"));
    server.stop();
    let server = Server::start(&data);
    let api = api(&server);
    let x = mnist_images(3);
    let target = target(&api, &m, &id);
    let xs: Vec<&[f32]> = x.chunks(784).collect();
    let got = target.query(&xs).unwrap();
    let q = quantized_mnist();
    for (i, xi) in xs.iter().enumerate() {
        assert_eq!(
            got.logits[i],
            hetee_model::reference::run_quantized(&q, xi).unwrap()
        );
    }
}

fn raw_post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(&format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn malformed_oversized_and_out_of_order_requests_get_4xx_and_others_go_on() {
    let ServedMnist {
        api,
        id,
        m,
        server,
        dir: _dir,
    } = served_mnist();
    let t = trust(&m);
    let target = target(&api, &m, &id);
    let x = mnist_images(1);

    let checks: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/sessions", b"{not json".to_vec(), 400, "malformed JSON"),
        (
            "/v1/sessions",
            br#"{"key_id":"zz","msg1":""}"#.to_vec(),
            400,
            "key_id",
        ),
        (
            "/v1/keys",
            format!(r#"{{"he_params":"!!!","owner":"{}"}}"#, "ab".repeat(32)).into_bytes(),
            400,
            "base64",
        ),
        (
            "/v1/models",
            br#"{"key_id":"00000000000000000000000000000000","stages":[]}"#.to_vec(),
            404,
            "key",
        ),
        (
            "/v1/sessions/00000000000000000000000000000000/query",
            br#"{"payload":"","input":[]}"#.to_vec(),
            404,
            "session",
        ),
        ("/v1/nothing", b"{}".to_vec(), 404, "route"),
        // Oversized: 2 MiB to a 1 MiB route.
        ("/v1/sessions", vec![b' '; 2 << 20], 413, "limit"),
    ];
    for (path, body, want, needle) in checks {
        let (status, text) = raw_post(&server.addr, path, &body);
        assert_eq!(status, want, "{path}: {text}");
        assert!(text.contains(needle), "{path}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].is_string(), "{text}");
    }

    // Malformed binary bodies on the routes that carry ciphertexts.
    let unknown_query = format!("/v1/sessions/{}/query", "00".repeat(16));
    let binary: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/v1/models", b"junk".to_vec(), "does not start"),
        ("/v1/models", b"HUPL\x01short".to_vec(), "truncated"),
        (&unknown_query, b"HQRY\x02".to_vec(), "version"),
        (
            &unknown_query,
            b"HQRY\x01\0\0\0\0\xff\xff\xff\xff".to_vec(),
            "items",
        ),
    ];
    for (path, body, needle) in binary {
        let e = api
            .post_bytes::<serde_json::Value>(path, "application/octet-stream", &body)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("answered 400") && e.contains(needle),
            "{path}: {e}"
        );
    }

    // Out of order: a query before the handshake is finished.
    let info: ModelInfo = api.get(&format!("/v1/models/{id}")).unwrap();
    let keys = verify(&info.keys, &t).unwrap();
    let (_hs, msg1) =
        hetee_attest::ClientHandshake::new(&keys.channel_key, &keys.evidence_hash).unwrap();
    let opened: hetee_proto::api::SessionOpened = api
        .post(
            "/v1/sessions",
            &OpenSession {
                key_id: info.keys.key_id.clone(),
                model_id: Some(id.clone()),
                msg1: b64(&msg1),
            },
        )
        .unwrap();
    let body = serde_json::to_vec(&serde_json::json!({"payload": b64(b"x"), "input": [b64(b"y")]}))
        .unwrap();
    let (status, text) = raw_post(
        &server.addr,
        &format!("/v1/sessions/{}/query", opened.session),
        &body,
    );
    assert!((400..500).contains(&status), "{status} {text}");
    // The session is gone after the refusal.
    let (status, _) = raw_post(
        &server.addr,
        &format!("/v1/sessions/{}/finish", opened.session),
        br#"{"msg3":"","payload":""}"#,
    );
    assert_eq!(status, 404);

    // A second finish on a finished session is refused too.
    let model = id_from_hex(&id).unwrap();
    let (s, _) = Session::open(
        &api,
        &keys,
        Some(&model),
        &ClientMessage::Hello { model_id: model },
    )
    .unwrap();
    let (status, text) = raw_post(
        &server.addr,
        &format!("/v1/sessions/{}/finish", s.id),
        br#"{"msg3":"AAAA","payload":"AAAA"}"#,
    );
    assert!((400..500).contains(&status), "{status} {text}");

    // Other sessions go on.
    let want = hetee_model::reference::run_quantized(&quantized_mnist(), &x).unwrap();
    assert_eq!(target.query(&[&x]).unwrap().logits[0], want);
}

#[test]
fn read_only_or_unusable_data_dir_is_a_clear_error() {
    // /proc refuses new entries even to root.
    let out = hetee(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "/proc/hetee-test-store",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not writable") && err.contains("--data-dir"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A data dir that is a file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let out = hetee(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        f.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn a_full_data_dir_refuses_the_upload_cleanly_and_corrupts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let m = measurement();
    // A file size limit of 28 MiB makes the 34 MiB model upload hit "disk
    // full" (EFBIG) inside the store; SIGXFSZ is ignored so writes just fail.
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        &format!("trap '' XFSZ; ulimit -f 28672; exec {BIN} \"$@\""),
        "hetee",
    ]);
    let server = Server::start_with(&data, cmd);
    let api = api(&server);
    let owner = dir.path().join("owner.key");
    let out = hetee(&[
        "model",
        "upload",
        "--server",
        &server.addr,
        "--model",
        "mnist",
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("507") && err.contains("full"), "{err}");
    // The server goes on: small models still fit.
    let small = hetee(&[
        "model",
        "upload",
        "--server",
        &server.addr,
        "--model",
        "e2dm",
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]);
    assert!(small.status.success(), "{}", describe(&small));
    let e2dm_id = String::from_utf8_lossy(&small.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let _ = api;
    server.stop();
    // Restarted without the limit: the store opens, the small model works,
    // the refused one left nothing behind, and the big upload now succeeds.
    let server = Server::start(&data);
    let api = Api::new(&server.addr).unwrap();
    assert_eq!(server.health()["models"], 1);
    let target = target(&api, &m, &e2dm_id);
    let x: Vec<f32> = (0..784).map(|i| (i % 13) as f32 / 13.0).collect();
    target.query(&[&x]).unwrap();
    let id = upload_mnist(&server.addr, &m, &owner);
    assert_eq!(server.health()["models"], 2);
    assert_eq!(id.len(), 32);
}
