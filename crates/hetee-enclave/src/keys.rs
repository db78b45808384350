//! Key sets and registered models, and how they are sealed to the
//! enclave's measurement so that a restarted enclave can take them back.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, PublicKey, SecretKey};
use fhe_traits::{DeserializeParametrized, Serialize as _};
use hetee_attest::Measurement;
use hetee_he::secret::SecretOps;
use hetee_he::HeConfig;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use hetee_proto::channel::{ModelTerms, OutputPolicy};
use hetee_proto::ids::{ClientKey, KeyId, ModelId};

use crate::freivalds::StageCheck;
use crate::schedule::Schedule;
use crate::EnclaveError;

const KEYS_LABEL: &str = "keys-v2";
const MODEL_LABEL: &str = "model-v3";

/// A BFV key set. The secret key is zeroized on drop by `fhe`.
pub struct KeySet {
    /// Its id.
    pub key_id: KeyId,
    /// The parameters.
    pub he: HeConfig,
    /// The model provider who asked for it: only its channel key may
    /// register or manage models under this key set.
    pub owner: ClientKey,
    /// Built parameters.
    pub par: Arc<BfvParameters>,
    /// The secret key; never leaves the enclave unsealed.
    pub sk: SecretKey,
    /// The secret key prepared for fast decryption and encryption.
    pub ops: SecretOps,
    /// Serialized public key (kept so it stays the same across restarts).
    pub public_key: Vec<u8>,
    /// The public key.
    pub pk: PublicKey,
    /// Encryptions of zero made ahead for this key set.
    pub reserve: crate::reserve::Reserve,
}

/// What is sealed for a key set.
#[derive(Serialize, Deserialize)]
struct KeysSnapshot {
    key_id: KeyId,
    he: HeConfig,
    owner: ClientKey,
    secret_key: Vec<u8>,
    public_key: Vec<u8>,
}

impl Drop for KeysSnapshot {
    fn drop(&mut self) {
        self.secret_key.zeroize();
    }
}

/// A registered model: its secrets and the key set it uses.
#[derive(Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its id.
    pub model_id: ModelId,
    /// Key set its weights are encrypted under.
    pub key_id: KeyId,
    /// Commitment to the uploaded weights.
    pub commitment: [u8; 32],
    /// The compiled model without weights.
    pub schedule: Schedule,
    /// Freivalds checks, one per stage, drawn by the enclave at registration.
    pub checks: Vec<StageCheck>,
    /// Policy, budget and lock threshold.
    pub terms: ModelTerms,
}

impl ModelRecord {
    /// Checks that the Freivalds vectors fit the schedule and the terms make sense.
    pub fn validate_checks(&self) -> Result<(), EnclaveError> {
        if self.terms.lock_after == 0 {
            return Err(protocol("the lock threshold must be at least 1".into()));
        }
        if self.checks.len() != self.schedule.stages.len() {
            return Err(protocol(format!(
                "{} check vectors for {} stages",
                self.checks.len(),
                self.schedule.stages.len()
            )));
        }
        for (k, (c, st)) in self.checks.iter().zip(&self.schedule.stages).enumerate() {
            let outs: usize = st.tail.linear_output_shape().iter().product();
            let ins = st.spec.c * st.spec.h * st.spec.w;
            let in_range = c.r.iter().chain(&c.v).all(|&x| x < crate::freivalds::P);
            let degenerate = c.r.iter().all(|&x| x == 0);
            if c.r.len() != outs || c.v.len() != ins || !in_range || degenerate {
                return Err(protocol(format!("stage {k}: malformed check vectors")));
            }
        }
        if let OutputPolicy::TopK(k) = self.terms.policy {
            let classes: usize = self
                .schedule
                .stages
                .last()
                .map(|s| s.tail.output_shape.iter().product())
                .unwrap_or(0);
            if k == 0 || k as usize > classes {
                return Err(protocol(format!("top-{k} of {classes} classes")));
            }
        }
        Ok(())
    }
}

/// Sealing context: the sealing key (the platform's, or the one this
/// enclave adopted from a peer of its cluster) and the measurement.
pub struct Sealer {
    /// The sealing key.
    pub secret: Zeroizing<[u8; 32]>,
    /// This enclave's measurement.
    pub measurement: Measurement,
}

fn protocol(msg: String) -> EnclaveError {
    EnclaveError::Protocol(msg)
}

