//! A replica that fails the client's checks is left out for a while, then
//! attested again from scratch: a long-lived client (the Python `Client`
//! keeps its `Replicas`) gets a restarted or upgraded replica back, and
//! never uses one whose evidence does not verify. Two relays to one
//! `hetee serve`: one lies about the enclave's channel key (its evidence no
//! longer binds the keys it names) until told to stop; every result is
//! exact.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::relay::{Hooks, Tapped};
use common::*;
use hetee::client::failover::Replicas;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;
use hetee_proto::api::{ModelInfo, QueryDone};
use hetee_proto::bodies::QueryBody;

/// A replica that, while `lying`, names another channel key than the one
/// its enclave attested; it counts the attestations and queries it serves.
struct Lying {
    lying: Arc<AtomicBool>,
    attested: AtomicUsize,
    queries: AtomicUsize,
}

impl Hooks for Lying {
    fn model(&self, api: &Api, model_id: &str) -> Result<ModelInfo> {
        self.attested.fetch_add(1, Ordering::SeqCst);
        let mut m = api.model(model_id)?;
        if self.lying.load(Ordering::SeqCst) {
            let k = &mut m.keys.channel_public_key;
            let first = if k.starts_with('0') { "1" } else { "0" };
            k.replace_range(..1, first);
        }
        Ok(m)
    }
    fn query(&self, api: &Api, session: &str, req: &QueryBody) -> Result<QueryDone> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        api.query(session, req)
    }
}

#[test]
fn attack_a_replica_that_lies_about_its_keys_gets_no_query_and_is_attested_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let id = upload_as(&server.addr, &m, "e2dm", &dir.path().join("owner.key"), &[]);
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = hetee::cli::prepare(&model, &calib).unwrap();
    let x = mnist_images(12);
    let image = |i: usize| &x[i * 784..(i + 1) * 784];
    let want = |i: usize| hetee_model::reference::run_quantized(&q, image(i)).unwrap();
    let trust = Trust::new(&m, true).unwrap();

    let lying = Arc::new(AtomicBool::new(true));
    let relay = |lying: Arc<AtomicBool>| {
        Arc::new(Tapped {
            api: Api::new(&server.addr).unwrap(),
            hooks: Lying {
                lying,
                attested: AtomicUsize::new(0),
                queries: AtomicUsize::new(0),
            },
        })
    };
    let liar = relay(lying.clone());
    let honest = relay(Arc::new(AtomicBool::new(false)));
    let relays: Vec<(String, Arc<dyn Relay>)> = vec![
        ("liar".into(), liar.clone()),
        ("honest".into(), honest.clone()),
    ];
    let exclusion = Duration::from_millis(800);
    let replicas = Replicas::over_excluding_for(relays, &trust, &id, None, exclusion).unwrap();
    // The first attempt went to the liar, failed its checks, and moved on.
    assert_eq!(liar.hooks.attested.load(Ordering::SeqCst), 1);
    let retried = replicas.take_retried();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].server, "liar");

    // While it is left out, every query goes to the other replica, and the
    // liar is not even asked for its evidence.
    for i in 0..4 {
        assert_eq!(
            replicas.query(&[image(i)], i % 2 == 1).unwrap().logits[0],
            want(i)
        );
    }
    assert_eq!(liar.hooks.attested.load(Ordering::SeqCst), 1);
    assert_eq!(liar.hooks.queries.load(Ordering::SeqCst), 0);

    // Past the exclusion, a replica that still lies is attested again,
    // fails again and is left out again; no query reaches it.
    std::thread::sleep(exclusion + Duration::from_millis(100));
    for i in 4..6 {
        assert_eq!(
            replicas.query(&[image(i)], false).unwrap().logits[0],
            want(i)
        );
    }
    assert_eq!(liar.hooks.attested.load(Ordering::SeqCst), 2);
    assert_eq!(liar.hooks.queries.load(Ordering::SeqCst), 0);
    assert_eq!(replicas.take_retried().len(), 1);

    // Once it tells the truth, it is attested and back in turn.
    lying.store(false, Ordering::SeqCst);
    std::thread::sleep(exclusion + Duration::from_millis(100));
    for i in 6..12 {
        assert_eq!(
            replicas.query(&[image(i)], i % 2 == 0).unwrap().logits[0],
            want(i)
        );
    }
    assert_eq!(liar.hooks.attested.load(Ordering::SeqCst), 3);
    assert!(
        liar.hooks.queries.load(Ordering::SeqCst) >= 2,
        "the replica never came back"
    );
    assert!(honest.hooks.queries.load(Ordering::SeqCst) >= 6);
    assert!(replicas.take_retried().is_empty());
}
