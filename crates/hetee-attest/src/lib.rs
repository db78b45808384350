//! `hetee-attest`: the trust plumbing shared by hetee clients and the enclave.
//!
//! - [`frame`]: length-prefixed, versioned frames over any byte stream;
//! - [`evidence`]: measurements, report data, the evidence format and the simulated platform;
//! - [`layout`]: unverified reads of raw SGX/TDX quotes and SEV-SNP reports, and how each
//!   platform's measurement maps to 32 bytes;
//! - [`verify`]: evidence verifiers (simulated, SGX and TDX DCAP, SEV-SNP), the [`Verifiers`]
//!   registry and the acceptance [`Policy`];
//! - [`channel`]: the Noise `XK` secure channel bound to the evidence;
//! - [`seal`]: sealing data to an enclave measurement;
//! - [`platform`]: what a TEE gives the enclave (measurement, evidence, sealing key).
//!
//! No networking; the real platforms read the kernel's or Gramine's pseudo-files. Nothing here panics on bytes received from a peer: every
//! decoder returns an [`Error`] that says what is wrong and what to do.
//!
//! A client's path: receive evidence plus the enclave's channel key and HE public key → check
//! them with [`Policy::check_bound`] → open a channel with [`ClientHandshake::new`] using
//! [`Evidence::hash`] as prologue.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod error;
pub mod evidence;
pub mod frame;
pub mod layout;
pub mod oneway;
pub mod platform;
pub mod seal;
pub mod verify;

pub use channel::{ClientHandshake, EnclaveHandshake, StaticKeypair, Transport};
pub use error::{Error, Result};
pub use evidence::{measure, report_data, Evidence, Measurement, PlatformKind, SimPlatform};
pub use frame::{Frame, FrameCodec};
#[cfg(feature = "dcap")]
pub use verify::DcapVerifier;
#[cfg(feature = "snp")]
pub use verify::SnpVerifier;
#[cfg(feature = "tdx")]
pub use verify::TdxVerifier;
pub use verify::{EvidenceVerifier, Policy, SimVerifier, VerifiedReport, Verifiers};
