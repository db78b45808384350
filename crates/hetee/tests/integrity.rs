//! Integrity features through the real deployment: thin queries, output
//! policies, signed receipts and query budgets.

mod common;

use std::path::Path;

use common::*;

/// Uploads `model` as the owner whose key is `owner.key` in `dir`.
fn upload(dir: &Path, addr: &str, m: &str, model: &str, extra: &[&str]) -> String {
    upload_as(addr, m, model, &dir.join("owner.key"), extra)
}

fn infer(addr: &str, m: &str, id: &str, x: &str, y: &str, extra: &[&str]) -> std::process::Output {
    common::infer(addr, m, id, Path::new(x), Path::new(y), extra)
}

fn read_npy(path: &std::path::Path) -> (Vec<usize>, String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let data = bytes[bytes.len() - npy.shape().iter().product::<u64>() as usize * 4..].to_vec();
    (shape, descr, data)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

#[test]
fn thin_queries_equal_the_normal_path_and_receipts_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let id = upload(dir.path(), &server.addr, &m, "mnist", &[]);
    let x = dir.path().join("x.npy");
    write_f32(&x, &[20, 1, 28, 28], &mnist_images(20));
    let (normal, thin) = (dir.path().join("n.npy"), dir.path().join("t.npy"));
    let receipts = dir.path().join("receipts.json");
    let xs = x.to_str().unwrap();
    let out = infer(&server.addr, &m, &id, xs, normal.to_str().unwrap(), &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = infer(
        &server.addr,
        &m,
        &id,
        xs,
        thin.to_str().unwrap(),
        &["--thin", "--receipt", receipts.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        std::fs::read(&normal).unwrap() == std::fs::read(&thin).unwrap(),
        "--thin differs from the normal path"
    );

    // The receipts verify, and an altered one does not.
    let rs = receipts.to_str().unwrap();
    let ok = hetee(&[
        "verify-receipt",
        "--receipt",
        rs,
        "--expect-measurement",
        &m,
        "--allow-sim",
    ]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipts).unwrap()).unwrap();
    let l0 = v[0]["result"]["logits"][0].as_f64().unwrap();
    v[0]["result"]["logits"][0] = serde_json::json!(l0 + 1.0);
    std::fs::write(&receipts, serde_json::to_string(&v).unwrap()).unwrap();
    let bad = hetee(&[
        "verify-receipt",
        "--receipt",
        rs,
        "--expect-measurement",
        &m,
        "--allow-sim",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("signature"),
        "{}",
        describe(&bad)
    );
}

#[test]
fn label_and_top_k_policies_release_only_labels() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let n = 12;
    let x = dir.path().join("x.npy");
    write_f32(&x, &[n, 1, 28, 28], &mnist_images(n));
    let plain = dir.path().join("p.npy");
    let out = hetee(&[
        "run",
        "--model",
        "e2dm",
        "--input",
        x.to_str().unwrap(),
        "--output",
        plain.to_str().unwrap(),
        "--plaintext",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let (_, _, pbytes) = read_npy(&plain);
    let logits: Vec<f32> = pbytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();

    let label_id = upload(
        dir.path(),
        &server.addr,
        &m,
        "e2dm",
        &["--output-policy", "label"],
    );
    let y = dir.path().join("label.npy");
    let out = infer(
        &server.addr,
        &m,
        &label_id,
        x.to_str().unwrap(),
        y.to_str().unwrap(),
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let (shape, descr, data) = read_npy(&y);
    assert_eq!(shape, vec![n, 1]);
    assert_eq!(descr.trim_matches('\''), "<i4");
    for i in 0..n {
        let got = i32::from_le_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            got as usize,
            argmax(&logits[i * 10..(i + 1) * 10]),
            "image {i}"
        );
    }

    let top_id = upload(
        dir.path(),
        &server.addr,
        &m,
        "e2dm",
        &["--output-policy", "top-3"],
    );
    let y = dir.path().join("top.npy");
    let out = infer(
        &server.addr,
        &m,
        &top_id,
        x.to_str().unwrap(),
        y.to_str().unwrap(),
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let (shape, _, data) = read_npy(&y);
    assert_eq!(shape, vec![n, 3]);
    for i in 0..n {
        let l = &logits[i * 10..(i + 1) * 10];
        let mut idx: Vec<usize> = (0..10).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        let got: Vec<usize> = (0..3)
            .map(|j| {
                let o = (i * 3 + j) * 4;
                i32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize
            })
            .collect();
        assert_eq!(got, idx[..3].to_vec(), "image {i}");
    }

    // A malformed policy is refused before anything is uploaded.
    let out = hetee(&[
        "model",
        "upload",
        "--server",
        &server.addr,
        "--model",
        "e2dm",
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        dir.path().join("owner.key").to_str().unwrap(),
        "--output-policy",
        "top-0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output-policy"));
}

#[test]
fn the_query_budget_counts_per_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let id = upload(
        dir.path(),
        &server.addr,
        &m,
        "e2dm",
        &["--query-budget", "2", "--max-batch", "1"],
    );
    let x = dir.path().join("x.npy");
    write_f32(&x, &[1, 1, 28, 28], &mnist_images(1));
    let y = dir.path().join("y.npy");
    let key = dir.path().join("client.key");
    let args = ["--client-key", key.to_str().unwrap()];
    for _ in 0..2 {
        let out = infer(
            &server.addr,
            &m,
            &id,
            x.to_str().unwrap(),
            y.to_str().unwrap(),
            &args,
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    let out = infer(
        &server.addr,
        &m,
        &id,
        x.to_str().unwrap(),
        y.to_str().unwrap(),
        &args,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("budget"),
        "{}",
        describe(&out)
    );
    // Another client key has its own budget.
    let other = dir.path().join("other.key");
    let out = infer(
        &server.addr,
        &m,
        &id,
        x.to_str().unwrap(),
        y.to_str().unwrap(),
        &["--client-key", other.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", describe(&out));
}
