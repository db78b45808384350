//! The trust protocol through the real deployment (`hetee serve` with its
//! enclave process on loopback): query budgets that survive server and
//! enclave restarts, allow lists, key sets that only their owner can
//! register models under, and the owner's view of a model's state.
//!
//! The `attack_*` tests play a dishonest host or data provider.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::*;
use hetee::client::channel::{load_or_create_key, Session};
use hetee::client::http::Api;
use hetee::client::model_provider::{encrypt_weights, registration, Terms};
use hetee::client::relay::Relay;
use hetee::client::trust::{verify, Trust};
use hetee_attest::StaticKeypair;
use hetee_proto::api::{b64, CreateKeys, KeysInfo, ModelCreated};
use hetee_proto::bodies::{StageBody, UploadBody};
use hetee_proto::channel::AllowList;
use hetee_proto::messages::{
    he_params_bytes, id_from_hex, id_hex, weights_commitment, ClientMessage, EnclaveMessage,
};
use hetee_proto::Schedule;
use serde_json::Value;

const BUDGET_SPENT: &str = "query budget for the model is spent";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One MNIST image as `x.npy` in `dir`.
fn one_image(dir: &Path) -> std::path::PathBuf {
    let x = dir.join("x.npy");
    write_f32(&x, &[1, 1, 28, 28], &mnist_images(1));
    x
}

/// `hetee model <cmd> --model-id ID ...` as the holder of `key`.
fn model_cmd(cmd: &str, s: &Server, m: &str, id: &str, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "model",
        cmd,
        "--model-id",
        id,
        "--server",
        &s.addr,
        "--expect-measurement",
        m,
        "--allow-sim",
        "--client-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    hetee(&args)
}

/// `hetee model status --json` as the owner in `key`.
fn status(s: &Server, m: &str, id: &str, key: &Path) -> Value {
    let out = model_cmd("status", s, m, id, key, &["--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", describe(&out)))
}

/// Queries spent by `client` (hex) in a status report.
fn spent_by(status: &Value, client: &str) -> Option<u64> {
    status["spent"]
        .as_array()
        .expect("spent is a list")
        .iter()
        .find(|e| e["client"] == client)
        .and_then(|e| e["queries"].as_u64())
}

/// The e2dm model uploaded with a budget of 2 queries per client key, one
/// image per query. Returns its id.
fn budgeted_e2dm(s: &Server, m: &str, owner: &Path) -> String {
    upload_as(
        &s.addr,
        m,
        "e2dm",
        owner,
        &["--query-budget", "2", "--max-batch", "1"],
    )
}

/// Two queries with `key` succeed.
fn spend_two(s: &Server, m: &str, id: &str, x: &Path, y: &Path, key: &Path) {
    for i in 0..2 {
        let out = infer(
            &s.addr,
            m,
            id,
            x,
            y,
            &["--client-key", key.to_str().unwrap()],
        );
        assert!(out.status.success(), "query {i}: {}", describe(&out));
    }
}

