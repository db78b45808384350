//! Enclave state and request handling.
//!
//! Each session is a small state machine (in the style of a TLS handshake):
//! `Handshake → Ready → Running(stage 0, 1, …) → done`. A session is taken
//! out of its table for every step and put back only if the step succeeded,
//! so any refused request ends the session it touched.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use hetee_attest::{EnclaveHandshake, Evidence, Measurement, StaticKeypair, Transport};
use zeroize::Zeroizing;

use crate::budget;
use crate::config::EnclaveConfig;
use crate::freivalds::StageCheck;
use crate::keys::{KeySet, ModelRecord, Sealer};
use crate::messages::{
    he_params_bytes, model_id, registration_digest, upload_id, ClientMessage, EnclaveMessage,
    Identity, KeyId, ModelId, OutputPolicy, QueryPlan, RegisteredModel, Request, Response,
    SessionId, Status,
};
use crate::schedule::Schedule;
use crate::EnclaveError;

/// Measurement used when no platform identity was given (local mode).
pub const DEV_MEASUREMENT: [u8; 32] = [0x5a; 32];
/// Sealing secret used when no platform identity was given. Not a secret:
/// the in-process simulation protects nothing.
pub const DEV_PLATFORM_SECRET: [u8; 32] = [0xa5; 32];
/// Most sessions open at once.
pub const MAX_SESSIONS: usize = 1024;

/// Where a session is.
pub(crate) enum Session {
    /// Noise message 2 sent; waiting for message 3.
    Handshake {
        hs: Box<EnclaveHandshake>,
        key_id: KeyId,
    },
    /// The data provider said hello to a model; waiting for its query.
    Ready {
        tx: Box<Transport>,
        model_id: ModelId,
        client: [u8; 32],
    },
    /// A query in progress; `next_stage` is the only stage accepted.
    Running(Box<Running>),
}

/// A query in progress.
pub(crate) struct Running {
    /// The data provider's channel (`None`: local mode).
    pub tx: Option<Transport>,
    pub model_id: ModelId,
    pub next_stage: u32,
    pub images: u32,
    /// The plaintext input of `next_stage`, per image, for its check.
    pub x: Zeroizing<Vec<Vec<i64>>>,
    pub input_digest: [u8; 32],
}

/// The enclave: keys, models and sessions. Reads no file and no environment.
pub struct Enclave {
    pub(crate) keysets: HashMap<KeyId, KeySet>,
    pub(crate) models: HashMap<ModelId, ModelRecord>,
    pub(crate) sessions: HashMap<SessionId, Session>,
    /// Queries run per (model, client key).
    pub(crate) spent: HashMap<(ModelId, [u8; 32]), u64>,
    measurement: Measurement,
    platform_secret: Zeroizing<[u8; 32]>,
    /// `None`: local (in-process, unattested) mode.
    config: Option<EnclaveConfig>,
    channel_key: Option<StaticKeypair>,
    pub(crate) signing_key: Option<SigningKey>,
    handled: u64,
    /// Highest allocation seen over the enclave's life.
    max_peak: usize,
}

impl Default for Enclave {
    fn default() -> Self {
        Enclave {
            keysets: HashMap::new(),
            models: HashMap::new(),
            sessions: HashMap::new(),
            spent: HashMap::new(),
            signing_key: None,
            measurement: Measurement(DEV_MEASUREMENT),
            platform_secret: Zeroizing::new(DEV_PLATFORM_SECRET),
            config: None,
            channel_key: None,
            handled: 0,
            max_peak: 0,
        }
    }
}

pub(crate) fn refuse<T>(msg: impl Into<String>) -> Result<T, EnclaveError> {
    Err(EnclaveError::Protocol(msg.into()))
}

fn session_of(req: &Request) -> Option<SessionId> {
    match req {
        Request::ChannelFinish { session, .. }
        | Request::StartQuery { session, .. }
        | Request::StageResult { session, .. }
        | Request::CloseSession { session } => Some(*session),
        _ => None,
    }
}

