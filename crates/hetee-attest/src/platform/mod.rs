//! What a TEE gives the code inside it: its measurement, evidence over 64 bytes of report data,
//! and a sealing key bound to the measurement.
//!
//! The enclave asks its [`Platform`] for all three; the host never hands the enclave an identity
//! or a secret. One module per platform:
//! - [`sim`]: the simulated TEE (structure only, protects nothing; clients refuse it unless told
//!   otherwise);
//! - [`tsm`]: Intel TDX and AMD SEV-SNP guests through Linux configfs-tsm;
//! - [`gramine`]: Intel SGX enclaves under Gramine (`/dev/attestation`).
//!
//! [`open`] picks a platform by name, so a new platform is one module here and one verifier in
//! [`crate::verify`].
//!
//! | platform | measurement | sealing key | rollback |
//! |---|---|---|---|
//! | `sim` | hash of binary + config | HKDF of a published root: **no secrecy** | none |
//! | `gramine` (SGX) | MRENCLAVE | Gramine `_sgx_mrenclave` key (EGETKEY), HKDF to 32 bytes | none: the host can replay old sealed blobs |
//! | `tdx` | SHA-256 of TD attributes, XFAM, MRTD, MRCONFIGID/MROWNER(CONFIG), RTMR0..3 | none: keys from a peer enclave or recreated | n/a |
//! | `snp` | SHA-256 of MEASUREMENT, HOST_DATA, POLICY, VMPL | not in this build (needs SNP_GET_DERIVED_KEY) | n/a |

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::evidence::{Evidence, Measurement, PlatformKind};

pub mod gramine;
pub mod sim;
pub mod tsm;

pub use gramine::GramineSgx;
pub use sim::SimTee;
pub use tsm::TsmPlatform;

/// The platform names [`open`] knows.
pub const PLATFORM_NAMES: &[&str] = &["sim", "gramine", "tdx", "snp", "tsm"];

/// The trusted platform under an enclave.
pub trait Platform: Send + Sync {
    /// Which kind of evidence this platform produces.
    fn kind(&self) -> PlatformKind;

    /// The measurement of the running enclave, as the platform took it.
    fn measurement(&self) -> Measurement;

    /// Evidence binding `report_data` to this enclave's measurement, signed by the platform.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence>;

    /// A 32-byte key that only an enclave with this measurement on this platform can derive.
    /// Platforms without one return an error that says so (see the README's platform table).
    fn sealing_key(&self) -> Result<Zeroizing<[u8; 32]>>;
}

/// Opens the platform called `name`:
/// - `sim`: [`SimTee::measure_self`] with `config`;
/// - `gramine`: [`GramineSgx::open`];
/// - `tsm`: [`TsmPlatform::open`], whichever of TDX or SEV-SNP the kernel provides;
/// - `tdx`, `snp`: the same, refusing the other provider.
///
/// `config` is measured only by the simulated platform. On real platforms the hardware measures
/// what was loaded, so the enclave's configuration must be part of that (the Gramine manifest,
/// the TD or guest image): it is ignored here.
pub fn open(name: &str, config: &[u8]) -> Result<Box<dyn Platform>> {
    match name {
        "sim" => Ok(Box::new(SimTee::measure_self(config)?)),
        "gramine" => Ok(Box::new(GramineSgx::open()?)),
        "tsm" | "tdx" | "snp" => {
            let p = TsmPlatform::open()?;
            let want = match name {
                "tdx" => Some(PlatformKind::TdxDcap),
                "snp" => Some(PlatformKind::SevSnp),
                _ => None,
            };
            match want {
                Some(w) if w != p.kind() => Err(Error::Platform(format!(
                    "asked for {name} but this guest's configfs-tsm provider gives {} evidence; \
                     use --platform tsm to accept either",
                    p.kind()
                ))),
                _ => Ok(Box::new(p)),
            }
        }
        other => Err(Error::Platform(format!(
            "unknown platform {other:?}; known platforms: {}",
            PLATFORM_NAMES.join(", ")
        ))),
    }
}
