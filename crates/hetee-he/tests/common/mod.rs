//! Shared helpers for the HE tests: run one linear layer under encryption.

use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
use hetee_he::{planner, ConvPacking, ConvSpec, Evaluator, HeConfig};

/// Runs `spec` on `x` and `k` fully encrypted (weights and input under the
/// public key) and returns the decrypted output `[m, oh, ow]`.
pub fn he_conv(spec: &ConvSpec, x: &[i64], k: &[i64], packing: Option<ConvPacking>) -> Vec<i64> {
    let shape = spec.normal_shape();
    he_run(
        spec,
        shape,
        spec.layout_input(x),
        bound(spec, x, k),
        k,
        packing,
    )
}

/// Runs `spec` on a batch of inputs stacked in the same products.
pub fn he_conv_batch(spec: &ConvSpec, xs: &[&[i64]], k: &[i64]) -> Vec<Vec<i64>> {
    let shape = spec.batched_shape(xs.len());
    let bound = xs.iter().map(|x| bound(spec, x, k)).max().unwrap_or(1);
    let y = he_run(spec, shape, spec.layout_batch(xs), bound, k, None);
    spec.split_batch_output(&y, xs.len())
}

fn he_run(
    spec: &ConvSpec,
    shape: hetee_he::ConvShape,
    laid_out: Vec<i64>,
    bound: u64,
    k: &[i64],
    packing: Option<ConvPacking>,
) -> Vec<i64> {
    let cfg = HeConfig::for_accumulator_bound(bound).unwrap();
    let par = cfg.build().unwrap();
    let packing = packing.unwrap_or_else(|| {
        planner::plan_conv(
            shape,
            cfg.degree,
            &planner::CostModel::for_degree(cfg.degree),
        )
        .unwrap()
    });
    let mut rng = rand::rng();
    let sk = SecretKey::random(&par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let enc = |polys: Vec<Vec<i64>>| {
        polys
            .iter()
            .map(|p| {
                let pt = Plaintext::try_encode(p.as_slice(), Encoding::poly(), &par).unwrap();
                pk.try_encrypt(&pt, &mut rand::rng()).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let xin = enc(packing.pack_input(&laid_out));
    let win = enc(packing.pack_weights(&spec.layout_kernel(k)));
    let ev = Evaluator::new(&par).unwrap();
    let xe = ev.extend_all(&xin).unwrap();
    let we = ev.extend_all(&win).unwrap();
    let outs = ev.evaluate_plan(&packing.product_plan(), &xe, &we).unwrap();
    let polys: Vec<Vec<i64>> = outs
        .iter()
        .map(|ct| {
            let pt = sk.try_decrypt(ct).unwrap();
            Vec::<i64>::try_decode(&pt, Encoding::poly()).unwrap()
        })
        .collect();
    packing.unpack_output(&polys)
}

/// Worst-case |accumulator| for these weights over inputs as large as `x`'s largest.
pub fn bound(spec: &ConvSpec, x: &[i64], k: &[i64]) -> u64 {
    let xmax = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0).max(1);
    let per = spec.c * spec.kh * spec.kw;
    k.chunks(per)
        .map(|row| row.iter().map(|v| v.unsigned_abs()).sum::<u64>() * xmax)
        .max()
        .unwrap_or(1)
        .max(1)
}
