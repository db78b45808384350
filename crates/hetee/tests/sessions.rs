//! Sessions that carry several queries, through `hetee serve`: the server
//! keeps a session open after its result, closes it when it stays idle
//! past `--session-idle-secs`, and a client with kept sessions
//! (`Replicas`, behind `hetee infer` and the Python `Client`) opens a new
//! one when the server has closed the old; every result is exact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hetee::client::data_provider::Target;
use hetee::client::failover::Replicas;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;

#[test]
fn an_idle_session_is_closed_and_a_kept_one_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_args(&dir.path().join("data"), &["--session-idle-secs", "1"]);
    let m = measurement();
    let id = upload_as(&server.addr, &m, "e2dm", &dir.path().join("owner.key"), &[]);
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = hetee::cli::prepare(&model, &calib).unwrap();
    let x = mnist_images(3);
    let image = |i: usize| &x[i * 784..(i + 1) * 784];
    let want = |i: usize| hetee_model::reference::run_quantized(&q, image(i)).unwrap();
    let trust = Trust::new(&m, true).unwrap();

    // Two queries on one session, then it stays idle past the timeout.
    let relay: Arc<dyn Relay> = Arc::new(Api::new(&server.addr).unwrap());
    let target = Target::connect(relay, &trust, &id, None).unwrap();
    let mut s = target.session().unwrap();
    assert_eq!(s.query(&[image(0)]).unwrap().logits[0], want(0));
    assert_eq!(s.query_thin(&[image(1)]).unwrap().logits[0], want(1));
    assert_eq!(server.health()["sessions"], 1, "open between queries");
    std::thread::sleep(Duration::from_millis(1500));
    let err = format!("{:#}", s.query(&[image(2)]).err().unwrap());
    assert!(err.contains("idle for more than 1 s"), "{err}");
    assert_eq!(server.health()["sessions"], 0, "closed in the enclave too");

    // A client that keeps its sessions between queries: the first query
    // opens one, the second reuses it, the third finds it closed by the
    // server and opens another, without an error or a retry elsewhere.
    let replicas =
        Replicas::connect(std::slice::from_ref(&server.addr), None, &trust, &id, None).unwrap();
    for i in 0..2 {
        assert_eq!(
            replicas.query(&[image(i)], false).unwrap().logits[0],
            want(i)
        );
    }
    assert_eq!(server.health()["sessions"], 1, "one kept session");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        replicas.query(&[image(2)], true).unwrap().logits[0],
        want(2)
    );
    assert!(replicas.retried().is_empty(), "{:?}", replicas.retried());
    drop(replicas);
    assert_eq!(server.health()["sessions"], 0, "the client closed it");
}
