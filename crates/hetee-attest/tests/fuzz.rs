//! Property tests: random or mutated bytes into every decoder must give an error, never a panic;
//! and encoders round-trip.

use std::io::Cursor;

use proptest::prelude::*;

use hetee_attest::channel::{ClientHandshake, EnclaveHandshake, StaticKeypair, Transport};
use hetee_attest::evidence::{measure, Evidence, Measurement, PlatformKind, SimPlatform};
use hetee_attest::frame::FrameCodec;
use hetee_attest::seal::{seal, unseal};
use hetee_attest::verify::{EvidenceVerifier, SimVerifier};

fn transports() -> (Transport, Transport) {
    let key = StaticKeypair::generate().unwrap();
    let (c, m1) = ClientHandshake::new(key.public(), b"p").unwrap();
    let (e, m2) = EnclaveHandshake::respond(&key, b"p", &m1).unwrap();
    let (ct, m3) = c.finish(&m2).unwrap();
    (ct, e.finish(&m3).unwrap())
}

fn arb_evidence() -> impl Strategy<Value = Evidence> {
    (
        prop_oneof![
            Just(PlatformKind::Sim),
            Just(PlatformKind::SgxDcap),
            Just(PlatformKind::TdxDcap),
            Just(PlatformKind::SevSnp)
        ],
        any::<[u8; 32]>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 64),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(platform, m, debug, rd, proof, collateral)| {
            let mut report_data = [0u8; 64];
            report_data.copy_from_slice(&rd);
            match platform {
                PlatformKind::Sim => SimPlatform::dev().issue(Measurement(m), debug, report_data),
                _ => Evidence {
                    platform,
                    measurement: Measurement(m),
                    debug,
                    report_data,
                    proof,
                    collateral,
                },
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frame_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let codec = FrameCodec::new(32);
        let _ = codec.decode(&bytes);
        let _ = codec.read(&mut Cursor::new(&bytes));
        // With a valid magic and version in front, the length and kind paths are exercised too.
        let mut framed = b"HTEE\x01\x00".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = codec.decode(&framed);
        let _ = codec.read(&mut Cursor::new(&framed));
    }

    #[test]
    fn frame_round_trip(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let codec = FrameCodec::new(300);
        let enc = codec.encode(kind, &payload).unwrap();
        let (f, used) = codec.decode(&enc).unwrap();
        prop_assert_eq!(used, enc.len());
        prop_assert_eq!(f.kind, kind);
        prop_assert_eq!(&f.payload, &payload);
        prop_assert_eq!(codec.read(&mut Cursor::new(&enc)).unwrap(), f);
    }

    #[test]
    fn evidence_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Evidence::decode(&bytes);
        let mut prefixed = b"HTEV\x01\x00\x01".to_vec();
        prefixed.extend_from_slice(&bytes);
        if let Ok(ev) = Evidence::decode(&prefixed) {
            // Whatever decodes must re-encode to the same bytes (canonical encoding).
            prop_assert_eq!(ev.encode().unwrap(), prefixed);
            let _ = SimVerifier::dev().verify(&ev, 0);
        }
    }

    #[test]
    fn evidence_round_trip(ev in arb_evidence()) {
        let enc = ev.encode().unwrap();
        let back = Evidence::decode(&enc).unwrap();
        prop_assert_eq!(back.hash().unwrap(), ev.hash().unwrap());
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn mutated_sim_evidence_never_verifies(pos in 0usize..1000, bit in 0u8..8) {
        let ev = SimPlatform::dev().issue(measure(b"b", b"c"), false, [1; 64]);
        let mut enc = ev.encode().unwrap();
        let pos = pos % enc.len();
        enc[pos] ^= 1 << bit;
        if let Ok(bad) = Evidence::decode(&enc) {
            prop_assert!(SimVerifier::dev().verify(&bad, 0).is_err());
        }
    }

    #[test]
    fn measurement_parser_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Measurement>();
    }

    #[test]
    fn unseal_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let m = measure(b"e", b"c");
        prop_assert!(unseal(&[1; 32], &m, "l", &bytes).is_err());
    }

    #[test]
    fn seal_round_trip(pt in proptest::collection::vec(any::<u8>(), 0..500), label in "[a-z-]{0,20}") {
        let m = measure(b"e", b"c");
        let blob = seal(&[1; 32], &m, &label, &pt).unwrap();
        prop_assert_eq!(&unseal(&[1; 32], &m, &label, &blob).unwrap()[..], &pt[..]);
    }

    #[test]
    fn handshake_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = StaticKeypair::generate().unwrap();
        let _ = EnclaveHandshake::respond(&key, b"p", &bytes);
        let (c, _m1) = ClientHandshake::new(key.public(), b"p").unwrap();
        let _ = c.finish(&bytes);
        let (c, m1) = ClientHandshake::new(key.public(), b"p").unwrap();
        let (e, _m2) = EnclaveHandshake::respond(&key, b"p", &m1).unwrap();
        prop_assert!(e.finish(&bytes).is_err());
        drop(c);
    }

    #[test]
    fn transport_open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (_c, mut e) = transports();
        prop_assert!(e.open(&bytes).is_err());
    }

    #[test]
    fn transport_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..5)) {
        let (mut c, mut e) = transports();
        for m in &msgs {
            let ct = c.seal(m).unwrap();
            prop_assert_eq!(ct.len(), Transport::sealed_len(m.len()));
            prop_assert_eq!(&e.open(&ct).unwrap()[..], &m[..]);
        }
    }
}

