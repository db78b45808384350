//! The host's logic behind the HTTP API, synchronous (handlers run it on
//! blocking threads). Nothing here sees a plaintext: weights and inputs are
//! HE ciphertexts, model secrets and results are sealed blobs or Noise
//! messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hetee_he::ConvPacking;
use hetee_proto::api::*;
use hetee_proto::bodies::{StageBody, UploadBody};
use hetee_proto::ids::{
    he_params_from_bytes, id_from_hex, id_hex, upload_id, weights_commitment, ModelId, SessionId,
};
use hetee_proto::{Request, Response};
use tracing::info;

use crate::host_model::{HostModel, ModelMeta, PublicMeta};
use crate::job_log::JobLog;
use crate::launcher::LinkError;
use crate::stacker::Stacker;
use crate::stage_loop::QueryError;
use crate::store::{Store, StoreError};
use crate::supervisor::{CallError, KeysRecord, Supervisor};

/// An API failure: HTTP status and a message that names the fix.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Message.
    pub message: String,
}

impl ApiError {
    /// 400 Bad Request.
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: msg.into(),
        }
    }
    /// 404 Not Found.
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: msg.into(),
        }
    }
    /// 409 Conflict.
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: msg.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError {
            status: e.http_status(),
            message: e.to_string(),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(m) => ApiError::conflict(format!("the enclave refused: {m}")),
            CallError::Link(LinkError::Dead(m)) => ApiError {
                status: 503,
                message: format!(
                    "the enclave died during this request ({m}); the server restarts it and \
                     restores its models: open a new session and retry"
                ),
            },
            CallError::Link(LinkError::TooLarge(m)) => ApiError {
                status: 413,
                message: m,
            },
            CallError::Link(l) => ApiError {
                status: 503,
                message: l.to_string(),
            },
            CallError::Store(e) => e.into(),
            CallError::Conflict(m) => ApiError::conflict(m),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Enclave(c) => c.into(),
            QueryError::Host { .. } => ApiError::bad(e.to_string()),
            QueryError::Unexpected(_) => ApiError::conflict(e.to_string()),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

mod health;
mod openings;
mod peer;
mod query;
mod sessions;
pub use health::{replica_id_in, EnclaveHealth, ReplicaHealth, StoreHealth, REPLICA_ID_FILE};
use sessions::SessionInfo;

/// The host: store, enclave, loaded models and open sessions.
pub struct App {
    replica_id: String,
    store: Arc<dyn Store>,
    enclave: Supervisor,
    models: RwLock<HashMap<ModelId, Arc<HostModel>>>,
    sessions: Mutex<HashMap<SessionId, SessionInfo>>,
    /// Sessions of each model being opened (the stacker waits for them).
    openings: openings::Openings,
    /// Gathers concurrent thin queries into stacked ones (`None`: off).
    stacker: Option<Stacker>,
    /// Where each query's record goes.
    jobs: JobLog,
    /// How long a session may stay idle before the host closes it.
    session_idle: Duration,
}

/// How long a session may stay idle (no request) before the host closes it
/// and the enclave forgets its channel: a client between queries keeps its
/// session this long.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);

/// The stacker's time unit: a thin query waits at most 25 of these for
/// others to share its stacked query (models registered for more than one
/// image per query only).
pub const DEFAULT_STACK_WINDOW: Duration = Duration::from_millis(2);

fn parse_id(s: &str, what: &str) -> ApiResult<[u8; 16]> {
    id_from_hex(s).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl App {
    /// The host over a store and an enclave supervisor.
    pub fn new(store: Arc<dyn Store>, enclave: Supervisor) -> Self {
        App {
            replica_id: health::random_replica_id(),
            enclave,
            models: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            openings: openings::Openings::default(),
            stacker: Some(Stacker::new(DEFAULT_STACK_WINDOW)),
            jobs: JobLog::start(store.clone()),
            store,
            session_idle: DEFAULT_SESSION_IDLE,
        }
    }

    /// Closes sessions idle (no request) for longer than `idle`
    /// (default [`DEFAULT_SESSION_IDLE`]).
    pub fn with_session_idle_timeout(mut self, idle: Duration) -> Self {
        self.session_idle = idle;
        self
    }

    /// Stacks concurrent thin queries of a model registered for batches
    /// (waiting at most `window` for a stack to fill), or never (`None`).
    pub fn with_stack_window(mut self, window: Option<Duration>) -> Self {
        self.stacker = window.map(Stacker::new);
        self
    }

    /// This replica's id as `GET /v1/health` reports it (`hetee serve --replica-id`).
    pub fn with_replica_id(mut self, replica_id: impl Into<String>) -> Self {
        self.replica_id = replica_id.into();
        self
    }

    /// The enclave supervisor.
    pub fn enclave(&self) -> &Supervisor {
        &self.enclave
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn keys_info(&self, key_id: &[u8; 16]) -> ApiResult<KeysInfo> {
        if self.store.keyset(&id_hex(key_id))?.is_none() {
            return Err(ApiError::not_found(format!(
                "no key set {}; create one with POST /v1/keys",
                id_hex(key_id)
            )));
        }
        let (id, evidence) = self.enclave.identity(key_id)?;
        Ok(KeysInfo {
            key_id: id_hex(&id.key_id),
            he_params: b64(&id.he_params),
            public_key: b64(&id.public_key),
            channel_public_key: id_hex(&id.channel_public_key),
            signing_public_key: id_hex(&id.signing_public_key),
            owner: id_hex(&id.owner),
            evidence: b64(&evidence),
        })
    }

    /// `POST /v1/keys`.
    pub fn create_keys(&self, req: CreateKeys) -> ApiResult<KeysInfo> {
        let he = he_params_from_bytes(&unb64(&req.he_params, "he_params").map_err(ApiError::bad)?)
            .map_err(|e| ApiError::bad(e.to_string()))?;
        let owner: [u8; 32] = hetee_attest::evidence::unhex(&req.owner)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ApiError::bad("owner: 64 hex digits of a Noise static public key"))?;
        let Response::KeysCreated { key_id, sealed, .. } =
            self.enclave.call_retry(Request::CreateKeys { he, owner })?
        else {
            return Err(ApiError::conflict("unexpected answer to CreateKeys"));
        };
        let rec = postcard::to_allocvec(&KeysRecord { sealed })
            .map_err(|e| ApiError::bad(format!("encode: {e}")))?;
        self.store.put_keyset(&id_hex(&key_id), &rec)?;
        info!(key_id = %id_hex(&key_id), "key set created");
        self.keys_info(&key_id)
    }

    /// `GET /v1/keys/{key_id}`.
    pub fn get_keys(&self, key_id: &str) -> ApiResult<KeysInfo> {
        self.keys_info(&parse_id(key_id, "key id")?)
    }

    /// `POST /v1/models` with a JSON body: decodes it and stores the weights
    /// like [`App::upload_model_bytes`].
    pub fn upload_model(&self, req: UploadModel) -> ApiResult<ModelCreated> {
        self.upload_model_with(req, PublicMeta::default())
    }

    /// [`App::upload_model`] with the model's public metadata.
    pub fn upload_model_with(
        &self,
        req: UploadModel,
        public: PublicMeta,
    ) -> ApiResult<ModelCreated> {
        let key_id = parse_id(&req.key_id, "key_id")?;
        let stages = req
            .stages
            .iter()
            .enumerate()
            .map(|(k, st)| {
                Ok(StageBody {
                    packing: unb64(&st.packing, &format!("stages[{k}].packing"))
                        .map_err(ApiError::bad)?,
                    weights: st
                        .weights
                        .iter()
                        .map(|w| unb64(w, &format!("stages[{k}].weights")))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(ApiError::bad)?,
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        self.upload_model_bytes_with(UploadBody { key_id, stages }, public)
    }

    /// `POST /v1/models`: stores encrypted weights (after checking that they
    /// decode and fit their packings).
    pub fn upload_model_bytes(&self, req: UploadBody) -> ApiResult<ModelCreated> {
        self.upload_model_bytes_with(req, PublicMeta::default())
    }

    /// [`App::upload_model_bytes`] with the model's public metadata, kept
    /// with the upload and the model registered from it.
    pub fn upload_model_bytes_with(
        &self,
        req: UploadBody,
        public: PublicMeta,
    ) -> ApiResult<ModelCreated> {
        public.check().map_err(ApiError::bad)?;
        let key_id = req.key_id;
        let Some(_) = self.store.keyset(&id_hex(&key_id))? else {
            return Err(ApiError::not_found("unknown key_id; create keys first"));
        };
        let (identity, _) = self.enclave.identity(&key_id)?;
        let he =
            he_params_from_bytes(&identity.he_params).map_err(|e| ApiError::bad(e.to_string()))?;
        let mut packings = Vec::new();
        let mut weights = Vec::new();
        for (k, st) in req.stages.into_iter().enumerate() {
            let p: ConvPacking = postcard::from_bytes(&st.packing)
                .map_err(|e| ApiError::bad(format!("stages[{k}].packing is malformed: {e}")))?;
            packings.push(p);
            weights.push(st.weights);
        }
        let host = HostModel::load(&he, &packings, &weights)
            .map_err(|e| ApiError::bad(format!("the uploaded model does not load: {e}")))?;
        let commitment = weights_commitment(&weights);
        let id = upload_id(&key_id, &commitment);
        let meta = ModelMeta {
            key_id,
            commitment,
            he,
            packings,
            sealed: None,
            weights_of: None,
            public,
        };
        if self.store.model_meta(&id_hex(&id))?.is_none() {
            let meta = meta.to_bytes().map_err(|e| ApiError::bad(e.to_string()))?;
            let blob = postcard::to_allocvec(&weights).map_err(|e| ApiError::bad(e.to_string()))?;
            self.store.put_model(&id_hex(&id), &meta, &blob)?;
        }
        if let Ok(mut m) = self.models.write() {
            m.insert(id, Arc::new(host));
        }
        info!(upload_id = %id_hex(&id), "encrypted weights stored");
        Ok(ModelCreated {
            upload_id: id_hex(&id),
            commitment: id_hex(&commitment),
        })
    }

    /// What the store holds for an upload or a registered model.
    pub fn registered(&self, id: &ModelId) -> ApiResult<ModelMeta> {
        self.meta(id)
    }

    fn meta(&self, id: &ModelId) -> ApiResult<ModelMeta> {
        let bytes = self.store.model_meta(&id_hex(id))?.ok_or_else(|| {
            ApiError::not_found(format!(
                "no model {}; upload it with hetee model upload",
                id_hex(id)
            ))
        })?;
        ModelMeta::from_bytes(&bytes)
            .map_err(|e| ApiError::conflict(format!("stored model record is malformed: {e}")))
    }

    /// `GET /v1/models/{model_id}`.
    pub fn get_model(&self, model_id: &str) -> ApiResult<ModelInfo> {
        self.get_model_public(model_id).map(|(info, _)| info)
    }

    /// `GET /v1/models/{model_id}` with the model's public metadata.
    pub fn get_model_public(&self, model_id: &str) -> ApiResult<(ModelInfo, PublicMeta)> {
        let id = parse_id(model_id, "model id")?;
        let meta = self.meta(&id)?;
        if meta.sealed.is_none() {
            return Err(ApiError::not_found(format!(
                "{} is an upload, not a registered model; use the model id that \
                 hetee model upload printed",
                id_hex(&id)
            )));
        }
        let info = ModelInfo {
            model_id: id_hex(&id),
            registered: true,
            keys: self.keys_info(&meta.key_id)?,
        };
        Ok((info, meta.public))
    }

    /// The host's loaded copy of a model's encrypted weights.
    pub fn host_model(&self, id: &ModelId) -> ApiResult<Arc<HostModel>> {
        if let Some(m) = self.models.read().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(m);
        }
        let meta = self.meta(id)?;
        let blob = self
            .store
            .model_weights(&id_hex(&meta.weights_of.unwrap_or(*id)))?
            .ok_or_else(|| ApiError::not_found("the model's weights are missing"))?;
        let weights: Vec<Vec<Vec<u8>>> = postcard::from_bytes(&blob)
            .map_err(|e| ApiError::conflict(format!("stored weights are malformed: {e}")))?;
        let host = Arc::new(
            HostModel::load(&meta.he, &meta.packings, &weights)
                .map_err(|e| ApiError::conflict(format!("stored model does not load: {e}")))?,
        );
        if let Ok(mut m) = self.models.write() {
            m.insert(*id, host.clone());
        }
        Ok(host)
    }

    /// `POST /v1/sessions`: relays Noise message 1 with the evidence.
    pub fn open_session(&self, req: OpenSession) -> ApiResult<SessionOpened> {
        let key_id = parse_id(&req.key_id, "key_id")?;
        if self.store.keyset(&id_hex(&key_id))?.is_none() {
            return Err(ApiError::not_found(
                "unknown key_id; fetch the model's keys with GET /v1/models/{id}",
            ));
        }
        let model_id = match &req.model_id {
            Some(m) => {
                let id = parse_id(m, "model_id")?;
                if self.meta(&id)?.key_id != key_id {
                    return Err(ApiError::bad("the model is not under this key set"));
                }
                Some(id)
            }
            None => None,
        };
        let msg1 = unb64(&req.msg1, "msg1").map_err(ApiError::bad)?;
        // A data provider's session: its query is on its way (stacks wait).
        let _opening = model_id.map(|m| self.openings.begin(m));
        let (_, evidence) = self.enclave.identity(&key_id)?;
        // No retry: a restarted enclave has another channel key, so msg1 is
        // useless to it; the client must attest again.
        let Response::ChannelOpened { session, msg2 } =
            self.enclave.call(Request::OpenChannel {
                key_id,
                evidence,
                msg1,
            })?
        else {
            return Err(ApiError::conflict("unexpected answer to OpenChannel"));
        };
        self.close_idle_sessions();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(session, SessionInfo::new(model_id));
        }
        Ok(SessionOpened {
            session: id_hex(&session),
            msg2: b64(&msg2),
        })
    }

    /// `POST /v1/sessions/{id}/finish`: relays message 3 and the client's
    /// first message; stores a model's sealed secrets when it registers one.
    pub fn finish_session(&self, session: &str, req: FinishSession) -> ApiResult<Sealed> {
        let session = parse_id(session, "session")?;
        self.claim(&session)?;
        let r = self.finish_inner(session, req);
        self.release(&session, r.is_ok());
        r
    }

    fn finish_inner(&self, session: SessionId, req: FinishSession) -> ApiResult<Sealed> {
        let msg3 = unb64(&req.msg3, "msg3").map_err(ApiError::bad)?;
        let payload = unb64(&req.payload, "payload").map_err(ApiError::bad)?;
        let Response::ChannelReply {
            payload,
            registered,
            ..
        } = self.enclave.call(Request::ChannelFinish {
            session,
            msg3,
            payload,
        })?
        else {
            return Err(ApiError::conflict("unexpected answer to ChannelFinish"));
        };
        if let Some(reg) = registered {
            let mut meta = self.meta(&reg.upload_id).map_err(|_| {
                ApiError::conflict(
                    "the enclave registered a model whose weights were never uploaded; \
                     upload the weights first",
                )
            })?;
            meta.sealed = Some(reg.sealed);
            meta.weights_of = Some(reg.upload_id);
            let bytes = meta.to_bytes().map_err(|e| ApiError::bad(e.to_string()))?;
            self.store.put_model(&id_hex(&reg.model_id), &bytes, &[])?;
            info!(
                model_id = %id_hex(&reg.model_id),
                upload_id = %id_hex(&reg.upload_id),
                "model registered with the enclave"
            );
        }
        Ok(Sealed {
            payload: b64(&payload),
        })
    }
}
