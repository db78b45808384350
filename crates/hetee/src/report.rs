//! The per-layer JSON report of `hetee run --report`.

use serde_json::{json, Value};

use crate::cli::median;
use crate::harness::{Harness, QueryStats};
use hetee_model::QuantModel;

/// Builds the per-layer report: packing, products, enclave work, times, bytes.
pub fn layer_report(
    q: &QuantModel,
    dep: Option<&Harness>,
    stats: &[QueryStats],
    images: usize,
    plaintext: bool,
) -> Value {
    let layers: Vec<Value> = q
        .stages
        .iter()
        .enumerate()
        .map(|(k, st)| {
            let mut v = json!({
                "stage": k,
                "nodes": st.nodes,
                "input_shape": st.input_shape,
                "output_shape": st.output_shape,
                "acc_bound": st.acc_bound,
            });
            if let Some(d) = dep {
                let p = &d.schedule.stages[k].packing;
                let col = |f: &dyn Fn(&hetee_proto::api::StageStats) -> f64| {
                    median(stats.iter().map(|s| f(&s.stages[k])).collect())
                };
                v["packing"] = json!({
                    "degree": p.degree,
                    "normal_form": p.shape,
                    "tiling": p.tiling,
                    "input_ciphertexts": p.input_count(),
                    "weight_ciphertexts": p.weight_count(),
                    "output_ciphertexts": p.output_count(),
                });
                v["products"] = json!(p.product_count());
                v["enclave_decrypts"] = json!(p.output_count());
                v["enclave_encrypts"] = json!(stats
                    .first()
                    .map(|s| s.stages[k].enclave_encrypts)
                    .unwrap_or(0));
                v["median_host_ms"] = json!(col(&|s| s.host_ms));
                v["median_enclave_ms"] = json!(col(&|s| s.enclave_ms));
                v["bytes_to_enclave"] = json!(col(&|s| s.bytes_to_enclave as f64));
                v["bytes_from_enclave"] = json!(col(&|s| s.bytes_from_enclave as f64));
            }
            v
        })
        .collect();
    json!({
        "mode": if plaintext { "plaintext-reference" } else { "secure" },
        "images": images,
        "queries": stats.len(),
        "batch": dep.map(|d| d.schedule.batch),
        "he": dep.map(|d| json!(d.schedule.he)),
        "median_query_latency_ms": median(stats.iter().map(|s| s.total_ms).collect()),
        "bytes_up_per_image": stats.first().map(|s| s.bytes_up),
        "layers": layers,
    })
}
