//! Raw layouts of the hardware reports, read *without verifying anything*.
//!
//! Producers (inside the enclave, built without any verifier) use these to learn their own
//! measurement from a report they just obtained, and [`Evidence`](crate::Evidence) constructors
//! use them to fill the plain fields. Verifiers recompute the same fields from the report their
//! verification library returns and compare (see [`crate::verify`]). Every function here is a
//! bounds-checked read: malformed bytes give [`Error::MalformedEvidence`], never a panic.
//!
//! ## How a 32-byte [`Measurement`] is taken from each platform
//!
//! - **SGX**: MRENCLAVE, unchanged (it is 32 bytes).
//! - **TDX**: `SHA-256("hetee/tdx-measurement/v1" ‖ TD report body bytes 120..520)`, i.e. the
//!   contiguous fields `TDATTRIBUTES ‖ XFAM ‖ MRTD ‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG ‖
//!   RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ RTMR3` (400 bytes): everything the TD's launcher and boot chain
//!   choose. Left out: the TDX module's identity and TCB (`TEE_TCB_SVN`, `MRSEAM`,
//!   `MRSIGNERSEAM`, `SEAMATTRIBUTES`), which the DCAP TCB status judges, and `REPORTDATA`.
//! - **SEV-SNP**: `SHA-256("hetee/snp-measurement/v1" ‖ MEASUREMENT[48] ‖ HOST_DATA[32] ‖
//!   POLICY[8] ‖ VMPL[4])` with the fields' raw (little-endian) report bytes. Left out:
//!   `FAMILY_ID`, `IMAGE_ID`, `ID_KEY_DIGEST`, `AUTHOR_KEY_DIGEST`, `GUEST_SVN` (ID-block
//!   metadata, not code) and the TCB fields.
//!
//! Both hashes include the attribute/policy words, so a debug TD or guest has a different
//! measurement from the production one. Report data (64 bytes on every platform) is bound
//! directly.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::evidence::Measurement;

/// Domain tag of [`tdx_measurement`].
pub const TDX_MEASUREMENT_DOMAIN: &[u8] = b"hetee/tdx-measurement/v1";
/// Domain tag of [`snp_measurement`].
pub const SNP_MEASUREMENT_DOMAIN: &[u8] = b"hetee/snp-measurement/v1";

/// Length of a DCAP quote header.
const QUOTE_HEADER_LEN: usize = 48;
/// `tee_type` of SGX quotes.
const TEE_TYPE_SGX: u32 = 0;
/// `tee_type` of TDX quotes.
const TEE_TYPE_TDX: u32 = 0x81;
/// Length of an SGX report body.
const SGX_REPORT_LEN: usize = 384;
/// Length of a TDX 1.0 report body (a TDX 1.5 body extends it; the fields used here are shared).
const TD_REPORT10_LEN: usize = 584;
/// Range of the measured TD report fields (`TDATTRIBUTES` .. end of `RTMR3`).
pub const TD_MEASURED_RANGE: std::ops::Range<usize> = 120..520;
/// Length of an SEV-SNP attestation report.
pub const SNP_REPORT_LEN: usize = 0x4A0;
/// SNP guest policy bit: debugging allowed.
const SNP_POLICY_DEBUG: u64 = 1 << 19;

/// The fields every platform's report carries, as hetee uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportFields {
    /// The 32-byte measurement (see the module docs for each platform's mapping).
    pub measurement: Measurement,
    /// Whether the enclave/TD/guest is debuggable by the host.
    pub debug: bool,
    /// The 64 bytes of report data.
    pub report_data: [u8; 64],
}

fn slice<'a>(b: &'a [u8], range: std::ops::Range<usize>, what: &str) -> Result<&'a [u8]> {
    b.get(range.clone()).ok_or_else(|| {
        Error::MalformedEvidence(format!(
            "{what} is {} bytes, too short for bytes {}..{}",
            b.len(),
            range.start,
            range.end
        ))
    })
}

fn arr<const N: usize>(b: &[u8], at: usize, what: &str) -> Result<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(slice(b, at..at + N, what)?);
    Ok(a)
}

/// Returns (tee_type, body offset, body type) of a DCAP quote (v3, v4 or v5).
fn quote_body(quote: &[u8]) -> Result<(u32, usize, Option<u16>)> {
    let header = slice(quote, 0..QUOTE_HEADER_LEN, "the quote")?;
    let version = u16::from_le_bytes([header[0], header[1]]);
    let tee_type = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    match version {
        3 | 4 => Ok((tee_type, QUOTE_HEADER_LEN, None)),
        5 => {
            let t = arr::<2>(quote, QUOTE_HEADER_LEN, "the quote")?;
            Ok((tee_type, QUOTE_HEADER_LEN + 6, Some(u16::from_le_bytes(t))))
        }
        v => Err(Error::MalformedEvidence(format!(
            "unsupported DCAP quote version {v} (known: 3, 4, 5)"
        ))),
    }
}

