//! Verifying evidence and deciding whether to trust it.
//!
//! A verifier ([`EvidenceVerifier`]) checks that evidence is authentic (signature chain to a
//! pinned root) and returns what it attests ([`VerifiedReport`]). A [`Policy`] then decides
//! whether that is acceptable: not simulated and not debug unless explicitly allowed, the
//! expected measurement, and report data that binds the keys the client is about to use.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::{Error, Result};
use crate::evidence::{dev_root_public, hex, Evidence, Measurement, Platform};

/// What a verifier established from authentic evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The platform that signed the evidence.
    pub platform: Platform,
    /// The measured code (sim measurement or SGX MRENCLAVE).
    pub measurement: Measurement,
    /// Whether the enclave runs in debug mode.
    pub debug: bool,
    /// The report data signed into the evidence.
    pub report_data: [u8; 64],
    /// The platform's TCB status (DCAP only), e.g. `"UpToDate"`.
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

/// Verifies simulated evidence against a pinned Ed25519 root key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimVerifier {
    /// The root public key of the simulated platform that is trusted.
    pub pinned_root: VerifyingKey,
}

impl SimVerifier {
    /// A verifier pinning `root`.
    pub fn new(root: VerifyingKey) -> Self {
        Self { pinned_root: root }
    }

    /// A verifier pinning the published development root ([`dev_root_public`]).
    pub fn dev() -> Self {
        Self::new(dev_root_public())
    }
}

impl EvidenceVerifier for SimVerifier {
    fn verify(&self, ev: &Evidence, _now_unix: u64) -> Result<VerifiedReport> {
        if ev.platform != Platform::Sim {
            return Err(Error::WrongPlatform {
                expected: Platform::Sim,
                found: ev.platform,
            });
        }
        let sig = Signature::from_slice(&ev.proof).map_err(|_| {
            Error::BadSignature(format!(
                "simulated evidence carries a {}-byte proof, not a 64-byte Ed25519 signature",
                ev.proof.len()
            ))
        })?;
        if !ev.collateral.is_empty() {
            return Err(Error::MalformedEvidence(
                "simulated evidence must not carry collateral".into(),
            ));
        }
        self.pinned_root
            .verify_strict(&ev.sim_signed_message(), &sig)
            .map_err(|_| {
                Error::BadSignature(format!(
                    "Ed25519 signature is not valid under the pinned root {}",
                    hex(self.pinned_root.as_bytes())
                ))
            })?;
        Ok(VerifiedReport {
            platform: Platform::Sim,
            measurement: ev.measurement,
            debug: ev.debug,
            report_data: ev.report_data,
            tcb_status: None,
            advisory_ids: Vec::new(),
        })
    }
}

/// Picks the verifier by the evidence's platform; a platform without a verifier is refused.
#[derive(Default)]
pub struct Verifiers {
    /// Verifier for simulated evidence, if accepted at all.
    pub sim: Option<SimVerifier>,
    /// Verifier for SGX DCAP evidence.
    #[cfg(feature = "dcap")]
    pub dcap: Option<DcapVerifier>,
}

