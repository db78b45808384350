//! Enclave state and request handling.
//!
//! Each session is a small state machine (in the style of a TLS handshake):
//! `Handshake → Ready → Running(stage 0, 1, …) → Ready → …`. A data
//! provider's session carries one query after another on its Noise channel
//! (each admitted, spent and answered on its own; the channel's nonces
//! refuse replayed or reordered messages) until the host closes it (the
//! client finished, or it stayed idle too long). A session is taken out of
//! its table for every step and put back only if the step succeeded, so any
//! refused request, a failed check included, ends the session it touched.
//!
//! The enclave serves many sessions at once. Query traffic (channels,
//! hellos, query starts, stage results) shares a gate and runs in
//! parallel: each step works on its own session, taken out of the table,
//! and touches a model's state only under that state table's lock (so two
//! queries never both spend the last query of a budget). Requests that
//! change what the enclave holds (key sets, models, restores, the owner's
//! messages) hold the gate alone, so that one over the memory budget can be
//! rolled back exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ed25519_dalek::SigningKey;
use hetee_attest::platform::Platform;
use hetee_attest::{EnclaveHandshake, Measurement, StaticKeypair, Transport};
use hetee_proto::host::{Request, Response, SealedState, Status};
use hetee_proto::ids::{ClientKey, KeyId, ModelId, SessionId};
use zeroize::Zeroizing;

use crate::budget;
use crate::channel::Finished;
use crate::config::EnclaveConfig;
use crate::keys::{KeySet, ModelRecord, Sealer};
use crate::reserve::Refiller;
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
        /// When it started waiting (an [`Enclave::tick`]).
        idle_since: u64,
    },
    /// The data provider said hello to a model, or got its last result;
    /// waiting for its (next) query.
    Ready {
        tx: Box<Transport>,
        model_id: ModelId,
        client: ClientKey,
        /// When it started waiting (an [`Enclave::tick`]).
        idle_since: u64,
    },
    /// A thin query opened but not yet stacked: a stacked query's batch
    /// was full (see [`crate::stack`]). Its images wait here, in the clear.
    Opened(Box<Opened>),
    /// A query in progress; `next_stage` is the only stage accepted.
    Running(Box<Running>),
}

/// A thin query waiting for a place in a stacked query.
pub(crate) struct Opened {
    pub tx: Transport,
    pub model_id: ModelId,
    pub client: ClientKey,
    /// The images, quantized (checked when opened).
    pub x: Zeroizing<Vec<Vec<i64>>>,
    /// What the member's result binds: the digest of its images.
    pub input_digest: [u8; 32],
    /// The client's id of the query (a retry reuses it).
    pub query_id: crate::messages::QueryId,
}

/// One data provider's part of a running query: its channel, its images
/// (`offset..offset + images` of the batch) and what its result binds.
pub(crate) struct Member {
    /// The data provider's session (the query runs under the first member's).
    pub session: SessionId,
    /// The data provider's channel.
    pub tx: Transport,
    /// The data provider's long-term key.
    pub client: ClientKey,
    /// First image of this member in the batch.
    pub offset: u32,
    pub images: u32,
    pub input_digest: [u8; 32],
}

/// A query in progress: one member, or several stacked (thin) members.
pub(crate) struct Running {
    pub members: Vec<Member>,
    /// Started by [`Request::StartStack`]: answers with one payload per member.
    pub stacked: bool,
    pub model_id: ModelId,
    pub next_stage: u32,
    /// The values still needed, per image (zeroed when freed): the input
    /// of `next_stage` for its check, and every skip tensor.
    pub values: Vec<hetee_model::graph::Values>,
    /// An HE query's input binding, checked while the host evaluates
    /// stage 0; its result is used only once the check holds.
    pub binding: Option<crate::binding::BindingVerdict>,
}

/// The enclave: keys, models, their states and sessions. Reads no file and
/// no environment; its identity comes from its platform. Every method
/// takes `&self`: it can be shared between threads.
pub struct Enclave {
    /// Shared by query traffic, held alone by requests that change what
    /// the enclave holds.
    gate: RwLock<()>,
    pub(crate) keysets: RwLock<HashMap<KeyId, Arc<KeySet>>>,
    pub(crate) models: RwLock<HashMap<ModelId, Arc<ModelRecord>>>,
    pub(crate) states: Mutex<HashMap<ModelId, ModelState>>,
    pub(crate) sessions: Mutex<HashMap<SessionId, Session>>,
    /// A counter that orders idle sessions (see [`Enclave::tick`]).
    pub(crate) ticks: std::sync::atomic::AtomicU64,
    platform: Box<dyn Platform>,
    measurement: Measurement,
    /// The platform's sealing key, asked for once.
    platform_key: OnceLock<Zeroizing<[u8; 32]>>,
    /// The cluster's sealing key, adopted from a peer enclave (see
    /// [`crate::peer`]); when set, it seals and unseals instead.
    pub(crate) adopted_key: RwLock<Option<Zeroizing<[u8; 32]>>>,
    config: EnclaveConfig,
    channel_key: OnceLock<StaticKeypair>,
    signing_key: OnceLock<SigningKey>,
    /// Highest allocation seen over the enclave's life.
    max_peak: AtomicUsize,
    /// Fills the key sets' reserves of encryptions of zero.
    refiller: Refiller,
}