impl Enclave {
    /// A fresh enclave in local mode (until [`Request::Init`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one request. Never panics on bad input: errors become
    /// [`Response::Error`], and the session the request touched is closed.
    /// Whatever pushes the enclave over its memory budget is rolled back.
    pub fn handle(&mut self, req: Request) -> Response {
        self.handled += 1;
        let touched = session_of(&req);
        let had: (Vec<KeyId>, Vec<ModelId>) = (
            self.keysets.keys().copied().collect(),
            self.models.keys().copied().collect(),
        );
        budget::reset_peak();
        let result = self.dispatch(req);
        self.max_peak = self.max_peak.max(budget::peak());
        let over = self
            .config
            .map(|c| c.budget_bytes())
            .filter(|&b| budget::peak() > b);
        match (result, over) {
            (Ok(resp), None) => resp,
            (Ok(resp), Some(b)) => {
                self.roll_back(&resp, touched, &had);
                Response::Error {
                    message: format!(
                        "enclave memory budget of {} MiB exceeded (peak {} MiB); the request \
                         was rolled back. Use a smaller batch or model, or raise \
                         memory_budget_mib in the enclave config (this changes the measurement)",
                        b >> 20,
                        budget::peak() >> 20
                    ),
                }
            }
            (Err(e), _) => {
                if let Some(s) = touched {
                    self.sessions.remove(&s);
                }
                Response::Error {
                    message: e.to_string(),
                }
            }
        }
    }

    /// Undoes what a refused request added: the session it touched or
    /// opened, and any key set or model that was not loaded before it.
    fn roll_back(
        &mut self,
        resp: &Response,
        touched: Option<SessionId>,
        had: &(Vec<KeyId>, Vec<ModelId>),
    ) {
        if let Some(s) = touched {
            self.sessions.remove(&s);
        }
        if let Response::ChannelOpened { session, .. } | Response::LocalQueryStarted { session } =
            resp
        {
            self.sessions.remove(session);
        }
        self.keysets.retain(|k, _| had.0.contains(k));
        self.models.retain(|m, _| had.1.contains(m));
    }

    fn dispatch(&mut self, req: Request) -> Result<Response, EnclaveError> {
        match req {
            Request::Init {
                measurement,
                platform_secret,
                config,
            } => self.init(measurement, platform_secret, &config),
            Request::CreateKeys { he } => {
                let (ks, sealed) = self.sealer().create_keys(he)?;
                let resp = Response::KeysCreated {
                    key_id: ks.key_id,
                    public_key: ks.public_key.clone(),
                    sealed,
                };
                self.keysets.insert(ks.key_id, ks);
                Ok(resp)
            }
            Request::RestoreKeys { sealed } => {
                let ks = self.sealer().restore_keys(&sealed)?;
                let key_id = ks.key_id;
                // Already loaded: keep what is there.
                self.keysets.entry(key_id).or_insert(ks);
                Ok(Response::KeysRestored { key_id })
            }
            Request::Identity { key_id } => Ok(Response::Identity(self.identity(&key_id)?)),
            Request::OpenChannel {
                key_id,
                evidence,
                msg1,
            } => self.open_channel(key_id, &evidence, &msg1),
            Request::ChannelFinish {
                session,
                msg3,
                payload,
            } => self.channel_finish(session, &msg3, &payload),
            Request::RestoreModel { sealed } => {
                let m = self.sealer().restore_model(&sealed)?;
                let ks = self.keysets.get(&m.key_id).ok_or_else(|| {
                    EnclaveError::Protocol("restore the model's key set first".into())
                })?;
                if ks.he != m.schedule.he {
                    return refuse("the sealed model does not match its key set");
                }
                let model_id = m.model_id;
                self.models.entry(model_id).or_insert(m);
                Ok(Response::ModelRestored { model_id })
            }
            Request::StartQuery {
                session,
                model_id,
                payload,
                input,
            } => self.start_query(session, model_id, &payload, &input),
            Request::StageResult {
                session,
                stage,
                ciphertexts,
            } => self.stage_result(session, stage, &ciphertexts),
            Request::CloseSession { session } => {
                self.sessions.remove(&session);
                Ok(Response::Closed)
            }
            Request::Status => Ok(Response::Status(Status {
                keysets: self.keysets.len(),
                models: self.models.len(),
                sessions: self.sessions.len(),
                memory_current: budget::current() as u64,
                memory_peak: self.max_peak as u64,
                memory_budget: self.config.map(|c| c.budget_bytes() as u64).unwrap_or(0),
            })),
            Request::RegisterLocal { schedule, checks } => self.register_local(*schedule, checks),
            Request::StartLocalQuery {
                model_id,
                input,
                seed,
            } => {
                self.local_only("StartLocalQuery")?;
                let m = self.models.get(&model_id).ok_or_else(|| {
                    EnclaveError::Protocol("unknown model; register it first".into())
                })?;
                let x = if m.checks.is_empty() {
                    Zeroizing::new(Vec::new())
                } else {
                    let ks = self.keysets.get(&m.key_id).ok_or_else(|| {
                        EnclaveError::Protocol("the model's keys are gone".into())
                    })?;
                    let polys = Zeroizing::new(crate::step::decrypt_all(ks, &input, 2)?);
                    if let Some(seed) = seed {
                        if !crate::input_binding::made_with(&ks.pk, &ks.par, &polys, &seed, &input)?
                        {
                            return refuse("the input ciphertexts were not made with this seed");
                        }
                    }
                    Zeroizing::new(m.schedule.unpack_stage_input(0, &polys)?)
                };
                let session = self.new_session_id()?;
                self.sessions.insert(
                    session,
                    Session::Running(Box::new(Running {
                        tx: None,
                        model_id,
                        next_stage: 0,
                        images: 0,
                        x,
                        input_digest: [0; 32],
                    })),
                );
                Ok(Response::LocalQueryStarted { session })
            }
        }
    }

