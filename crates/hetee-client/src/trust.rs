//! Checking the server's enclave before trusting it: the evidence must be
//! authentic, for the pinned measurement, and bind the channel key, the HE
//! public key, the HE parameters, the key set's owner and the result-signing
//! key the server handed over.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use fhe::bfv::{BfvParameters, PublicKey};
use fhe_traits::DeserializeParametrized;
use hetee_attest::{Evidence, Measurement, Policy, SimVerifier, Verifiers};
use hetee_he::HeConfig;
use hetee_proto::api::{unb64, KeysInfo};
use hetee_proto::ids::{he_params_from_bytes, id_from_hex, key_set_binding, KeyId};
use sha2::{Digest, Sha256};

/// The client refused the server's enclave: its evidence did not pass the
/// policy (another measurement, the simulated platform without
/// `--allow-sim`, a bad signature, a report that binds other keys).
/// Carried inside the `anyhow` error of [`verify`], so callers can tell a
/// refusal from other failures with `downcast_ref`.
#[derive(Debug, thiserror::Error)]
#[error("refusing the server's enclave: {0}")]
pub struct AttestationRefused(pub String);

/// What a client accepts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Measurement of the published enclave build (hex on the command line).
    pub measurement: Measurement,
    /// Accept the simulated platform (protects nothing; testing only).
    pub allow_sim: bool,
}

impl Trust {
    /// From `--expect-measurement HEX [--allow-sim]`.
    pub fn new(measurement_hex: &str, allow_sim: bool) -> Result<Self> {
        let bytes = hetee_attest::evidence::unhex(measurement_hex.trim())
            .map_err(|e| anyhow!("--expect-measurement: {e}"))?;
        let m: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow!(
                "--expect-measurement takes 64 hex digits (print it with `hetee enclave measure`)"
            )
        })?;
        Ok(Trust {
            measurement: Measurement(m),
            allow_sim,
        })
    }
}

/// A key set whose evidence checked out.
pub struct AttestedKeys {
    /// Its id.
    pub key_id: KeyId,
    /// BFV parameters.
    pub he: HeConfig,
    /// Built parameters.
    pub par: Arc<BfvParameters>,
    /// The enclave's HE public key.
    pub public_key: PublicKey,
    /// The enclave's static channel key.
    pub channel_key: [u8; 32],
    /// Hash of the evidence: the Noise prologue.
    pub evidence_hash: [u8; 32],
    /// The enclave's result-signing key, parsed once (each result's
    /// signature is checked under it).
    pub signing_key: ed25519_dalek::VerifyingKey,
    /// The key set's owner (a model provider's long-term channel key).
    pub owner: [u8; 32],
}

fn key32(hex: &str, what: &str) -> Result<[u8; 32]> {
    let v = hetee_attest::evidence::unhex(hex).map_err(|e| anyhow!("{what}: {e}"))?;
    v.try_into().map_err(|_| anyhow!("{what} is not 32 bytes"))
}

/// Verifies `info` under `trust`.
pub fn verify(info: &KeysInfo, trust: &Trust) -> Result<AttestedKeys> {
    let ev_bytes = unb64(&info.evidence, "evidence").map_err(|e| anyhow!(e))?;
    let ev = Evidence::decode(&ev_bytes).context("the server's evidence is malformed")?;
    let he_params = unb64(&info.he_params, "he_params").map_err(|e| anyhow!(e))?;
    let pk_bytes = unb64(&info.public_key, "public_key").map_err(|e| anyhow!(e))?;
    let channel_key = key32(&info.channel_public_key, "the channel key")?;
    let signing_key = key32(&info.signing_public_key, "the result-signing key")?;
    let owner = key32(&info.owner, "the key set's owner")?;
    let key_id = id_from_hex(&info.key_id).map_err(|e| anyhow!(e))?;
    let pk_hash: [u8; 32] = Sha256::digest(&pk_bytes).into();
    // What the report data must be: the channel key, HE key and parameters,
    // and (second half) the key set, its owner and the result-signing key.
    let mut expected = hetee_attest::report_data(&channel_key, &pk_hash, &he_params);
    expected[32..].copy_from_slice(&key_set_binding(&key_id, &owner, &signing_key));
    let mut policy = Policy::new(trust.measurement);
    policy.allow_sim = trust.allow_sim;
    let verifiers = Verifiers::production().with_sim(SimVerifier::dev());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    policy
        .check(&verifiers, &ev, &expected, now)
        .map_err(|e| match e {
            hetee_attest::Error::SimNotAllowed => AttestationRefused(
                "its evidence comes from the simulated platform, which protects nothing; \
                 pass --allow-sim only for testing"
                    .into(),
            ),
            other => AttestationRefused(other.to_string()),
        })?;
    let he = he_params_from_bytes(&he_params)?;
    let par = he.build()?;
    let public_key = PublicKey::from_bytes(&pk_bytes, &par)
        .map_err(|e| anyhow!("the attested HE public key does not parse: {e}"))?;
    Ok(AttestedKeys {
        key_id,
        owner,
        he,
        par,
        public_key,
        channel_key,
        evidence_hash: ev.hash()?,
        // Bound by the evidence just checked.
        signing_key: ed25519_dalek::VerifyingKey::from_bytes(&signing_key)
            .map_err(|e| anyhow!("the attested result-signing key is invalid: {e}"))?,
    })
}
