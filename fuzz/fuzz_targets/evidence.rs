//! Attestation evidence: `Evidence::decode`, then re-encoding, hashing and
//! the acceptance policy with the simulated verifier and the registry of all
//! verifiers (simulated, SGX DCAP, TDX DCAP, SEV-SNP). The bytes are also
//! parsed as a raw SGX/TDX quote and SEV-SNP report (`Evidence::from_*`,
//! unverified), and verified as each platform's proof + collateral:
//! `[kind byte][u16 cut][proof][collateral]` (kind % 3: SGX, TDX, SNP).
#![no_main]

use std::sync::OnceLock;

use hetee_attest::verify::EvidenceVerifier;
use hetee_attest::{Evidence, PlatformKind, Policy, SimVerifier, Verifiers};
use libfuzzer_sys::fuzz_target;

/// 2025-07-01, inside the validity window of the sample collateral
/// (dcap-qvl's SGX and TDX samples, the SEV-SNP Milan certificates).
const NOW: u64 = 1_751_328_000;

fn verifiers() -> &'static Verifiers {
    static V: OnceLock<Verifiers> = OnceLock::new();
    V.get_or_init(|| Verifiers::production().with_sim(SimVerifier::dev()))
}

fuzz_target!(|data: &[u8]| {
    let verifiers = verifiers();
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
        let _ = policy.check(verifiers, &ev, &ev.report_data, NOW);
        let _ =
            Policy::new(ev.measurement).check_bound(verifiers, &ev, &[0; 32], &[0; 32], b"", NOW);
    }

    // The bytes as a raw quote or report: parse (unverified).
    if let Ok(ev) = Evidence::from_dcap_quote(data.to_vec(), Vec::new()) {
        assert_eq!(ev.platform, PlatformKind::SgxDcap);
        let _ = ev.encode();
    }
    if let Ok(ev) = Evidence::from_sgx_quote(data.to_vec(), Vec::new()) {
        assert_eq!(ev.platform, PlatformKind::SgxDcap);
    }
    if let Ok(ev) = Evidence::from_tdx_quote(data.to_vec(), Vec::new()) {
        assert_eq!(ev.platform, PlatformKind::TdxDcap);
        let _ = ev.encode();
    }
    if let Ok(ev) = Evidence::from_snp_report(data.to_vec(), Vec::new()) {
        assert_eq!(ev.platform, PlatformKind::SevSnp);
        let _ = ev.encode();
    }
    let _ = hetee_attest::layout::parse_snp_cert_table(data);

    if data.len() > 3 {
        // [kind][u16 cut][proof][collateral], verified as that platform's evidence.
        let platform = match data[0] % 3 {
            0 => PlatformKind::SgxDcap,
            1 => PlatformKind::TdxDcap,
            _ => PlatformKind::SevSnp,
        };
        let cut = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        let (proof, collateral) = data[3..].split_at(cut);
        let mut ev = Evidence {
            platform,
            measurement: hetee_attest::Measurement([0; 32]),
            debug: false,
            report_data: [0; 64],
            proof: proof.to_vec(),
            collateral: collateral.to_vec(),
        };
        // With the fields the proof claims, so that the verifiers get past
        // the field comparison when the signature holds.
        let claimed = match platform {
            PlatformKind::SgxDcap => Evidence::from_sgx_quote(proof.to_vec(), Vec::new()),
            PlatformKind::TdxDcap => Evidence::from_tdx_quote(proof.to_vec(), Vec::new()),
            _ => Evidence::from_snp_report(proof.to_vec(), Vec::new()),
        };
        if let Ok(c) = claimed {
            ev.measurement = c.measurement;
            ev.debug = c.debug;
            ev.report_data = c.report_data;
        }
        let _ = verifiers.verify(&ev, NOW);
    }
});
