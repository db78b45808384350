//! Intel DCAP quotes, verified offline with `dcap-qvl` (pure-Rust crypto backend): SGX enclaves
//! ([`DcapVerifier`]) and, with the `tdx` feature, TDX trust domains ([`TdxVerifier`]).
//!
//! The quote is the evidence's proof; the collateral (TCB info, QE identity, CRLs and their
//! issuer chains, as dcap-qvl's JSON) travels in the evidence, since it is itself signed by Intel.
//! Debug enclaves/TDs are *reported*, not refused: the [`Policy`](super::Policy) decides.

use dcap_qvl::configs::RustCryptoConfig;
use dcap_qvl::quote::{EnclaveReport, Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;

use super::{check_fields, EvidenceVerifier, VerifiedReport};
use crate::error::{Error, Result};
use crate::evidence::{Evidence, Measurement, PlatformKind};
use crate::layout::ReportFields;

/// The SGX attributes bit that marks a debug enclave.
const SGX_FLAGS_DEBUG: u8 = 0x02;

fn sgx_fields(r: &EnclaveReport) -> ReportFields {
    ReportFields {
        measurement: Measurement(r.mr_enclave),
        debug: r.attributes[0] & SGX_FLAGS_DEBUG != 0,
        report_data: r.report_data,
    }
}

fn sgx_report(report: &Report) -> Result<&EnclaveReport> {
    report.as_sgx().ok_or_else(|| {
        Error::MalformedEvidence(
            "the quote is a TDX quote, not an SGX enclave quote; send it as TdxDcap evidence"
                .into(),
        )
    })
}

/// Parses a quote *without verifying it* and returns its SGX report fields.
pub(crate) fn sgx_fields_unverified(quote: &[u8]) -> Result<ReportFields> {
    let q = Quote::parse(quote)
        .map_err(|e| Error::MalformedEvidence(format!("cannot parse the DCAP quote: {e}")))?;
    Ok(sgx_fields(sgx_report(&q.report)?))
}

/// What SGX and TDX verification share: the pinned root and the accepted TCB statuses.
#[derive(Clone, Debug)]
struct DcapConfig {
    /// `None` pins Intel's production root CA (bundled in dcap-qvl).
    root_ca_der: Option<Vec<u8>>,
    accepted_tcb_statuses: Vec<String>,
}

impl DcapConfig {
    fn new(root_ca_der: Option<Vec<u8>>) -> Self {
        Self {
            root_ca_der,
            accepted_tcb_statuses: vec!["UpToDate".into()],
        }
    }

    fn accept(&mut self, status: &str) {
        if !self.accepted_tcb_statuses.iter().any(|s| s == status) {
            self.accepted_tcb_statuses.push(status.to_owned());
        }
    }

    /// Verifies the quote and collateral of `ev` (which must be of `kind`), derives the fields
    /// with `fields` from the *verified* report, checks them against the evidence's plain
    /// fields, then the TCB status.
    fn verify(
        &self,
        kind: PlatformKind,
        ev: &Evidence,
        now_unix: u64,
        fields: impl FnOnce(&Report) -> Result<ReportFields>,
    ) -> Result<VerifiedReport> {
        if ev.platform != kind {
            return Err(Error::WrongPlatform {
                expected: kind,
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
        let f = fields(&verified.report)?;
        check_fields(ev, &f)?;
        if !self.accepted_tcb_statuses.contains(&verified.status) {
            return Err(Error::TcbNotAccepted {
                status: verified.status,
                advisories: verified.advisory_ids,
            });
        }
        Ok(VerifiedReport {
            platform: kind,
            measurement: f.measurement,
            debug: f.debug,
            report_data: f.report_data,
            tcb_status: Some(verified.status),
            advisory_ids: verified.advisory_ids,
        })
    }
}

/// Verifies real Intel SGX DCAP quotes offline with `dcap-qvl`.
///
/// Pins Intel's SGX root CA (or a custom one) and accepts only the listed TCB statuses.
#[derive(Clone, Debug)]
pub struct DcapVerifier {
    config: DcapConfig,
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
            config: DcapConfig::new(None),
        }
    }

    /// Pins a custom root CA certificate (DER); accepts only TCB status `UpToDate`.
    pub fn with_root_ca_der(root_ca_der: Vec<u8>) -> Self {
        Self {
            config: DcapConfig::new(Some(root_ca_der)),
        }
    }

    /// Also accepts platforms whose TCB status is `status` (e.g. `"SWHardeningNeeded"`).
    pub fn accept_tcb_status(mut self, status: &str) -> Self {
        self.config.accept(status);
        self
    }

    /// The TCB statuses this verifier accepts.
    pub fn accepted_tcb_statuses(&self) -> &[String] {
        &self.config.accepted_tcb_statuses
    }
}

impl EvidenceVerifier for DcapVerifier {
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
        self.config
            .verify(PlatformKind::SgxDcap, ev, now_unix, |r| {
                Ok(sgx_fields(sgx_report(r)?))
            })
    }
}

/// Verifies Intel TDX quotes (v4, v5) offline with `dcap-qvl`.
///
/// Same trust anchors as [`DcapVerifier`] (Intel's root CA, TCB statuses from the collateral's
/// TCB info, which also covers the TDX module). TDs bound to service TDs are refused (dcap-qvl's
/// default). The measurement is [`crate::layout::tdx_measurement`] of the verified report.
#[cfg(feature = "tdx")]
#[derive(Clone, Debug)]
pub struct TdxVerifier {
    config: DcapConfig,
}

#[cfg(feature = "tdx")]
impl Default for TdxVerifier {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tdx")]
impl TdxVerifier {
    /// Pins Intel's production root CA and accepts only TCB status `UpToDate`.
    pub fn new() -> Self {
        Self {
            config: DcapConfig::new(None),
        }
    }

    /// Pins a custom root CA certificate (DER); accepts only TCB status `UpToDate`.
    pub fn with_root_ca_der(root_ca_der: Vec<u8>) -> Self {
        Self {
            config: DcapConfig::new(Some(root_ca_der)),
        }
    }

    /// Also accepts platforms whose TCB status is `status` (e.g. `"OutOfDate"`).
    pub fn accept_tcb_status(mut self, status: &str) -> Self {
        self.config.accept(status);
        self
    }

    /// The TCB statuses this verifier accepts.
    pub fn accepted_tcb_statuses(&self) -> &[String] {
        &self.config.accepted_tcb_statuses
    }
}

/// The hetee fields of a verified TD report.
#[cfg(feature = "tdx")]
fn tdx_fields(report: &Report) -> Result<ReportFields> {
    let td = report.as_td10().ok_or_else(|| {
        Error::MalformedEvidence(
            "the quote is an SGX enclave quote, not a TDX quote; send it as SgxDcap evidence"
                .into(),
        )
    })?;
    // TDATTRIBUTES ‖ XFAM ‖ MRTD ‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG ‖ RTMR0..3: the same
    // 400 bytes, in report order, that `layout::tdx_quote_fields` hashes.
    let mut measured = [0u8; 400];
    let parts: [&[u8]; 10] = [
        &td.td_attributes,
        &td.xfam,
        &td.mr_td,
        &td.mr_config_id,
        &td.mr_owner,
        &td.mr_owner_config,
        &td.rt_mr0,
        &td.rt_mr1,
        &td.rt_mr2,
        &td.rt_mr3,
    ];
    let mut at = 0;
    for p in parts {
        measured[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    Ok(ReportFields {
        measurement: crate::layout::tdx_measurement(&measured),
        debug: crate::layout::tdx_debug(&td.td_attributes),
        report_data: td.report_data,
    })
}

#[cfg(feature = "tdx")]
impl EvidenceVerifier for TdxVerifier {
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
        self.config
            .verify(PlatformKind::TdxDcap, ev, now_unix, tdx_fields)
    }
}