impl EvidenceVerifier for Verifiers {
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
        match ev.platform {
            Platform::Sim => self
                .sim
                .as_ref()
                .ok_or(Error::NoVerifier(Platform::Sim))?
                .verify(ev, now_unix),
            #[cfg(feature = "dcap")]
            Platform::SgxDcap => self
                .dcap
                .as_ref()
                .ok_or(Error::NoVerifier(Platform::SgxDcap))?
                .verify(ev, now_unix),
            #[cfg(not(feature = "dcap"))]
            Platform::SgxDcap => Err(Error::NoVerifier(Platform::SgxDcap)),
        }
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
        if ev.platform == Platform::Sim && !self.allow_sim {
            return Err(Error::SimNotAllowed);
        }
        let report = verifier.verify(ev, now_unix)?;
        if report.platform == Platform::Sim && !self.allow_sim {
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

#[cfg(feature = "dcap")]
pub(crate) use dcap::sgx_fields_unverified;
#[cfg(feature = "dcap")]
pub use dcap::DcapVerifier;

#[cfg(feature = "dcap")]
mod dcap {
    use dcap_qvl::configs::RustCryptoConfig;
    use dcap_qvl::quote::{EnclaveReport, Quote, Report};
    use dcap_qvl::verify::QuoteVerifier;
    use dcap_qvl::QuoteCollateralV3;

    use super::{EvidenceVerifier, VerifiedReport};
    use crate::error::{Error, Result};
    use crate::evidence::{hex, Evidence, Measurement, Platform};

    /// The SGX attributes bit that marks a debug enclave.
    const SGX_FLAGS_DEBUG: u8 = 0x02;

    /// Fields of an SGX enclave report.
    pub(crate) struct SgxFields {
        pub measurement: Measurement,
        pub debug: bool,
        pub report_data: [u8; 64],
    }

    fn fields(r: &EnclaveReport) -> SgxFields {
        SgxFields {
            measurement: Measurement(r.mr_enclave),
            debug: r.attributes[0] & SGX_FLAGS_DEBUG != 0,
            report_data: r.report_data,
        }
    }

    fn sgx_report(report: &Report) -> Result<&EnclaveReport> {
        report.as_sgx().ok_or_else(|| {
            Error::MalformedEvidence(
                "the quote is a TDX quote; only SGX enclave quotes are supported".into(),
            )
        })
    }

    /// Parses a quote *without verifying it* and returns its SGX report fields.
    pub(crate) fn sgx_fields_unverified(quote: &[u8]) -> Result<SgxFields> {
        let q = Quote::parse(quote)
            .map_err(|e| Error::MalformedEvidence(format!("cannot parse the DCAP quote: {e}")))?;
        Ok(fields(sgx_report(&q.report)?))
    }

    /// Verifies real Intel SGX DCAP quotes offline with `dcap-qvl` (pure-Rust crypto backend).
    ///
    /// The quote is the evidence's proof; the collateral (TCB info, QE identity, CRLs and their
    /// issuer chains, as JSON) travels in the evidence, since it is itself signed by Intel.
    /// Debug enclaves are *reported*, not refused: the [`Policy`](super::Policy) decides.
    #[derive(Clone, Debug)]
    pub struct DcapVerifier {
        /// `None` pins Intel's production root CA (bundled in dcap-qvl).
        root_ca_der: Option<Vec<u8>>,
        accepted_tcb_statuses: Vec<String>,
    }

    impl Default for DcapVerifier {
        fn default() -> Self {
            Self::new()
        }
    }

    impl DcapVerifier {
        /// Pins Intel's production SGX root CA and accepts only TCB status `UpToDate`.
        pub fn new() -> Self {
            Self {
                root_ca_der: None,
                accepted_tcb_statuses: vec!["UpToDate".into()],
            }
        }

        /// Pins a custom root CA certificate (DER); accepts only TCB status `UpToDate`.
        pub fn with_root_ca_der(root_ca_der: Vec<u8>) -> Self {
            Self {
                root_ca_der: Some(root_ca_der),
                accepted_tcb_statuses: vec!["UpToDate".into()],
            }
        }

        /// Also accepts platforms whose TCB status is `status` (e.g. `"SWHardeningNeeded"`).
        pub fn accept_tcb_status(mut self, status: &str) -> Self {
            if !self.accepted_tcb_statuses.iter().any(|s| s == status) {
                self.accepted_tcb_statuses.push(status.to_owned());
            }
            self
        }

        /// The TCB statuses this verifier accepts.
        pub fn accepted_tcb_statuses(&self) -> &[String] {
            &self.accepted_tcb_statuses
        }
    }

    impl EvidenceVerifier for DcapVerifier {
        fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
            if ev.platform != Platform::SgxDcap {
                return Err(Error::WrongPlatform {
                    expected: Platform::SgxDcap,
                    found: ev.platform,
                });
            }
            let collateral: QuoteCollateralV3 = serde_json::from_slice(&ev.collateral)
                .map_err(|e| Error::BadCollateral(e.to_string()))?;
            let base = match &self.root_ca_der {
                Some(der) => QuoteVerifier::new(der.clone()),
                None => QuoteVerifier::new_prod(),
            };
            let verified = base
                .with_config::<RustCryptoConfig>()
                .allow_debug(true)
                .verify(&ev.proof, &collateral, now_unix)
                .map_err(|e| Error::BadSignature(format!("DCAP quote verification: {e:#}")))?;
            let f = fields(sgx_report(&verified.report)?);
            if f.measurement != ev.measurement {
                return Err(Error::EvidenceMismatch(format!(
                    "measurement field {} but quote MRENCLAVE {}",
                    ev.measurement, f.measurement
                )));
            }
            if f.debug != ev.debug {
                return Err(Error::EvidenceMismatch(format!(
                    "debug field {} but quote attributes say {}",
                    ev.debug, f.debug
                )));
            }
            if f.report_data != ev.report_data {
                return Err(Error::EvidenceMismatch(format!(
                    "report data field {} but quote report data {}",
                    hex(&ev.report_data),
                    hex(&f.report_data)
                )));
            }
            if !self.accepted_tcb_statuses.contains(&verified.status) {
                return Err(Error::TcbNotAccepted {
                    status: verified.status,
                    advisories: verified.advisory_ids,
                });
            }
            Ok(VerifiedReport {
                platform: Platform::SgxDcap,
                measurement: f.measurement,
                debug: f.debug,
                report_data: f.report_data,
                tcb_status: Some(verified.status),
                advisory_ids: verified.advisory_ids,
            })
        }
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
            (Platform::Sim, m, false)
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
    #[allow(clippy::needless_update)] // `dcap` exists only with the `dcap` feature
    fn dispatch_by_platform() {
        let (ev, m, rd) = setup();
        let none = Verifiers::default();
        assert!(matches!(
            sim_policy(m).check(&none, &ev, &rd, 0),
            Err(Error::NoVerifier(Platform::Sim))
        ));
        let v = Verifiers {
            sim: Some(SimVerifier::dev()),
            ..Verifiers::default()
        };
        assert!(sim_policy(m).check(&v, &ev, &rd, 0).is_ok());
    }
}