pub(crate) fn refuse<T>(msg: impl Into<String>) -> Result<T, EnclaveError> {
    Err(EnclaveError::Protocol(msg.into()))
}

/// Locks a mutex; a panic elsewhere (there are none on purpose) does not
/// make the table unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
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

/// Whether a request changes what the enclave holds (runs alone).
fn is_exclusive(req: &Request) -> bool {
    matches!(
        req,
        Request::CreateKeys { .. }
            | Request::RestoreKeys { .. }
            | Request::RestoreModel { .. }
            | Request::RestoreState { .. }
            | Request::AdoptSealingKey { .. }
            | Request::RestoreSealingKey { .. }
    )
}

/// What a handled request may leave behind for the host besides its answer.
pub(crate) type Outcome = Result<Response, (EnclaveError, Option<SealedState>)>;

impl Enclave {
    /// An enclave on `platform` with the measured `config`.
    pub fn new(platform: Box<dyn Platform>, config: EnclaveConfig) -> Self {
        if budget::is_metering() {
            budget::set_hard_cap(config.budget_bytes().saturating_mul(2) + (256 << 20));
            budget::set_budget(config.budget_bytes());
        }
        Enclave {
            gate: RwLock::new(()),
            keysets: RwLock::new(HashMap::new()),
            models: RwLock::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            ticks: std::sync::atomic::AtomicU64::new(0),
            measurement: platform.measurement(),
            platform,
            platform_key: OnceLock::new(),
            adopted_key: RwLock::new(None),
            config,
            channel_key: OnceLock::new(),
            signing_key: OnceLock::new(),
            max_peak: AtomicUsize::new(0),
            refiller: Refiller::start(),
        }
    }

    /// The counters of a key set's reserve of encryptions of zero
    /// ([`crate::reserve`]), if the key set is loaded.
    pub fn reserve_stats(&self, key_id: &KeyId) -> Option<crate::reserve::ReserveStats> {
        read(&self.keysets).get(key_id).map(|k| k.reserve.stats())
    }

    /// The measurement the platform reports for this enclave.
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// Handles one request. Never panics on bad input: errors become
    /// [`Response::Error`], and the session the request touched is closed.
    /// Whatever pushes the enclave over its memory budget is refused and
    /// rolled back. Safe to call from several threads at once.
    pub fn handle(&self, req: Request) -> Response {
        if is_exclusive(&req) {
            let _alone = write(&self.gate);
            // Only restoring a state changes the state table here.
            let states = matches!(req, Request::RestoreState { .. });
            return self.exclusive(None, states, |e| {
                e.dispatch_admin(req).map_err(|e| (e, None))
            });
        }
        let shared = read(&self.gate);
        let touched = session_of(&req);
        let excess = budget::excess_events();
        let result = match req {
            Request::ChannelFinish {
                session,
                msg3,
                payload,
            } => match self.channel_finish(session, &msg3, &payload) {
                Ok(Finished::Hello(resp)) => Ok(resp),
                Ok(Finished::Owner {
                    key_id,
                    client,
                    msg,
                    mut tx,
                }) => {
                    drop(shared);
                    let _alone = write(&self.gate);
                    return self.exclusive(Some(session), true, |e| {
                        e.owner_message(key_id, client, msg, &mut tx)
                            .map_err(|e| (e, None))
                    });
                }
                Err(e) => Err((e, None)),
            },
            Request::StageResult {
                session,
                stage,
                ciphertexts,
            } => self.stage_result(session, stage, &ciphertexts),
            other => self.dispatch_shared(other).map_err(|e| (e, None)),
        };
        self.max_peak.fetch_max(budget::peak(), Ordering::Relaxed);
        let over = budget::excess_events() != excess;
        match result {
            Ok(resp) if !over => resp,
            Ok(resp) => {
                // Only the sessions this request touched or opened go; a
                // query start keeps its spend (no result leaves), and the
                // host gets the state that counts it.
                let state = match resp {
                    Response::ChannelOpened { session, .. } => {
                        lock(&self.sessions).remove(&session);
                        None
                    }
                    Response::QueryStarted { state, .. } => state,
                    Response::StackStarted { group, state, .. } => {
                        lock(&self.sessions).remove(&group);
                        state
                    }
                    // The results are dropped: no member's session goes on.
                    Response::StackFinished { payloads } => {
                        let mut sessions = lock(&self.sessions);
                        for (session, _) in payloads {
                            sessions.remove(&session);
                        }
                        None
                    }
                    _ => None,
                };
                self.refused(touched, self.over_budget_message(), state)
            }
            Err((e, state)) => self.refused(touched, e.to_string(), state),
        }
    }

