//! AMD SEV-SNP attestation reports, verified offline with the `sev` crate (pure-Rust crypto,
//! feature `crypto_nossl`: no OpenSSL).
//!
//! The proof is the raw 1184-byte report; the collateral is AMD's certificate table
//! ([`crate::layout::snp_cert_table`]) with the VCEK and optionally the ASK and ARK — exactly
//! what the kernel returns in configfs-tsm `auxblob` when the host provisions certificates, or
//! what a host builds from AMD's key distribution service (`/vcek/v1/{product}/...`).
//!
//! Checks: a pinned ARK signs the ASK (the one in the table, or the pinned ASK of the same
//! product), the ASK signs the VCEK (RSA-PSS/SHA-384), all three certificates are valid at `now`,
//! an ARK in the table is the pinned one, the report says it is VCEK-signed and the VCEK signs
//! it (ECDSA P-384/SHA-384 over bytes 0..0x2A0). The report must re-encode to exactly the bytes
//! received, so nothing outside the parsed fields (e.g. reserved bytes) is accepted unchecked.
//!
//! Not checked (see the crate README): a minimum reported TCB (the verified TCB is returned in
//! [`VerifiedReport::tcb_status`]), AMD's CRLs, and VLEK-signed reports (refused).

use sev::certs::snp::{builtin, Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::{check_fields, EvidenceVerifier, VerifiedReport};
use crate::error::{Error, Result};
use crate::evidence::{Evidence, PlatformKind};
use crate::layout::{parse_snp_cert_table, snp_report_fields, SnpCertKind};

/// One pinned AMD product root: the ARK and the ASK it signed.
#[derive(Clone, Debug)]
struct Root {
    ark: Certificate,
    ark_der: Vec<u8>,
    ask: Certificate,
}

/// Verifies AMD SEV-SNP evidence against pinned AMD root keys.
#[derive(Clone, Debug)]
pub struct SnpVerifier {
    roots: Vec<Root>,
}

impl Default for SnpVerifier {
    fn default() -> Self {
        Self::new()
    }
}

fn cert_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::BadCertificates(format!("{what}: {e}"))
}

impl SnpVerifier {
    /// Pins AMD's ARK and ASK of the Milan, Genoa and Turin products (bundled in the `sev`
    /// crate).
    pub fn new() -> Self {
        let mut roots = Vec::new();
        for (ark, ask) in [
            (builtin::milan::ark(), builtin::milan::ask()),
            (builtin::genoa::ark(), builtin::genoa::ask()),
            (builtin::turin::ark(), builtin::turin::ask()),
        ] {
            // The bundled PEMs always parse; a failure would only drop that product.
            if let (Ok(ark), Ok(ask)) = (ark, ask) {
                if let Ok(ark_der) = ark.to_der() {
                    roots.push(Root { ark, ark_der, ask });
                }
            }
        }
        Self { roots }
    }

    /// Pins custom roots: pairs of (ARK, ASK) certificates in DER. Each ARK must sign its ASK.
    pub fn with_roots_der(roots: &[(&[u8], &[u8])]) -> Result<Self> {
        let mut out = Vec::new();
        for (ark_der, ask_der) in roots {
            let ark = Certificate::from_der(ark_der).map_err(cert_err("pinned ARK"))?;
            let ask = Certificate::from_der(ask_der).map_err(cert_err("pinned ASK"))?;
            (&ark, &ask)
                .verify()
                .map_err(cert_err("the pinned ARK does not sign the pinned ASK"))?;
            out.push(Root {
                ark,
                ark_der: ark_der.to_vec(),
                ask,
            });
        }
        Ok(Self { roots: out })
    }

