//! `hetee plan`: the compiled schedule of a model, as a table or as JSON.
//! Bytes are the per-query ciphertext traffic of each stage: fresh inputs to
//! the host plus mod-switched products to the enclave.

use std::fmt::Write as _;

use anyhow::Result;
use hetee_enclave::Schedule;
use hetee_he::planner::CostModel;
use hetee_model::QuantModel;
use serde::Serialize;

/// One stage of the plan.
#[derive(Debug, Serialize)]
pub struct StagePlan {
    /// Stage index.
    pub stage: usize,
    /// Normal-form input `[c, h, w]`, kernel `[kh, kw]`, output channels.
    pub shape: [usize; 6],
    /// Convolution groups (1: dense).
    pub groups: usize,
    /// Channels, rows, columns per tile and output channels per product.
    pub tiling: [usize; 4],
    /// Input ciphertexts.
    pub inputs: usize,
    /// Weight ciphertexts.
    pub weights: usize,
    /// ct x ct products.
    pub products: usize,
    /// Ciphertexts the enclave decrypts.
    pub decrypts: usize,
    /// Ciphertext bytes moved per query.
    pub bytes: usize,
    /// Predicted host ms per query.
    pub host_ms: f64,
    /// Predicted enclave ms per query.
    pub enclave_ms: f64,
}

/// The plan of a model for one batch size.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// Images per query.
    pub batch: usize,
    /// BFV ring degree.
    pub degree: usize,
    /// Plaintext modulus.
    pub plaintext_modulus: u64,
    /// Bits of the ciphertext modulus.
    pub log2_q: u32,
    /// Largest possible |accumulator|.
    pub max_acc: u64,
    /// Per stage.
    pub stages: Vec<StagePlan>,
    /// Predicted host ms per query.
    pub host_ms: f64,
    /// Predicted enclave ms per query.
    pub enclave_ms: f64,
    /// Host memory of the encrypted weights, ready to multiply (bytes).
    pub weight_memory: usize,
}

/// Compiles `q` for `batch` images per query and predicts its costs.
pub fn plan(q: &QuantModel, batch: usize) -> Result<Plan> {
    let s = Schedule::compile(q, batch)?;
    let cost = CostModel::for_degree(s.he.degree);
    let par = s.he.build()?;
    let out_level = hetee_he::eval::output_level(&par);
    let in_bytes = hetee_he::codec::encoded_len(&par, 0, 2)?;
    let out_bytes = hetee_he::codec::encoded_len(&par, out_level, 3)?;
    let stages: Vec<StagePlan> = s
        .stages
        .iter()
        .enumerate()
        .map(|(k, st)| {
            let p = &st.packing;
            let (host_ms, enclave_ms) = cost.predict(p);
            let (sh, t) = (p.shape, p.tiling);
            StagePlan {
                stage: k,
                shape: [sh.c, sh.h, sh.w, sh.kh, sh.kw, sh.m],
                groups: sh.groups,
                tiling: [t.ct, t.ht, t.wt, t.mt],
                inputs: p.input_count(),
                weights: p.weight_count(),
                products: p.product_count(),
                decrypts: p.output_count(),
                bytes: in_bytes * p.input_count() + out_bytes * p.output_count(),
                host_ms,
                enclave_ms,
            }
        })
        .collect();
    Ok(Plan {
        batch: s.batch,
        degree: s.he.degree,
        plaintext_modulus: s.he.plaintext_modulus,
        log2_q: s.he.log2_q(),
        max_acc: q.acc_bound(),
        host_ms: stages.iter().map(|st| st.host_ms).sum(),
        enclave_ms: stages.iter().map(|st| st.enclave_ms).sum(),
        weight_memory: s.weight_memory(),
        stages,
    })
}

/// Prints the plan: per stage, packing, products, enclave ciphertexts,
/// bytes and predicted ms; as JSON with `json`.
pub fn print_plan(q: &QuantModel, batch: usize, json: bool) -> Result<()> {
    let p = plan(q, batch)?;
    if json {
        return crate::stdout::emit(&format!("{}\n", serde_json::to_string_pretty(&p)?));
    }
    let mut out = String::new();
    writeln!(
        out,
        "batch {}: HE N={} t={} log2 q={} (max |acc| {})",
        p.batch, p.degree, p.plaintext_modulus, p.log2_q, p.max_acc
    )?;
    writeln!(
        out,
        "{:<5} {:<28} {:<22} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "stage",
        "layer",
        "tiling c/h/w/m",
        "inputs",
        "weights",
        "products",
        "decrypt",
        "bytes",
        "host ms",
        "encl ms"
    )?;
    for st in &p.stages {
        let [c, h, w, kh, kw, m] = st.shape;
        let [ct, ht, wt, mt] = st.tiling;
        writeln!(
            out,
            "{:<5} {:<28} {:<22} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9.2} {:>9.2}",
            st.stage,
            format!("{c}x{h}x{w} k{kh}x{kw} -> {m}"),
            format!("{ct}/{ht}/{wt}/{mt}"),
            st.inputs,
            st.weights,
            st.products,
            st.decrypts,
            st.bytes,
            st.host_ms,
            st.enclave_ms
        )?;
    }
    writeln!(
        out,
        "predicted per query of {} image(s): host {:.1} ms, enclave {:.1} ms; per image: host {:.2} ms, enclave {:.2} ms",
        p.batch,
        p.host_ms,
        p.enclave_ms,
        p.host_ms / p.batch as f64,
        p.enclave_ms / p.batch as f64
    )?;
    writeln!(
        out,
        "host memory of the encrypted weights (multiplication basis): {:.0} MiB",
        p.weight_memory as f64 / (1u64 << 20) as f64
    )?;
    crate::stdout::emit(&out)
}
