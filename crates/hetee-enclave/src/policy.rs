//! The model provider's output policy, applied to the final logits without
//! branches or indexing on their values.

use hetee_proto::channel::OutputPolicy;

/// Order-preserving integer key of a finite `f32`.
fn key(x: f32) -> i64 {
    let b = x.to_bits() as i32;
    (b ^ ((((b >> 31) as u32) >> 1) as i32)) as i64
}

/// Below every key (keys fit in 32 bits), so comparisons cannot overflow.
const NONE: i64 = -(1 << 40);

/// All ones if `a > b` (both within ±2^40, so no overflow).
fn gt_mask(a: i64, b: i64) -> i64 {
    b.wrapping_sub(a) >> 63
}

/// All ones if `a == b`.
fn eq_mask(a: u64, b: u64) -> i64 {
    let d = a ^ b;
    (((d | d.wrapping_neg()) >> 63) as i64).wrapping_sub(1)
}

/// The labels of the `k` largest values, best first, lowest label on ties.
/// Time depends only on `values.len()` and `k`.
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut keys: Vec<i64> = values.iter().map(|&v| key(v)).collect();
    let mut out = Vec::with_capacity(k);
    for _ in 0..k.min(values.len()) {
        let mut best = NONE;
        let mut best_i = 0i64;
        for (i, &kv) in keys.iter().enumerate() {
            let take = gt_mask(kv, best);
            best = (kv & take) | (best & !take);
            best_i = (i as i64 & take) | (best_i & !take);
        }
        out.push(best_i as u32);
        for (i, kv) in keys.iter_mut().enumerate() {
            let hit = eq_mask(i as u64, best_i as u64);
            *kv = (NONE & hit) | (*kv & !hit);
        }
    }
    out
}

/// Applies `policy` to `images x classes` logits: returns the logits to
/// release (policy `Logits`) and the labels (other policies).
pub fn apply(policy: OutputPolicy, logits: &[f32], classes: usize) -> (Vec<f32>, Vec<u32>) {
    let per_image = |k: usize| {
        logits
            .chunks(classes.max(1))
            .flat_map(|l| top_k(l, k))
            .collect()
    };
    match policy {
        OutputPolicy::Logits => (logits.to_vec(), Vec::new()),
        OutputPolicy::Label => (Vec::new(), per_image(1)),
        OutputPolicy::TopK(k) => (Vec::new(), per_image(k as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_a_sort() {
        let v = [
            0.5f32, -2.0, 3.25, 3.25, -0.0, 0.0, 1e-3, -7.5, 100.0, -100.0,
        ];
        let mut idx: Vec<u32> = (0..v.len() as u32).collect();
        idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
        // -0.0 and 0.0 differ in total order; the key orders them the same way.
        assert_eq!(top_k(&v, v.len()), idx);
        assert_eq!(top_k(&v, 1), vec![8]);
        assert_eq!(top_k(&v, 3), vec![8, 2, 3]);
        // All positive: the first value must not be skipped.
        assert_eq!(top_k(&[9.0, 1.0, 2.0], 2), vec![0, 2]);
        assert_eq!(top_k(&[1.0, 9.0, 2.0], 1), vec![1]);
    }

    #[test]
    fn policies_release_only_what_they_say() {
        let l = [1.0f32, 5.0, 2.0, 9.0, 0.0, 3.0];
        assert_eq!(apply(OutputPolicy::Label, &l, 3), (vec![], vec![1, 0]));
        assert_eq!(
            apply(OutputPolicy::TopK(2), &l, 3),
            (vec![], vec![1, 2, 0, 2])
        );
        assert_eq!(apply(OutputPolicy::Logits, &l, 3).0, l.to_vec());
    }
}
