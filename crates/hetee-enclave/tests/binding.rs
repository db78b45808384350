//! The input binding is checked beside the host's stage 0, on its own
//! threads: HE queries whose stage results arrive on threads of the global
//! rayon pool (as `hetee run` drives several images at once) all finish,
//! bit-exact; none waits for a check queued behind it.

mod common;
mod forgery;

use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::*;
use hetee_enclave::{Request, Response};
use rayon::prelude::*;

#[test]
fn he_queries_driven_from_the_global_pool_all_finish() {
    let s = Arc::new(Setup::new());
    let want: Vec<u32> = reference(&s.q, &s.x).iter().map(|x| x.to_bits()).collect();
    let (tx, rx) = mpsc::channel();
    let driver = s.clone();
    // Detached: a deadlocked driver fails the test instead of hanging it.
    std::thread::spawn(move || {
        let s = driver;
        let id = s.model_id();
        // More queries than the pool has threads, each one's stages on a
        // pool thread.
        let n = 4 * rayon::current_num_threads();
        let got: Vec<Vec<u32>> = (0..n)
            .into_par_iter()
            .map(|_| {
                query(&s.enclave, &s.keys, &s.host, id, &s.x)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect();
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("HE queries on the global pool's threads did not finish: deadlock");
    assert!(got.iter().all(|g| *g == want));
}

/// The input checks of HE queries run, parallel steps and all, while every
/// thread of the global pool waits for one: they must not need the global
/// pool. Every pool thread is held at a barrier while the queries start
/// (their checks begin then), and then handles a stage-0 result, which
/// waits for its check. (Checks on plain threads sent their parallel steps
/// to the global pool, and `hetee run` deadlocked so.)
#[test]
fn input_checks_finish_while_every_global_pool_thread_waits_for_one() {
    // A model whose input is several ciphertexts: a check's parallel
    // steps then split (one ciphertext runs inline on any thread).
    let s = Arc::new(forgery::batch_setup(256));
    let id = s.model_id();
    let n = rayon::current_num_threads();
    let mut queries = Vec::new();
    for _ in 0..n {
        let dp = hello(&s.enclave, &s.keys, id).unwrap();
        let input = dp.encrypt(&s.keys.public_key, &s.x);
        assert!(input.len() >= 2, "{} input ciphertexts", input.len());
        let outs = s.host.evaluate(0, &input);
        queries.push((dp, input, outs));
    }
    let barrier = Arc::new(Barrier::new(n + 1));
    let (tx, rx) = mpsc::channel();
    for (dp, _, outs) in &queries {
        let (s, barrier, tx) = (s.clone(), barrier.clone(), tx.clone());
        let (session, outs) = (dp.channel.session, outs.clone());
        rayon::spawn(move || {
            barrier.wait();
            let _ = tx.send(s.enclave.handle(Request::StageResult {
                session,
                stage: 0,
                ciphertexts: outs,
            }));
        });
    }
    for (dp, input, _) in &mut queries {
        assert!(matches!(
            dp.start(&s.enclave, id, input),
            Response::QueryStarted { .. }
        ));
    }
    barrier.wait();
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Response::NextInput { stage: 1, .. }) => {}
            Ok(other) => panic!("stage 0 refused: {other:?}"),
            Err(_) => panic!("the input checks waited for the global pool: deadlock"),
        }
    }
}
