//! Evidence: what an enclave shows a client to prove which code it runs and which keys it holds.
//!
//! All platforms share one format:
//! - [`PlatformKind::Sim`]: the simulated TEE. A [`SimPlatform`] (run by the untrusted host!) signs
//!   the measurement, debug flag and report data with an Ed25519 root key. It keeps the real
//!   structure (measurement, signed evidence, key binding) but **protects nothing**: whoever
//!   runs the simulator can sign anything. Verifiers refuse it unless told otherwise.
//! - [`PlatformKind::SgxDcap`]: a real Intel SGX DCAP quote (plus the PCCS collateral needed to
//!   verify it offline). The plain fields are copies of what the signed quote says; verifiers
//!   check that they agree.
//! - [`PlatformKind::TdxDcap`]: an Intel TDX quote (v4/v5) plus its DCAP collateral JSON, like
//!   SGX. The measurement is a hash of the TD's measured registers
//!   ([`crate::layout::tdx_measurement`]).
//! - [`PlatformKind::SevSnp`]: a raw AMD SEV-SNP attestation report (1184 bytes); the collateral
//!   is AMD's certificate table ([`crate::layout::snp_cert_table`]) holding the VCEK and
//!   optionally the ASK and ARK. The measurement is a hash of the launch measurement, host data,
//!   policy and VMPL ([`crate::layout::snp_measurement`]).
//!
//! ## Canonical encoding (version 1, little-endian)
//!
//! ```text
//! "HTEV" | u16 version=1 | u8 platform (1 = sim, 2 = sgx-dcap, 3 = tdx-dcap, 4 = sev-snp)
//!        | measurement [32]
//!        | u8 debug (0 or 1) | report_data [64]
//!        | u32 proof_len | proof | u32 collateral_len | collateral
//! ```
//!
//! For `Sim` the proof is the 64-byte Ed25519 signature and the collateral is empty; for
//! `SgxDcap` and `TdxDcap` the proof is the raw quote and the collateral is dcap-qvl's collateral
//! JSON; for `SevSnp` the proof is the raw report and the collateral the certificate table.
//! Producers inside an enclave leave the collateral empty when they cannot fetch it (it is signed
//! by Intel or AMD itself, so the host may attach it — but it is part of [`Evidence::hash`], so
//! attach it before the hash is used).
//! Decoding is strict: unknown versions or platforms, a debug byte other than 0/1, lengths over
//! the limits and trailing bytes are all errors.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Magic at the start of encoded evidence.
pub const EVIDENCE_MAGIC: [u8; 4] = *b"HTEV";
/// The evidence encoding version this build writes and reads.
pub const EVIDENCE_VERSION: u16 = 1;
/// Largest accepted proof (signature or quote) in bytes.
pub const MAX_PROOF_LEN: usize = 64 * 1024;
/// Largest accepted collateral in bytes.
pub const MAX_COLLATERAL_LEN: usize = 1024 * 1024;
/// Length of the fixed part of the encoding (before the proof).
const FIXED_LEN: usize = 4 + 2 + 1 + 32 + 1 + 64;

/// Domain tag of [`measure`].
const MEASUREMENT_DOMAIN: &[u8] = b"hetee/measurement/v1";
/// Domain tag of [`report_data`].
const REPORT_DATA_DOMAIN: &[u8] = b"hetee/report-data/v1";
/// Domain tag of the simulated platform's signature.
pub(crate) const SIM_SIGNATURE_DOMAIN: &[u8] = b"hetee/sim-evidence/v1";

/// Development root secret of the simulated platform.
///
/// **This is NOT a secret.** It is published here on purpose so that a simulated host and
/// clients agree on a root without setup. The simulated platform protects nothing anyway: the
/// host runs it and can sign whatever it wants. Clients pin [`dev_root_public`] by default and
/// still refuse simulated evidence unless `--allow-sim` is given.
pub const DEV_ROOT_SECRET: [u8; 32] = *b"hetee-sim-dev-root:NOT-A-SECRET!";

