//! Stacked queries through `hetee serve`: concurrent thin data providers of
//! a model registered for batches share stacked queries, and each gets its
//! own exact result.

mod common;

use std::sync::Arc;

use common::*;
use hetee::client::data_provider::Target;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;

#[test]
fn concurrent_thin_clients_share_stacked_queries_and_each_result_is_exact() {
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
                let mut stacked = Vec::new();
                for k in 0..EACH {
                    let i = c * EACH + k;
                    let xi = &x[i * 784..(i + 1) * 784];
                    let got = target.query_thin(&[xi])?;
                    let want = hetee_model::reference::run_quantized(&q, xi)?;
                    anyhow::ensure!(
                        got.logits[0] == want,
                        "client {c} image {k}: result differs"
                    );
                    stacked.push(got.stacked);
                }
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
    // HE queries of the same model still run on their own.
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
