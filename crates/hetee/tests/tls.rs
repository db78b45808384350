//! TLS on the HTTP API: `hetee serve --tls-cert --tls-key` with a CA and a
//! certificate made in the test (rcgen). A client that trusts the CA gets
//! through, the whole upload → infer flow works over https and matches the
//! plaintext reference bit for bit; a client with another CA is refused,
//! and a plain-HTTP client on the TLS port gets a clear error.

mod common;

use std::path::Path;

use common::*;
use hetee::client::http::Api;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it, as PEM
/// files in `dir`: returns (ca, cert, key) paths.
fn pki(dir: &Path, tag: &str) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(format!("{tag}_{name}"));
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[test]
fn the_api_over_tls_works_with_the_right_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "good");
    let (other_ca, _, _) = pki(dir.path(), "other");
    let server = Server::start_with_args(
        &dir.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");

    // The right CA: through.
    let api = Api::connect(&https, Some(Path::new(&ca))).unwrap();
    let health: serde_json::Value = api.get("/v1/health").unwrap();
    assert_eq!(health["models"], 0, "{health}");

    // Another CA: refused, saying why.
    let api = Api::connect(&https, Some(Path::new(&other_ca))).unwrap();
    let e = format!(
        "{:#}",
        api.get::<serde_json::Value>("/v1/health").unwrap_err()
    );
    assert!(
        e.contains("cannot reach") && e.to_lowercase().contains("certificate"),
        "{e}"
    );

    // Plain HTTP on the TLS port: a clear error, not a reset.
    let api = Api::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let e = format!(
        "{:#}",
        api.get::<serde_json::Value>("/v1/health").unwrap_err()
    );
    assert!(e.contains("this port speaks TLS"), "{e}");

    // --ca with a plain address is a mistake worth naming.
    let e = Api::connect(&format!("http://127.0.0.1:{port}"), Some(Path::new(&ca)))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not https://"), "{e}");

    // The whole flow over https: upload, infer, equal to the reference.
    let m = measurement();
    let owner = dir.path().join("owner.key");
    let out = hetee(&[
        "model",
        "upload",
        "--server",
        &https,
        "--ca",
        &ca,
        "--model",
        "e2dm",
        "--expect-measurement",
        &m,
        "--allow-sim",
        "--client-key",
        owner.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let x = dir.path().join("x.npy");
    write_f32(&x, &[2, 1, 28, 28], &mnist_images(2));
    let secure = dir.path().join("secure.npy");
    let out = hetee(&[
        "infer",
        "--server",
        &https,
        "--ca",
        &ca,
        "--model-id",
        &id,
        "--input",
        x.to_str().unwrap(),
        "--output",
        secure.to_str().unwrap(),
        "--expect-measurement",
        &m,
        "--allow-sim",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let plain = dir.path().join("plain.npy");
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
    assert_eq!(
        std::fs::read(&secure).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    // The CLI with the wrong CA is refused too.
    let out = hetee(&[
        "infer",
        "--server",
        &https,
        "--ca",
        &other_ca,
        "--model-id",
        &id,
        "--input",
        x.to_str().unwrap(),
        "--output",
        secure.to_str().unwrap(),
        "--expect-measurement",
        &m,
        "--allow-sim",
    ]);
    assert!(!out.status.success());
    server.stop();
}