/// The public key of [`DEV_ROOT_SECRET`], which clients pin by default for simulated evidence.
pub fn dev_root_public() -> VerifyingKey {
    SigningKey::from_bytes(&DEV_ROOT_SECRET).verifying_key()
}

/// The TEE platform that produced a piece of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PlatformKind {
    /// The simulated platform: structure only, no protection.
    Sim = 1,
    /// Intel SGX with a DCAP (ECDSA) quote.
    SgxDcap = 2,
    /// Intel TDX with a DCAP (ECDSA) quote.
    TdxDcap = 3,
    /// AMD SEV-SNP with a VCEK-signed attestation report.
    SevSnp = 4,
}

impl PlatformKind {
    /// The byte used in the encoding.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the encoding byte.
    pub fn from_byte(b: u8) -> Result<Self> {
        match b {
            1 => Ok(Self::Sim),
            2 => Ok(Self::SgxDcap),
            3 => Ok(Self::TdxDcap),
            4 => Ok(Self::SevSnp),
            other => Err(Error::MalformedEvidence(format!(
                "unknown platform byte {other} (known: 1 = sim, 2 = sgx-dcap, 3 = tdx-dcap, 4 = sev-snp)"
            ))),
        }
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sim => "sim",
            Self::SgxDcap => "sgx-dcap",
            Self::TdxDcap => "tdx-dcap",
            Self::SevSnp => "sev-snp",
        })
    }
}

/// A 32-byte code measurement: [`measure`] for the simulated platform, MRENCLAVE for SGX, a hash
/// of the measured registers for TDX and SEV-SNP (see [`crate::layout`]).
///
/// Displays and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measurement(pub [u8; 32]);

impl Measurement {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex (same as `Display`).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", self.to_hex())
    }
}

impl FromStr for Measurement {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bytes = unhex(s).map_err(Error::BadMeasurementHex)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            Error::BadMeasurementHex(format!("{} bytes instead of 32", v.len()))
        })?;
        Ok(Self(arr))
    }
}

/// Measures an enclave: SHA-256 over a domain tag and the length-prefixed binary and config.
///
/// `SHA-256("hetee/measurement/v1" ‖ u64le(|binary|) ‖ binary ‖ u64le(|config|) ‖ config)`.
/// The config includes everything that changes the enclave's behaviour (e.g. memory budget).
pub fn measure(binary: &[u8], config: &[u8]) -> Measurement {
    let mut h = Sha256::new();
    h.update(MEASUREMENT_DOMAIN);
    h.update((binary.len() as u64).to_le_bytes());
    h.update(binary);
    h.update((config.len() as u64).to_le_bytes());
    h.update(config);
    Measurement(h.finalize().into())
}

/// The 64 bytes of report data that bind the enclave's keys to its evidence.
///
/// The first 32 bytes are
/// `SHA-256("hetee/report-data/v1" ‖ channel_pubkey ‖ he_public_key_hash ‖ u64le(|he_params|) ‖ he_params)`;
/// the last 32 bytes are zero (reserved for a later version).
pub fn report_data(
    channel_pubkey: &[u8; 32],
    he_public_key_hash: &[u8; 32],
    he_params: &[u8],
) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(REPORT_DATA_DOMAIN);
    h.update(channel_pubkey);
    h.update(he_public_key_hash);
    h.update((he_params.len() as u64).to_le_bytes());
    h.update(he_params);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&h.finalize());
    out
}

/// Attestation evidence as sent over the wire. Build it with [`SimPlatform::issue`] or
/// `Evidence::from_dcap_quote`; check it with a [`Policy`](crate::verify::Policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Which platform produced it.
    pub platform: PlatformKind,
    /// The code measurement it claims.
    pub measurement: Measurement,
    /// Whether it claims a debug enclave (memory readable by the host).
    pub debug: bool,
    /// The 64 bytes of report data it claims (see [`report_data`]).
    pub report_data: [u8; 64],
    /// Ed25519 signature (sim), raw DCAP quote (sgx-dcap, tdx-dcap) or raw report (sev-snp).
    pub proof: Vec<u8>,
    /// Verification collateral: empty (sim), dcap-qvl collateral JSON (sgx-dcap, tdx-dcap) or an
    /// AMD certificate table (sev-snp); may be empty if the producer could not fetch it.
    pub collateral: Vec<u8>,
}

