//! Offline verification of a real Intel SGX DCAP quote (the sample shipped with dcap-qvl 0.7.1,
//! see tests/data/README.md), with `now` pinned inside the collateral's validity window.
#![cfg(feature = "dcap")]

use hetee_attest::evidence::{Evidence, Measurement, PlatformKind};
use hetee_attest::verify::{DcapVerifier, EvidenceVerifier, Policy, SimVerifier, Verifiers};
use hetee_attest::Error;

const QUOTE: &[u8] = include_bytes!("data/sgx_quote");
const COLLATERAL: &[u8] = include_bytes!("data/sgx_quote_collateral.json");

/// 2025-07-01T00:00:00Z: inside every validity window of the sample collateral
/// (TCB info and QE identity 2025-06-19..2025-07-19, PCK CRL 2025-06-19..2025-07-19,
/// root CA CRL 2025-03-20..2026-04-03).
const NOW: u64 = 1_751_328_000;
/// 2025-08-01T00:00:00Z: after the TCB info, QE identity and PCK CRL expired.
const EXPIRED: u64 = 1_754_006_400;

/// MRENCLAVE of the sample quote.
const MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
/// The sample's status; a strict verifier refuses it.
const SAMPLE_STATUS: &str = "ConfigurationAndSWHardeningNeeded";

fn evidence() -> Evidence {
    Evidence::from_dcap_quote(QUOTE.to_vec(), COLLATERAL.to_vec()).unwrap()
}

fn verifier() -> DcapVerifier {
    DcapVerifier::new().accept_tcb_status(SAMPLE_STATUS)
}

fn sample_report_data() -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..13].copy_from_slice(b"Hello, world!");
    rd
}

#[test]
fn extracts_fields_from_the_quote() {
    let ev = evidence();
    assert_eq!(ev.platform, PlatformKind::SgxDcap);
    assert_eq!(ev.measurement, MRENCLAVE.parse::<Measurement>().unwrap());
    assert!(!ev.debug);
    assert_eq!(ev.report_data, sample_report_data());
    // The encoding carries quote and collateral and round-trips.
    let enc = ev.encode().unwrap();
    assert_eq!(Evidence::decode(&enc).unwrap(), ev);
}

#[test]
fn verifies_the_real_sample_quote_offline() {
    let r = verifier().verify(&evidence(), NOW).unwrap();
    assert_eq!(r.platform, PlatformKind::SgxDcap);
    assert_eq!(r.measurement.to_hex(), MRENCLAVE);
    assert!(!r.debug);
    assert_eq!(r.report_data, sample_report_data());
    assert_eq!(r.tcb_status.as_deref(), Some(SAMPLE_STATUS));
    assert_eq!(r.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);

    // Through the policy, with the dispatching verifier.
    let v = Verifiers {
        dcap: Some(verifier()),
        ..Verifiers::default()
    }
    .with_sim(SimVerifier::dev());
    let policy = Policy::new(MRENCLAVE.parse().unwrap());
    let r = policy
        .check(&v, &evidence(), &sample_report_data(), NOW)
        .unwrap();
    assert_eq!(r.measurement.to_hex(), MRENCLAVE);
}

