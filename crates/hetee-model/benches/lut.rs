//! The exact activations' constant-time table scan on an MNIST-sized
//! activation map (16 × 28 × 28 values): the 16-bit-lane scan kept in
//! `hetee_model::lut::select`, side by side with the 64-bit-lane scan it
//! replaced (copied here as it was).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hetee_model::lut::select;

/// The scan as it was before: 64-bit lanes.
fn select_64bit_lanes(table: &[i16], i: i64) -> i64 {
    let mut out = 0i64;
    for (j, &t) in table.iter().enumerate() {
        let d = (j as i64) ^ i;
        let hit = ((d | d.wrapping_neg()) >> 63) ^ -1;
        out |= t as i64 & hit;
    }
    out
}

fn lut(c: &mut Criterion) {
    let table: Vec<i16> = (0..256).map(|i| (i * 37 % 251) as i16 - 120).collect();
    let xs: Vec<i64> = (0..16 * 28 * 28).map(|i| (i * 31 % 256) as i64).collect();
    let mut g = c.benchmark_group("activation_table_12544_values");
    g.bench_function("select_16bit_lanes", |b| {
        b.iter(|| {
            xs.iter()
                .map(|&x| select(black_box(&table), x))
                .sum::<i64>()
        })
    });
    g.bench_function("select_64bit_lanes_before", |b| {
        b.iter(|| {
            xs.iter()
                .map(|&x| select_64bit_lanes(black_box(&table), x))
                .sum::<i64>()
        })
    });
    g.finish();
}

criterion_group!(benches, lut);
criterion_main!(benches);