impl Evidence {
    /// The bytes the simulated platform signs: the fixed part of the encoding after a domain tag.
    pub(crate) fn sim_signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIM_SIGNATURE_DOMAIN.len() + FIXED_LEN);
        m.extend_from_slice(SIM_SIGNATURE_DOMAIN);
        self.encode_fixed(&mut m);
        m
    }

    fn encode_fixed(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&EVIDENCE_MAGIC);
        out.extend_from_slice(&EVIDENCE_VERSION.to_le_bytes());
        out.push(self.platform.to_byte());
        out.extend_from_slice(&self.measurement.0);
        out.push(u8::from(self.debug));
        out.extend_from_slice(&self.report_data);
    }

    /// The canonical encoding (see the module docs).
    ///
    /// Fails only if the proof or collateral exceed [`MAX_PROOF_LEN`] / [`MAX_COLLATERAL_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        check_len("proof", self.proof.len(), MAX_PROOF_LEN)?;
        check_len("collateral", self.collateral.len(), MAX_COLLATERAL_LEN)?;
        let mut out = Vec::with_capacity(FIXED_LEN + 8 + self.proof.len() + self.collateral.len());
        self.encode_fixed(&mut out);
        out.extend_from_slice(&(self.proof.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.proof);
        out.extend_from_slice(&(self.collateral.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.collateral);
        Ok(out)
    }

    /// Strictly decodes the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != EVIDENCE_MAGIC {
            return Err(Error::MalformedEvidence(format!(
                "bad magic {magic:02x?} (expected \"HTEV\")"
            )));
        }
        let version = u16::from_le_bytes(r.array::<2>("version")?);
        if version != EVIDENCE_VERSION {
            return Err(Error::MalformedEvidence(format!(
                "unsupported evidence version {version} (this build reads version {EVIDENCE_VERSION})"
            )));
        }
        let platform = PlatformKind::from_byte(r.array::<1>("platform")?[0])?;
        let measurement = Measurement(r.array::<32>("measurement")?);
        let debug = match r.array::<1>("debug flag")?[0] {
            0 => false,
            1 => true,
            b => {
                return Err(Error::MalformedEvidence(format!(
                    "debug flag byte is {b}, must be 0 or 1"
                )))
            }
        };
        let report_data = r.array::<64>("report data")?;
        let proof = r.len_prefixed("proof", MAX_PROOF_LEN)?.to_vec();
        let collateral = r.len_prefixed("collateral", MAX_COLLATERAL_LEN)?.to_vec();
        if r.pos != bytes.len() {
            return Err(Error::MalformedEvidence(format!(
                "{} trailing bytes after the collateral",
                bytes.len() - r.pos
            )));
        }
        if platform == PlatformKind::Sim {
            if proof.len() != ed25519_dalek::SIGNATURE_LENGTH {
                return Err(Error::MalformedEvidence(format!(
                    "simulated evidence must carry a 64-byte signature, got {} bytes",
                    proof.len()
                )));
            }
            if !collateral.is_empty() {
                return Err(Error::MalformedEvidence(
                    "simulated evidence must not carry collateral".into(),
                ));
            }
        }
        Ok(Self {
            platform,
            measurement,
            debug,
            report_data,
            proof,
            collateral,
        })
    }

    /// SHA-256 of the canonical encoding; used as the Noise prologue so that the channel is
    /// bound to exactly this evidence.
    pub fn hash(&self) -> Result<[u8; 32]> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    /// Wraps a real SGX DCAP quote and its collateral JSON as evidence, copying measurement
    /// (MRENCLAVE), debug flag and report data out of the quote. Nothing is verified here.
    #[cfg(feature = "dcap")]
    pub fn from_dcap_quote(quote: Vec<u8>, collateral_json: Vec<u8>) -> Result<Self> {
        let fields = crate::verify::sgx_fields_unverified(&quote)?;
        Ok(Self::with_fields(
            PlatformKind::SgxDcap,
            fields,
            quote,
            collateral_json,
        ))
    }

    /// Wraps a raw SGX DCAP quote (as Gramine's `/dev/attestation/quote` gives it) without
    /// needing the `dcap` feature: fields are read with [`crate::layout::sgx_quote_fields`].
    /// Nothing is verified here.
    pub fn from_sgx_quote(quote: Vec<u8>, collateral_json: Vec<u8>) -> Result<Self> {
        let fields = crate::layout::sgx_quote_fields(&quote)?;
        Ok(Self::with_fields(
            PlatformKind::SgxDcap,
            fields,
            quote,
            collateral_json,
        ))
    }

    /// Wraps a raw Intel TDX quote (v4 or v5) and its DCAP collateral JSON as evidence, copying
    /// the measurement ([`crate::layout::tdx_measurement`]), debug flag (any TUD bit of
    /// TDATTRIBUTES) and REPORTDATA out of the quote. Nothing is verified here.
    pub fn from_tdx_quote(quote: Vec<u8>, collateral_json: Vec<u8>) -> Result<Self> {
        let fields = crate::layout::tdx_quote_fields(&quote)?;
        Ok(Self::with_fields(
            PlatformKind::TdxDcap,
            fields,
            quote,
            collateral_json,
        ))
    }

    /// Wraps a raw AMD SEV-SNP attestation report and its certificate table
    /// ([`crate::layout::snp_cert_table`]; empty if the host attaches it later) as evidence,
    /// copying the measurement ([`crate::layout::snp_measurement`]), debug flag (policy bit 19)
    /// and REPORT_DATA out of the report. Nothing is verified here.
    pub fn from_snp_report(report: Vec<u8>, cert_table: Vec<u8>) -> Result<Self> {
        let fields = crate::layout::snp_report_fields(&report)?;
        Ok(Self::with_fields(
            PlatformKind::SevSnp,
            fields,
            report,
            cert_table,
        ))
    }

    fn with_fields(
        platform: PlatformKind,
        fields: crate::layout::ReportFields,
        proof: Vec<u8>,
        collateral: Vec<u8>,
    ) -> Self {
        Self {
            platform,
            measurement: fields.measurement,
            debug: fields.debug,
            report_data: fields.report_data,
            proof,
            collateral,
        }
    }
}