/// The third query with `key` is refused for its budget, and writes nothing.
fn third_is_refused(s: &Server, m: &str, id: &str, x: &Path, dir: &Path, key: &Path) {
    let y = dir.join("refused.npy");
    let out = infer(
        &s.addr,
        m,
        id,
        x,
        &y,
        &["--client-key", key.to_str().unwrap()],
    );
    assert!(
        !out.status.success(),
        "a third query ran: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains(BUDGET_SPENT), "{}", describe(&out));
    assert!(!y.exists(), "a refused query wrote its output");
}

#[test]
fn attack_budget_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let m = measurement();
    let owner = dir.path().join("owner.key");
    let key = dir.path().join("client.key");
    let x = one_image(dir.path());
    let y = dir.path().join("y.npy");

    let server = Server::start(&data);
    let id = budgeted_e2dm(&server, &m, &owner);
    spend_two(&server, &m, &id, &x, &y, &key);
    // The host kills itself (and so its enclave) and comes back on the same
    // store, hoping for a fresh budget.
    server.stop();
    let server = Server::start(&data);
    assert_eq!(server.health()["models"], 1);
    third_is_refused(&server, &m, &id, &x, dir.path(), &key);
    // The owner sees the two queries; another key has its own budget.
    let st = status(&server, &m, &id, &owner);
    assert_eq!(spent_by(&st, &public_key_hex(&key)), Some(2), "{st}");
    let other = dir.path().join("other.key");
    let out = infer(
        &server.addr,
        &m,
        &id,
        &x,
        &y,
        &["--client-key", other.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn attack_budget_survives_an_enclave_kill() {
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    let owner = dir.path().join("owner.key");
    let key = dir.path().join("client.key");
    let x = one_image(dir.path());
    let y = dir.path().join("y.npy");

    let server = Server::start(&dir.path().join("data"));
    let id = budgeted_e2dm(&server, &m, &owner);
    spend_two(&server, &m, &id, &x, &y, &key);
    let h = server.health();
    let (pid, starts) = (
        h["enclave_pid"].as_u64().unwrap(),
        h["enclave_starts"].as_u64().unwrap(),
    );
    assert!(pid > 0);
    // The host kills only its enclave: the new one starts with no state in
    // memory and must restore the sealed copy.
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Health restarts the dead enclave.
    let h = server.health();
    let new_pid = h["enclave_pid"].as_u64().unwrap();
    assert!(new_pid > 0 && new_pid != pid, "{h}");
    assert!(h["enclave_starts"].as_u64().unwrap() > starts, "{h}");
    third_is_refused(&server, &m, &id, &x, dir.path(), &key);
    let other = dir.path().join("other.key");
    let out = infer(
        &server.addr,
        &m,
        &id,
        &x,
        &y,
        &["--client-key", other.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    // Still the same enclave: the refusal came from restored state, not
    // from yet another restart.
    assert_eq!(server.health()["enclave_pid"].as_u64(), Some(new_pid));
}

#[test]
fn attack_unlisted_client_refused_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    let server = Server::start(&dir.path().join("data"));
    let owner = dir.path().join("owner.key");
    let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    let list = dir.path().join("allowed.txt");
    std::fs::write(
        &list,
        format!("# data provider A\n{}\n", public_key_hex(&a)),
    )
    .unwrap();
    let id = upload_as(
        &server.addr,
        &m,
        "e2dm",
        &owner,
        &["--allow-clients", list.to_str().unwrap()],
    );
    let x = dir.path().join("x.npy");
    write_f32(&x, &[3, 1, 28, 28], &mnist_images(3));
    let key = |k: &Path| ["--client-key".to_string(), k.to_str().unwrap().to_string()];

    // A is listed: its results equal the plaintext reference bit for bit.
    let (ya, plain) = (dir.path().join("a.npy"), dir.path().join("plain.npy"));
    let ka = key(&a);
    let out = infer(&server.addr, &m, &id, &x, &ya, &[&ka[0], &ka[1]]);
    assert!(out.status.success(), "{}", describe(&out));
    run_plaintext("e2dm", &x, &plain);
    assert!(
        std::fs::read(&ya).unwrap() == std::fs::read(&plain).unwrap(),
        "secure results of A differ from hetee run --plaintext"
    );

    // B is not listed, nor is a throwaway key.
    let yb = dir.path().join("b.npy");
    let kb = key(&b);
    let refused = |extra: &[&str]| {
        let out = infer(&server.addr, &m, &id, &x, &yb, extra);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(stderr(&out).contains("allow list"), "{}", describe(&out));
        assert!(!yb.exists());
    };
    refused(&[&kb[0], &kb[1]]);
    refused(&[]);

    // B cannot open the model itself: the CLI refuses to act for another
    // key's model, and the enclave refuses B's message when sent anyway.
    let out = model_cmd("allow", &server, &m, &id, &b, &["--open"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("owner"), "{}", describe(&out));
    let api = Api::new(&server.addr).unwrap();
    let info: hetee_proto::api::ModelInfo = api.model(&id).unwrap();
    let keys = verify(&info.keys, &Trust::new(&m, true).unwrap()).unwrap();
    let bk = load_or_create_key(&b).unwrap();
    let model = id_from_hex(&id).unwrap();
    for msg in [
        ClientMessage::SetAllowList {
            model_id: model,
            allow: AllowList::Open,
        },
        ClientMessage::Unlock { model_id: model },
        ClientMessage::ModelStatus { model_id: model },
    ] {
        let e = Session::open_as(&api, &keys, None, &msg, Some(&bk))
            .err()
            .expect("a non-owner managed the model")
            .to_string();
        assert!(e.contains("owner"), "{e}");
    }
    refused(&[&kb[0], &kb[1]]);
    let st = status(&server, &m, &id, &owner);
    assert_eq!(st["allow"], serde_json::json!([public_key_hex(&a)]), "{st}");

    // The owner opens the model: B gets in, with the same exact results.
    let out = model_cmd("allow", &server, &m, &id, &owner, &["--open"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = infer(&server.addr, &m, &id, &x, &yb, &[&kb[0], &kb[1]]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(std::fs::read(&yb).unwrap() == std::fs::read(&plain).unwrap());
}

#[test]
fn attack_host_cannot_register_under_anothers_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    let server = Server::start(&dir.path().join("data"));
    let api = Api::new(&server.addr).unwrap();
    let trust = Trust::new(&m, true).unwrap();
    // One model already registered, by its owner.
    let owner_file = dir.path().join("owner.key");
    upload_as(&server.addr, &m, "e2dm", &owner_file, &[]);
    assert_eq!(server.health()["models"], 1);

    // A (an honest model provider) has a key set; the host (or anyone) holds
    // key B and wants a model of its own choosing under A's key set.
    let a = StaticKeypair::generate().unwrap();
    let b = StaticKeypair::generate().unwrap();
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = hetee::cli::prepare(&model, &calib).unwrap();
    let schedule = Schedule::compile_best(&q, 1).unwrap();
    let info: KeysInfo = api
        .post(
            "/v1/keys",
            &CreateKeys {
                he_params: b64(&he_params_bytes(&schedule.he)),
                owner: id_hex(a.public()),
            },
        )
        .unwrap();
    let keys = verify(&info, &trust).unwrap();
    assert_eq!(keys.owner, *a.public());
    // Uploading ciphertexts needs no key: the host has them anyway.
    let weights = encrypt_weights(&q, &schedule, &keys.par, &keys.public_key).unwrap();
    let commitment = weights_commitment(&weights);
    let stages = schedule
        .stages
        .iter()
        .zip(&weights)
        .map(|(st, w)| StageBody {
            packing: postcard::to_allocvec(&st.packing).unwrap(),
            weights: w.clone(),
        })
        .collect();
    let created: ModelCreated = api
        .upload(&UploadBody {
            key_id: keys.key_id,
            stages,
        })
        .unwrap();
    assert_eq!(created.commitment, id_hex(&commitment));

    // B registers the upload under A's key set: refused.
    let (msg, want) = registration(&keys, &q, &schedule, commitment, &Terms::default());
    let e = Session::open_as(&api, &keys, None, &msg, Some(&b))
        .err()
        .expect("a model was registered under another key's key set")
        .to_string();
    assert!(e.contains("owner"), "{e}");
    // As is a throwaway key.
    let e = Session::open_as(&api, &keys, None, &msg, None)
        .err()
        .expect("a throwaway key registered a model")
        .to_string();
    assert!(e.contains("owner"), "{e}");
    // B, owner of a key set of its own, names A's key set in the message.
    let b_info: KeysInfo = api
        .create_keys(&CreateKeys {
            he_params: info.he_params.clone(),
            owner: id_hex(b.public()),
        })
        .unwrap();
    let b_keys = verify(&b_info, &trust).unwrap();
    let e = Session::open_as(&api, &b_keys, None, &msg, Some(&b))
        .err()
        .expect("a model was registered through another key set's channel")
        .to_string();
    assert!(e.contains("key set"), "{e}");

    // Nothing was registered.
    assert_eq!(server.health()["models"], 1);
    let e = api
        .model(&id_hex(&want))
        .expect_err("the refused model exists")
        .to_string();
    assert!(e.contains("404"), "{e}");

    // The very same message from A registers the model: the refusals above
    // were about the key, not the message.
    let (_, answer) = Session::open_as(&api, &keys, None, &msg, Some(&a)).unwrap();
    assert!(
        matches!(answer, EnclaveMessage::Registered { model_id } if model_id == want),
        "{answer:?}"
    );
    assert_eq!(server.health()["models"], 2);
    let relay: Arc<dyn Relay> = Arc::new(api.clone());
    let target =
        hetee::client::data_provider::Target::connect(relay, &trust, &id_hex(&want), None).unwrap();
    let x = mnist_images(1);
    let got = target.query(&[&x]).unwrap();
    assert_eq!(
        got.logits[0],
        hetee_model::reference::run_quantized(&q, &x).unwrap()
    );
}

#[test]
fn owner_reads_model_status() {
    let dir = tempfile::tempdir().unwrap();
    let m = measurement();
    let server = Server::start(&dir.path().join("data"));
    let owner = dir.path().join("owner.key");
    let client = dir.path().join("client.key");
    let id = upload_as(
        &server.addr,
        &m,
        "e2dm",
        &owner,
        &[
            "--query-budget",
            "3",
            "--max-batch",
            "1",
            "--lock-after",
            "2",
        ],
    );
    let st = status(&server, &m, &id, &owner);
    assert_eq!(st["model_id"], id.as_str(), "{st}");
    assert_eq!(st["version"], 1, "{st}");
    assert_eq!(st["locked"], false, "{st}");
    assert_eq!(st["failures"], 0, "{st}");
    assert_eq!(st["lock_after"], 2, "{st}");
    assert_eq!(st["query_budget"], 3, "{st}");
    assert_eq!(st["allow"], "open", "{st}");
    assert_eq!(st["spent"], serde_json::json!([]), "{st}");
    assert_eq!(st["incidents"], serde_json::json!([]), "{st}");

    // One budgeted query: spent and version move.
    let x = one_image(dir.path());
    let y = dir.path().join("y.npy");
    let out = infer(
        &server.addr,
        &m,
        &id,
        &x,
        &y,
        &["--client-key", client.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let st = status(&server, &m, &id, &owner);
    let c = public_key_hex(&client);
    assert_eq!(st["version"], 2, "{st}");
    assert_eq!(st["locked"], false, "{st}");
    assert_eq!(
        st["spent"],
        serde_json::json!([{"client": c, "queries": 1}]),
        "{st}"
    );
    assert_eq!(st["incidents"], serde_json::json!([]), "{st}");

    // A new allow list shows up, with a newer version.
    let list = dir.path().join("allowed.txt");
    std::fs::write(&list, format!("{c}\n")).unwrap();
    let out = model_cmd(
        "allow",
        &server,
        &m,
        &id,
        &owner,
        &["--allow-clients", list.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let st = status(&server, &m, &id, &owner);
    assert_eq!(st["version"], 3, "{st}");
    assert_eq!(st["allow"], serde_json::json!([c]), "{st}");

    // The human-readable form.
    let out = model_cmd("status", &server, &m, &id, &owner, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id) && text.contains("version 3"), "{text}");
    assert!(text.contains("open (0 failed checks"), "{text}");
    assert!(text.contains("1 client keys"), "{text}");

    // Only the owner reads it.
    let out = model_cmd("status", &server, &m, &id, &client, &["--json"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("owner"), "{}", describe(&out));
}
