//! The SEV-SNP verifier on a real Milan attestation report with its VCEK and AMD's Milan
//! ASK/ARK (the `sev` crate's public test vectors, see tests/data/README.md), offline, with
//! `now` pinned inside the certificates' validity.
#![cfg(feature = "snp")]

use base64::Engine;
use hetee_attest::evidence::{Evidence, PlatformKind};
use hetee_attest::layout::{snp_cert_table, SnpCertKind};
use hetee_attest::verify::{EvidenceVerifier, Policy, SnpVerifier, Verifiers};
use hetee_attest::Error;

const REPORT_HEX: &str = include_str!("data/snp_report_milan.hex");
const VCEK: &[u8] = include_bytes!("data/snp_vcek_milan.der");
const CHAIN_PEM: &str = include_str!("data/snp_cert_chain_milan.pem");
/// 2025-07-01T00:00:00Z: the VCEK is valid 2023-04-03 → 2030-04-03, ASK/ARK 2020 → 2045.
const NOW: u64 = 1_751_328_000;
/// SHA-256("hetee/snp-measurement/v1" ‖ MEASUREMENT ‖ HOST_DATA ‖ POLICY ‖ VMPL), computed
/// independently from the report bytes.
const MEASUREMENT: &str = "1f20abfeed953c9c9fbde20ff5c95ca280f09af23a5599f95c47ff5d1a53b51c";
const REPORT_DATA: &str = "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd";

fn report() -> Vec<u8> {
    let s = REPORT_HEX.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (ASK, ARK) in DER, from the PEM chain (ASK first, as AMD's KDS serves it).
fn ask_ark() -> (Vec<u8>, Vec<u8>) {
    let ders: Vec<Vec<u8>> = CHAIN_PEM
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let b64: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect();
    assert_eq!(ders.len(), 2);
    (ders[0].clone(), ders[1].clone())
}

fn full_table() -> Vec<u8> {
    let (ask, ark) = ask_ark();
    snp_cert_table(&[
        (SnpCertKind::Vcek, VCEK),
        (SnpCertKind::Ask, &ask),
        (SnpCertKind::Ark, &ark),
    ])
}

fn evidence() -> Evidence {
    Evidence::from_snp_report(report(), full_table()).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn extracts_fields_from_the_report() {
    let ev = evidence();
    assert_eq!(ev.platform, PlatformKind::SevSnp);
    assert_eq!(ev.measurement.to_hex(), MEASUREMENT);
    assert!(!ev.debug);
    assert_eq!(hex(&ev.report_data), REPORT_DATA);
    assert_eq!(Evidence::decode(&ev.encode().unwrap()).unwrap(), ev);
    assert!(Evidence::from_snp_report(report()[..1000].to_vec(), Vec::new()).is_err());
}

#[test]
fn verifies_the_real_sample_report_offline() {
    let r = SnpVerifier::new().verify(&evidence(), NOW).unwrap();
    assert_eq!(r.platform, PlatformKind::SevSnp);
    assert_eq!(r.measurement.to_hex(), MEASUREMENT);
    assert!(!r.debug);
    assert_eq!(hex(&r.report_data), REPORT_DATA);
    assert!(r.tcb_status.unwrap().starts_with("bootloader="));

    // With the VCEK alone, the pinned Milan ASK completes the chain.
    let ev =
        Evidence::from_snp_report(report(), snp_cert_table(&[(SnpCertKind::Vcek, VCEK)])).unwrap();
    SnpVerifier::new().verify(&ev, NOW).unwrap();

    // Through the registry and a policy.
    let ev = evidence();
    Policy::new(ev.measurement)
        .check(&Verifiers::production(), &ev, &ev.report_data, NOW)
        .unwrap();

    // Custom pinned roots.
    let (ask, ark) = ask_ark();
    let pinned = SnpVerifier::with_roots_der(&[(&ark, &ask)]).unwrap();
    pinned.verify(&evidence(), NOW).unwrap();
    assert!(SnpVerifier::with_roots_der(&[(&ask, &ark)]).is_err());
}

#[test]
fn refuses_a_flipped_byte_in_the_body_or_signature() {
    // report data, measurement, policy, signature R, signature S
    for at in [0x50, 0x90, 0x08, 0x2A0 + 3, 0x2A0 + 72 + 3] {
        let mut r = report();
        r[at] ^= 0x01;
        let ev = Evidence::from_snp_report(r, full_table()).unwrap();
        let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
        assert!(
            matches!(err, Error::BadSignature(_) | Error::MalformedEvidence(_)),
            "byte {at:#x}: {err}"
        );
    }
    // A reserved byte is refused even though the signature does not cover it.
    let mut r = report();
    r[0x4A0 - 1] ^= 0x01;
    let ev = Evidence::from_snp_report(r, full_table()).unwrap();
    assert!(SnpVerifier::new().verify(&ev, NOW).is_err());
}

#[test]
fn refuses_edited_plain_fields() {
    let mut ev = evidence();
    ev.measurement.0[5] ^= 1;
    let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::EvidenceMismatch(_)), "{err}");
    let mut ev = evidence();
    ev.debug = true;
    let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::EvidenceMismatch(_)), "{err}");
}

#[test]
fn refuses_a_wrong_chain() {
    let (ask, ark) = ask_ark();
    // The ASK in the VCEK slot: the chain does not verify.
    let table = snp_cert_table(&[(SnpCertKind::Vcek, &ask), (SnpCertKind::Ask, &ask)]);
    let ev = Evidence::from_snp_report(report(), table).unwrap();
    let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::BadSignature(_)), "{err}");
    // A VCEK with one flipped byte in its signed part.
    let mut vcek = VCEK.to_vec();
    vcek[200] ^= 0x01;
    let table = snp_cert_table(&[(SnpCertKind::Vcek, &vcek)]);
    let ev = Evidence::from_snp_report(report(), table).unwrap();
    assert!(SnpVerifier::new().verify(&ev, NOW).is_err());
    // An ARK in the table that is not the pinned root.
    let table = snp_cert_table(&[
        (SnpCertKind::Vcek, VCEK),
        (SnpCertKind::Ask, &ask),
        (SnpCertKind::Ark, &ask),
    ]);
    let ev = Evidence::from_snp_report(report(), table).unwrap();
    let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::BadSignature(_)), "{err}");
    // No pinned roots at all.
    let none = SnpVerifier::with_roots_der(&[]).unwrap();
    assert!(matches!(
        none.verify(&evidence(), NOW),
        Err(Error::BadSignature(_))
    ));
    // No VCEK, or no table.
    let table = snp_cert_table(&[(SnpCertKind::Ark, &ark)]);
    let ev = Evidence::from_snp_report(report(), table).unwrap();
    let err = SnpVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::BadCertificates(_)), "{err}");
    let ev = Evidence::from_snp_report(report(), Vec::new()).unwrap();
    assert!(matches!(
        SnpVerifier::new().verify(&ev, NOW),
        Err(Error::BadCertificates(_))
    ));
}

#[test]
fn refuses_outside_the_certificates_validity() {
    // 2031-01-01: the VCEK expired in 2030; 2022-01-01: not yet valid.
    for t in [1_924_992_000, 1_640_995_200] {
        let err = SnpVerifier::new().verify(&evidence(), t).unwrap_err();
        assert!(matches!(err, Error::BadCertificates(_)), "{t}: {err}");
    }
}