    /// A refusal: the session the request touched is closed.
    fn refused(
        &self,
        touched: Option<SessionId>,
        message: String,
        state: Option<SealedState>,
    ) -> Response {
        if let Some(s) = touched {
            lock(&self.sessions).remove(&s);
        }
        Response::Error { message, state }
    }

    fn over_budget_message(&self) -> String {
        format!(
            "enclave memory budget of {} MiB exceeded (peak {} MiB); the request \
             was rolled back. Use a smaller batch or model, or raise \
             memory_budget_mib in the enclave config (this changes the measurement)",
            self.config.budget_bytes() >> 20,
            budget::peak() >> 20
        )
    }

    /// Runs `f` with nothing else running (the caller holds the gate
    /// alone), measuring its memory peak exactly; over the budget, it is
    /// rolled back: the session it touched or opened, key sets and models
    /// it added, and (when `f` may change them: `states`) every model state
    /// as it was.
    fn exclusive(
        &self,
        touched: Option<SessionId>,
        states: bool,
        f: impl FnOnce(&Self) -> Outcome,
    ) -> Response {
        let had: (Vec<KeyId>, Vec<ModelId>) = (
            read(&self.keysets).keys().copied().collect(),
            read(&self.models).keys().copied().collect(),
        );
        let states_before = states.then(|| lock(&self.states).clone());
        let restore_states = |before: Option<HashMap<ModelId, ModelState>>| {
            if let Some(before) = before {
                *lock(&self.states) = before;
            }
        };
        budget::reset_peak();
        let result = f(self);
        self.max_peak.fetch_max(budget::peak(), Ordering::Relaxed);
        let over = budget::peak() > self.config.budget_bytes();
        match result {
            Ok(resp) if !over => resp,
            Ok(resp) => {
                if let Some(s) = touched {
                    lock(&self.sessions).remove(&s);
                }
                if let Response::ChannelOpened { session, .. } = resp {
                    lock(&self.sessions).remove(&session);
                }
                write(&self.keysets).retain(|k, _| had.0.contains(k));
                write(&self.models).retain(|m, _| had.1.contains(m));
                restore_states(states_before);
                Response::error(self.over_budget_message())
            }
            Err((e, state)) => {
                // Nothing else runs: a refused change leaves no trace.
                restore_states(states_before);
                self.refused(touched, e.to_string(), state)
            }
        }
    }

    /// Key sets, models and states from the host (alone).
    fn dispatch_admin(&self, req: Request) -> Result<Response, EnclaveError> {
        match req {
            Request::CreateKeys { he, owner } => {
                let (ks, sealed) = self.sealer()?.create_keys(he, owner)?;
                let resp = Response::KeysCreated {
                    key_id: ks.key_id,
                    public_key: ks.public_key.clone(),
                    sealed,
                };
                let ks = Arc::new(ks);
                self.refiller.watch(&ks);
                write(&self.keysets).insert(ks.key_id, ks);
                Ok(resp)
            }
            Request::RestoreKeys { sealed } => {
                let ks = self.sealer()?.restore_keys(&sealed)?;
                let key_id = ks.key_id;
                // Already loaded: keep what is there.
                write(&self.keysets).entry(key_id).or_insert_with(|| {
                    let ks = Arc::new(ks);
                    self.refiller.watch(&ks);
                    ks
                });
                Ok(Response::KeysRestored { key_id })
            }
            Request::RestoreModel { sealed } => {
                let m = self.sealer()?.restore_model(&sealed)?;
                let he = read(&self.keysets).get(&m.key_id).map(|k| k.he.clone());
                match he {
                    None => return refuse("restore the model's key set first"),
                    Some(he) if he != m.schedule.he => {
                        return refuse("the sealed model does not match its key set")
                    }
                    Some(_) => {}
                }
                let model_id = m.model_id;
                write(&self.models)
                    .entry(model_id)
                    .or_insert_with(|| Arc::new(m));
                Ok(Response::ModelRestored { model_id })
            }
            Request::RestoreState { sealed } => self.restore_state(&sealed),
            Request::AdoptSealingKey { message, evidence } => {
                self.adopt_sealing_key(&message, &evidence)
            }
            Request::RestoreSealingKey { sealed } => self.restore_sealing_key(&sealed),
            _ => refuse("not an administrative request"),
        }
    }

