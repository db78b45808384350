//! Enclave state and request handling.
//!
//! Each session is a small state machine (in the style of a TLS handshake):
//! `Handshake → Ready → Running(stage 0, 1, …) → done`. A session is taken
//! out of its table for every step and put back only if the step succeeded,
//! so any refused request ends the session it touched.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use hetee_attest::platform::Platform;
use hetee_attest::{EnclaveHandshake, Evidence, Measurement, StaticKeypair, Transport};
use hetee_proto::channel::{ClientMessage, EnclaveMessage};
use hetee_proto::host::{Request, Response, Status};
use hetee_proto::ids::{he_params_bytes, ClientKey, Identity, KeyId, ModelId, SessionId};
use zeroize::Zeroizing;

use crate::budget;
use crate::config::EnclaveConfig;
use crate::keys::{KeySet, ModelRecord, Sealer};
use crate::state::ModelState;
use crate::EnclaveError;

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
        client: ClientKey,
    },
    /// A query in progress; `next_stage` is the only stage accepted.
    Running(Box<Running>),
}

/// A query in progress.
pub(crate) struct Running {
    /// The data provider's channel.
    pub tx: Transport,
    /// The data provider's long-term key.
    pub client: ClientKey,
    pub model_id: ModelId,
    pub next_stage: u32,
    pub images: u32,
    /// The values still needed, per image (zeroed when freed): the input
    /// of `next_stage` for its check, and every skip tensor.
    pub values: Vec<hetee_model::graph::Values>,
    pub input_digest: [u8; 32],
}

/// The enclave: keys, models, their states and sessions. Reads no file and
/// no environment; its identity comes from its platform.
pub struct Enclave {
    pub(crate) keysets: HashMap<KeyId, KeySet>,
    pub(crate) models: HashMap<ModelId, ModelRecord>,
    pub(crate) states: HashMap<ModelId, ModelState>,
    pub(crate) sessions: HashMap<SessionId, Session>,
    platform: Box<dyn Platform>,
    measurement: Measurement,
    sealing_key: Option<Zeroizing<[u8; 32]>>,
    config: EnclaveConfig,
    channel_key: Option<StaticKeypair>,
    pub(crate) signing_key: Option<SigningKey>,
    /// Highest allocation seen over the enclave's life.
    max_peak: usize,
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

/// The models' states before a request that may change them.
enum StatesBefore {
    /// One model's state (or its absence).
    One(ModelId, Option<ModelState>),
    /// Every model's.
    All(HashMap<ModelId, ModelState>),
}

/// What a handled request may leave behind for the host besides its answer.
pub(crate) type Outcome = Result<Response, (EnclaveError, Option<hetee_proto::host::SealedState>)>;

impl Enclave {
    /// An enclave on `platform` with the measured `config`.
    pub fn new(platform: Box<dyn Platform>, config: EnclaveConfig) -> Self {
        if budget::is_metering() {
            budget::set_hard_cap(config.budget_bytes().saturating_mul(2) + (256 << 20));
        }
        Enclave {
            keysets: HashMap::new(),
            models: HashMap::new(),
            states: HashMap::new(),
            sessions: HashMap::new(),
            measurement: platform.measurement(),
            platform,
            sealing_key: None,
            config,
            channel_key: None,
            signing_key: None,
            max_peak: 0,
        }
    }

