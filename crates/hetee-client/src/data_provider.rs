//! The data provider: check the enclave, encrypt its inputs under the
//! attested HE key, and receive the logits over the channel (the server
//! never sees them).

use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Result};
use hetee_attest::StaticKeypair;
use hetee_proto::api::{KeysInfo, ModelInfo};
use hetee_proto::messages::{
    id_from_hex, id_hex, ClientMessage, EnclaveMessage, QueryId, QueryResult,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::channel::Session;
use crate::public_meta::PublicMeta;
pub use crate::query_session::QuerySession;
use crate::relay::Relay;
use crate::trust::{verify, AttestedKeys, Trust};

/// A model the data provider has checked.
pub struct Target {
    api: Arc<dyn Relay>,
    trust: Trust,
    /// The attested keys and what they were verified from; refreshed when
    /// the enclave restarts (new channel key, new evidence).
    current: RwLock<Arc<(AttestedKeys, Arc<KeysInfo>)>>,
    client: Option<Arc<StaticKeypair>>,
    model_id: [u8; 16],
    /// Images per query.
    pub batch: usize,
    /// One image's shape, as the enclave's query plan gives it.
    pub input_shape: Vec<usize>,
    /// The model's public metadata as the host serves it (not attested).
    pub public: PublicMeta,
}

/// The result of one query.
pub struct Answer {
    /// Logits per image (policy `Logits`; empty otherwise).
    pub logits: Vec<Vec<f32>>,
    /// Labels per image, best first (policies `TopK`, `Label`; empty otherwise).
    pub labels: Vec<Vec<u32>>,
    /// The signed result, to show a third party what the model said.
    pub receipt: Receipt,
    /// Host time reported by the server (ms).
    pub host_ms: f64,
    /// Enclave time reported by the server (ms).
    pub enclave_ms: f64,
    /// Per-stage figures reported by the server.
    pub stages: Vec<hetee_proto::api::StageStats>,
    /// How many sessions shared the server's query (a stacked thin query:
    /// the figures above are the whole stack's); 1 otherwise.
    pub stacked: u32,
    /// Bytes this client sent: the input ciphertexts and the sealed query.
    pub bytes_up: usize,
    /// Sealed result bytes this client received.
    pub bytes_down: usize,
}

/// One logical query's identity, kept across its attempts: its id and the
/// secret seed of its input encryption. A retry with the same ticket and
/// the same images sends the same id and the same input (the same
/// ciphertexts, or the same plaintext for a thin query), so a budgeted
/// model counts the query once (up to the enclave's bound of recent ids
/// per client key, `hetee_enclave::query_ids::MAX_RECENT_QUERIES`).
pub struct Ticket {
    /// The query's id.
    pub query_id: QueryId,
    /// The seed of the input's encryption randomness (secret: only the
    /// enclave sees it).
    pub(crate) seed: Zeroizing<[u8; 32]>,
}

impl Ticket {
    /// A fresh ticket: a random id and seed.
    pub fn new() -> Self {
        Ticket {
            query_id: rand::random(),
            seed: Zeroizing::new(rand::random()),
        }
    }
}

impl Default for Ticket {
    fn default() -> Self {
        Self::new()
    }
}

/// A result signed by the attested enclave, with the evidence that binds
/// the signing key. Anyone who trusts the measurement can check it with
/// [`Receipt::verify`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    /// The result as signed.
    pub result: QueryResult,
    /// Ed25519 signature (hex).
    pub signature: String,
    /// The enclave's attested keys and evidence at query time (shared by
    /// every receipt of the same keys: about 200 KB, mostly the HE public
    /// key).
    pub keys: Arc<KeysInfo>,
}

impl Receipt {
    /// Checks the evidence under `trust` and the signature under the key it binds.
    pub fn verify(&self, trust: &Trust) -> Result<()> {
        self.verify_against(&verify(&self.keys, trust)?)
    }
}

impl Target {
    /// Fetches the model's attested keys, verifies them and asks the
    /// enclave for the query plan, as `client` (a long-term key the model's
    /// owner may list; `None`: a throwaway key, for open models).
    pub fn connect(
        api: Arc<dyn Relay>,
        trust: &Trust,
        model_id: &str,
        client: Option<StaticKeypair>,
    ) -> Result<Self> {
        Self::connect_as(api, trust, model_id, client.map(Arc::new))
    }

