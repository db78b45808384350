//! `hetee demo --json`, through an enclave process and in process: every
//! image agrees with the plaintext reference.

mod common;

use common::cli::*;
use serde_json::Value;

#[test]
fn demo_json() {
    let out = hetee(&["demo", "--images", "3", "--json"]);
    assert!(out.status.success(), "demo failed:\n{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("demo --json stdout is not JSON ({e}):\n{}", describe(&out)));
    assert_eq!(v["images"].as_u64(), Some(3));
    assert_eq!(v["reference_agreement"].as_f64(), Some(1.0), "{v}");
    assert!(
        v["accuracy"]
            .as_f64()
            .is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{v}"
    );
    assert!(v["weight_bytes"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert_eq!(v["measurement"].as_str().map(str::len), Some(64), "{v}");
}

#[test]
fn demo_in_process_json() {
    let out = hetee(&["demo", "--images", "3", "--json", "--in-process"]);
    assert!(out.status.success(), "demo failed:\n{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reference_agreement"].as_f64(), Some(1.0), "{v}");
    assert!(v["ct_products"].as_u64().is_some_and(|n| n > 0), "{v}");
}
