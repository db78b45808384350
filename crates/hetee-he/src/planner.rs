//! Chooses the tiling of each linear layer by predicted cost.
//!
//! The cost model counts host ct x ct products, host rescales (one per output
//! ciphertext), host operand extensions, and the enclave's decryptions and
//! encryptions, which are weighted up because enclave time is scarce.

use serde::{Deserialize, Serialize};

use crate::packing::{ConvPacking, ConvShape, Tiling};

/// What a decryption of only a dense layer's outputs costs, as a share of
/// a full one ([`ConvPacking::strided_output_positions`]), when the last
/// step of the extraction takes at most `N` products: 36-42 against 79-85 µs (criterion `n4096/decrypt_degree2_output_level_32_dense_coefficients`
/// and `…_from_bytes`, one core of an AMD EPYC without AVX-512).
pub const EXTRACTED_DECRYPT: f64 = 0.5;

/// Per-operation cost estimates in milliseconds (N = 4096, one core).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CostModel {
    /// One extra product accumulated in the multiplication basis.
    pub product_ms: f64,
    /// Rescaling one degree-2 output back to the ciphertext basis.
    pub rescale_ms: f64,
    /// Extending one fresh ciphertext to the multiplication basis.
    pub extend_ms: f64,
    /// Enclave: decrypting one degree-2 ciphertext.
    pub decrypt_ms: f64,
    /// Enclave: encrypting one ciphertext.
    pub encrypt_ms: f64,
    /// How much more an enclave millisecond costs than a host one.
    pub enclave_weight: f64,
    /// Host threads the products are spread over.
    pub host_threads: f64,
}

impl CostModel {
    /// Figures measured with fhe 0.1.1 at N = 4096 on one core (the
    /// `he_ops` criterion benchmark), scaled for N.
    ///
    /// They are older than the host's evaluator: today one product costs
    /// about 0.043 ms, a rescale 0.63, an extension 0.24, a decryption
    /// 0.046 and an encryption 0.14 (`*_fresh_basis` and the enclave's
    /// benchmarks). Put in here, those figures chose a plan for MNIST's
    /// 64-image batch that ran slower (200-215 against 220-227 img/s, A/B),
    /// so the planner keeps the figures whose rankings were measured best.
    pub fn for_degree(degree: usize) -> Self {
        let f = (degree as f64 / 4096.0) * if degree > 4096 { 1.5 } else { 1.0 };
        CostModel {
            product_ms: 0.2 * f,
            rescale_ms: 0.9 * f,
            extend_ms: 0.55 * f,
            decrypt_ms: 0.25 * f,
            encrypt_ms: 0.31 * f,
            enclave_weight: 4.0,
            host_threads: rayon_threads(),
        }
    }

    /// Predicted (host ms, enclave ms) for one evaluation of a packing.
    pub fn predict(&self, p: &ConvPacking) -> (f64, f64) {
        let host = (p.product_count() as f64 * self.product_ms
            + p.output_count() as f64 * self.rescale_ms
            + p.input_count() as f64 * self.extend_ms)
            / self.host_threads.max(1.0);
        let n = p.degree;
        let cheap = p.strided_output_positions().is_some_and(|pos| {
            crate::extract::class_of(&pos, n).is_some_and(|(m, _)| pos.len() * (n / m) <= n)
        });
        let decrypt = if cheap {
            self.decrypt_ms * EXTRACTED_DECRYPT
        } else {
            self.decrypt_ms
        };
        let enclave = p.output_count() as f64 * decrypt + p.input_count() as f64 * self.encrypt_ms;
        (host, enclave)
    }

    /// The weighted cost that the planner minimizes.
    pub fn score(&self, p: &ConvPacking) -> f64 {
        let (h, e) = self.predict(p);
        h + self.enclave_weight * e
    }
}

fn rayon_threads() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64
}

/// The cheapest valid tiling of `shape` for ring degree `degree`, or an error
/// if even a single-channel kernel window does not fit.
pub fn plan_conv(shape: ConvShape, degree: usize, cost: &CostModel) -> Result<ConvPacking, String> {
    shape.validate()?;
    if shape.kh * shape.kw > degree {
        return Err(format!(
            "a {}x{} kernel does not fit a ring of degree {degree}",
            shape.kh, shape.kw
        ));
    }
    let mut best: Option<(f64, ConvPacking)> = None;
    // Candidate spatial tiles: the full extent, or the largest tile that fits.
    for ct in 1..=shape.c {
        for ht in spatial_candidates(shape.h, shape.kh, shape.oh) {
            for wt in spatial_candidates(shape.w, shape.kw, shape.ow) {
                let t = ct * ht * wt;
                if t > degree {
                    continue;
                }
                let mt = (degree / t).min(shape.m);
                let tiling = Tiling { ct, ht, wt, mt };
                let Ok(p) = ConvPacking::new(shape, tiling, degree) else {
                    continue;
                };
                let s = cost.score(&p);
                if best.as_ref().is_none_or(|(b, _)| s < *b) {
                    best = Some((s, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| format!("no tiling of {shape:?} fits N = {degree}"))
}

/// Tile extents worth trying along one axis: for each possible number of
/// tiles, the smallest extent that reaches it.
fn spatial_candidates(full: usize, k: usize, out: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=out)
        .map(|tiles| (out.div_ceil(tiles) + k - 1).min(full))
        .collect();
    v.dedup();
    v
}