#[cfg(feature = "dcap")]
mod dcap {
    use super::*;
    use hetee_attest::verify::DcapVerifier;

    const QUOTE: &[u8] = include_bytes!("data/sgx_quote");
    const COLLATERAL: &[u8] = include_bytes!("data/sgx_quote_collateral.json");
    const NOW: u64 = 1_751_328_000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn quote_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Evidence::from_dcap_quote(bytes, Vec::new());
        }

        #[test]
        fn mutated_quote_never_panics(
            edits in proptest::collection::vec((0usize..QUOTE.len(), any::<u8>()), 1..8),
            cut in 0usize..=QUOTE.len(),
        ) {
            let mut q = QUOTE.to_vec();
            for (pos, val) in edits {
                q[pos] = val;
            }
            q.truncate(cut.max(1));
            let _ = Evidence::from_dcap_quote(q.clone(), COLLATERAL.to_vec());
            let ev = Evidence {
                platform: PlatformKind::SgxDcap,
                measurement: Measurement([0; 32]),
                debug: false,
                report_data: [0; 64],
                proof: q,
                collateral: COLLATERAL.to_vec(),
            };
            let _ = DcapVerifier::new().verify(&ev, NOW);
        }

        #[test]
        fn mutated_collateral_never_panics(pos in 0usize..COLLATERAL.len(), val in any::<u8>()) {
            let mut c = COLLATERAL.to_vec();
            c[pos] = val;
            let ev = Evidence::from_dcap_quote(QUOTE.to_vec(), c).unwrap();
            let _ = DcapVerifier::new().verify(&ev, NOW);
        }
    }
}

/// Mutated TDX quotes and SEV-SNP reports/certificate tables never panic the parsers or the
/// verifiers.
#[cfg(all(feature = "tdx", feature = "snp"))]
mod tdx_snp {
    use super::*;
    use hetee_attest::layout::{snp_cert_table, SnpCertKind};
    use hetee_attest::verify::{SnpVerifier, TdxVerifier};

    const TDX: &[u8] = include_bytes!("data/tdx_quote");
    const TDX_COLLATERAL: &[u8] = include_bytes!("data/tdx_quote_collateral.json");
    const VCEK: &[u8] = include_bytes!("data/snp_vcek_milan.der");
    const NOW: u64 = 1_751_328_000;

    fn snp_report() -> Vec<u8> {
        let s = include_str!("data/snp_report_milan.hex").trim();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn raw(platform: PlatformKind, proof: Vec<u8>, collateral: Vec<u8>) -> Evidence {
        Evidence {
            platform,
            measurement: Measurement([0; 32]),
            debug: false,
            report_data: [0; 64],
            proof,
            collateral,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn mutated_tdx_quote_never_panics(
            edits in proptest::collection::vec((0usize..TDX.len(), any::<u8>()), 1..8),
            cut in 0usize..=TDX.len(),
        ) {
            let mut q = TDX.to_vec();
            for (pos, val) in edits {
                q[pos] = val;
            }
            q.truncate(cut);
            let _ = Evidence::from_tdx_quote(q.clone(), TDX_COLLATERAL.to_vec());
            let ev = raw(PlatformKind::TdxDcap, q, TDX_COLLATERAL.to_vec());
            let _ = TdxVerifier::new().verify(&ev, NOW);
        }

        #[test]
        fn mutated_snp_report_and_table_never_panic(
            edits in proptest::collection::vec((0usize..0x4A0, any::<u8>()), 1..8),
            table_edits in proptest::collection::vec((0usize..VCEK.len() + 48, any::<u8>()), 0..4),
            cut in 0usize..=VCEK.len() + 48,
        ) {
            let mut r = snp_report();
            for (pos, val) in edits {
                r[pos] = val;
            }
            let mut t = snp_cert_table(&[(SnpCertKind::Vcek, VCEK)]);
            for (pos, val) in table_edits {
                if let Some(b) = t.get_mut(pos) {
                    *b = val;
                }
            }
            t.truncate(cut);
            let _ = Evidence::from_snp_report(r.clone(), t.clone());
            let ev = raw(PlatformKind::SevSnp, r, t);
            let _ = SnpVerifier::new().verify(&ev, NOW);
        }
    }
}