/// Reads MRENCLAVE, the debug attribute and report data of an SGX DCAP quote. Unverified.
pub fn sgx_quote_fields(quote: &[u8]) -> Result<ReportFields> {
    let (tee_type, at, body_type) = quote_body(quote)?;
    if tee_type != TEE_TYPE_SGX || body_type.is_some_and(|t| t != 1) {
        return Err(Error::MalformedEvidence(format!(
            "not an SGX enclave quote (tee_type {tee_type:#x}); a TDX quote is TdxDcap evidence"
        )));
    }
    let body = slice(quote, at..at + SGX_REPORT_LEN, "the SGX quote")?;
    Ok(ReportFields {
        measurement: Measurement(arr(body, 64, "the SGX report")?),
        debug: body[48] & 0x02 != 0,
        report_data: arr(body, 320, "the SGX report")?,
    })
}

/// The hetee measurement of a TD: SHA-256 over the domain tag and the 400 measured bytes
/// (`TDATTRIBUTES` through `RTMR3`, TD report body bytes 120..520).
pub fn tdx_measurement(measured: &[u8; 400]) -> Measurement {
    let mut h = Sha256::new();
    h.update(TDX_MEASUREMENT_DOMAIN);
    h.update(measured);
    Measurement(h.finalize().into())
}

/// Whether `TDATTRIBUTES` marks the TD as under debug (any TUD bit, bits 7:0).
pub fn tdx_debug(td_attributes: &[u8; 8]) -> bool {
    td_attributes[0] != 0
}

/// Reads the measurement, debug flag and report data of a TDX quote (v4 or v5). Unverified.
pub fn tdx_quote_fields(quote: &[u8]) -> Result<ReportFields> {
    let (tee_type, at, body_type) = quote_body(quote)?;
    if tee_type != TEE_TYPE_TDX || body_type.is_some_and(|t| !(2..=4).contains(&t)) {
        return Err(Error::MalformedEvidence(format!(
            "not a TDX quote (tee_type {tee_type:#x}, body type {body_type:?}); an SGX quote is SgxDcap evidence"
        )));
    }
    let body = slice(quote, at..at + TD_REPORT10_LEN, "the TDX quote")?;
    let measured: [u8; 400] = arr(body, TD_MEASURED_RANGE.start, "the TD report")?;
    Ok(ReportFields {
        measurement: tdx_measurement(&measured),
        debug: tdx_debug(&arr(body, 120, "the TD report")?),
        report_data: arr(body, 520, "the TD report")?,
    })
}

/// The hetee measurement of an SEV-SNP guest (see the module docs).
pub fn snp_measurement(
    measurement: &[u8; 48],
    host_data: &[u8; 32],
    policy: u64,
    vmpl: u32,
) -> Measurement {
    let mut h = Sha256::new();
    h.update(SNP_MEASUREMENT_DOMAIN);
    h.update(measurement);
    h.update(host_data);
    h.update(policy.to_le_bytes());
    h.update(vmpl.to_le_bytes());
    Measurement(h.finalize().into())
}

/// Whether an SNP guest policy allows debugging.
pub fn snp_debug(policy: u64) -> bool {
    policy & SNP_POLICY_DEBUG != 0
}

/// Reads the measurement, debug flag and report data of a raw SEV-SNP attestation report
/// (exactly [`SNP_REPORT_LEN`] bytes, version 2 or later). Unverified.
pub fn snp_report_fields(report: &[u8]) -> Result<ReportFields> {
    if report.len() != SNP_REPORT_LEN {
        return Err(Error::MalformedEvidence(format!(
            "an SEV-SNP report is {SNP_REPORT_LEN} bytes, got {}",
            report.len()
        )));
    }
    let version = u32::from_le_bytes(arr(report, 0, "the SNP report")?);
    if version < 2 {
        return Err(Error::MalformedEvidence(format!(
            "SEV-SNP report version {version} is not supported (2 or later)"
        )));
    }
    let policy = u64::from_le_bytes(arr(report, 0x08, "the SNP report")?);
    let vmpl = u32::from_le_bytes(arr(report, 0x30, "the SNP report")?);
    Ok(ReportFields {
        measurement: snp_measurement(
            &arr(report, 0x90, "the SNP report")?,
            &arr(report, 0xC0, "the SNP report")?,
            policy,
            vmpl,
        ),
        debug: snp_debug(policy),
        report_data: arr(report, 0x50, "the SNP report")?,
    })
}

/// A certificate kind in AMD's SEV-SNP certificate table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnpCertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Signing Key (signs VCEKs).
    Ask,
    /// Versioned Chip Endorsement Key (signs the report).
    Vcek,
    /// Versioned Loaded Endorsement Key (a cloud provider's alternative to the VCEK).
    Vlek,
}

