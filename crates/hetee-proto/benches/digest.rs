//! The input digest the enclave computes before admitting every HE query,
//! on an MNIST input (one ciphertext of 114,793 bytes): BLAKE3
//! (`hetee_proto::ids::input_digest`) side by side with SHA-256 over the
//! same framing, which it replaced.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

fn digest(c: &mut Criterion) {
    let cts = vec![(0..114_793u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()];
    let mut g = c.benchmark_group("input_digest_115kb");
    g.bench_function("blake3", |b| {
        b.iter(|| hetee_proto::ids::input_digest(black_box(&cts)))
    });
    g.bench_function("sha256_before", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            h.update(b"hetee/input/v1");
            h.update(1u64.to_le_bytes());
            h.update((cts.len() as u64).to_le_bytes());
            for ct in black_box(&cts) {
                h.update((ct.len() as u64).to_le_bytes());
                h.update(ct);
            }
            h.finalize()
        })
    });
    g.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
