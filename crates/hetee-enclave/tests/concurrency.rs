//! One enclave shared by many threads, as the enclave process runs it:
//! concurrent sessions are each bit-exact, and concurrent query starts by
//! one data provider cannot spend more than its query budget.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::messages::OutputPolicy;
use hetee_enclave::{EnclaveConfig, Response, Schedule};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A deterministic input of the tiny model's size.
fn input(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + 1) * 7919 + seed * 104_729) % 1009) as f32 / 1009.0)
        .collect()
}

#[test]
fn eight_threads_of_interleaved_sessions_are_each_bit_exact() {
    let (q, x) = tiny_model();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let id = register(&enclave, &keys, &host).model_id;
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (enclave, keys, host, q, done) = (&enclave, &keys, &host, &q, &done);
            let n = x.len();
            s.spawn(move || {
                for k in 0..3 {
                    let xi = input(n, t * 10 + k);
                    // Alternate HE and thin queries.
                    let got = if (t + k) % 2 == 0 {
                        query(enclave, keys, host, id, &xi)
                    } else {
                        query_thin(enclave, keys, host, id, &xi)
                    }
                    .unwrap();
                    assert_eq!(bits(&got), bits(&reference(q, &xi)), "thread {t} query {k}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 24);
    assert_eq!(status(&enclave).sessions, 0, "every session ended");
}

#[test]
fn attack_concurrent_query_starts_cannot_overspend_a_budget() {
    let (q, x) = tiny_model();
    let schedule = Schedule::compile(&q, 1).unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let msg = register_message_with(&keys, &host, OutputPolicy::Logits, Some(3));
    let id = register_with(&enclave, &keys, &msg).model_id;
    let client = StaticKeypair::generate().unwrap();
    // Sixteen sessions of one client say hello first (each is admitted:
    // nothing is spent yet), then all start their query at once.
    let mut sessions: Vec<_> = (0..16)
        .map(|_| {
            let dp = hello_as(&enclave, &keys, Some(&client), id).unwrap();
            let input = dp.encrypt(&keys.public_key, &x);
            (dp, input)
        })
        .collect();
    let started = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (dp, input) in sessions.iter_mut() {
            let (enclave, started, refused) = (&enclave, &started, &refused);
            s.spawn(move || match dp.start(enclave, id, input) {
                Response::QueryStarted { .. } => {
                    started.fetch_add(1, Ordering::Relaxed);
                }
                Response::Error { message, .. } => {
                    assert!(message.contains("budget"), "{message}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("{}", short(&other)),
            });
        }
    });
    assert_eq!(
        started.load(Ordering::Relaxed),
        3,
        "the budget is 3 queries"
    );
    assert_eq!(refused.load(Ordering::Relaxed), 13);
}
