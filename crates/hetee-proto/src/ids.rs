//! Ids, digests and commitments, and the attested identity of a key set.

use hetee_he::HeConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::channel::ModelTerms;
use crate::schedule::Schedule;
use crate::ProtoError;

/// Identifies a key set (random, chosen by the enclave).
pub type KeyId = [u8; 16];
/// Identifies a registered model: [`model_id`] of its key set, weights and secrets.
pub type ModelId = [u8; 16];
/// Identifies a channel and the session it carries (random).
pub type SessionId = [u8; 16];
/// A party's long-term Noise static public key (X25519).
pub type ClientKey = [u8; 32];
/// Identifies one logical query of a data provider: random, drawn by the
/// client, and reused by every retry of that query (on any replica, in a new
/// session) so that a budgeted model counts it once.
pub type QueryId = [u8; 16];

/// The public identity of a key set: what the report data binds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The key set.
    pub key_id: KeyId,
    /// The enclave's measurement.
    pub measurement: [u8; 32],
    /// The enclave's static Noise key.
    pub channel_public_key: [u8; 32],
    /// Serialized BFV public key.
    pub public_key: Vec<u8>,
    /// The BFV parameters, as bound in the report data ([`he_params_bytes`]).
    pub he_params: Vec<u8>,
    /// The enclave's Ed25519 key that signs results.
    pub signing_public_key: [u8; 32],
    /// The key set's owner: the long-term Noise static key of the model
    /// provider that asked for it. Only this key may register models under
    /// the key set or manage them.
    pub owner: [u8; 32],
}

impl Identity {
    /// SHA-256 of the public key.
    pub fn public_key_hash(&self) -> [u8; 32] {
        Sha256::digest(&self.public_key).into()
    }

    /// The report data the platform must attest for this identity:
    /// `hetee_attest::report_data(channel key, SHA-256(public key), he_params)`.
    /// The second half binds the key set, its owner and the result-signing
    /// key: [`key_set_binding`].
    pub fn report_data(&self) -> [u8; 64] {
        let mut rd = hetee_attest::report_data(
            &self.channel_public_key,
            &self.public_key_hash(),
            &self.he_params,
        );
        rd[32..].copy_from_slice(&key_set_binding(
            &self.key_id,
            &self.owner,
            &self.signing_public_key,
        ));
        rd
    }
}

/// The report-data half that binds a key set's id, its owner and the
/// enclave's result-signing key:
/// `SHA-256("hetee/key-set/v2" ‖ key id ‖ owner ‖ signing key)`.
pub fn key_set_binding(key_id: &KeyId, owner: &[u8; 32], signing_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hetee/key-set/v2");
    h.update(key_id);
    h.update(owner);
    h.update(signing_key);
    h.finalize().into()
}

/// The canonical bytes of BFV parameters bound in the report data.
pub fn he_params_bytes(he: &HeConfig) -> Vec<u8> {
    postcard::to_allocvec(he).unwrap_or_default()
}

/// Parses [`he_params_bytes`].
pub fn he_params_from_bytes(b: &[u8]) -> Result<HeConfig, ProtoError> {
    postcard::from_bytes(b)
        .map_err(|e| ProtoError::Protocol(format!("malformed HE parameters: {e}")))
}

fn hash_blobs(domain: &[u8], groups: &[&[Vec<u8>]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update((groups.len() as u64).to_le_bytes());
    for g in groups {
        h.update((g.len() as u64).to_le_bytes());
        for b in g.iter() {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
    h.finalize().into()
}

/// Commitment to a model's uploaded weight ciphertexts (per stage, in order).
pub fn weights_commitment(stages: &[Vec<Vec<u8>>]) -> [u8; 32] {
    let groups: Vec<&[Vec<u8>]> = stages.iter().map(|s| s.as_slice()).collect();
    hash_blobs(b"hetee/weights/v1", &groups)
}

/// Digest binding a query's input ciphertexts: BLAKE3 in key-derivation
/// mode under its own context, over each ciphertext's length and bytes.
/// The enclave computes it for every HE query before admitting it (about
/// 115 KB for an MNIST image): BLAKE3 hashes the chunks side by side,
/// 18 µs where SHA-256 took 55 (115 KB, one core; `cargo bench -p
/// hetee-proto --bench digest`).
pub fn input_digest(cts: &[Vec<u8>]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("hetee 2026-11 input ciphertexts v2");
    h.update(&(cts.len() as u64).to_le_bytes());
    for b in cts {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    }
    h.finalize().into()
}

/// Digest of a thin query's plaintext input.
pub fn thin_input_digest(images: &[Vec<f32>]) -> [u8; 32] {
    let bytes: Vec<Vec<u8>> = images
        .iter()
        .map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    hash_blobs(b"hetee/thin-input/v1", &[&bytes])
}

fn id16(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d: [u8; 32] = h.finalize().into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// An upload's id: derived from the key set and the weights commitment, so
/// the model provider and the host compute the same.
pub fn upload_id(key_id: &KeyId, commitment: &[u8; 32]) -> [u8; 16] {
    id16(&[b"hetee/upload-id/v1", key_id, commitment])
}

/// Digest of a registration's secrets: schedule, plaintext weights, output
/// policy, query budget and lock threshold. The model provider can compute
/// it; the host cannot (it never sees the weights).
pub fn registration_digest(
    schedule: &Schedule,
    weights: &[Vec<i8>],
    terms: &ModelTerms,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hetee/registration/v3");
    h.update(postcard::to_allocvec(schedule).unwrap_or_default());
    h.update(postcard::to_allocvec(weights).unwrap_or_default());
    h.update(postcard::to_allocvec(terms).unwrap_or_default());
    h.finalize().into()
}

/// A registered model's id: binds the key set (and so its owner), the
/// weights commitment and the registration's secrets.
pub fn model_id(key_id: &KeyId, commitment: &[u8; 32], registration: &[u8; 32]) -> ModelId {
    id16(&[b"hetee/model-id/v3", key_id, commitment, registration])
}

/// Lowercase hex of an id.
pub fn id_hex(id: &[u8]) -> String {
    hetee_attest::evidence::hex(id)
}

/// Parses a 16-byte id from hex.
pub fn id_from_hex(s: &str) -> Result<[u8; 16], String> {
    let v = hetee_attest::evidence::unhex(s.trim())?;
    v.try_into()
        .map_err(|_| format!("an id is 32 hex digits, got {:?}", s.trim()))
}
