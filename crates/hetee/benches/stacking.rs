//! The stacking lever, in process: eight single-image thin queries of the
//! bundled e2dm model, run one after another on the model registered for
//! one image per query (`one_by_one`), against the same eight sent at once
//! to the model registered for batches of eight, which the host stacks
//! into shared queries (`stacked`). Each iteration is the eight images.

use criterion::{criterion_group, criterion_main, Criterion};
use hetee::harness::Harness;

const N: usize = 8;

fn images() -> Vec<Vec<f32>> {
    let b = hetee::bundled::find("e2dm").expect("e2dm is bundled");
    let t = hetee::data::idx_images(b.test_images).expect("bundled test images");
    t.data.chunks(784).take(N).map(<[f32]>::to_vec).collect()
}

fn stacking(c: &mut Criterion) {
    let (model, calib) = hetee::cli::load_model("e2dm", None).unwrap();
    let q = hetee::cli::prepare(&model, &calib).unwrap();
    let xs = images();
    let single = Harness::new(&q, 1).unwrap();
    let batched = Harness::new(&q, N).unwrap();
    // Warm both (the first query loads the weights on the host).
    single.infer_thin(&xs[0]).unwrap();
    batched.infer_thin(&xs[0]).unwrap();
    let mut g = c.benchmark_group("stacking_e2dm_8_thin_queries");
    g.sample_size(10);
    g.bench_function("one_by_one", |b| {
        b.iter(|| {
            for x in &xs {
                single.infer_thin(x).unwrap();
            }
        })
    });
    g.bench_function("stacked", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for x in &xs {
                    let h = &batched;
                    s.spawn(move || h.infer_thin(x).unwrap());
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, stacking);
criterion_main!(benches);
