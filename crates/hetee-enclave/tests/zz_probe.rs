mod common;
use common::*;
use hetee_enclave::{EnclaveConfig, Schedule};
use std::time::Instant;
#[test]
fn probe() {
    let (q, x) = tiny_model();
    for b in [1usize, 64, 256, 512] {
        let t0 = Instant::now();
        let schedule = Schedule::compile(&q, b).unwrap();
        let mut e = attested_enclave(MEASUREMENT, EnclaveConfig::default());
        let keys = create_keys(&mut e, &schedule.he);
        let t1 = Instant::now();
        let host = HostModel::new(&q, &schedule, &keys.public_key);
        let t2 = Instant::now();
        let reg = register(&mut e, &keys, &host);
        let t3 = Instant::now();
        let l = query(&mut e, &keys, &host, reg.model_id, &x).unwrap();
        let t4 = Instant::now();
        println!(
            "b={b} keys {:?} host {:?} reg {:?} query {:?} {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            l
        );
    }
}