    /// Query traffic (shared).
    fn dispatch_shared(&self, req: Request) -> Result<Response, EnclaveError> {
        match req {
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
            Request::StartQuery {
                session,
                model_id,
                payload,
                input,
            } => self.start_query(session, model_id, &payload, &input),
            Request::StartStack { model_id, members } => self.start_stack(model_id, members),
            Request::CloseSession { session } => {
                lock(&self.sessions).remove(&session);
                Ok(Response::Closed)
            }
            Request::PeerOffer => self.peer_offer(),
            Request::ShareSealingKey {
                peer_key,
                peer_evidence,
            } => self.share_sealing_key(&peer_key, &peer_evidence),
            Request::Status => Ok({
                let (made_ahead, made_ahead_us) = self.refiller.made_ahead();
                Response::Status(Status {
                    made_ahead,
                    made_ahead_us,
                    taken_ahead: read(&self.keysets)
                        .values()
                        .map(|k| k.reserve.stats().from_reserve)
                        .sum(),
                    keysets: read(&self.keysets).len(),
                    models: read(&self.models).len(),
                    sessions: lock(&self.sessions).len(),
                    memory_current: budget::current() as u64,
                    memory_peak: self.max_peak.load(Ordering::Relaxed) as u64,
                    memory_budget: self.config.budget_bytes() as u64,
                })
            }),
            _ => refuse("this request is handled apart"),
        }
    }

    fn restore_state(&self, sealed: &[u8]) -> Result<Response, EnclaveError> {
        let st = ModelState::unseal(&self.sealer()?, sealed)?;
        if !read(&self.models).contains_key(&st.model_id) {
            return refuse("restore the state's model first");
        }
        let (model_id, version) = (st.model_id, st.version);
        let mut states = lock(&self.states);
        match states.get(&model_id) {
            Some(cur) if cur.version > version => {
                return refuse(format!(
                    "a newer state (version {}) of this model is loaded; version {version} \
                     is a replay",
                    cur.version
                ))
            }
            _ => {
                states.insert(model_id, st);
            }
        }
        Ok(Response::StateRestored { model_id, version })
    }

    /// The platform's sealing key, asked for once.
    pub(crate) fn platform_key(&self) -> Result<Zeroizing<[u8; 32]>, EnclaveError> {
        if self.platform_key.get().is_none() {
            let key = self.platform.sealing_key()?;
            // Another thread may have set it first: same platform, same key.
            let _ = self.platform_key.set(key);
        }
        self.platform_key
            .get()
            .cloned()
            .ok_or_else(|| EnclaveError::Protocol("no sealing key".into()))
    }

    /// The sealing context: the cluster's adopted key, or the platform's.
    pub(crate) fn sealer(&self) -> Result<Sealer, EnclaveError> {
        let secret = match read(&self.adopted_key).as_ref() {
            Some(k) => k.clone(),
            None => self.platform_key()?,
        };
        Ok(Sealer {
            secret,
            measurement: self.measurement,
        })
    }

    /// The platform this enclave runs on.
    pub(crate) fn platform(&self) -> &dyn Platform {
        self.platform.as_ref()
    }

    pub(crate) fn channel_key(&self) -> Result<&StaticKeypair, EnclaveError> {
        if self.channel_key.get().is_none() {
            let k = StaticKeypair::generate()
                .map_err(|e| EnclaveError::Protocol(format!("channel key: {e}")))?;
            let _ = self.channel_key.set(k);
        }
        self.channel_key
            .get()
            .ok_or_else(|| EnclaveError::Protocol("no channel key".into()))
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        self.signing_key
            .get_or_init(|| SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// A model and its key set.
    pub(crate) fn model_and_keys(
        &self,
        model_id: &ModelId,
    ) -> Result<(Arc<ModelRecord>, Arc<KeySet>), EnclaveError> {
        let m = read(&self.models)
            .get(model_id)
            .cloned()
            .ok_or_else(|| EnclaveError::Protocol("the model is gone".into()))?;
        let ks = read(&self.keysets)
            .get(&m.key_id)
            .cloned()
            .ok_or_else(|| EnclaveError::Protocol("the model's keys are gone".into()))?;
        Ok((m, ks))
    }

    /// Runs `f` on a model's state under the state table's lock.
    pub(crate) fn with_state<T>(
        &self,
        model_id: &ModelId,
        f: impl FnOnce(&mut ModelState) -> Result<T, EnclaveError>,
    ) -> Result<T, EnclaveError> {
        let mut states = lock(&self.states);
        let state = states.get_mut(model_id).ok_or_else(|| {
            EnclaveError::Protocol(
                "the model's state is not loaded; the host must restore it".into(),
            )
        })?;
        f(state)
    }
}