#[test]
fn strict_tcb_status_is_refused_by_default() {
    let err = DcapVerifier::new().verify(&evidence(), NOW).unwrap_err();
    match &err {
        Error::TcbNotAccepted { status, advisories } => {
            assert_eq!(status, SAMPLE_STATUS);
            assert!(advisories.iter().any(|a| a == "INTEL-SA-00615"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("accept_tcb_status"));
}

/// Every bit-0 flip in the signed and parsed part of the quote must fail: header (0..48),
/// enclave report (48..432), ISV signature, attestation key, QE report, QE report signature,
/// QE auth data and certification-data header (..1052); and flips inside the PCK leaf and
/// intermediate certificates (PEM at 1052..3625).
///
/// Not covered, on purpose: the Intel root certificate embedded at the end of the quote
/// (dcap-qvl verifies against its own pinned root, so those bytes are unused), PEM line
/// breaks (whitespace the PEM parser skips), and byte 1049, where the flip shortens the
/// certification-data length by 256 so that only that unused root certificate is cut off.
#[test]
fn flipped_quote_bytes_fail() {
    let base = evidence();
    let positions = (0..1049)
        .chain(1050..1052)
        .chain([1100, 1500, 2000, 2500, 2800, 3000, 3300, 3600]);
    for pos in positions {
        let mut q = QUOTE.to_vec();
        q[pos] ^= 0x01;
        let ev = Evidence {
            proof: q,
            ..base.clone()
        };
        let err = verifier().verify(&ev, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadSignature(_) | Error::EvidenceMismatch(_) | Error::MalformedEvidence(_)
            ),
            "flip at {pos}: {err}"
        );
    }
    // Re-wrapping the flipped quote (so that the header fields match it) still fails.
    let mut q = QUOTE.to_vec();
    q[48 + 64] ^= 0x01; // MRENCLAVE
    let ev = Evidence::from_dcap_quote(q, COLLATERAL.to_vec()).unwrap();
    assert!(matches!(
        verifier().verify(&ev, NOW),
        Err(Error::BadSignature(_))
    ));
    // Truncated quotes are errors, not panics.
    for cut in [0, 47, 48, 431, 432, 1000, QUOTE.len() - 1] {
        let ev = Evidence {
            proof: QUOTE[..cut].to_vec(),
            ..base.clone()
        };
        assert!(verifier().verify(&ev, NOW).is_err(), "cut {cut}");
        assert!(Evidence::from_dcap_quote(QUOTE[..cut].to_vec(), vec![]).is_err() || cut > 432);
    }
}

#[test]
fn header_fields_must_match_the_quote() {
    let mut ev = evidence();
    ev.report_data[0] ^= 1;
    assert!(matches!(
        verifier().verify(&ev, NOW),
        Err(Error::EvidenceMismatch(_))
    ));
    let mut ev = evidence();
    ev.debug = true;
    assert!(matches!(
        verifier().verify(&ev, NOW),
        Err(Error::EvidenceMismatch(_))
    ));
    let mut ev = evidence();
    ev.measurement.0[31] ^= 1;
    assert!(matches!(
        verifier().verify(&ev, NOW),
        Err(Error::EvidenceMismatch(_))
    ));
}

#[test]
fn expired_collateral_and_bad_collateral_fail() {
    assert!(matches!(
        verifier().verify(&evidence(), EXPIRED),
        Err(Error::BadSignature(_))
    ));
    let ev = Evidence {
        collateral: b"{not json".to_vec(),
        ..evidence()
    };
    assert!(matches!(
        verifier().verify(&ev, NOW),
        Err(Error::BadCollateral(_))
    ));
    // Tampered TCB info inside otherwise valid JSON: its Intel signature no longer verifies.
    let text = String::from_utf8(COLLATERAL.to_vec()).unwrap();
    let tampered = text.replacen("\\\"version\\\":3", "\\\"version\\\":4", 1);
    assert_ne!(
        text, tampered,
        "the sample must contain the TCB info version"
    );
    let ev = Evidence {
        collateral: tampered.into_bytes(),
        ..evidence()
    };
    assert!(verifier().verify(&ev, NOW).is_err());
}

#[test]
fn policy_refusals_on_real_evidence() {
    let ev = evidence();
    let wrong = Policy::new(Measurement([0; 32]));
    let err = wrong
        .check(&verifier(), &ev, &sample_report_data(), NOW)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(MRENCLAVE) && msg.contains(&"00".repeat(32)),
        "{msg}"
    );

    let policy = Policy::new(MRENCLAVE.parse().unwrap());
    let err = policy.check(&verifier(), &ev, &[0; 64], NOW).unwrap_err();
    assert!(matches!(err, Error::ReportDataMismatch { .. }), "{err}");

    // The sim verifier does not accept DCAP evidence, and vice versa.
    assert!(matches!(
        SimVerifier::dev().verify(&ev, NOW),
        Err(Error::WrongPlatform { .. })
    ));
    // A verifier pinning another root CA refuses the chain.
    let other_root = DcapVerifier::with_root_ca_der(vec![0x30, 0x03, 0x02, 0x01, 0x00])
        .accept_tcb_status(SAMPLE_STATUS);
    assert!(other_root.verify(&ev, NOW).is_err());
}