    /// [`Target::connect`] with a client key shared with other targets
    /// (the replicas of a [`crate::failover::Replicas`]).
    pub fn connect_as(
        api: Arc<dyn Relay>,
        trust: &Trust,
        model_id: &str,
        client: Option<Arc<StaticKeypair>>,
    ) -> Result<Self> {
        let id = id_from_hex(model_id).map_err(|e| anyhow!("--model-id: {e}"))?;
        let mut last = None;
        // An enclave restart between the two steps invalidates the keys:
        // fetch them again and retry.
        for _ in 0..3 {
            match Self::connect_once(api.clone(), trust, id, client.clone()) {
                Ok(t) => return Ok(t),
                Err(e) if is_restart(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("cannot connect")))
    }

    fn fetch(
        api: &dyn Relay,
        trust: &Trust,
        id: &[u8; 16],
    ) -> Result<(AttestedKeys, Arc<KeysInfo>)> {
        let info: ModelInfo = api.model(&id_hex(id))?;
        if !info.registered {
            bail!(
                "model {} is uploaded but its provider has not registered it yet",
                id_hex(id)
            );
        }
        Ok((verify(&info.keys, trust)?, Arc::new(info.keys)))
    }

    fn connect_once(
        api: Arc<dyn Relay>,
        trust: &Trust,
        id: [u8; 16],
        client: Option<Arc<StaticKeypair>>,
    ) -> Result<Self> {
        let (keys, info) = Self::fetch(api.as_ref(), trust, &id)?;
        // Ask the enclave (not the host) how a query is laid out.
        let (s, answer) = Session::open_as(
            api.as_ref(),
            &keys,
            Some(&id),
            &ClientMessage::Hello { model_id: id },
            client.as_deref(),
        )?;
        api.close_session(&s.id);
        let EnclaveMessage::Plan(plan) = answer else {
            bail!("the enclave did not send a query plan");
        };
        let public = api.public_meta(&id_hex(&id))?;
        Ok(Target {
            public,
            api,
            trust: trust.clone(),
            current: RwLock::new(Arc::new((keys, info))),
            client,
            model_id: id,
            batch: plan.batch,
            input_shape: plan.input_shape,
        })
    }

    fn keys(&self) -> Arc<(AttestedKeys, Arc<KeysInfo>)> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Opens a session with the model: attests (again, if the enclave
    /// restarted since), handshakes and says hello. The session then runs
    /// any number of queries without another handshake.
    pub fn session(&self) -> Result<QuerySession> {
        let hello = ClientMessage::Hello {
            model_id: self.model_id,
        };
        let mut current = self.keys();
        let client = self.client.as_deref();
        let id = Some(&self.model_id);
        let api = self.api.as_ref();
        let opened = match Session::open_as(api, &current.0, id, &hello, client) {
            Err(e) if is_restart(&e) => {
                // The enclave restarted since we attested it: attest again.
                let fresh = Arc::new(Self::fetch(api, &self.trust, &self.model_id)?);
                if let Ok(mut w) = self.current.write() {
                    *w = fresh.clone();
                }
                current = fresh;
                Session::open_as(api, &current.0, id, &hello, client)
            }
            r => r,
        };
        let (s, answer) = opened?;
        let EnclaveMessage::Plan(plan) = answer else {
            api.close_session(&s.id);
            bail!("the enclave did not send a query plan");
        };
        QuerySession::new(self.api.clone(), s, current, *plan, self.model_id)
    }

    /// One query of up to the model's batch of images, in a session of its
    /// own (opened and closed around it): the input is encrypted here under
    /// the attested key. For several queries, [`Target::session`] saves a
    /// handshake per query.
    pub fn query(&self, xs: &[&[f32]]) -> Result<Answer> {
        self.session()?.query(xs)
    }

    /// A thin query in a session of its own: the input goes to the enclave
    /// over the channel and the enclave encrypts it (for clients that
    /// cannot run HE).
    pub fn query_thin(&self, xs: &[&[f32]]) -> Result<Answer> {
        self.session()?.query_thin(xs)
    }

    /// One attempt, in a session of its own, at the query of `ticket`
    /// (thin or not): a retry of a query whose attempt failed passes the
    /// same ticket and images, so a budgeted model counts the query once.
    pub fn attempt(&self, xs: &[&[f32]], thin: bool, ticket: &Ticket) -> Result<Answer> {
        self.session()?.attempt(xs, thin, ticket)
    }
}

/// Whether an error means the enclave restarted under the client (its
/// channel key and evidence changed).
fn is_restart(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("answered 503") || crate::fault::CHANNEL_LOST.iter().any(|m| s.contains(m))
}

impl Receipt {
    /// Checks the signature under already verified keys.
    pub(crate) fn verify_against(&self, keys: &AttestedKeys) -> Result<()> {
        let sig = hetee_attest::evidence::unhex(&self.signature).map_err(|e| anyhow!(e))?;
        let sig = ed25519_dalek::Signature::from_slice(&sig)
            .map_err(|e| anyhow!("malformed signature: {e}"))?;
        keys.signing_key
            .verify_strict(&self.result.signed_message(), &sig)
            .map_err(|_| anyhow!("the result's signature does not verify"))
    }
}