fn check_len(what: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::MalformedEvidence(format!(
            "{what} is {len} bytes, over the limit of {max}"
        )));
    }
    Ok(())
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::MalformedEvidence(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.bytes.len() - self.pos
            )));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn len_prefixed(&mut self, what: &str, max: usize) -> Result<&'a [u8]> {
        let len = u32::from_le_bytes(self.array::<4>(what)?) as usize;
        check_len(what, len, max)?;
        self.take(len, what)
    }
}

/// The simulated TEE platform: holds the root signing key and issues signed evidence.
///
/// Runs on the untrusted host. It models the structure of a real platform and protects nothing.
pub struct SimPlatform {
    root: SigningKey,
}

impl SimPlatform {
    /// A platform whose root signing key is derived from a 32-byte Ed25519 secret seed.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            root: SigningKey::from_bytes(secret),
        }
    }

    /// The platform keyed with the published [`DEV_ROOT_SECRET`] (what clients pin by default).
    pub fn dev() -> Self {
        Self::from_secret(&DEV_ROOT_SECRET)
    }

    /// The root public key a client pins to accept this platform's evidence.
    pub fn root_public(&self) -> VerifyingKey {
        self.root.verifying_key()
    }

    /// Issues signed evidence for an enclave with this measurement, debug flag and report data.
    pub fn issue(&self, measurement: Measurement, debug: bool, report_data: [u8; 64]) -> Evidence {
        let mut ev = Evidence {
            platform: PlatformKind::Sim,
            measurement,
            debug,
            report_data,
            proof: Vec::new(),
            collateral: Vec::new(),
        };
        ev.proof = self.root.sign(&ev.sim_signed_message()).to_bytes().to_vec();
        ev
    }
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("root_public", &hex(self.root_public().as_bytes()))
            .finish_non_exhaustive()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex (either case); the error says what is wrong.
