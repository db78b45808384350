//! Keeps one enclave process alive for the host: starts it, restores every
//! sealed key set, model and model state from the store into it, and
//! restarts it when it dies. Every sealed state the enclave hands back (a
//! query counted, a failed check, an owner's change) is stored here, so
//! nothing above has to remember to. With a store shared by several
//! replicas, `sync` also loads what other replicas stored since, and
//! [`join`] gives each new enclave the cluster's sealing key first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hetee_attest::Measurement;
use hetee_proto::ids::{id_hex, Identity, KeyId};
use hetee_proto::{Request, Response};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::host_model::ModelMeta;
use crate::launcher::{ChildProcess, EnclaveLink, InProcess, LaunchSpec, LinkError};
use crate::store::{StateRecord, Store, StoreError};

pub mod join;
mod sync;
use join::{Cluster, JoinError};
use sync::Loaded;

/// What the store keeps for a key set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysRecord {
    /// The key set sealed by the enclave.
    pub sealed: Vec<u8>,
}

/// Why a call to the enclave failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The enclave process is unavailable or died during the call.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The enclave refused the request.
    #[error("the enclave refused: {0}")]
    Refused(String),
    /// The store failed while loading what the request needs or storing what it changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another replica changed the same model state at the same time; nothing was counted.
    #[error("{0}")]
    Conflict(String),
}

struct Incarnation {
    child: Arc<dyn EnclaveLink>,
    pid: u32,
    number: u64,
}

/// How the supervisor starts an enclave.
pub enum Launch {
    /// The `hetee-enclave` binary as a child process.
    Process(LaunchSpec),
    /// An enclave in this process on the simulated platform (`hetee run`,
    /// `bench`, `demo --in-process`, tests).
    InProcess(hetee_proto::EnclaveConfig),
}

type EvidenceCache = HashMap<KeyId, (u64, Identity, Vec<u8>)>;

/// The enclave process and its restarts.
pub struct Supervisor {
    launch: Launch,
    measurement: Measurement,
    store: Arc<dyn Store>,
    current: Mutex<Option<Incarnation>>,
    starts: AtomicU64,
    evidence: Mutex<EvidenceCache>,
    loaded: Mutex<Loaded>,
    cluster: Cluster,
    /// The cluster's sealing key as the enclave re-sealed it for itself, once joined or restored.
    cluster_key: Mutex<Option<Vec<u8>>>,
    /// Calls in the enclave now, and the most seen at once.
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// What a restore into a new enclave found among the key sets.
#[derive(Debug, Default)]
struct Restored {
    keysets_total: usize,
    keysets_opened: usize,
    first_refusal: Option<String>,
}

/// Whether the supervisor holds its lock through the call to the enclave, so that what it
/// changes is stored in the enclave's order: a query's spend, restores, key sets. A channel's
/// first message may carry an owner's change too, but stored after a newer spend it loses the
/// compare-and-set harmlessly (the newer state holds it), so channels run concurrently.
fn held_through_call(req: &Request) -> bool {
    !matches!(
        req,
        Request::StageResult { .. }
            | Request::Evidence { .. }
            | Request::OpenChannel { .. }
            | Request::CloseSession { .. }
            | Request::Status
            | Request::PeerOffer
            | Request::ShareSealingKey { .. }
            | Request::ChannelFinish { .. }
    )
}

impl Supervisor {
    /// Measures the enclave binary and starts it, restoring what the store holds. The enclave
    /// seals with its own platform key.
    pub fn start(launch: Launch, store: Arc<dyn Store>) -> Result<Self, LinkError> {
        let s = Self::new(launch, store, Cluster::default())?;
        s.link()?;
        Ok(s)
    }

    /// [`start`](Self::start) as a replica of a cluster: the enclave first takes the cluster's
    /// sealing key (kept, or from a peer, see [`join`]), then the store is restored into it.
    /// Fails if the store holds key sets and the enclave opens none of them.
    pub fn start_in_cluster(
        launch: Launch,
        store: Arc<dyn Store>,
        cluster: Cluster,
    ) -> Result<Self, JoinError> {
        let s = Self::new(launch, store, cluster)?;
        let (_, _, restored) = s.link_checked()?;
        s.check_opened(&restored)?;
        Ok(s)
    }

