//! `hetee plan`: the compiled schedule of a model as a table.

use anyhow::Result;
use hetee_enclave::Schedule;
use hetee_he::planner::CostModel;
use hetee_model::QuantModel;

/// Prints, per stage: packing, products, enclave ciphertexts, bytes and predicted ms.
pub fn print_plan(q: &QuantModel) -> Result<()> {
    let s = Schedule::compile(q)?;
    let cost = CostModel::for_degree(s.he.degree);
    let ct_bytes = |polys: usize| polys * s.he.degree * s.he.moduli_sizes.len() * 8;
    println!(
        "HE: N={} t={} log2 q={} (max |acc| {})",
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
        let bytes = ct_bytes(2) * p.input_count() + ct_bytes(3) * p.output_count();
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
    println!("predicted per query: host {th:.1} ms, enclave {te:.1} ms");
    Ok(())
}
