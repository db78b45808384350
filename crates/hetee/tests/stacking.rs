//! Stacked queries through `hetee serve`: concurrent thin data providers of
//! a model registered for batches share stacked queries, each sending its
//! queries one after another on one session, and each gets its own exact
//! result.

mod common;

use std::sync::Arc;

use common::*;
use hetee::client::data_provider::Target;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;

#[test]
fn concurrent_clients_each_run_several_queries_on_one_session_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let owner = dir.path().join("owner.key");
    let id = upload_as(&server.addr, &m, "e2dm", &owner, &["--max-batch", "8"]);
    let api = Api::new(&server.addr).unwrap();
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = Arc::new(hetee::cli::prepare(&model, &calib).unwrap());
    const CLIENTS: usize = 12;
    const EACH: usize = 3;
    let x = Arc::new(mnist_images(CLIENTS * EACH));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (api, m, id, q, x) = (api.clone(), m.clone(), id.clone(), q.clone(), x.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<u32>> {
                let relay: Arc<dyn Relay> = Arc::new(api);
                let target = Target::connect(relay, &Trust::new(&m, true)?, &id, None)?;
                // One session for all of this client's queries: thin ones
                // (stacked with other clients'), and an HE one among them
                // for the odd clients (run on its own).
                let mut session = target.session()?;
                let opened = session.id().to_string();
                let mut stacked = Vec::new();
                for k in 0..EACH {
                    let i = c * EACH + k;
                    let xi = &x[i * 784..(i + 1) * 784];
                    let he = c % 2 == 1 && k == 1;
                    let got = if he {
                        session.query(&[xi])?
                    } else {
                        session.query_thin(&[xi])?
                    };
                    let want = hetee_model::reference::run_quantized(&q, xi)?;
                    anyhow::ensure!(
                        got.logits[0] == want,
                        "client {c} image {k}: result differs"
                    );
                    anyhow::ensure!(
                        got.receipt.result.input_digest != [0; 32]
                            && got.receipt.result.images == 1
                    );
                    if he {
                        anyhow::ensure!(got.stacked == 1, "an HE query was stacked");
                    } else {
                        stacked.push(got.stacked);
                    }
                }
                anyhow::ensure!(session.id() == opened && session.queries() == EACH as u64);
                session.close();
                Ok(stacked)
            })
        })
        .collect();
    let mut sizes = Vec::new();
    for h in handles {
        sizes.extend(h.join().unwrap().unwrap());
    }
    eprintln!("stack sizes seen by the clients: {sizes:?}");
    assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&n| n > 1),
        "no two concurrent thin queries shared a stacked query: {sizes:?}"
    );
    // Every client closed its session: none is left on the server.
    assert_eq!(server.health()["sessions"], 0, "{}", server.health());
    // A one-shot HE query of the same model runs on its own.
    let relay: Arc<dyn Relay> = Arc::new(api);
    let target = Target::connect(relay, &Trust::new(&m, true).unwrap(), &id, None).unwrap();
    let xi = &x[..784];
    let got = target.query(&[xi]).unwrap();
    assert_eq!(got.stacked, 1);
    assert_eq!(
        got.logits[0],
        hetee_model::reference::run_quantized(&q, xi).unwrap()
    );
}

#[test]
fn enclave_calls_of_concurrent_queries_overlap() {
    // Stage results of different sessions go to the enclave at the same
    // time: the host holds no lock around them.
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = hetee::cli::prepare(&model, &calib).unwrap();
    let h = hetee::harness::Harness::new(&q, 1).unwrap();
    let x = mnist_images(16);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (h, x, q) = (&h, &x, &q);
            s.spawn(move || {
                for k in 0..4 {
                    let i = t * 4 + k;
                    let xi = &x[i * 784..(i + 1) * 784];
                    let (got, _) = h.infer(xi).unwrap();
                    assert_eq!(got, hetee_model::reference::run_quantized(q, xi).unwrap());
                }
            });
        }
    });
    let peak = h.app().enclave().peak_concurrent_calls();
    assert!(peak >= 2, "enclave calls never overlapped (peak {peak})");
}

#[test]
fn a_burst_of_clients_opening_sessions_fills_one_stack() {
    // Clients of a burst open their sessions one after another; the first
    // two query at once, while the others are still to open theirs. The
    // first stack waits for the whole burst (one batch of products), not
    // only for the sessions already open; every result is exact.
    let dir = tempfile::tempdir().unwrap();
    // A wide window (a burst is opens less than 100 ms apart, the longest
    // wait 2.5 s) so that a loaded machine does not end the burst early.
    let server = Server::start_with_args(&dir.path().join("data"), &["--stack-window-ms", "100"]);
    let m = measurement();
    let owner = dir.path().join("owner.key");
    const CLIENTS: usize = 8;
    let batch = CLIENTS.to_string();
    let id = upload_as(&server.addr, &m, "e2dm", &owner, &["--max-batch", &batch]);
    let api = Api::new(&server.addr).unwrap();
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = Arc::new(hetee::cli::prepare(&model, &calib).unwrap());
    let relay: Arc<dyn Relay> = Arc::new(api);
    let target =
        Arc::new(Target::connect(relay, &Trust::new(&m, true).unwrap(), &id, None).unwrap());
    let x = Arc::new(mnist_images(CLIENTS));
    let start = Arc::new(std::sync::Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (target, q, x, start) = (target.clone(), q.clone(), x.clone(), start.clone());
            std::thread::spawn(move || -> anyhow::Result<u32> {
                start.wait();
                // Clients 0 and 1 open at once, the others 5 ms apart.
                std::thread::sleep(std::time::Duration::from_millis(
                    5 * c.saturating_sub(1) as u64,
                ));
                let mut session = target.session()?;
                let xi = &x[c * 784..(c + 1) * 784];
                let got = session.query_thin(&[xi])?;
                let want = hetee_model::reference::run_quantized(&q, xi)?;
                anyhow::ensure!(got.logits[0] == want, "client {c}: result differs");
                session.close();
                Ok(got.stacked)
            })
        })
        .collect();
    let sizes: Vec<u32> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    if sizes.iter().any(|&n| n as usize != CLIENTS) {
        panic!(
            "the burst was split over several stacks: {sizes:?}\nserver log:\n{}",
            server.stop()
        );
    }
}