pub fn unhex(s: &str) -> std::result::Result<Vec<u8>, String> {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() & 1 == 1 {
        return Err(format!("odd number of hex digits ({})", b.len()));
    }
    b.chunks_exact(2)
        .enumerate()
        .map(|(i, p)| match (nib(p[0]), nib(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(format!("non-hex character near position {}", 2 * i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        SimPlatform::dev().issue(measure(b"bin", b"cfg"), false, [7u8; 64])
    }

    #[test]
    fn measurement_is_domain_separated_and_length_prefixed() {
        assert_ne!(measure(b"ab", b"c"), measure(b"a", b"bc"));
        assert_ne!(measure(b"", b""), Measurement(Sha256::digest(b"").into()));
        let m = measure(b"enclave", b"budget=1G");
        assert_eq!(m.to_hex().parse::<Measurement>().unwrap(), m);
        assert_eq!(
            m.to_string().to_uppercase().parse::<Measurement>().unwrap(),
            m
        );
        assert!("abc".parse::<Measurement>().is_err());
        assert!("zz".repeat(32).parse::<Measurement>().is_err());
        assert!("00".repeat(31).parse::<Measurement>().is_err());
    }

    #[test]
    fn report_data_binds_every_input() {
        let base = report_data(&[1; 32], &[2; 32], b"params");
        assert_eq!(&base[32..], &[0u8; 32]);
        assert_ne!(base, report_data(&[9; 32], &[2; 32], b"params"));
        assert_ne!(base, report_data(&[1; 32], &[9; 32], b"params"));
        assert_ne!(base, report_data(&[1; 32], &[2; 32], b"params2"));
    }

    #[test]
    fn encoding_round_trip_and_strictness() {
        let ev = sample();
        let enc = ev.encode().unwrap();
        assert_eq!(enc.len(), FIXED_LEN + 4 + 64 + 4);
        assert_eq!(Evidence::decode(&enc).unwrap(), ev);
        assert_eq!(ev.hash().unwrap(), <[u8; 32]>::from(Sha256::digest(&enc)));

        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(Evidence::decode(&trailing).is_err());
        for cut in 0..enc.len() {
            assert!(Evidence::decode(&enc[..cut]).is_err(), "cut {cut}");
        }
        let mut bad_debug = enc.clone();
        bad_debug[4 + 2 + 1 + 32] = 2;
        assert!(Evidence::decode(&bad_debug).is_err());
        let mut bad_platform = enc.clone();
        bad_platform[6] = 9;
        assert!(Evidence::decode(&bad_platform).is_err());
        let mut bad_version = enc.clone();
        bad_version[4] = 2;
        let err = Evidence::decode(&bad_version).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn sim_evidence_shape_is_enforced() {
        let mut ev = sample();
        ev.collateral = b"x".to_vec();
        assert!(Evidence::decode(&ev.encode().unwrap()).is_err());
        let mut ev = sample();
        ev.proof.pop();
        assert!(Evidence::decode(&ev.encode().unwrap()).is_err());
        let mut ev = sample();
        ev.proof = vec![0; MAX_PROOF_LEN + 1];
        assert!(ev.encode().is_err());
    }

    #[test]
    fn dev_root_is_stable() {
        assert_eq!(SimPlatform::dev().root_public(), dev_root_public());
        assert_ne!(
            SimPlatform::from_secret(&[3; 32]).root_public(),
            dev_root_public()
        );
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
            vec![0, 1, 0xab, 0xff]
        );
    }
}
