//! Intel SGX under Gramine, through its `/dev/attestation` pseudo-files.
//!
//! With `sgx.remote_attestation = "dcap"` in the manifest (see
//! `deploy/gramine/hetee-enclave.manifest.template`), Gramine gives the enclave:
//! - `my_target_info` (read): the enclave's own TARGETINFO, whose first 32 bytes are MRENCLAVE
//!   and whose attributes (bytes 32..48) carry the DEBUG bit — the platform's measurement;
//! - `user_report_data` (write) then `quote` (read): an SGX DCAP quote over 64 bytes of report
//!   data. Gramine's quote holds no collateral; the host attaches it (PCCS) before sending;
//! - `keys/_sgx_mrenclave` (read): Gramine's 16-byte sealing key bound to MRENCLAVE (derived by
//!   EGETKEY with the enclave's CPU SVN and ISV SVN). hetee expands it to 32 bytes with
//!   HKDF-SHA256 (salt: MRENCLAVE, info: `hetee/gramine-sealing-key/v1`).
//!
//! Writing the report data and reading the quote is serialized with a lock so that two threads
//! of the enclave cannot interleave. The root is configurable (default `/dev/attestation`) so
//! tests run against a fake directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::evidence::{Evidence, Measurement, PlatformKind};
use crate::layout::sgx_quote_fields;
use crate::platform::Platform;

/// Where Gramine exposes its attestation pseudo-files.
pub const GRAMINE_ATTESTATION_ROOT: &str = "/dev/attestation";
/// HKDF info of the expanded sealing key.
const SEALING_INFO: &[u8] = b"hetee/gramine-sealing-key/v1";
/// Length of an SGX TARGETINFO.
const TARGET_INFO_LEN: usize = 512;

/// An SGX enclave running under Gramine with DCAP attestation.
#[derive(Debug)]
pub struct GramineSgx {
    root: PathBuf,
    measurement: Measurement,
    debug: bool,
    lock: Mutex<()>,
}

fn gramine_err(msg: String) -> Error {
    Error::Platform(format!("gramine: {msg}"))
}

impl GramineSgx {
    /// Opens Gramine's attestation interface at [`GRAMINE_ATTESTATION_ROOT`].
    pub fn open() -> Result<Self> {
        Self::open_at(GRAMINE_ATTESTATION_ROOT)
    }

    /// Opens Gramine's attestation interface at `root` and reads the enclave's measurement from
    /// `my_target_info` (or, if that file is absent, from a quote over zero report data).
    pub fn open_at(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(gramine_err(format!(
                "{} is not a directory; run the enclave under gramine-sgx with \
                 sgx.remote_attestation = \"dcap\" in its manifest",
                root.display()
            )));
        }
        if let Ok(t) = std::fs::read_to_string(root.join("attestation_type")) {
            if t.trim() != "dcap" {
                return Err(gramine_err(format!(
                    "attestation type is {:?}, not \"dcap\"; set sgx.remote_attestation = \
                     \"dcap\" in the manifest",
                    t.trim()
                )));
            }
        }
        let mut p = Self {
            root,
            measurement: Measurement([0; 32]),
            debug: false,
            lock: Mutex::new(()),
        };
        match std::fs::read(p.root.join("my_target_info")) {
            Ok(ti) => {
                if ti.len() != TARGET_INFO_LEN {
                    return Err(gramine_err(format!(
                        "my_target_info is {} bytes, expected {TARGET_INFO_LEN}",
                        ti.len()
                    )));
                }
                let mut m = [0u8; 32];
                m.copy_from_slice(&ti[..32]);
                p.measurement = Measurement(m);
                p.debug = ti[32] & 0x02 != 0;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let ev = p.quote(&[0; 64])?;
                p.measurement = ev.measurement;
                p.debug = ev.debug;
            }
            Err(e) => return Err(gramine_err(format!("cannot read my_target_info: {e}"))),
        }
        Ok(p)
    }

    /// The root directory in use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the enclave runs in debug mode (from its attributes).
    pub fn debug(&self) -> bool {
        self.debug
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Evidence> {
        let _serial = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let urd = self.root.join("user_report_data");
        std::fs::write(&urd, report_data).map_err(|e| {
            gramine_err(format!(
                "cannot write the report data to {}: {e}",
                urd.display()
            ))
        })?;
        let q = self.root.join("quote");
        let quote = std::fs::read(&q).map_err(|e| {
            gramine_err(format!(
                "cannot read the quote from {}: {e}; the host's AESM/QCNL (DCAP quote \
                 provider) must be set up",
                q.display()
            ))
        })?;
        sgx_quote_fields(&quote)?;
        Evidence::from_sgx_quote(quote, Vec::new())
    }
}

impl Platform for GramineSgx {
    fn kind(&self) -> PlatformKind {
        PlatformKind::SgxDcap
    }

    fn measurement(&self) -> Measurement {
        self.measurement
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence> {
        let ev = self.quote(report_data)?;
        if &ev.report_data != report_data {
            return Err(gramine_err(
                "the quote carries other report data than was written".into(),
            ));
        }
        if ev.measurement != self.measurement {
            return Err(gramine_err(format!(
                "the quote's MRENCLAVE {} differs from my_target_info's {}",
                ev.measurement, self.measurement
            )));
        }
        Ok(ev)
    }

    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        let path = self.root.join("keys").join("_sgx_mrenclave");
        let raw = Zeroizing::new(std::fs::read(&path).map_err(|e| {
            gramine_err(format!(
                "cannot read the MRENCLAVE sealing key {}: {e}",
                path.display()
            ))
        })?);
        if raw.len() != 16 {
            return Err(gramine_err(format!(
                "{} is {} bytes, expected Gramine's 16-byte key",
                path.display(),
                raw.len()
            )));
        }
        let hk = Hkdf::<Sha256>::new(Some(self.measurement.as_bytes()), &raw);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(SEALING_INFO, &mut key[..])
            .map_err(|e| Error::Crypto(format!("HKDF expand: {e}")))?;
        Ok(key)
    }
}