    /// The measurement the platform reports for this enclave.
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// Handles one request. Never panics on bad input: errors become
    /// [`Response::Error`], and the session the request touched is closed.
    /// Whatever pushes the enclave over its memory budget is rolled back.
    pub fn handle(&mut self, req: Request) -> Response {
        let touched = session_of(&req);
        let had: (Vec<KeyId>, Vec<ModelId>) = (
            self.keysets.keys().copied().collect(),
            self.models.keys().copied().collect(),
        );
        // Requests that may change a model's state: keep the old state so
        // that a rollback leaves the enclave at the version the host stored
        // (only the queried model's for a query, the common case).
        let states_before = match &req {
            Request::StartQuery { model_id, .. } => Some(StatesBefore::One(
                *model_id,
                self.states.get(model_id).cloned(),
            )),
            Request::ChannelFinish { .. } | Request::RestoreState { .. } => {
                Some(StatesBefore::All(self.states.clone()))
            }
            _ => None,
        };
        budget::reset_peak();
        let result = self.dispatch(req);
        self.max_peak = self.max_peak.max(budget::peak());
        let budget_bytes = self.config.budget_bytes();
        let over = budget::peak() > budget_bytes;
        match result {
            Ok(resp) if !over => resp,
            Ok(resp) => {
                self.roll_back(&resp, touched, &had);
                match states_before {
                    Some(StatesBefore::All(states)) => self.states = states,
                    Some(StatesBefore::One(id, Some(state))) => {
                        self.states.insert(id, state);
                    }
                    Some(StatesBefore::One(id, None)) => {
                        self.states.remove(&id);
                    }
                    None => {}
                }
                Response::error(format!(
                    "enclave memory budget of {} MiB exceeded (peak {} MiB); the request \
                     was rolled back. Use a smaller batch or model, or raise \
                     memory_budget_mib in the enclave config (this changes the measurement)",
                    budget_bytes >> 20,
                    budget::peak() >> 20
                ))
            }
            Err((e, state)) => {
                if let Some(s) = touched {
                    self.sessions.remove(&s);
                }
                Response::Error {
                    message: e.to_string(),
                    state,
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
        if let Response::ChannelOpened { session, .. } = resp {
            self.sessions.remove(session);
        }
        self.keysets.retain(|k, _| had.0.contains(k));
        self.models.retain(|m, _| had.1.contains(m));
        self.states.retain(|m, _| had.1.contains(m));
    }

    fn dispatch(&mut self, req: Request) -> Outcome {
        match req {
            Request::StageResult {
                session,
                stage,
                ciphertexts,
            } => self.stage_result(session, stage, &ciphertexts),
            other => self.dispatch_simple(other).map_err(|e| (e, None)),
        }
    }

    fn dispatch_simple(&mut self, req: Request) -> Result<Response, EnclaveError> {
        match req {
            Request::CreateKeys { he, owner } => {
                let (ks, sealed) = self.sealer()?.create_keys(he, owner)?;
                let resp = Response::KeysCreated {
                    key_id: ks.key_id,
                    public_key: ks.public_key.clone(),
                    sealed,
                };
                self.keysets.insert(ks.key_id, ks);
                Ok(resp)
            }
            Request::RestoreKeys { sealed } => {
                let ks = self.sealer()?.restore_keys(&sealed)?;
                let key_id = ks.key_id;
                // Already loaded: keep what is there.
                self.keysets.entry(key_id).or_insert(ks);
                Ok(Response::KeysRestored { key_id })
            }
            Request::Evidence { key_id } => {
                let identity = self.identity(&key_id)?;
                let evidence = self.platform.evidence(&identity.report_data())?.encode()?;
                Ok(Response::Evidence { identity, evidence })
            }
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
                let m = self.sealer()?.restore_model(&sealed)?;
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
            Request::RestoreState { sealed } => self.restore_state(&sealed),
            Request::StartQuery {
                session,
                model_id,
                payload,
                input,
            } => self.start_query(session, model_id, &payload, &input),
            Request::StageResult { .. } => refuse("stage results are handled apart"),
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
                memory_budget: self.config.budget_bytes() as u64,
            })),
        }
    }

    fn restore_state(&mut self, sealed: &[u8]) -> Result<Response, EnclaveError> {
        let st: ModelState = self
            .sealer()?
            .unseal_record(crate::state::STATE_LABEL, sealed)?;
        if !self.models.contains_key(&st.model_id) {
            return refuse("restore the state's model first");
        }
        let (model_id, version) = (st.model_id, st.version);
        match self.states.get(&model_id) {
            Some(cur) if cur.version > version => {
                return refuse(format!(
                    "a newer state (version {}) of this model is loaded; version {version} \
                     is a replay",
                    cur.version
                ))
            }
            _ => {
                self.states.insert(model_id, st);
            }
        }
        Ok(Response::StateRestored { model_id, version })
    }

    /// The sealing context: the platform's key, asked for once.
    pub(crate) fn sealer(&mut self) -> Result<Sealer<'_>, EnclaveError> {
        if self.sealing_key.is_none() {
            self.sealing_key = Some(self.platform.sealing_key()?);
        }
        let secret = self
            .sealing_key
            .as_deref()
            .ok_or_else(|| EnclaveError::Protocol("no sealing key".into()))?;
        Ok(Sealer {
            secret,
            measurement: &self.measurement,
        })
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
            owner: ks.owner,
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
        let ev = Evidence::decode(evidence)?;
        if ev.measurement.0 != id.measurement || ev.report_data != id.report_data() {
            return refuse("the evidence is not this enclave's for this key set");
        }
        let prologue = ev.hash()?;
        let session = self.new_session_id()?;
        let key = self.channel_key()?;
        let (hs, msg2) = EnclaveHandshake::respond(key, &prologue, msg1)?;
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
        let mut tx = hs.finish(msg3)?;
        let client: ClientKey = *tx
            .remote_static()
            .ok_or_else(|| EnclaveError::Protocol("the channel has no client key".into()))?;
        let msg = decode(&tx.open(payload)?)?;
        match msg {
            ClientMessage::Hello { model_id } => {
                let payload = self.hello(key_id, client, model_id, &mut tx)?;
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
                    state: None,
                })
            }
            ClientMessage::Query { .. } | ClientMessage::ThinQuery { .. } => {
                refuse("a query must follow a hello; session closed")
            }
            owner_message => self.owner_message(key_id, client, owner_message, &mut tx),
        }
    }
}

/// Decodes a client message.
pub(crate) fn decode(plain: &[u8]) -> Result<ClientMessage, EnclaveError> {
    postcard::from_bytes(plain)
        .map_err(|e| EnclaveError::Protocol(format!("malformed channel message: {e}")))
}

pub(crate) fn seal(tx: &mut Transport, msg: &EnclaveMessage) -> Result<Vec<u8>, EnclaveError> {
    let plain = Zeroizing::new(
        postcard::to_allocvec(msg)
            .map_err(|e| EnclaveError::Protocol(format!("cannot encode reply: {e}")))?,
    );
    Ok(tx.seal(&plain)?)
}
