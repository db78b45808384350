//! Verifying evidence and deciding whether to trust it.
//!
//! A verifier ([`EvidenceVerifier`]) checks that evidence is authentic (signature chain to a
//! pinned root) and returns what it attests ([`VerifiedReport`]). A [`Policy`] then decides
//! whether that is acceptable: not simulated and not debug unless explicitly allowed, the
//! expected measurement, and report data that binds the keys the client is about to use.
//!
//! One module per platform, and [`Verifiers`] picks by [`PlatformKind`]:
//! - [`sim`]: [`SimVerifier`], an Ed25519 signature under a pinned root;
//! - `dcap` (feature `dcap`, and `tdx` for TDX): `DcapVerifier` for SGX and `TdxVerifier` for
//!   TDX quotes, with dcap-qvl;
//! - `snp` (feature `snp`): `SnpVerifier` for AMD SEV-SNP reports, with the `sev` crate.
//!
//! Adding a platform: a `PlatformKind`, a producer in [`crate::platform`], a verifier module
//! here, and its field in [`Verifiers`] (the `match` there is exhaustive, so the compiler points
//! at the one place to wire it).

use crate::error::{Error, Result};
use crate::evidence::{hex, Evidence, Measurement, PlatformKind};
use crate::layout::ReportFields;

#[cfg(feature = "dcap")]
pub mod dcap;
pub mod sim;
#[cfg(feature = "snp")]
pub mod snp;

#[cfg(feature = "dcap")]
pub(crate) use dcap::sgx_fields_unverified;
#[cfg(feature = "dcap")]
pub use dcap::DcapVerifier;
#[cfg(feature = "tdx")]
pub use dcap::TdxVerifier;
pub use sim::SimVerifier;
#[cfg(feature = "snp")]
pub use snp::SnpVerifier;

/// What a verifier established from authentic evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The platform that signed the evidence.
    pub platform: PlatformKind,
    /// The measured code (see [`crate::layout`] for each platform's mapping).
    pub measurement: Measurement,
    /// Whether the enclave runs in debug mode.
    pub debug: bool,
    /// The report data signed into the evidence.
    pub report_data: [u8; 64],
    /// The platform's TCB status: DCAP's (e.g. `"UpToDate"`), or for SEV-SNP the reported TCB
    /// the VCEK is certified for (e.g. `"bootloader=3 tee=0 snp=8 microcode=115"`).
    pub tcb_status: Option<String>,
    /// Intel security advisories that apply to the platform (DCAP only).
    pub advisory_ids: Vec<String>,
}

/// Checks that evidence is authentic and extracts what it attests.
pub trait EvidenceVerifier {
    /// Verifies `ev` at time `now_unix` (seconds since the Unix epoch; used for certificate,
    /// CRL and collateral validity). Does not apply any policy beyond authenticity.
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport>;
}

/// Checks that the evidence's plain fields equal those of the verified report.
#[cfg_attr(not(any(feature = "dcap", feature = "snp")), allow(dead_code))]
pub(crate) fn check_fields(ev: &Evidence, f: &ReportFields) -> Result<()> {
    if f.measurement != ev.measurement {
        return Err(Error::EvidenceMismatch(format!(
            "measurement field {} but the signed report gives {}",
            ev.measurement, f.measurement
        )));
    }
    if f.debug != ev.debug {
        return Err(Error::EvidenceMismatch(format!(
            "debug field {} but the signed report says {}",
            ev.debug, f.debug
        )));
    }
    if f.report_data != ev.report_data {
        return Err(Error::EvidenceMismatch(format!(
            "report data field {} but the signed report has {}",
            hex(&ev.report_data),
            hex(&f.report_data)
        )));
    }
    Ok(())
}

/// The verifier registry: one optional verifier per platform, picked by the evidence's
/// [`PlatformKind`]; a platform without a verifier (or compiled out) is refused with
/// [`Error::NoVerifier`].
#[derive(Default)]
pub struct Verifiers {
    /// Verifier for simulated evidence, if accepted at all.
    pub sim: Option<SimVerifier>,
    /// Verifier for SGX DCAP evidence.
    #[cfg(feature = "dcap")]
    pub dcap: Option<DcapVerifier>,
    /// Verifier for TDX DCAP evidence.
    #[cfg(feature = "tdx")]
    pub tdx: Option<TdxVerifier>,
    /// Verifier for AMD SEV-SNP evidence.
    #[cfg(feature = "snp")]
    pub snp: Option<SnpVerifier>,
}

