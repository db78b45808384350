//! `GET /v1/health`: this replica's id, its enclave and its store.

use std::io::{self, Write};
use std::path::Path;

use hetee_proto::api::Health;
use hetee_proto::{Request, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::App;
use crate::host_model::ModelMeta;

/// File in the data dir holding the replica id chosen on first start.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// The health report: the single-server fields ([`Health`], `status` is `ok` or `degraded`)
/// plus the replica, its enclave and its store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaHealth {
    /// Status, enclave figures and registered models, as a single server reports them.
    #[serde(flatten)]
    pub base: Health,
    /// This replica's id (`--replica-id`, or the one in `DIR/replica-id`).
    pub replica_id: String,
    /// This replica's enclave.
    pub enclave: EnclaveHealth,
    /// The store (shared by every replica when it is PostgreSQL).
    pub store: StoreHealth,
}

/// The enclave part of [`ReplicaHealth`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnclaveHealth {
    /// It answered a status request (after a restart if it had died).
    pub alive: bool,
    /// The measurement the host computed for the enclave it launches (hex).
    pub measurement: String,
    /// Why it is not alive.
    pub error: Option<String>,
}

/// The store part of [`ReplicaHealth`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `redb` or `postgres`.
    pub kind: String,
    /// The data file, or the database without credentials.
    pub location: String,
    /// It answered a read.
    pub reachable: bool,
    /// Why it is not reachable.
    pub error: Option<String>,
}

/// A fresh random replica id (`r-` and 12 hex digits).
pub(super) fn random_replica_id() -> String {
    let n: u64 = rand::rng().random();
    format!("r-{:012x}", n & 0xffff_ffff_ffff)
}

/// The replica id kept in `dir/replica-id`, created with a random id on first use so that a
/// restarted replica keeps its id.
pub fn replica_id_in(dir: &Path) -> io::Result<String> {
    let path = dir.join(REPLICA_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let id = random_replica_id();
    let mut f = std::fs::File::create(&path)?;
    writeln!(f, "{id}")?;
    f.sync_all()?;
    Ok(id)
}

impl App {
    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// `GET /v1/health`. Never fails: a dead enclave or an unreachable store makes the status
    /// `degraded` (the route answers 503 then, so load balancers skip this replica).
    pub fn health(&self) -> ReplicaHealth {
        let measurement = self.enclave.measurement().to_hex();
        let (status, enclave_error) = match self.enclave.call_retry(Request::Status) {
            Ok(Response::Status(s)) => (Some(s), None),
            Ok(_) => (None, Some("unexpected answer to Status".to_string())),
            Err(e) => (None, Some(e.to_string())),
        };
        let info = self.store.info();
        let models = self.store.models().map(|ms| {
            ms.iter()
                .filter(|(_, m)| {
                    postcard::from_bytes::<ModelMeta>(m).is_ok_and(|m| m.sealed.is_some())
                })
                .count()
        });
        let healthy = status.is_some() && models.is_ok();
        let st = status.unwrap_or_default();
        ReplicaHealth {
            base: Health {
                status: if healthy { "ok" } else { "degraded" }.into(),
                measurement: measurement.clone(),
                enclave_pid: self.enclave.pid(),
                enclave_starts: self.enclave.starts(),
                enclave_memory_current: st.memory_current,
                enclave_memory_peak: st.memory_peak,
                enclave_memory_budget: st.memory_budget,
                enclave_made_ahead: st.made_ahead,
                enclave_made_ahead_us: st.made_ahead_us,
                enclave_taken_ahead: st.taken_ahead,
                models: *models.as_ref().unwrap_or(&0),
                sessions: st.sessions,
            },
            replica_id: self.replica_id.clone(),
            enclave: EnclaveHealth {
                alive: enclave_error.is_none(),
                measurement,
                error: enclave_error,
            },
            store: StoreHealth {
                kind: info.kind,
                location: info.location,
                reachable: models.is_ok(),
                error: models.err().map(|e| e.to_string()),
            },
        }
    }
}
