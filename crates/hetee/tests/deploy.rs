//! The three-party deployment: `hetee serve` with its enclave process on a
//! loopback port, the model provider and data provider clients. Results are
//! checked bit for bit against the plaintext integer reference, and the
//! clients refuse a wrong measurement, tampered evidence and a channel to
//! another key. Crashes, restarts and bad requests are in
//! `deploy_faults.rs`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::deploy::*;
use common::*;
use hetee::client::channel::Session;
use hetee::client::data_provider::Target;
use hetee::client::trust::verify;
use hetee_proto::api::{b64, unb64, CreateKeys, KeysInfo, ModelInfo};
use hetee_proto::messages::{id_from_hex, id_hex, ClientMessage};

#[test]
fn fifty_images_through_the_server_equal_the_plaintext_run() {
    images_through_the_server_equal_the_plaintext_run(50, &[]);
}

/// The enclave's stream alone (no shared memory) carries the same results.
#[test]
fn images_through_the_enclave_stream_alone_equal_the_plaintext_run() {
    images_through_the_server_equal_the_plaintext_run(8, &["--no-shared-memory"]);
}

fn images_through_the_server_equal_the_plaintext_run(n: usize, serve_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_args(&dir.path().join("data"), serve_args);
    let m = measurement();
    let owner = dir.path().join("owner.key");
    let id = upload_mnist(&format!("http://{}", server.addr), &m, &owner);
    let x = dir.path().join("x.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let secure = dir.path().join("secure.npy");
    let plain = dir.path().join("plain.npy");
    let out = hetee(&[
        "infer",
        "--server",
        &server.addr,
        "--model-id",
        &id,
        "--input",
        x.to_str().unwrap(),
        "--output",
        secure.to_str().unwrap(),
        "--expect-measurement",
        &m,
        "--allow-sim",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = hetee(&[
        "run",
        "--model",
        "mnist",
        "--input",
        x.to_str().unwrap(),
        "--output",
        plain.to_str().unwrap(),
        "--plaintext",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (a, b) = (
        std::fs::read(&secure).unwrap(),
        std::fs::read(&plain).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a == b, "secure results differ from hetee run --plaintext");
    let log = server.stop();
    // The host's logs name ids and timings, never plaintext or keys.
    assert!(log.contains("query done"), "{log}");
    assert!(!log.to_lowercase().contains("secret"), "{log}");
}

#[test]
fn clients_refuse_a_wrong_measurement_and_sim_without_allow_sim() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let wrong = "ab".repeat(32);
    let owner = dir.path().join("owner.key");
    let base = [
        "model",
        "upload",
        "--server",
        &server.addr,
        "--model",
        "e2dm",
        "--client-key",
        owner.to_str().unwrap(),
    ];
    let out = hetee(&[&base[..], &["--expect-measurement", &wrong, "--allow-sim"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("measurement"), "{err}");
    assert!(err.contains(&m), "the error names what was found: {err}");
    let out = hetee(&[&base[..], &["--expect-measurement", &m]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("simulated platform") && err.contains("--allow-sim"),
        "{err}"
    );
    // Nothing was uploaded by the refused clients.
    assert_eq!(server.health()["models"], 0);
    // And the data provider refuses the same way.
    let id = upload_mnist(&server.addr, &m, &owner);
    let x = dir.path().join("x.npy");
    write_f32(&x, &[1, 1, 28, 28], &mnist_images(1));
    let y = dir.path().join("y.npy");
    let args = [
        "infer",
        "--server",
        &server.addr,
        "--model-id",
        &id,
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--expect-measurement",
    ];
    let out = hetee(&[&args[..], &[m.as_str()]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-sim"));
    let out = hetee(&[&args[..], &[wrong.as_str(), "--allow-sim"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("measurement"));
    assert!(!y.exists(), "no output written on refusal");
}

#[test]
fn tampered_evidence_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let t = trust(&m);
    let api = api(&server);
    let owner = dir.path().join("owner.key");
    let id = upload_mnist(&server.addr, &m, &owner);
    let info: ModelInfo = api.get(&format!("/v1/models/{id}")).unwrap();
    let good = info.keys.clone();
    verify(&good, &t).expect("the genuine evidence verifies");

    // A bad signature.
    let mut ev = unb64(&good.evidence, "evidence").unwrap();
    let last = ev.len() - 1;
    ev[last] ^= 0x40;
    let bad = KeysInfo {
        evidence: b64(&ev),
        ..good.clone()
    };
    let e = verify(&bad, &t)
        .err()
        .expect("bad signature accepted")
        .to_string();
    assert!(e.contains("signature") || e.contains("evidence"), "{e}");

    // Swapped report data: another key set's public key under this evidence.
    let other: KeysInfo = api
        .post(
            "/v1/keys",
            &CreateKeys {
                he_params: good.he_params.clone(),
                owner: good.owner.clone(),
            },
        )
        .unwrap();
    let swapped = KeysInfo {
        public_key: other.public_key.clone(),
        ..good.clone()
    };
    let e = verify(&swapped, &t)
        .err()
        .expect("swapped key accepted")
        .to_string();
    assert!(e.contains("report data"), "{e}");
    let swapped = KeysInfo {
        evidence: other.evidence.clone(),
        ..good.clone()
    };
    let e = verify(&swapped, &t)
        .err()
        .expect("swapped evidence accepted")
        .to_string();
    assert!(e.contains("report data"), "{e}");

    // Another owner under this evidence: the key set's owner is bound too.
    let swapped = KeysInfo {
        owner: id_hex(hetee_attest::StaticKeypair::generate().unwrap().public()),
        ..good.clone()
    };
    let e = verify(&swapped, &t)
        .err()
        .expect("swapped owner accepted")
        .to_string();
    assert!(e.contains("report data"), "{e}");

    // Evidence for another measurement.
    let e = verify(&good, &trust(&"cd".repeat(32)))
        .err()
        .expect("wrong measurement accepted")
        .to_string();
    assert!(e.contains("measurement"), "{e}");
}

#[test]
fn a_channel_to_a_different_key_fails() {
    let ServedMnist {
        api,
        id,
        m,
        server: _server,
        dir: _dir,
    } = served_mnist();
    let info: ModelInfo = api.get(&format!("/v1/models/{id}")).unwrap();
    let mut keys = verify(&info.keys, &trust(&m)).unwrap();
    // The client pins a static key the enclave does not hold.
    keys.channel_key = hetee_attest::StaticKeypair::generate()
        .unwrap()
        .public()
        .to_owned();
    let model = id_from_hex(&id).unwrap();
    let r = Session::open(
        &api,
        &keys,
        Some(&model),
        &ClientMessage::Hello { model_id: model },
    );
    let e = r
        .err()
        .expect("a channel to another key succeeded")
        .to_string();
    assert!(e.contains("channel") || e.contains("handshake"), "{e}");
    // The server keeps serving.
    let t = target(&api, &m, &id);
    t.query(&[&mnist_images(1)]).unwrap();
}

#[test]
fn sixteen_data_providers_at_once_get_exact_results() {
    let ServedMnist {
        api,
        id,
        m,
        server: _server,
        dir: _dir,
    } = served_mnist();
    let q = Arc::new(quantized_mnist());
    let x = Arc::new(mnist_images(16));
    let start = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (api, m, id, q, x) = (api.clone(), m.clone(), id.clone(), q.clone(), x.clone());
            std::thread::spawn(move || {
                let target = Target::connect(relay(&api), &trust(&m), &id, None)?;
                let xi = &x[i * 784..(i + 1) * 784];
                let got = target.query(&[xi])?;
                let want = hetee_model::reference::run_quantized(&q, xi)?;
                anyhow::ensure!(got.logits[0] == want, "session {i}: result differs");
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().err().map(|e| e.to_string()))
        .collect();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "16 concurrent data-provider sessions: {secs:.2} s, {} errors",
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
}