impl Verifiers {
    /// Every real platform compiled in, each pinning its vendor's production root (Intel's SGX
    /// root CA; AMD's Milan, Genoa and Turin ARKs) and accepting only up-to-date DCAP TCBs. No
    /// simulated verifier: add one with [`with_sim`](Self::with_sim) for testing.
    pub fn production() -> Self {
        Self {
            sim: None,
            #[cfg(feature = "dcap")]
            dcap: Some(DcapVerifier::new()),
            #[cfg(feature = "tdx")]
            tdx: Some(TdxVerifier::new()),
            #[cfg(feature = "snp")]
            snp: Some(SnpVerifier::new()),
        }
    }

    /// Also verifies simulated evidence with `sim` (the [`Policy`] still refuses it unless
    /// `allow_sim` is set).
    pub fn with_sim(mut self, sim: SimVerifier) -> Self {
        self.sim = Some(sim);
        self
    }

    /// The verifier configured for `kind`, if any.
    pub fn get(&self, kind: PlatformKind) -> Option<&dyn EvidenceVerifier> {
        fn dyn_ref<V: EvidenceVerifier>(v: &Option<V>) -> Option<&dyn EvidenceVerifier> {
            v.as_ref().map(|v| v as &dyn EvidenceVerifier)
        }
        match kind {
            PlatformKind::Sim => dyn_ref(&self.sim),
            #[cfg(feature = "dcap")]
            PlatformKind::SgxDcap => dyn_ref(&self.dcap),
            #[cfg(feature = "tdx")]
            PlatformKind::TdxDcap => dyn_ref(&self.tdx),
            #[cfg(feature = "snp")]
            PlatformKind::SevSnp => dyn_ref(&self.snp),
            #[allow(unreachable_patterns)] // reached when a verifier feature is off
            _ => None,
        }
    }
}

impl EvidenceVerifier for Verifiers {
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
        self.get(ev.platform)
            .ok_or(Error::NoVerifier(ev.platform))?
            .verify(ev, now_unix)
    }
}

/// Which evidence a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The measurement of the published enclave build.
    pub expected_measurement: Measurement,
    /// Accept evidence from the simulated platform (testing only: it protects nothing).
    pub allow_sim: bool,
    /// Accept debug enclaves (testing only: the host can read their memory).
    pub allow_debug: bool,
}

impl Policy {
    /// The strict policy: real platform, production enclave, this measurement.
    pub fn new(expected_measurement: Measurement) -> Self {
        Self {
            expected_measurement,
            allow_sim: false,
            allow_debug: false,
        }
    }

    /// Verifies `ev` with `verifier` and applies the policy; `expected_report_data` is what the
    /// client computed with [`report_data`](crate::evidence::report_data) from the channel key
    /// and HE public key it was given alongside the evidence.
    ///
    /// Checks in order: simulated platform refused unless allowed; authenticity (signature or
    /// quote chain); debug refused unless allowed; measurement; report data.
    pub fn check(
        &self,
        verifier: &dyn EvidenceVerifier,
        ev: &Evidence,
        expected_report_data: &[u8; 64],
        now_unix: u64,
    ) -> Result<VerifiedReport> {
        if ev.platform == PlatformKind::Sim && !self.allow_sim {
            return Err(Error::SimNotAllowed);
        }
        let report = verifier.verify(ev, now_unix)?;
        if report.platform == PlatformKind::Sim && !self.allow_sim {
            return Err(Error::SimNotAllowed);
        }
        if report.debug && !self.allow_debug {
            return Err(Error::DebugNotAllowed);
        }
        if report.measurement != self.expected_measurement {
            return Err(Error::MeasurementMismatch {
                expected: self.expected_measurement.to_hex(),
                found: report.measurement.to_hex(),
            });
        }
        if &report.report_data != expected_report_data {
            return Err(Error::ReportDataMismatch {
                expected: hex(expected_report_data),
                found: hex(&report.report_data),
            });
        }
        Ok(report)
    }