    fn new(launch: Launch, store: Arc<dyn Store>, cluster: Cluster) -> Result<Self, LinkError> {
        let measurement = match &launch {
            Launch::Process(spec) => spec.measure()?,
            Launch::InProcess(config) => InProcess::measurement(config),
        };
        let s = Supervisor {
            launch,
            measurement,
            store,
            current: Mutex::new(None),
            starts: AtomicU64::new(0),
            evidence: Mutex::new(HashMap::new()),
            loaded: Mutex::new(Loaded::default()),
            cluster,
            cluster_key: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        };
        Ok(s)
    }

    /// The measurement of the binary and config the host launches (what
    /// clients should pin; the enclave's own evidence is what they check).
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// How many enclave processes were started.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// The most calls that were in the enclave at once.
    pub fn peak_concurrent_calls(&self) -> u64 {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Whether the enclave is a process of its own (not in this one).
    pub fn is_process(&self) -> bool {
        matches!(self.launch, Launch::Process(_))
    }

    /// Process id of the running enclave (0 if none).
    pub fn pid(&self) -> u32 {
        self.lock_current().as_ref().map(|i| i.pid).unwrap_or(0)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Incarnation>> {
        match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn lock_cluster_key(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.cluster_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn link(&self) -> Result<(Arc<dyn EnclaveLink>, u64), LinkError> {
        self.link_checked()
            .map(|(child, number, _)| (child, number))
            .map_err(JoinError::into_link)
    }

    /// The current enclave, or a new one that took the cluster's key and the store's records
    /// (with what it found among the key sets).
    fn link_checked(&self) -> Result<(Arc<dyn EnclaveLink>, u64, Restored), JoinError> {
        let mut cur = self.lock_current();
        if let Some(i) = cur.as_ref() {
            return Ok((i.child.clone(), i.number, Restored::default()));
        }
        let (child, pid): (Arc<dyn EnclaveLink>, u32) = match &self.launch {
            Launch::Process(spec) => {
                let c = ChildProcess::spawn(spec)?;
                let pid = c.pid();
                (Arc::new(c), pid)
            }
            Launch::InProcess(config) => (Arc::new(InProcess::new(*config)), std::process::id()),
        };
        let number = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        self.enter_cluster(child.as_ref())?;
        let (mut loaded, restored) = self.restore_into(child.as_ref());
        loaded.incarnation = number;
        *self.lock_loaded() = loaded;
        info!(pid, incarnation = number, "enclave started and restored");
        *cur = Some(Incarnation {
            child: child.clone(),
            pid,
            number,
        });
        Ok((child, number, restored))
    }

    /// Loads every key set, model and model state of the store into a new enclave; returns
    /// what it loaded and what it found among the key sets.
    fn restore_into(&self, child: &dyn EnclaveLink) -> (Loaded, Restored) {
        let mut loaded = Loaded::default();
        let mut restored = Restored::default();
        let keysets = self.store.keysets().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list key sets to restore");
            Vec::new()
        });
        for (id, rec) in keysets {
            let Ok(rec) = postcard::from_bytes::<KeysRecord>(&rec) else {
                warn!(key_id = %id, "stored key set record is malformed; skipped");
                continue;
            };
            restored.keysets_total += 1;
            match child.call(Request::RestoreKeys { sealed: rec.sealed }) {
                Ok((Response::KeysRestored { key_id }, _)) => {
                    loaded.keysets.insert(key_id);
                    restored.keysets_opened += 1;
                }
                Ok((Response::Error { message, .. }, _)) => {
                    warn!(key_id = %id, %message, "enclave cannot restore a key set");
                    restored.first_refusal.get_or_insert(message);
                }
                other => warn!(key_id = %id, ?other, "restore failed"),
            }
        }
        let models = self.store.models().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list models to restore");
            Vec::new()
        });
        for (id, meta) in models {
            let Ok(meta) = postcard::from_bytes::<ModelMeta>(&meta) else {
                warn!(model_id = %id, "stored model record is malformed; skipped");
                continue;
            };
            let Some(sealed) = meta.sealed else { continue };
            match child.call(Request::RestoreModel { sealed }) {
                Ok((Response::ModelRestored { model_id }, _)) => {
                    loaded.models.insert(model_id);
                }
                Ok((Response::Error { message, .. }, _)) => {
                    warn!(model_id = %id, %message, "enclave cannot restore a model")
                }
                other => warn!(model_id = %id, ?other, "restore failed"),
            }
        }
        let states = self.store.states().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list model states to restore");
            Vec::new()
        });
        for StateRecord {
            model_id: id,
            version,
            sealed,
        } in states
        {
            match child.call(Request::RestoreState { sealed }) {
                Ok((Response::StateRestored { model_id, version }, _)) => {
                    loaded.states.insert(model_id, version);
                }
                Ok((Response::Error { message, .. }, _)) => {
                    warn!(model_id = %id, version, %message, "enclave cannot restore a model state")
                }
                other => warn!(model_id = %id, ?other, "restore failed"),
            }
        }
        (loaded, restored)
    }

    fn bury(&self, number: u64, why: &LinkError) {
        let mut cur = self.lock_current();
        if cur.as_ref().map(|i| i.number) == Some(number) {
            warn!(incarnation = number, error = %why, "enclave lost; the next request restarts it");
            *cur = None;
        }
    }

    /// Sends one request to the current enclave and stores any sealed state
    /// it answers with. A dead enclave makes this call fail and is restarted
    /// (and restored) on the next call.
    pub fn call(&self, req: Request) -> Result<Response, CallError> {
        self.call_measured(req).map(|(r, _)| r)
    }

    /// [`call`](Self::call), also returning the peak bytes an in-process
    /// enclave allocated for the request (0 for a process).
    pub fn call_measured(&self, req: Request) -> Result<(Response, usize), CallError> {
        let (child, number) = self.link()?;
        // Loading what the request needs happens under the lock. A request that may change a
        // model state holds it through the call too, so that this replica's state writes
        // reach the store in the enclave's order. Every other call (stage results, channels,
        // evidence) runs concurrently: the enclave serves many sessions at once.
        let mut loaded = self.lock_loaded();
        let after = self.prepare(&mut loaded, child.as_ref(), number, &req)?;
        let ordered = held_through_call(&req);
        let mut held = if ordered {
            Some(loaded)
        } else {
            drop(loaded);
            None
        };
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let result = child.call(req);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut loaded = match held.take() {
            Some(l) => l,
            None => self.lock_loaded(),
        };
        match result {
            Ok((resp, peak)) => {
                self.after(&mut loaded, child.as_ref(), after, &resp)?;
                match resp {
                    Response::Error { message, .. } => Err(CallError::Refused(message)),
                    r => Ok((r, peak)),
                }
            }
            Err(e) => {
                drop(loaded);
                self.bury(number, &e);
                Err(e.into())
            }
        }
    }

    /// [`call`](Self::call) for requests that hold no session: if the
    /// enclave turns out dead, restart it and try once more.
    pub fn call_retry(&self, req: Request) -> Result<Response, CallError> {
        match self.call(req.clone()) {
            Err(CallError::Link(LinkError::Dead(_))) => self.call(req),
            r => r,
        }
    }

    /// Forgets the current enclave process and starts a new one now.
    pub fn restart(&self) -> Result<(), LinkError> {
        *self.lock_current() = None;
        self.link().map(|_| ())
    }

    /// The attested identity of a key set: the enclave's identity and its
    /// platform's evidence for it (cached per enclave process).
    pub fn identity(&self, key_id: &KeyId) -> Result<(Identity, Vec<u8>), CallError> {
        let (_, number) = self.link()?;
        if let Ok(cache) = self.evidence.lock() {
            if let Some((n, id, ev)) = cache.get(key_id) {
                if *n == number {
                    return Ok((id.clone(), ev.clone()));
                }
            }
        }
        let Response::Evidence { identity, evidence } =
            self.call_retry(Request::Evidence { key_id: *key_id })?
        else {
            return Err(CallError::Refused("unexpected answer to Evidence".into()));
        };
        let (_, number) = self.link()?;
        if identity.measurement != self.measurement.0 {
            warn!(
                key_id = %id_hex(key_id),
                "the enclave reports another measurement than the host computed for its binary"
            );
        }
        if let Ok(mut cache) = self.evidence.lock() {
            cache.insert(*key_id, (number, identity.clone(), evidence.clone()));
        }
        info!(key_id = %id_hex(key_id), incarnation = number, "evidence obtained");
        Ok((identity, evidence))
    }
}
