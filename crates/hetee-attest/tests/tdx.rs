//! The TDX verifier on a real TDX quote and its PCCS collateral (dcap-qvl's public test vectors,
//! see tests/data/README.md), offline, with `now` pinned inside the collateral's validity window.
#![cfg(feature = "tdx")]

use hetee_attest::evidence::{Evidence, PlatformKind};
use hetee_attest::verify::{EvidenceVerifier, Policy, TdxVerifier, Verifiers};
use hetee_attest::Error;

const QUOTE: &[u8] = include_bytes!("data/tdx_quote");
const COLLATERAL: &[u8] = include_bytes!("data/tdx_quote_collateral.json");
const SGX_COLLATERAL: &[u8] = include_bytes!("data/sgx_quote_collateral.json");
/// 2025-07-01T00:00:00Z: inside the collateral's validity (2025-06-19 → 2025-07-19).
const NOW: u64 = 1_751_328_000;
/// SHA-256("hetee/tdx-measurement/v1" ‖ TD report body bytes 120..520), computed independently.
const MEASUREMENT: &str = "c8f221d887026f221adec49edbfcaf66fc1b6df78d510f9f44b47aed298a60d5";
const REPORT_DATA: &str = "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20";
/// Offset of the quote's ECDSA signature: header (48) + TD report (584) + auth data length (4).
const SIGNATURE_AT: usize = 636;

fn evidence() -> Evidence {
    Evidence::from_tdx_quote(QUOTE.to_vec(), COLLATERAL.to_vec()).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn extracts_fields_from_the_quote() {
    let ev = evidence();
    assert_eq!(ev.platform, PlatformKind::TdxDcap);
    assert_eq!(ev.measurement.to_hex(), MEASUREMENT);
    assert!(!ev.debug);
    assert_eq!(hex(&ev.report_data), REPORT_DATA);
    assert_eq!(Evidence::decode(&ev.encode().unwrap()).unwrap(), ev);
    // An SGX quote is not TDX evidence and vice versa.
    let sgx = include_bytes!("data/sgx_quote");
    assert!(Evidence::from_tdx_quote(sgx.to_vec(), Vec::new()).is_err());
    assert!(Evidence::from_sgx_quote(QUOTE.to_vec(), Vec::new()).is_err());
}

#[test]
fn verifies_the_real_sample_quote_offline() {
    let r = TdxVerifier::new().verify(&evidence(), NOW).unwrap();
    assert_eq!(r.platform, PlatformKind::TdxDcap);
    assert_eq!(r.measurement.to_hex(), MEASUREMENT);
    assert!(!r.debug);
    assert_eq!(hex(&r.report_data), REPORT_DATA);
    assert_eq!(r.tcb_status.as_deref(), Some("UpToDate"));

    // Through the registry and a policy.
    let ev = evidence();
    let policy = Policy::new(ev.measurement);
    let r2 = policy
        .check(&Verifiers::production(), &ev, &ev.report_data, NOW)
        .unwrap();
    assert_eq!(r2, r);
}

#[test]
fn refuses_a_flipped_byte_in_the_body_or_signature() {
    for at in [8, 48 + 16, 48 + 136, 48 + 500, 48 + 520, SIGNATURE_AT + 5] {
        let mut q = QUOTE.to_vec();
        q[at] ^= 0x01;
        let ev = Evidence::from_tdx_quote(q, COLLATERAL.to_vec()).unwrap();
        let err = TdxVerifier::new().verify(&ev, NOW).unwrap_err();
        assert!(matches!(err, Error::BadSignature(_)), "byte {at}: {err}");
    }
}

#[test]
fn refuses_edited_plain_fields() {
    let mut ev = evidence();
    ev.measurement.0[0] ^= 1;
    let err = TdxVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::EvidenceMismatch(_)), "{err}");
    let mut ev = evidence();
    ev.report_data[63] ^= 1;
    let err = TdxVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::EvidenceMismatch(_)), "{err}");
}

#[test]
fn refuses_a_wrong_chain_collateral_or_time() {
    // Another pinned root: the PCK chain does not lead to it.
    let other_root = include_bytes!("data/snp_vcek_milan.der").to_vec();
    let err = TdxVerifier::with_root_ca_der(other_root)
        .verify(&evidence(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature(_)), "{err}");
    // SGX collateral for a TDX quote.
    let ev = Evidence::from_tdx_quote(QUOTE.to_vec(), SGX_COLLATERAL.to_vec()).unwrap();
    assert!(TdxVerifier::new().verify(&ev, NOW).is_err());
    // No collateral.
    let ev = Evidence::from_tdx_quote(QUOTE.to_vec(), Vec::new()).unwrap();
    let err = TdxVerifier::new().verify(&ev, NOW).unwrap_err();
    assert!(matches!(err, Error::BadCollateral(_)), "{err}");
    // After the collateral expired (2025-08-01).
    assert!(TdxVerifier::new()
        .verify(&evidence(), 1_754_006_400)
        .is_err());
}

#[test]
fn registry_dispatches_and_refuses_missing_verifiers() {
    let ev = evidence();
    let none = Verifiers::default();
    assert!(matches!(
        none.verify(&ev, NOW),
        Err(Error::NoVerifier(PlatformKind::TdxDcap))
    ));
    // The SGX verifier refuses TDX evidence by platform.
    let err = hetee_attest::DcapVerifier::new()
        .verify(&ev, NOW)
        .unwrap_err();
    assert!(matches!(err, Error::WrongPlatform { .. }), "{err}");
}