    /// [`check`](Self::check) with the report data computed from the keys the enclave claims.
    pub fn check_bound(
        &self,
        verifier: &dyn EvidenceVerifier,
        ev: &Evidence,
        channel_pubkey: &[u8; 32],
        he_public_key_hash: &[u8; 32],
        he_params: &[u8],
        now_unix: u64,
    ) -> Result<VerifiedReport> {
        let rd = crate::evidence::report_data(channel_pubkey, he_public_key_hash, he_params);
        self.check(verifier, ev, &rd, now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{measure, report_data, SimPlatform};

    fn setup() -> (Evidence, Measurement, [u8; 64]) {
        let m = measure(b"enclave-bin", b"cfg");
        let rd = report_data(&[1; 32], &[2; 32], b"bfv");
        (SimPlatform::dev().issue(m, false, rd), m, rd)
    }

    fn sim_policy(m: Measurement) -> Policy {
        Policy {
            allow_sim: true,
            ..Policy::new(m)
        }
    }

    #[test]
    fn accepts_good_sim_evidence_when_allowed() {
        let (ev, m, rd) = setup();
        let r = sim_policy(m)
            .check(&SimVerifier::dev(), &ev, &rd, 0)
            .unwrap();
        assert_eq!(
            (r.platform, r.measurement, r.debug),
            (PlatformKind::Sim, m, false)
        );
        let r = sim_policy(m)
            .check_bound(&SimVerifier::dev(), &ev, &[1; 32], &[2; 32], b"bfv", 0)
            .unwrap();
        assert_eq!(r.report_data, rd);
    }

    #[test]
    fn refuses_sim_by_default_with_the_documented_message() {
        let (ev, m, rd) = setup();
        let err = Policy::new(m)
            .check(&SimVerifier::dev(), &ev, &rd, 0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "evidence is from the simulated platform, which protects nothing; pass --allow-sim to accept it for testing"
        );
    }

    #[test]
    fn refuses_bad_signature_and_wrong_root() {
        let (ev, m, rd) = setup();
        for i in [0usize, 13, 63] {
            let mut bad = ev.clone();
            bad.proof[i] ^= 1;
            let err = sim_policy(m)
                .check(&SimVerifier::dev(), &bad, &rd, 0)
                .unwrap_err();
            assert!(matches!(err, Error::BadSignature(_)), "{err}");
        }
        // Changing any signed field breaks the signature.
        let mut bad = ev.clone();
        bad.debug = true;
        assert!(matches!(
            SimVerifier::dev().verify(&bad, 0),
            Err(Error::BadSignature(_))
        ));
        let mut bad = ev.clone();
        bad.measurement.0[0] ^= 1;
        assert!(matches!(
            SimVerifier::dev().verify(&bad, 0),
            Err(Error::BadSignature(_))
        ));
        let other = SimVerifier::new(SimPlatform::from_secret(&[9; 32]).root_public());
        assert!(matches!(
            sim_policy(m).check(&other, &ev, &rd, 0),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn refuses_measurement_mismatch_showing_both() {
        let (ev, _, rd) = setup();
        let want = measure(b"other-bin", b"cfg");
        let err = sim_policy(want)
            .check(&SimVerifier::dev(), &ev, &rd, 0)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&want.to_hex()) && msg.contains(&ev.measurement.to_hex()),
            "{msg}"
        );
    }

    #[test]
    fn refuses_debug_unless_allowed() {
        let m = measure(b"e", b"c");
        let ev = SimPlatform::dev().issue(m, true, [0; 64]);
        let err = sim_policy(m)
            .check(&SimVerifier::dev(), &ev, &[0; 64], 0)
            .unwrap_err();
        assert!(matches!(err, Error::DebugNotAllowed), "{err}");
        let p = Policy {
            allow_debug: true,
            ..sim_policy(m)
        };
        let r = p.check(&SimVerifier::dev(), &ev, &[0; 64], 0).unwrap();
        assert!(r.debug);
    }

    #[test]
    fn refuses_report_data_mismatch() {
        let (ev, m, _) = setup();
        let err = sim_policy(m)
            .check_bound(&SimVerifier::dev(), &ev, &[3; 32], &[2; 32], b"bfv", 0)
            .unwrap_err();
        assert!(matches!(err, Error::ReportDataMismatch { .. }), "{err}");
        let err = sim_policy(m)
            .check_bound(&SimVerifier::dev(), &ev, &[1; 32], &[2; 32], b"ckks", 0)
            .unwrap_err();
        assert!(matches!(err, Error::ReportDataMismatch { .. }), "{err}");
    }

    #[test]
    #[allow(clippy::needless_update)] // the other fields exist only with their features
    fn dispatch_by_platform() {
        let (ev, m, rd) = setup();
        let none = Verifiers::default();
        assert!(matches!(
            sim_policy(m).check(&none, &ev, &rd, 0),
            Err(Error::NoVerifier(PlatformKind::Sim))
        ));
        let v = Verifiers {
            sim: Some(SimVerifier::dev()),
            ..Verifiers::default()
        };
        assert!(sim_policy(m).check(&v, &ev, &rd, 0).is_ok());
    }
}
