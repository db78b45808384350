//! Attestation evidence: `Evidence::decode`, then re-encoding, hashing and
//! the acceptance policy with the simulated and the DCAP verifiers; the
//! bytes are also parsed as a raw DCAP quote (`Evidence::from_dcap_quote`)
//! and verified as one with the sample collateral's shape.
#![no_main]

use hetee_attest::verify::EvidenceVerifier;
use hetee_attest::{DcapVerifier, Evidence, PlatformKind, Policy, SimVerifier, Verifiers};
use libfuzzer_sys::fuzz_target;

/// 2025-07-01, inside the validity window of dcap-qvl's sample collateral.
const NOW: u64 = 1_751_328_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = Evidence::decode(data) {
        // The decoder is strict: whatever it accepts is the canonical encoding.
        let enc = ev.encode().expect("decoded evidence must re-encode");
        assert_eq!(enc, data, "decode accepted a non-canonical encoding");
        assert!(ev.hash().is_ok());
        let policy = Policy {
            expected_measurement: ev.measurement,
            allow_sim: true,
            allow_debug: true,
        };
        let _ = policy.check(&SimVerifier::dev(), &ev, &ev.report_data, NOW);
        let verifiers = Verifiers {
            sim: Some(SimVerifier::dev()),
            dcap: Some(DcapVerifier::new()),
        };
        let _ = policy.check(&verifiers, &ev, &ev.report_data, NOW);
        let _ =
            Policy::new(ev.measurement).check_bound(&verifiers, &ev, &[0; 32], &[0; 32], b"", NOW);
    }

    // The bytes as a raw DCAP quote: parse (unverified) and verify.
    if let Ok(ev) = Evidence::from_dcap_quote(data.to_vec(), Vec::new()) {
        assert_eq!(ev.platform, PlatformKind::SgxDcap);
        let _ = ev.encode();
    }
    if data.len() > 2 {
        // First two bytes: where the quote ends and the collateral JSON starts.
        let cut = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        let (quote, collateral) = data[2..].split_at(cut);
        let ev = Evidence {
            platform: PlatformKind::SgxDcap,
            measurement: hetee_attest::Measurement([0; 32]),
            debug: false,
            report_data: [0; 64],
            proof: quote.to_vec(),
            collateral: collateral.to_vec(),
        };
        let _ = DcapVerifier::new().verify(&ev, NOW);
    }
});