const SNP_CERT_GUIDS: [(SnpCertKind, [u8; 16]); 4] = [
    (
        SnpCertKind::Ark,
        guid("c0b406a4a80349529743", "3fb6014cd0ae"),
    ),
    (
        SnpCertKind::Ask,
        guid("4ab7b379bbac4fe4a02f", "05aef327c782"),
    ),
    (
        SnpCertKind::Vcek,
        guid("63da758de6644564adc5", "f4b93be8accd"),
    ),
    (
        SnpCertKind::Vlek,
        guid("a8074bc2a25a483eaae6", "39c045a0b8a1"),
    ),
];

/// A GUID in its string byte order, from two hex halves (20 + 12 digits).
const fn guid(a: &str, b: &str) -> [u8; 16] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let (hi, lo) = if i < 10 {
            (a[2 * i], a[2 * i + 1])
        } else {
            (b[2 * (i - 10)], b[2 * (i - 10) + 1])
        };
        out[i] = nib(hi) << 4 | nib(lo);
        i += 1;
    }
    out
}

/// Encodes certificates (DER) as AMD's SEV-SNP certificate table — the format the kernel
/// returns in configfs-tsm `auxblob` and `SNP_GET_EXT_REPORT`, and the collateral format of
/// [`PlatformKind::SevSnp`](crate::PlatformKind::SevSnp) evidence:
/// entries of `GUID[16] ‖ u32le offset ‖ u32le length` (offsets from the table start), an
/// all-zero entry, then the certificates.
pub fn snp_cert_table(certs: &[(SnpCertKind, &[u8])]) -> Vec<u8> {
    let header = (certs.len() + 1) * 24;
    let mut out = Vec::new();
    let mut offset = header;
    for (kind, der) in certs {
        let g = SNP_CERT_GUIDS
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, g)| *g)
            .unwrap_or([0; 16]);
        out.extend_from_slice(&g);
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        out.extend_from_slice(&(der.len() as u32).to_le_bytes());
        offset += der.len();
    }
    out.extend_from_slice(&[0u8; 24]);
    for (_, der) in certs {
        out.extend_from_slice(der);
    }
    out
}

/// Decodes an SEV-SNP certificate table; entries with unknown GUIDs (e.g. CRLs) are skipped.
pub fn parse_snp_cert_table(table: &[u8]) -> Result<Vec<(SnpCertKind, &[u8])>> {
    let bad = |m: String| Error::BadCertificates(m);
    let mut out = Vec::new();
    let mut i = 0usize;
    loop {
        let Some(entry) = table.get(i * 24..i * 24 + 24) else {
            return Err(bad(
                "the certificate table has no terminating zero entry".into()
            ));
        };
        if entry == [0u8; 24] {
            return Ok(out);
        }
        let off = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let len = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        let data = off
            .checked_add(len)
            .and_then(|end| table.get(off..end))
            .ok_or_else(|| {
                bad(format!(
                    "entry {i} points at bytes {off}+{len}, outside the {}-byte table",
                    table.len()
                ))
            })?;
        if let Some((kind, _)) = SNP_CERT_GUIDS.iter().find(|(_, g)| g[..] == entry[..16]) {
            out.push((*kind, data));
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_bytes_match_the_kernel_table_order() {
        // c0b406a4-a803-4952-9743-3fb6014cd0ae, as in the sev crate's table test vector.
        assert_eq!(
            SNP_CERT_GUIDS[0].1,
            [192, 180, 6, 164, 168, 3, 73, 82, 151, 67, 63, 182, 1, 76, 208, 174]
        );
    }

    #[test]
    fn cert_table_round_trip_and_bounds() {
        let t = snp_cert_table(&[(SnpCertKind::Vcek, b"vcek"), (SnpCertKind::Ask, b"ask!")]);
        let parsed = parse_snp_cert_table(&t).unwrap();
        assert_eq!(
            parsed,
            vec![
                (SnpCertKind::Vcek, &b"vcek"[..]),
                (SnpCertKind::Ask, &b"ask!"[..])
            ]
        );
        for cut in 0..t.len() - 8 {
            assert!(parse_snp_cert_table(&t[..cut]).is_err(), "cut {cut}");
        }
        let mut huge = t.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_snp_cert_table(&huge).is_err());
    }

    #[test]
    fn short_or_wrong_reports_are_errors() {
        for n in [0, 10, 47, 48, 200, 631] {
            assert!(tdx_quote_fields(&vec![0; n]).is_err());
            assert!(sgx_quote_fields(&vec![0; n]).is_err());
            assert!(snp_report_fields(&vec![0; n]).is_err());
        }
        // A v4 header with the SGX tee type is not a TDX quote, and vice versa.
        let mut q = vec![0u8; 1000];
        q[0] = 4;
        assert!(tdx_quote_fields(&q).is_err());
        assert!(sgx_quote_fields(&q).is_ok());
        q[4] = 0x81;
        assert!(sgx_quote_fields(&q).is_err());
        assert!(tdx_quote_fields(&q).is_ok());
    }
}
