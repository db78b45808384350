//! Randomized property tests: the packed, encrypted (and plain negacyclic)
//! evaluation of any convolution or dense layer equals the direct integer
//! convolution, including shapes that need tiling.

mod common;

use hetee_he::packing::{evaluate_plain, ConvPacking, ConvShape, Tiling};
use hetee_he::{planner, ConvSpec};
use proptest::prelude::*;

fn spec_strategy(max_side: usize, max_ch: usize) -> impl Strategy<Value = ConvSpec> {
    (
        1..=max_ch,
        1..=max_ch,
        1usize..=7,
        1usize..=7,
        1usize..=3,
        1usize..=3,
        0usize..=3,
        0usize..=3,
        1..=max_side,
        1..=max_side,
        any::<bool>(),
    )
        .prop_filter_map(
            "kernel must fit",
            |(c, m, kh, kw, sh, sw, ph, pw, h, w, grouped)| {
                let spec = ConvSpec {
                    c,
                    h,
                    w,
                    m,
                    kh,
                    kw,
                    sh,
                    sw,
                    pads: [ph, pw, ph.min(1), pw],
                    // Half the cases are grouped convs (gcd of the channel
                    // counts: depthwise when c == m).
                    groups: if grouped { gcd(c, m) } else { 1 },
                };
                spec.validate().ok().map(|_| spec)
            },
        )
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A random kernel of `spec`, zero across its groups (block diagonal).
fn kernel(spec: &ConvSpec, seed: u64) -> Vec<i64> {
    let taps = spec.kh * spec.kw;
    let (per_in, per_out) = (spec.c / spec.groups, spec.m / spec.groups);
    let mut k = tensor(spec.m * spec.c * taps, -127, 127, seed);
    for (i, tap) in k.chunks_mut(taps).enumerate() {
        if (i / spec.c) / per_out != (i % spec.c) / per_in {
            tap.fill(0);
        }
    }
    k
}

fn tensor(len: usize, lo: i64, hi: i64, seed: u64) -> Vec<i64> {
    use rand::{Rng, SeedableRng};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.random_range(lo..=hi)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    /// Plain negacyclic evaluation with a small ring forces heavy tiling.
    #[test]
    fn conv_packing_plain_small_ring(spec in spec_strategy(12, 6), seed in any::<u64>(), degree in prop::sample::select(vec![64usize, 128, 256])) {
        let x = tensor(spec.c * spec.h * spec.w, 0, 255, seed);
        let k = kernel(&spec, seed ^ 1);
        let shape = spec.normal_shape();
        prop_assume!(shape.kh * shape.kw <= degree);
        let p = planner::plan_conv(shape, degree, &planner::CostModel::for_degree(4096)).unwrap();
        let got = evaluate_plain(&p, &spec.layout_input(&x), &spec.layout_kernel(&k));
        prop_assert_eq!(got, spec.direct(&x, &k));
    }

    /// Every valid tiling (not only the planner's) is correct.
    #[test]
    fn conv_packing_any_tiling(spec in spec_strategy(9, 4), seed in any::<u64>(), ct in 1usize..4, ht in 1usize..9, wt in 1usize..9, mt in 1usize..4) {
        let shape = spec.normal_shape();
        let tiling = Tiling { ct: ct.min(shape.c), ht: ht.clamp(shape.kh, shape.h), wt: wt.clamp(shape.kw, shape.w), mt: mt.min(shape.m) };
        let Ok(p) = ConvPacking::new(shape, tiling, 256) else { return Ok(()) };
        let x = tensor(spec.c * spec.h * spec.w, -127, 127, seed);
        let k = kernel(&spec, seed ^ 7);
        // The enclave encrypts an input polynomial's first input_len()
        // coefficients only: the rest must be zero.
        for poly in p.pack_input(&spec.layout_input(&x)) {
            prop_assert!(poly[p.input_len()..].iter().all(|&v| v == 0));
        }
        prop_assert_eq!(evaluate_plain(&p, &spec.layout_input(&x), &spec.layout_kernel(&k)), spec.direct(&x, &k));
    }

    /// Where a packing names its outputs' coefficients (one residue class
    /// modulo a power of two, decrypted alone by the enclave), they are
    /// every coefficient its unpacking reads: output polynomials zeroed
    /// elsewhere unpack the same. Dense layers with a tile of a multiple
    /// of 4 always name them.
    #[test]
    fn strided_outputs_are_all_that_is_read(spec in spec_strategy(6, 6), n in 1usize..300, m in 1usize..40, dense in any::<bool>(), ct in 1usize..9, ht in 1usize..9, wt in 1usize..9, mt in 1usize..40, seed in any::<u64>()) {
        let degree = 1024;
        let shape = if dense { ConvShape::dense(n, m) } else { spec.normal_shape() };
        let ct = if dense { 4 * ct } else { ct };
        let tiling = Tiling { ct: ct.min(shape.c), ht: ht.clamp(shape.kh, shape.h), wt: wt.clamp(shape.kw, shape.w), mt: mt.min(shape.m) };
        let Ok(p) = ConvPacking::new(shape, tiling, degree) else { return Ok(()) };
        let positions = p.strided_output_positions();
        if dense && tiling.ct.is_multiple_of(4) && tiling.ct == ct && tiling.mt * (degree / (1 << tiling.ct.trailing_zeros()).min(degree)) <= degree / 4 * 10 {
            prop_assert!(positions.is_some(), "{shape:?} {tiling:?}");
        }
        let Some(positions) = positions else { return Ok(()) };
        let first = positions[0];
        let spread = positions.iter().fold(0, |g, &x| g | (x ^ first));
        prop_assert!(positions.len() == 1 || spread.trailing_zeros() >= 2);
        let polys: Vec<Vec<i64>> = (0..p.output_count()).map(|i| tensor(degree, -1000, 1000, seed ^ i as u64)).collect();
        let kept: Vec<Vec<i64>> = polys.iter().map(|poly| {
            let mut z = vec![0i64; degree];
            for &x in &positions { z[x] = poly[x]; }
            z
        }).collect();
        prop_assert_eq!(p.unpack_output(&kept), p.unpack_output(&polys));
    }

    /// Every sum of a plan pairs distinct inputs with distinct weights: the
    /// host's basis for fresh sums (`Evaluator::for_fresh_sums`) assumes it.
    #[test]
    fn every_sum_pairs_distinct_inputs_with_distinct_weights(spec in spec_strategy(12, 6), ct in 1usize..5, ht in 1usize..9, wt in 1usize..9, mt in 1usize..5) {
        let shape = spec.normal_shape();
        let tiling = Tiling { ct: ct.min(shape.c), ht: ht.clamp(shape.kh, shape.h), wt: wt.clamp(shape.kw, shape.w), mt: mt.min(shape.m) };
        let Ok(p) = ConvPacking::new(shape, tiling, 256) else { return Ok(()) };
        for sum in p.product_plan() {
            let inputs: std::collections::HashSet<usize> = sum.iter().map(|&(i, _)| i).collect();
            let weights: std::collections::HashSet<usize> = sum.iter().map(|&(_, w)| w).collect();
            prop_assert_eq!(inputs.len(), sum.len());
            prop_assert_eq!(weights.len(), sum.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// Encrypted conv: channels 1-40, kernel 1-7, stride 1-3, padding 0-3, side 1-40.
    #[test]
    fn conv_encrypted_equals_direct(spec in spec_strategy(40, 40), seed in any::<u64>()) {
        let x = tensor(spec.c * spec.h * spec.w, 0, 255, seed);
        let k = kernel(&spec, seed ^ 3);
        prop_assert_eq!(common::he_conv(&spec, &x, &k, None), spec.direct(&x, &k));
    }

    /// Encrypted dense: in 1-3000, out 1-300.
    #[test]
    fn dense_encrypted_equals_direct(n in 1usize..=3000, m in 1usize..=300, seed in any::<u64>()) {
        let spec = ConvSpec::dense(n, m);
        let x = tensor(n, -127, 255, seed);
        let k = tensor(m * n, -127, 127, seed ^ 5);
        prop_assert_eq!(common::he_conv(&spec, &x, &k, None), spec.direct(&x, &k));
    }
}

/// Shapes that must tile: more than N coefficients per channel group.
#[test]
fn encrypted_tiling_edge_cases() {
    let cases = [
        ConvSpec {
            c: 40,
            h: 40,
            w: 40,
            m: 40,
            kh: 7,
            kw: 7,
            sh: 1,
            sw: 1,
            pads: [3; 4],
            groups: 1,
        },
        ConvSpec {
            c: 1,
            h: 100,
            w: 90,
            m: 3,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 3,
            pads: [1, 2, 1, 2],
            groups: 1,
        },
        ConvSpec::dense(9000, 7),
    ];
    for (i, spec) in cases.iter().enumerate() {
        let x = tensor(spec.c * spec.h * spec.w, 0, 255, i as u64);
        let k = tensor(
            spec.m * spec.c * spec.kh * spec.kw,
            -127,
            127,
            100 + i as u64,
        );
        assert_eq!(
            common::he_conv(spec, &x, &k, None),
            spec.direct(&x, &k),
            "case {i}: {spec:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]
    /// Several images stacked in one product give each image's own result.
    #[test]
    fn batched_packing_plain(spec in spec_strategy(8, 4), b in 1usize..6, seed in any::<u64>(), degree in prop::sample::select(vec![128usize, 512])) {
        let shape = spec.batched_shape(b);
        prop_assume!(shape.kh * shape.kw <= degree);
        let xs: Vec<Vec<i64>> = (0..b).map(|i| tensor(spec.c * spec.h * spec.w, 0, 255, seed ^ (i as u64 + 11))).collect();
        let k = kernel(&spec, seed ^ 9);
        let p = planner::plan_conv(shape, degree, &planner::CostModel::for_degree(4096)).unwrap();
        let refs: Vec<&[i64]> = xs.iter().map(|x| x.as_slice()).collect();
        let y = evaluate_plain(&p, &spec.layout_batch(&refs), &spec.layout_kernel(&k));
        let per = spec.split_batch_output(&y, b);
        for (i, x) in xs.iter().enumerate() {
            prop_assert_eq!(&per[i], &spec.direct(x, &k), "image {}", i);
        }
    }
}

/// A batch of dense inputs and a batch of strided conv inputs, encrypted.
#[test]
fn encrypted_batch() {
    for (i, spec) in [
        ConvSpec::dense(300, 40),
        ConvSpec {
            c: 3,
            h: 11,
            w: 9,
            m: 5,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 1,
            pads: [1; 4],
            groups: 1,
        },
    ]
    .iter()
    .enumerate()
    {
        let b = 7;
        let xs: Vec<Vec<i64>> = (0..b)
            .map(|j| tensor(spec.c * spec.h * spec.w, 0, 255, 50 + j as u64))
            .collect();
        let k = tensor(
            spec.m * spec.c * spec.kh * spec.kw,
            -127,
            127,
            77 + i as u64,
        );
        let refs: Vec<&[i64]> = xs.iter().map(|x| x.as_slice()).collect();
        let got = common::he_conv_batch(spec, &refs, &k);
        for (j, x) in xs.iter().enumerate() {
            assert_eq!(got[j], spec.direct(x, &k), "case {i} image {j}");
        }
    }
}
