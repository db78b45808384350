//! `hetee plan`: the compiled schedule of a model as a table. Bytes are the
//! per-query ciphertext traffic of each stage: fresh inputs to the host plus
//! mod-switched products to the enclave.

use anyhow::Result;
use hetee_enclave::Schedule;
use hetee_he::planner::CostModel;
use hetee_model::QuantModel;

/// Prints, per stage: packing, products, enclave ciphertexts, bytes and predicted ms.
pub fn print_plan(q: &QuantModel, batch: usize) -> Result<()> {
    let s = Schedule::compile(q, batch)?;
    let cost = CostModel::for_degree(s.he.degree);
    let par = s.he.build()?;
    let out_level = hetee_he::eval::output_level(&par);
    let in_bytes = hetee_he::codec::encoded_len(&par, 0, 2)?;
    let out_bytes = hetee_he::codec::encoded_len(&par, out_level, 3)?;
    println!(
        "batch {}: HE N={} t={} log2 q={} (max |acc| {})",
        s.batch,
        s.he.degree,
        s.he.plaintext_modulus,
        s.he.log2_q(),
        q.acc_bound()
    );
    println!(
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
    );
    let (mut th, mut te) = (0.0, 0.0);
    for (k, st) in s.stages.iter().enumerate() {
        let p = &st.packing;
        let (h, e) = cost.predict(p);
        th += h;
        te += e;
        let sh = p.shape;
        let layer = format!(
            "{}x{}x{} k{}x{} -> {}",
            sh.c, sh.h, sh.w, sh.kh, sh.kw, sh.m
        );
        let t = p.tiling;
        let bytes = in_bytes * p.input_count() + out_bytes * p.output_count();
        println!(
            "{:<5} {:<28} {:<22} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9.2} {:>9.2}",
            k,
            layer,
            format!("{}/{}/{}/{}", t.ct, t.ht, t.wt, t.mt),
            p.input_count(),
            p.weight_count(),
            p.product_count(),
            p.output_count(),
            bytes,
            h,
            e
        );
    }
    println!(
        "predicted per query of {} image(s): host {th:.1} ms, enclave {te:.1} ms; per image: host {:.2} ms, enclave {:.2} ms",
        s.batch,
        th / s.batch as f64,
        te / s.batch as f64
    );
    println!(
        "host memory of the encrypted weights (multiplication basis): {:.0} MiB",
        s.weight_memory() as f64 / (1u64 << 20) as f64
    );
    Ok(())
}
