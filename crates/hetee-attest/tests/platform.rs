//! The real platforms' producers against fake pseudo-file directories: configfs-tsm (TDX and
//! SEV-SNP, fed with the real sample quote/report) and Gramine's `/dev/attestation` (fed with
//! the real SGX sample quote).

use std::fs;
use std::path::Path;

use hetee_attest::evidence::PlatformKind;
use hetee_attest::platform::{self, GramineSgx, Platform, TsmPlatform};
use hetee_attest::Error;

const TDX_QUOTE: &[u8] = include_bytes!("data/tdx_quote");
const SGX_QUOTE: &[u8] = include_bytes!("data/sgx_quote");
#[cfg(feature = "snp")]
const SNP_REPORT_HEX: &str = include_str!("data/snp_report_milan.hex");

#[cfg(feature = "snp")]
fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A configfs-tsm root with a pre-created entry `e` (a real configfs creates the files on mkdir).
fn fake_tsm(root: &Path, provider: &str, outblob: &[u8], auxblob: Option<&[u8]>) {
    let e = root.join("e");
    fs::create_dir_all(&e).unwrap();
    fs::write(e.join("provider"), format!("{provider}\n")).unwrap();
    fs::write(e.join("generation"), "7\n").unwrap();
    fs::write(e.join("outblob"), outblob).unwrap();
    if let Some(a) = auxblob {
        fs::write(e.join("auxblob"), a).unwrap();
    }
}

