//! The input binding is checked beside the host's stage 0, on its own
//! threads: HE queries whose stage results arrive on threads of the global
//! rayon pool (as `hetee run` drives several images at once) all finish,
//! bit-exact; none waits for a check queued behind it.

mod common;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
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
