//! The channel's per-message cost: one message sealed by one side and
//! opened by the other, for a thin query's size (a sealed 28 x 28 image is
//! about 3 KB, a result a few hundred bytes) and for a message of several
//! Noise chunks.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hetee_attest::channel::{ClientHandshake, EnclaveHandshake, StaticKeypair, Transport};

fn pair() -> (Transport, Transport) {
    let enclave = StaticKeypair::generate().unwrap();
    let (client, m1) = ClientHandshake::new(enclave.public(), b"bench").unwrap();
    let (responder, m2) = EnclaveHandshake::respond(&enclave, b"bench", &m1).unwrap();
    let (client, m3) = client.finish(&m2).unwrap();
    (client, responder.finish(&m3).unwrap())
}

fn seal_then_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    for len in [300usize, 3_200, 200_000] {
        let (mut a, mut b) = pair();
        let msg = vec![7u8; len];
        g.bench_with_input(BenchmarkId::new("seal_then_open", len), &msg, |bn, m| {
            bn.iter(|| b.open(&a.seal(m).unwrap()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, seal_then_open);
criterion_main!(benches);