fn platform_error(r: Result<impl Sized, Error>) -> String {
    match r {
        Err(Error::Platform(m)) => m,
        Err(e) => panic!("not a platform error: {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn tsm_tdx_writes_the_report_data_and_returns_the_quote() {
    let t = tempfile::tempdir().unwrap();
    fake_tsm(t.path(), "tdx_guest", TDX_QUOTE, None);
    let p = TsmPlatform::open_at(t.path(), Some("e")).unwrap();
    assert_eq!(p.kind(), PlatformKind::TdxDcap);
    let expected = hetee_attest::layout::tdx_quote_fields(TDX_QUOTE).unwrap();
    assert_eq!(p.measurement(), expected.measurement);

    let ev = p.evidence(&expected.report_data).unwrap();
    assert_eq!(
        fs::read(t.path().join("e/inblob")).unwrap(),
        expected.report_data
    );
    assert_eq!(ev.proof, TDX_QUOTE);
    assert!(ev.collateral.is_empty());
    assert_eq!(ev.platform, PlatformKind::TdxDcap);

    // The fake's quote does not carry this report data: refused, not silently returned.
    let m = platform_error(p.evidence(&[9; 64]));
    assert!(m.contains("other report data"), "{m}");
    assert_eq!(fs::read(t.path().join("e/inblob")).unwrap(), [9u8; 64]);

    let m = platform_error(p.sealing_key());
    assert!(m.contains("TDX has no sealing key"), "{m}");
}

#[cfg(feature = "snp")]
#[test]
fn tsm_snp_evidence_carries_the_auxblob_and_verifies() {
    use hetee_attest::layout::{snp_cert_table, SnpCertKind};
    use hetee_attest::verify::{EvidenceVerifier, SnpVerifier};
    let report = unhex(SNP_REPORT_HEX);
    let table = snp_cert_table(&[(SnpCertKind::Vcek, include_bytes!("data/snp_vcek_milan.der"))]);
    let t = tempfile::tempdir().unwrap();
    fake_tsm(t.path(), "sev_guest", &report, Some(&table));
    let p = TsmPlatform::open_at(t.path(), Some("e")).unwrap();
    assert_eq!(p.kind(), PlatformKind::SevSnp);
    let rd = hetee_attest::layout::snp_report_fields(&report)
        .unwrap()
        .report_data;
    let ev = p.evidence(&rd).unwrap();
    assert_eq!(fs::read(t.path().join("e/inblob")).unwrap(), rd);
    assert_eq!(ev.proof, report);
    assert_eq!(ev.collateral, table);
    let r = SnpVerifier::new().verify(&ev, 1_751_328_000).unwrap();
    assert_eq!(r.measurement, p.measurement());
    assert!(platform_error(p.sealing_key()).contains("SNP_GET_DERIVED_KEY"));
}

#[test]
fn tsm_missing_or_wrong_directories_give_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let m = platform_error(TsmPlatform::open_at(t.path().join("nope"), None));
    assert!(
        m.contains("is not a directory") && m.contains("TDX or SEV-SNP"),
        "{m}"
    );
    // A root without a working entry (a fresh entry gets no files from a plain directory).
    let m = platform_error(TsmPlatform::open_at(t.path(), None));
    assert!(m.contains("configfs-tsm"), "{m}");
    // An unknown provider.
    fake_tsm(t.path(), "arm_cca_guest", TDX_QUOTE, None);
    let m = platform_error(TsmPlatform::open_at(t.path(), Some("e")));
    assert!(m.contains("not supported"), "{m}");
    // A garbage outblob is an error, not a panic.
    fake_tsm(t.path(), "tdx_guest", b"garbage", None);
    assert!(TsmPlatform::open_at(t.path(), Some("e")).is_err());
}

/// A Gramine `/dev/attestation` with the SGX sample quote and a 16-byte MRENCLAVE key.
fn fake_gramine(root: &Path, with_target_info: bool) {
    fs::create_dir_all(root.join("keys")).unwrap();
    fs::write(root.join("attestation_type"), "dcap").unwrap();
    fs::write(root.join("quote"), SGX_QUOTE).unwrap();
    fs::write(root.join("keys/_sgx_mrenclave"), [0x5a; 16]).unwrap();
    if with_target_info {
        let f = hetee_attest::layout::sgx_quote_fields(SGX_QUOTE).unwrap();
        let mut ti = vec![0u8; 512];
        ti[..32].copy_from_slice(f.measurement.as_bytes());
        ti[32] = 0x05; // INIT | MODE64, not DEBUG
        fs::write(root.join("my_target_info"), ti).unwrap();
    }
}

#[test]
fn gramine_writes_the_report_data_and_returns_the_quote() {
    let f = hetee_attest::layout::sgx_quote_fields(SGX_QUOTE).unwrap();
    for with_target_info in [true, false] {
        let t = tempfile::tempdir().unwrap();
        fake_gramine(t.path(), with_target_info);
        let p = GramineSgx::open_at(t.path()).unwrap();
        assert_eq!(p.kind(), PlatformKind::SgxDcap);
        assert_eq!(p.measurement(), f.measurement);
        assert!(!p.debug());
        let ev = p.evidence(&f.report_data).unwrap();
        assert_eq!(
            fs::read(t.path().join("user_report_data")).unwrap(),
            f.report_data
        );
        assert_eq!(ev.proof, SGX_QUOTE);
        assert_eq!(ev.measurement, f.measurement);
        let m = platform_error(p.evidence(&[1; 64]));
        assert!(m.contains("other report data"), "{m}");
    }
}

#[test]
fn gramine_sealing_key_is_expanded_and_bound() {
    let t = tempfile::tempdir().unwrap();
    fake_gramine(t.path(), true);
    let p = GramineSgx::open_at(t.path()).unwrap();
    let k1 = p.sealing_key().unwrap();
    assert_eq!(*k1, *p.sealing_key().unwrap());
    assert_ne!(&k1[..16], &[0x5a; 16]);
    fs::write(t.path().join("keys/_sgx_mrenclave"), [0x5b; 16]).unwrap();
    assert_ne!(*k1, *p.sealing_key().unwrap());
    fs::write(t.path().join("keys/_sgx_mrenclave"), [0x5b; 32]).unwrap();
    assert!(platform_error(p.sealing_key()).contains("16-byte"));
    fs::remove_file(t.path().join("keys/_sgx_mrenclave")).unwrap();
    assert!(platform_error(p.sealing_key()).contains("_sgx_mrenclave"));
}

#[test]
fn gramine_missing_dir_or_wrong_attestation_type() {
    let t = tempfile::tempdir().unwrap();
    let m = platform_error(GramineSgx::open_at(t.path().join("nope")));
    assert!(m.contains("gramine-sgx"), "{m}");
    fake_gramine(t.path(), true);
    fs::write(t.path().join("attestation_type"), "none\n").unwrap();
    let m = platform_error(GramineSgx::open_at(t.path()));
    assert!(m.contains("remote_attestation"), "{m}");
}

#[test]
fn open_by_name() {
    let m = platform_error(platform::open("tpm", b""));
    assert!(m.contains("sim, gramine, tdx, snp, tsm"), "{m}");
    let sim = platform::open("sim", b"cfg").unwrap();
    assert_eq!(sim.kind(), PlatformKind::Sim);
    // No configfs-tsm or /dev/attestation on a build machine: clear errors, not panics.
    if !Path::new(platform::tsm::TSM_REPORT_ROOT).exists() {
        assert!(platform_error(platform::open("tdx", b"")).contains("configfs-tsm"));
    }
    if !Path::new(platform::gramine::GRAMINE_ATTESTATION_ROOT).exists() {
        assert!(platform_error(platform::open("gramine", b"")).contains("gramine"));
    }
}
