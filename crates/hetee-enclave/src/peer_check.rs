//! How an enclave checks a peer enclave's evidence before it shares the
//! cluster's sealing key with it, or adopts the key it shares: the evidence
//! is authentic (signature chain to the vendor's production root, checked
//! inside the enclave), from the enclave's own platform kind, not debug,
//! with the enclave's own measurement, and binds the expected report data.
//!
//! Real platforms use [`Verifiers::production`]: Intel's SGX root for SGX
//! DCAP quotes and TDX quotes (up-to-date TCBs only), AMD's Milan, Genoa and
//! Turin ARKs for SEV-SNP reports. A simulated enclave checks only
//! simulated peers, under the development root ([`SimVerifier::dev`]).
//!
//! The clock: certificate, CRL and collateral validity are checked against
//! the time the enclave reads from its host (`SystemTime`, which on SGX
//! under Gramine, TDX and SEV-SNP guests the host controls). A host can
//! therefore make expired collateral or a revoked certificate look current;
//! it cannot forge a quote or report, change the measurement it binds or
//! the report data, so a peer it brings in still runs this enclave's code
//! on a genuine CPU of this platform kind.

use std::time::{SystemTime, UNIX_EPOCH};

use hetee_attest::verify::{Policy, SimVerifier, VerifiedReport, Verifiers};
use hetee_attest::{Evidence, Measurement, PlatformKind};

/// Why a peer's evidence is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerRefused {
    /// The evidence does not decode.
    #[error("the peer's evidence is malformed: {0}")]
    Malformed(#[source] hetee_attest::Error),
    /// The peer runs on another platform kind than this enclave.
    #[error("the peer runs on {peer:?}, this enclave on {own:?}")]
    OtherPlatform {
        /// The peer's platform.
        peer: PlatformKind,
        /// This enclave's platform.
        own: PlatformKind,
    },
    /// The evidence fails verification or the policy: signature chain,
    /// debug, measurement or report data (the cause says which).
    #[error("the peer's evidence is refused: {0}")]
    Refused(#[source] hetee_attest::Error),
}

/// The verifiers an enclave checks its peers with: the production roots of
/// every real platform, and the development root for simulated peers.
pub fn peer_verifiers() -> Verifiers {
    Verifiers::production().with_sim(SimVerifier::dev())
}

/// The host's clock, in seconds since the Unix epoch (untrusted: see the
/// module doc).
pub fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a peer's encoded `evidence` for an enclave on platform `own` with
/// `measurement`: authentic under `verifiers` at `now_unix`, of platform
/// `own` (simulated evidence only when `own` is simulated), not debug, with
/// `measurement`, and binding `want` as report data. Pure: the enclave
/// passes [`peer_verifiers`] and [`host_clock`].
pub fn check_peer_evidence(
    verifiers: &Verifiers,
    own: PlatformKind,
    measurement: Measurement,
    evidence: &[u8],
    want: &[u8; 64],
    now_unix: u64,
) -> Result<VerifiedReport, PeerRefused> {
    let ev = Evidence::decode(evidence).map_err(PeerRefused::Malformed)?;
    if ev.platform != own {
        return Err(PeerRefused::OtherPlatform {
            peer: ev.platform,
            own,
        });
    }
    let policy = Policy {
        expected_measurement: measurement,
        allow_sim: own == PlatformKind::Sim,
        allow_debug: false,
    };
    policy
        .check(verifiers, &ev, want, now_unix)
        .map_err(PeerRefused::Refused)
}
