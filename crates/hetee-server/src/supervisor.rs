//! Keeps one enclave process alive for the host: starts it, restores every
//! sealed key set and model from the store into it, and restarts it when it
//! dies. Also plays the simulated platform: it issues the evidence for the
//! measurement it took before starting the enclave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hetee_attest::{Measurement, SimPlatform};
use hetee_enclave::enclave::DEV_PLATFORM_SECRET;
use hetee_enclave::messages::{id_hex, Identity, KeyId};
use hetee_enclave::{Request, Response};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::host_model::ModelMeta;
use crate::launcher::{ChildProcess, EnclaveLink, LaunchSpec, LinkError};
use crate::store::Store;

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
}

struct Incarnation {
    child: Arc<ChildProcess>,
    number: u64,
}

type EvidenceCache = HashMap<KeyId, (u64, Identity, Vec<u8>)>;

/// The enclave process and its restarts.
pub struct Supervisor {
    spec: LaunchSpec,
    platform: SimPlatform,
    measurement: Measurement,
    store: Arc<Store>,
    current: Mutex<Option<Incarnation>>,
    starts: AtomicU64,
    evidence: Mutex<EvidenceCache>,
}

impl Supervisor {
    /// Measures the enclave binary and starts it, restoring what the store holds.
    pub fn start(spec: LaunchSpec, store: Arc<Store>) -> Result<Self, LinkError> {
        let measurement = spec.measure()?;
        let s = Supervisor {
            spec,
            platform: SimPlatform::dev(),
            measurement,
            store,
            current: Mutex::new(None),
            starts: AtomicU64::new(0),
            evidence: Mutex::new(HashMap::new()),
        };
        s.link()?;
        Ok(s)
    }

    /// The measurement clients must pin.
    pub fn measurement(&self) -> Measurement {
        self.measurement
    }

    /// How many enclave processes were started.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Process id of the running enclave (0 if none).
    pub fn pid(&self) -> u32 {
        self.lock_current()
            .as_ref()
            .map(|i| i.child.pid())
            .unwrap_or(0)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Incarnation>> {
        match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn link(&self) -> Result<(Arc<ChildProcess>, u64), LinkError> {
        let mut cur = self.lock_current();
        if let Some(i) = cur.as_ref() {
            return Ok((i.child.clone(), i.number));
        }
        let child = Arc::new(ChildProcess::spawn(&self.spec, DEV_PLATFORM_SECRET)?);
        let number = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        self.restore_into(&child);
        info!(
            pid = child.pid(),
            incarnation = number,
            "enclave started and restored"
        );
        *cur = Some(Incarnation {
            child: child.clone(),
            number,
        });
        Ok((child, number))
    }

    fn restore_into(&self, child: &ChildProcess) {
        let keysets = self.store.keysets().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list key sets to restore");
            Vec::new()
        });
        for (id, rec) in keysets {
            let Ok(rec) = postcard::from_bytes::<KeysRecord>(&rec) else {
                warn!(key_id = %id, "stored key set record is malformed; skipped");
                continue;
            };
            match child.call(Request::RestoreKeys { sealed: rec.sealed }) {
                Ok((Response::KeysRestored { .. }, _)) => {}
                Ok((Response::Error { message }, _)) => {
                    warn!(key_id = %id, %message, "enclave cannot restore a key set")
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
                Ok((Response::ModelRestored { .. }, _)) => {}
                Ok((Response::Error { message }, _)) => {
                    warn!(model_id = %id, %message, "enclave cannot restore a model")
                }
                other => warn!(model_id = %id, ?other, "restore failed"),
            }
        }
    }

    fn bury(&self, number: u64, why: &LinkError) {
        let mut cur = self.lock_current();
        if cur.as_ref().map(|i| i.number) == Some(number) {
            warn!(incarnation = number, error = %why, "enclave lost; the next request restarts it");
            *cur = None;
        }
    }

    /// Sends one request to the current enclave. A dead enclave makes this
    /// call fail and is restarted (and restored) on the next call.
    pub fn call(&self, req: Request) -> Result<Response, CallError> {
        let (child, number) = self.link()?;
        match child.call(req) {
            Ok((Response::Error { message }, _)) => Err(CallError::Refused(message)),
            Ok((r, _)) => Ok(r),
            Err(e) => {
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

    /// The attested identity of a key set: the enclave's identity and the
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
        let Response::Identity(id) = self.call_retry(Request::Identity { key_id: *key_id })? else {
            return Err(CallError::Refused("unexpected answer to Identity".into()));
        };
        let (_, number) = self.link()?;
        let ev = self
            .platform
            .issue(self.measurement, false, id.report_data())
            .encode()
            .map_err(|e| CallError::Refused(format!("cannot encode evidence: {e}")))?;
        if let Ok(mut cache) = self.evidence.lock() {
            cache.insert(*key_id, (number, id.clone(), ev.clone()));
        }
        info!(key_id = %id_hex(key_id), incarnation = number, "evidence issued");
        Ok((id, ev))
    }
}
