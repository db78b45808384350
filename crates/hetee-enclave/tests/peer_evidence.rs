//! The enclave's check of a real-TEE peer's evidence (`peer_check`), on the
//! public sample quotes and report in `crates/hetee-attest/tests/data/`
//! (see its README), offline, with the clock pinned inside their validity.
//! With the sample's own measurement, a wrong expected report data fails on
//! the report data, which the policy checks last: the signature chain was
//! verified first. A wrong measurement fails on the measurement, a tampered
//! quote on the signature, another platform kind before anything else.

use hetee_attest::layout::{snp_cert_table, SnpCertKind};
use hetee_attest::verify::{DcapVerifier, Verifiers};
use hetee_attest::{Error, Evidence, Measurement, PlatformKind};
use hetee_enclave::peer_check::{check_peer_evidence, peer_verifiers, PeerRefused};

const SGX_QUOTE: &[u8] = include_bytes!("../../hetee-attest/tests/data/sgx_quote");
const SGX_COLLATERAL: &[u8] =
    include_bytes!("../../hetee-attest/tests/data/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("../../hetee-attest/tests/data/tdx_quote");
const TDX_COLLATERAL: &[u8] =
    include_bytes!("../../hetee-attest/tests/data/tdx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("../../hetee-attest/tests/data/snp_report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../../hetee-attest/tests/data/snp_vcek_milan.der");

/// 2025-07-01T00:00:00Z: inside every sample's validity window.
const NOW: u64 = 1_751_328_000;
/// 2025-08-01T00:00:00Z: the DCAP collateral has expired.
const EXPIRED: u64 = 1_754_006_400;

/// MRENCLAVE of the SGX sample; its report data is "Hello, world!" padded.
const SGX_MEASUREMENT: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
/// The SGX sample's TCB status, which the production verifier refuses.
const SGX_STATUS: &str = "ConfigurationAndSWHardeningNeeded";
/// hetee's measurement of the TDX sample.
const TDX_MEASUREMENT: &str = "c8f221d887026f221adec49edbfcaf66fc1b6df78d510f9f44b47aed298a60d5";
/// hetee's measurement of the SEV-SNP sample.
const SNP_MEASUREMENT: &str = "1f20abfeed953c9c9fbde20ff5c95ca280f09af23a5599f95c47ff5d1a53b51c";
/// Offset of the TDX quote's ECDSA signature (header 48 + TD report 584 + length 4).
const TDX_SIGNATURE_AT: usize = 636;
/// Offset of the SEV-SNP report's signature (R).
const SNP_SIGNATURE_AT: usize = 0x2A0;

fn sgx(quote: Vec<u8>) -> Vec<u8> {
    let ev = Evidence::from_dcap_quote(quote, SGX_COLLATERAL.to_vec()).unwrap();
    ev.encode().unwrap()
}

fn tdx(quote: Vec<u8>) -> Vec<u8> {
    let ev = Evidence::from_tdx_quote(quote, TDX_COLLATERAL.to_vec()).unwrap();
    ev.encode().unwrap()
}

fn snp_report() -> Vec<u8> {
    let s = SNP_REPORT_HEX.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The SEV-SNP report with its VCEK (the pinned Milan ASK and ARK complete
/// the chain).
fn snp(report: Vec<u8>) -> Vec<u8> {
    let table = snp_cert_table(&[(SnpCertKind::Vcek, SNP_VCEK)]);
    Evidence::from_snp_report(report, table)
        .unwrap()
        .encode()
        .unwrap()
}

/// The report data an evidence binds.
fn bound(evidence: &[u8]) -> [u8; 64] {
    Evidence::decode(evidence).unwrap().report_data
}

fn m(hex: &str) -> Measurement {
    hex.parse().unwrap()
}

/// Production verifiers, but accepting the SGX sample's TCB status.
fn with_sgx_sample_status() -> Verifiers {
    Verifiers {
        dcap: Some(DcapVerifier::new().accept_tcb_status(SGX_STATUS)),
        ..peer_verifiers()
    }
}

fn refused(r: Result<hetee_attest::VerifiedReport, PeerRefused>) -> Error {
    match r {
        Err(PeerRefused::Refused(e)) => e,
        other => panic!("expected a refusal by the verifier or policy, got {other:?}"),
    }
}

/// The four checks on one platform's sample: accepted as it is; a wrong
/// report data, a wrong measurement and a flipped signature byte each
/// refused for their own reason.
fn check_sample(
    v: &Verifiers,
    own: PlatformKind,
    measurement: Measurement,
    evidence: &[u8],
    tampered: &[u8],
) {
    let want = bound(evidence);
    let r = check_peer_evidence(v, own, measurement, evidence, &want, NOW).unwrap();
    assert_eq!((r.platform, r.measurement), (own, measurement));

    let mut wrong = want;
    wrong[0] ^= 1;
    let e = refused(check_peer_evidence(
        v,
        own,
        measurement,
        evidence,
        &wrong,
        NOW,
    ));
    assert!(
        matches!(e, Error::ReportDataMismatch { .. }),
        "{own:?}: {e}"
    );

    let mut other = measurement;
    other.0[31] ^= 1;
    let e = refused(check_peer_evidence(v, own, other, evidence, &want, NOW));
    assert!(
        matches!(e, Error::MeasurementMismatch { .. }),
        "{own:?}: {e}"
    );

    let e = refused(check_peer_evidence(
        v,
        own,
        measurement,
        tampered,
        &want,
        NOW,
    ));
    assert!(matches!(e, Error::BadSignature(_)), "{own:?}: {e}");
}

#[test]
fn attack_a_tdx_peer_with_another_measurement_report_data_or_signature_is_refused() {
    let evidence = tdx(TDX_QUOTE.to_vec());
    let mut q = TDX_QUOTE.to_vec();
    q[TDX_SIGNATURE_AT + 5] ^= 1;
    let v = peer_verifiers();
    check_sample(
        &v,
        PlatformKind::TdxDcap,
        m(TDX_MEASUREMENT),
        &evidence,
        &tdx(q),
    );
    // The host's clock is what collateral expiry is checked against.
    let want = bound(&evidence);
    let e = refused(check_peer_evidence(
        &v,
        PlatformKind::TdxDcap,
        m(TDX_MEASUREMENT),
        &evidence,
        &want,
        EXPIRED,
    ));
    assert!(!matches!(e, Error::ReportDataMismatch { .. }), "{e}");
}

#[test]
fn attack_an_sgx_peer_with_another_measurement_report_data_or_signature_is_refused() {
    let evidence = sgx(SGX_QUOTE.to_vec());
    let mut q = SGX_QUOTE.to_vec();
    // The quote's ECDSA signature follows the header (48) and report (384)
    // and its length (4).
    q[48 + 384 + 4 + 5] ^= 1;
    check_sample(
        &with_sgx_sample_status(),
        PlatformKind::SgxDcap,
        m(SGX_MEASUREMENT),
        &evidence,
        &sgx(q),
    );
    // The production verifier itself accepts only up-to-date TCBs: the
    // sample's is refused after its chain verified.
    let want = bound(&evidence);
    let e = refused(check_peer_evidence(
        &peer_verifiers(),
        PlatformKind::SgxDcap,
        m(SGX_MEASUREMENT),
        &evidence,
        &want,
        NOW,
    ));
    assert!(matches!(e, Error::TcbNotAccepted { .. }), "{e}");
}

#[test]
fn attack_an_sev_snp_peer_with_another_measurement_report_data_or_signature_is_refused() {
    let report = snp_report();
    let mut r = report.clone();
    r[SNP_SIGNATURE_AT + 3] ^= 1;
    check_sample(
        &peer_verifiers(),
        PlatformKind::SevSnp,
        m(SNP_MEASUREMENT),
        &snp(report),
        &snp(r),
    );
}

#[test]
fn attack_a_peer_on_another_platform_or_with_garbage_is_refused_first() {
    let evidence = tdx(TDX_QUOTE.to_vec());
    let want = bound(&evidence);
    let v = peer_verifiers();
    for own in [
        PlatformKind::SevSnp,
        PlatformKind::SgxDcap,
        PlatformKind::Sim,
    ] {
        match check_peer_evidence(&v, own, m(TDX_MEASUREMENT), &evidence, &want, NOW) {
            Err(PeerRefused::OtherPlatform { peer, own: o }) => {
                assert_eq!((peer, o), (PlatformKind::TdxDcap, own))
            }
            other => panic!("{own:?}: {other:?}"),
        }
    }
    let r = check_peer_evidence(
        &v,
        PlatformKind::TdxDcap,
        m(TDX_MEASUREMENT),
        b"junk",
        &want,
        NOW,
    );
    assert!(matches!(r, Err(PeerRefused::Malformed(_))), "{r:?}");
}
