//! The reserve of encryptions of zero ([`hetee_enclave::reserve`]): queries
//! take their re-encryptions' masks from it, an idle thread refills it, the
//! results stay bit-exact, and no mask ever reaches the host twice.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use hetee_enclave::reserve::{ReserveStats, TARGET};
use hetee_enclave::Response;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn stats(s: &Setup) -> ReserveStats {
    s.enclave
        .reserve_stats(&s.keys.key_id)
        .expect("key set loaded")
}

/// Waits until the refill thread has filled the reserve.
fn wait_full(s: &Setup) {
    let start = Instant::now();
    while stats(s).ready < TARGET {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the reserve was not refilled: {:?}",
            stats(s)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn queries_take_their_masks_from_the_reserve_an_idle_thread_refills() {
    let mut s = Setup::new();
    let want = bits(&reference(&s.q, &s.x));
    assert_eq!(
        stats(&s),
        ReserveStats {
            ready: 0,
            from_reserve: 0,
            made_inline: 0
        },
        "a key set no query used yet is not filled"
    );
    let x = s.x.clone();
    assert_eq!(bits(&s.query(&x).unwrap()), want);
    let first = stats(&s);
    let per_query = first.from_reserve + first.made_inline;
    assert!(per_query > 0 && per_query as usize <= TARGET);

    wait_full(&s);
    assert_eq!(bits(&s.query(&x).unwrap()), want);
    let second = stats(&s);
    assert_eq!(
        second.from_reserve - first.from_reserve,
        per_query,
        "every encryption of the second query came from the full reserve"
    );
    assert_eq!(second.made_inline, first.made_inline);
    // The enclave reports that work: entries made, their CPU time, and
    // the entries queries took.
    let Response::Status(st) = s.enclave.handle(hetee_enclave::Request::Status) else {
        panic!("no status")
    };
    assert_eq!(st.taken_ahead, second.from_reserve);
    assert!(
        st.made_ahead >= TARGET as u64 + first.from_reserve,
        "{st:?}"
    );
    assert!(st.made_ahead_us > 0, "{st:?}");

    // A thin query's stage-0 input comes from the reserve too.
    wait_full(&s);
    let id = s.model_id();
    let other = other_input();
    let thin = query_thin(&s.enclave, &s.keys, &s.host, id, &other).unwrap();
    assert_eq!(bits(&thin), bits(&reference(&s.q, &other)));
    assert_eq!(stats(&s).made_inline, first.made_inline);
}

/// The seed of a seeded ciphertext (its last 32 bytes) names its mask.
fn seed_of(ct: &[u8]) -> [u8; 32] {
    ct[ct.len() - 32..].try_into().unwrap()
}

#[test]
fn attack_the_host_never_receives_two_encryptions_under_one_mask() {
    // The host sees every ciphertext the enclave makes. A mask used twice
    // would give it two ciphertexts with the same seed, whose difference
    // is the difference of the messages. Four threads of thin queries
    // race for the reserve while the refill thread tops it up.
    let s = Setup::new();
    let id = s.model_id();
    let want = bits(&reference(&s.q, &s.x));
    // A first query puts the key set in use; the race starts on a full
    // reserve (on a loaded machine the idle-priority refill may not run
    // during the race itself), so that it takes masks from both sources.
    let mut seen = Vec::new();
    let (_, input) = start_thin(&s.enclave, &s.keys, id, std::slice::from_ref(&s.x)).unwrap();
    seen.extend(input.iter().map(|c| seed_of(c)));
    wait_full(&s);
    let raced: Vec<[u8; 32]> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = &s;
                let want = &want;
                sc.spawn(move || {
                    let mut seeds = Vec::new();
                    for _ in 0..6 {
                        let images = vec![s.x.clone()];
                        let (mut dp, input) = start_thin(&s.enclave, &s.keys, id, &images).unwrap();
                        seeds.extend(input.iter().map(|c| seed_of(c)));
                        let mut inputs = input;
                        let mut k = 0;
                        let payload = loop {
                            let cts = s.host.evaluate(k, &inputs);
                            match s.enclave.handle(hetee_enclave::Request::StageResult {
                                session: dp.channel.session,
                                stage: k as u32,
                                ciphertexts: cts,
                            }) {
                                Response::NextInput { ciphertexts, .. } => {
                                    seeds.extend(ciphertexts.iter().map(|c| seed_of(c)));
                                    inputs = ciphertexts;
                                    k += 1;
                                }
                                Response::Finished { payload } => break payload,
                                other => panic!("stage {k}: {}", short(&other)),
                            }
                        };
                        let r = dp.result(&s.keys, &payload);
                        assert_eq!(&bits(&r.logits), want);
                    }
                    seeds
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    seen.extend(raced);
    let st = stats(&s);
    assert_eq!(seen.len() as u64, st.from_reserve + st.made_inline);
    assert!(st.from_reserve > 0, "the reserve was used: {st:?}");
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "a mask reached the host twice");
}