    /// Finds the pinned root whose ARK signs an ASK (the table's, else its own) that signs
    /// `vcek`; returns that ARK and ASK.
    fn chain(&self, vcek: &Certificate, ask: Option<&Certificate>) -> Result<(&Root, Certificate)> {
        for root in &self.roots {
            let ask = match ask {
                Some(a) => {
                    if (&root.ark, a).verify().is_err() {
                        continue;
                    }
                    a
                }
                None => &root.ask,
            };
            if (ask, vcek).verify().is_ok() {
                return Ok((root, ask.clone()));
            }
        }
        Err(Error::BadSignature(format!(
            "the VCEK does not chain to any of the {} pinned AMD roots (ARK -> ASK -> VCEK)",
            self.roots.len()
        )))
    }
}

/// Checks that `cert` is valid at `now`.
fn check_validity(cert: &Certificate, what: &str, now: u64) -> Result<()> {
    let c: x509_cert::Certificate = cert.clone().into();
    let v = &c.tbs_certificate.validity;
    let (from, to) = (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    );
    if now < from || now > to {
        return Err(Error::BadCertificates(format!(
            "the {what} certificate is valid from {from} to {to} (Unix time), not at {now}"
        )));
    }
    Ok(())
}

impl EvidenceVerifier for SnpVerifier {
    fn verify(&self, ev: &Evidence, now_unix: u64) -> Result<VerifiedReport> {
        if ev.platform != PlatformKind::SevSnp {
            return Err(Error::WrongPlatform {
                expected: PlatformKind::SevSnp,
                found: ev.platform,
            });
        }
        let fields = snp_report_fields(&ev.proof)?;
        let report = AttestationReport::from_bytes(&ev.proof).map_err(|e| {
            Error::MalformedEvidence(format!("cannot parse the SEV-SNP report: {e}"))
        })?;
        let reencoded = report.to_bytes().map_err(|e| {
            Error::MalformedEvidence(format!("cannot re-encode the SEV-SNP report: {e}"))
        })?;
        if reencoded[..] != ev.proof[..] {
            return Err(Error::MalformedEvidence(
                "the SEV-SNP report has bytes outside its defined fields (reserved bytes not zero)"
                    .into(),
            ));
        }
        // KEY_INFO (offset 0x48) bits 4:2: which key signed the report.
        let signing_key = (ev.proof[0x48] >> 2) & 0b111;
        if signing_key != 0 {
            return Err(Error::BadSignature(format!(
                "the report is signed with key {signing_key} (0 = VCEK, 1 = VLEK, 7 = none); only VCEK-signed reports are supported"
            )));
        }

        let table = parse_snp_cert_table(&ev.collateral)?;
        let find = |kind| table.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d);
        let vcek_der = find(SnpCertKind::Vcek)
            .ok_or_else(|| Error::BadCertificates("the certificate table has no VCEK".into()))?;
        let vcek = Certificate::from_der(vcek_der).map_err(cert_err("VCEK"))?;
        let ask = find(SnpCertKind::Ask)
            .map(|d| Certificate::from_der(d).map_err(cert_err("ASK")))
            .transpose()?;
        let (root, ask) = self.chain(&vcek, ask.as_ref())?;
        if let Some(ark_der) = find(SnpCertKind::Ark) {
            if ark_der != root.ark_der.as_slice() {
                return Err(Error::BadSignature(
                    "the ARK in the certificate table is not the pinned AMD root".into(),
                ));
            }
        }
        check_validity(&root.ark, "ARK", now_unix)?;
        check_validity(&ask, "ASK", now_unix)?;
        check_validity(&vcek, "VCEK", now_unix)?;
        (&vcek, &report).verify().map_err(|e| {
            Error::BadSignature(format!("the VCEK does not sign the SEV-SNP report: {e}"))
        })?;

        check_fields(ev, &fields)?;
        let t = &report.reported_tcb;
        Ok(VerifiedReport {
            platform: PlatformKind::SevSnp,
            measurement: fields.measurement,
            debug: fields.debug,
            report_data: fields.report_data,
            tcb_status: Some(format!(
                "bootloader={} tee={} snp={} microcode={}",
                t.bootloader, t.tee, t.snp, t.microcode
            )),
            advisory_ids: Vec::new(),
        })
    }
}
