//! The verifier of simulated evidence: an Ed25519 signature under a pinned root.

use ed25519_dalek::{Signature, VerifyingKey};

use super::{EvidenceVerifier, VerifiedReport};
use crate::error::{Error, Result};
use crate::evidence::{dev_root_public, hex, Evidence, PlatformKind};

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
        if ev.platform != PlatformKind::Sim {
            return Err(Error::WrongPlatform {
                expected: PlatformKind::Sim,
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
            platform: PlatformKind::Sim,
            measurement: ev.measurement,
            debug: ev.debug,
            report_data: ev.report_data,
            tcb_status: None,
            advisory_ids: Vec::new(),
        })
    }
}