impl Sealer {
    fn seal(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, EnclaveError> {
        hetee_attest::seal::seal(&self.secret, &self.measurement, label, plain)
            .map_err(|e| protocol(format!("cannot seal: {e}")))
    }

    fn unseal(&self, label: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnclaveError> {
        hetee_attest::seal::unseal(&self.secret, &self.measurement, label, sealed)
            .map_err(|e| protocol(format!("cannot unseal ({label}): {e}")))
    }

    /// Generates a key set owned by `owner`; returns it and its sealed blob.
    pub fn create_keys(
        &self,
        he: HeConfig,
        owner: ClientKey,
    ) -> Result<(KeySet, Vec<u8>), EnclaveError> {
        he.check_security()?;
        let par = he.build()?;
        let mut rng = rand::rng();
        let sk = SecretKey::random(&par, &mut rng);
        let pk = PublicKey::new(&sk, &mut rng);
        let ops = SecretOps::from_secret_key_bytes(&par, &Zeroizing::new(sk.to_bytes()))?;
        let public_key = pk.to_bytes();
        let key_id: KeyId = rand::random();
        let snap = KeysSnapshot {
            key_id,
            he: he.clone(),
            owner,
            secret_key: sk.to_bytes(),
            public_key: public_key.clone(),
        };
        let plain = Zeroizing::new(
            postcard::to_allocvec(&snap).map_err(|e| protocol(format!("encode keys: {e}")))?,
        );
        let sealed = self.seal(KEYS_LABEL, &plain)?;
        let ks = KeySet {
            key_id,
            he,
            owner,
            par,
            sk,
            ops,
            public_key,
            pk,
            reserve: Default::default(),
        };
        Ok((ks, sealed))
    }

    /// Restores a sealed key set.
    pub fn restore_keys(&self, sealed: &[u8]) -> Result<KeySet, EnclaveError> {
        let plain = self.unseal(KEYS_LABEL, sealed)?;
        let snap: KeysSnapshot = postcard::from_bytes(&plain)
            .map_err(|e| protocol(format!("sealed keys are malformed: {e}")))?;
        snap.he.check_security()?;
        let par = snap.he.build()?;
        let ops = SecretOps::from_secret_key_bytes(&par, &snap.secret_key)?;
        let sk = SecretKey::from_bytes(&snap.secret_key, &par)
            .map_err(|e| protocol(format!("sealed secret key is malformed: {e}")))?;
        let pk = PublicKey::from_bytes(&snap.public_key, &par)
            .map_err(|e| protocol(format!("sealed public key is malformed: {e}")))?;
        Ok(KeySet {
            key_id: snap.key_id,
            he: snap.he.clone(),
            owner: snap.owner,
            par,
            sk,
            ops,
            public_key: snap.public_key.clone(),
            pk,
            reserve: Default::default(),
        })
    }

    /// Seals any record under `label`.
    pub fn seal_record<T: Serialize>(&self, label: &str, r: &T) -> Result<Vec<u8>, EnclaveError> {
        let plain = Zeroizing::new(
            postcard::to_allocvec(r).map_err(|e| protocol(format!("encode {label}: {e}")))?,
        );
        self.seal(label, &plain)
    }

    /// Opens a record sealed under `label`.
    pub fn unseal_record<T: serde::de::DeserializeOwned>(
        &self,
        label: &str,
        sealed: &[u8],
    ) -> Result<T, EnclaveError> {
        let plain = self.unseal(label, sealed)?;
        postcard::from_bytes(&plain)
            .map_err(|e| protocol(format!("sealed {label} is malformed: {e}")))
    }

    /// Seals a model record.
    pub fn seal_model(&self, m: &ModelRecord) -> Result<Vec<u8>, EnclaveError> {
        let plain = Zeroizing::new(
            postcard::to_allocvec(m).map_err(|e| protocol(format!("encode model: {e}")))?,
        );
        self.seal(MODEL_LABEL, &plain)
    }

    /// Restores a sealed model record.
    pub fn restore_model(&self, sealed: &[u8]) -> Result<ModelRecord, EnclaveError> {
        let plain = self.unseal(MODEL_LABEL, sealed)?;
        let m: ModelRecord = postcard::from_bytes(&plain)
            .map_err(|e| protocol(format!("sealed model is malformed: {e}")))?;
        m.schedule.validate()?;
        m.validate_checks()?;
        Ok(m)
    }
}