    fn sealer(&self) -> Sealer<'_> {
        Sealer {
            secret: &self.platform_secret,
            measurement: &self.measurement,
        }
    }

    fn local_only(&self, what: &str) -> Result<(), EnclaveError> {
        if self.config.is_some() {
            return refuse(format!(
                "{what} is only available to an in-process enclave; an attested enclave \
                 releases results only over a client's channel"
            ));
        }
        Ok(())
    }

    fn init(
        &mut self,
        measurement: [u8; 32],
        secret: [u8; 32],
        config: &[u8],
    ) -> Result<Response, EnclaveError> {
        if self.handled != 1 || self.config.is_some() {
            return refuse("Init must be the enclave's first request");
        }
        let config = EnclaveConfig::from_bytes(config)?;
        if budget::is_metering() {
            budget::set_hard_cap(config.budget_bytes().saturating_mul(2) + (256 << 20));
        }
        self.measurement = Measurement(measurement);
        self.platform_secret = Zeroizing::new(secret);
        self.config = Some(config);
        Ok(Response::Ready)
    }

    fn channel_key(&mut self) -> Result<&StaticKeypair, EnclaveError> {
        if self.channel_key.is_none() {
            let k = StaticKeypair::generate()
                .map_err(|e| EnclaveError::Protocol(format!("channel key: {e}")))?;
            self.channel_key = Some(k);
        }
        self.channel_key
            .as_ref()
            .ok_or_else(|| EnclaveError::Protocol("no channel key".into()))
    }

    pub(crate) fn signing_key(&mut self) -> &SigningKey {
        self.signing_key
            .get_or_insert_with(|| SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    fn identity(&mut self, key_id: &KeyId) -> Result<Identity, EnclaveError> {
        let channel_public_key = *self.channel_key()?.public();
        let signing_public_key = self.signing_key().verifying_key().to_bytes();
        let ks = self
            .keysets
            .get(key_id)
            .ok_or_else(|| EnclaveError::Protocol("unknown key set".into()))?;
        Ok(Identity {
            key_id: *key_id,
            measurement: self.measurement.0,
            channel_public_key,
            public_key: ks.public_key.clone(),
            he_params: he_params_bytes(&ks.he),
            signing_public_key,
        })
    }

    pub(crate) fn new_session_id(&self) -> Result<SessionId, EnclaveError> {
        if self.sessions.len() >= MAX_SESSIONS {
            return refuse(format!(
                "{MAX_SESSIONS} sessions are open; finish or close some first"
            ));
        }
        Ok(rand::random())
    }

    fn open_channel(
        &mut self,
        key_id: KeyId,
        evidence: &[u8],
        msg1: &[u8],
    ) -> Result<Response, EnclaveError> {
        let id = self.identity(&key_id)?;
        let ev = Evidence::decode(evidence)
            .map_err(|e| EnclaveError::Protocol(format!("evidence: {e}")))?;
        if ev.measurement.0 != id.measurement || ev.report_data != id.report_data() {
            return refuse("the evidence is not this enclave's for this key set");
        }
        let prologue = ev
            .hash()
            .map_err(|e| EnclaveError::Protocol(format!("evidence: {e}")))?;
        let session = self.new_session_id()?;
        let key = self.channel_key()?;
        let (hs, msg2) = EnclaveHandshake::respond(key, &prologue, msg1)
            .map_err(|e| EnclaveError::Protocol(format!("channel: {e}")))?;
        self.sessions.insert(
            session,
            Session::Handshake {
                hs: Box::new(hs),
                key_id,
            },
        );
        Ok(Response::ChannelOpened { session, msg2 })
    }

    pub(crate) fn take(&mut self, session: &SessionId) -> Result<Session, EnclaveError> {
        self.sessions
            .remove(session)
            .ok_or_else(|| EnclaveError::Protocol("unknown or closed session".into()))
    }

    fn channel_finish(
        &mut self,
        session: SessionId,
        msg3: &[u8],
        payload: &[u8],
    ) -> Result<Response, EnclaveError> {
        let Session::Handshake { hs, key_id } = self.take(&session)? else {
            return refuse("the handshake of this session is already finished; session closed");
        };
        let mut tx = hs
            .finish(msg3)
            .map_err(|e| EnclaveError::Protocol(format!("channel: {e}")))?;
        let msg = open::<ClientMessage>(&mut tx, payload)?;
        match msg {
            ClientMessage::RegisterModel {
                key_id: k,
                commitment,
                schedule,
                checks,
                policy,
                query_budget,
            } => {
                if k != key_id {
                    return refuse("the model names another key set than its channel");
                }
                let ks = self
                    .keysets
                    .get(&key_id)
                    .ok_or_else(|| EnclaveError::Protocol("unknown key set".into()))?;
                schedule.validate()?;
                if schedule.he != ks.he {
                    return refuse("the schedule's HE parameters are not its key set's");
                }
                if checks.is_empty() {
                    return refuse("a model needs Freivalds check vectors for every stage");
                }
                let digest = registration_digest(&schedule, &checks, policy, query_budget);
                let id = model_id(&key_id, &commitment, &digest);
                if self.models.contains_key(&id) {
                    return refuse("this model is already registered");
                }
                let rec = ModelRecord {
                    model_id: id,
                    key_id,
                    commitment,
                    schedule: *schedule,
                    checks,
                    policy,
                    query_budget,
                };
                rec.validate_checks()?;
                let sealed = self.sealer().seal_model(&rec)?;
                let model_id = rec.model_id;
                self.models.insert(model_id, rec);
                let payload = seal(&mut tx, &EnclaveMessage::Registered { model_id })?;
                Ok(Response::ChannelReply {
                    payload,
                    registered: Some(RegisteredModel {
                        model_id,
                        upload_id: upload_id(&key_id, &commitment),
                        sealed,
                    }),
                })
            }
            ClientMessage::Hello { model_id } => {
                let m = self
                    .models
                    .get(&model_id)
                    .ok_or_else(|| EnclaveError::Protocol("unknown model".into()))?;
                if m.key_id != key_id {
                    return refuse("the model is not under this channel's key set");
                }
                let plan = QueryPlan::of(model_id, &m.schedule)?;
                let payload = seal(&mut tx, &EnclaveMessage::Plan(Box::new(plan)))?;
                let client = tx.remote_static().copied().unwrap_or([0; 32]);
                self.sessions.insert(
                    session,
                    Session::Ready {
                        tx: Box::new(tx),
                        model_id,
                        client,
                    },
                );
                Ok(Response::ChannelReply {
                    payload,
                    registered: None,
                })
            }
            ClientMessage::Query { .. } | ClientMessage::ThinQuery { .. } => {
                refuse("a query must follow a hello; session closed")
            }
        }
    }

    fn register_local(
        &mut self,
        schedule: Schedule,
        checks: Vec<StageCheck>,
    ) -> Result<Response, EnclaveError> {
        self.local_only("RegisterLocal")?;
        schedule.validate()?;
        let (ks, sealed_keys) = self.sealer().create_keys(schedule.he.clone())?;
        let rec = ModelRecord {
            model_id: model_id(&ks.key_id, &[0; 32], &[0; 32]),
            key_id: ks.key_id,
            commitment: [0; 32],
            schedule,
            checks,
            policy: OutputPolicy::Logits,
            query_budget: None,
        };
        rec.validate_checks()?;
        let sealed_model = self.sealer().seal_model(&rec)?;
        let resp = Response::Registered {
            model_id: rec.model_id,
            key_id: ks.key_id,
            public_key: ks.public_key.clone(),
            sealed_keys,
            sealed_model,
        };
        self.keysets.insert(ks.key_id, ks);
        self.models.insert(rec.model_id, rec);
        Ok(resp)
    }
}

pub(crate) fn open<T: serde::de::DeserializeOwned>(
    tx: &mut Transport,
    payload: &[u8],
) -> Result<T, EnclaveError> {
    let plain = tx
        .open(payload)
        .map_err(|e| EnclaveError::Protocol(format!("channel: {e}")))?;
    postcard::from_bytes(&plain)
        .map_err(|e| EnclaveError::Protocol(format!("malformed channel message: {e}")))
}

pub(crate) fn seal(tx: &mut Transport, msg: &EnclaveMessage) -> Result<Vec<u8>, EnclaveError> {
    let plain = Zeroizing::new(
        postcard::to_allocvec(msg)
            .map_err(|e| EnclaveError::Protocol(format!("cannot encode reply: {e}")))?,
    );
    tx.seal(&plain)
        .map_err(|e| EnclaveError::Protocol(format!("channel: {e}")))
}
