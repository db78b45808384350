//! The three parties in one process, speaking the real protocol: a model
//! provider and a data provider (the clients of [`crate::client`]) talk to
//! the host logic of `hetee serve` ([`App`], store in a temporary
//! directory) through an in-process [`Relay`] instead of HTTP, and the host
//! drives an in-process enclave on the simulated platform through the same
//! stage loop as the server. Used by `hetee run`, `hetee demo --in-process`
//! and `hetee bench`. Nothing here is a deployment: everything shares one
//! process and the platform is simulated.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use hetee_attest::StaticKeypair;
use hetee_enclave::budget;
use hetee_model::QuantModel;
use hetee_proto::api::{
    CreateKeys, FinishSession, KeysInfo, ModelCreated, ModelInfo, OpenSession, QueryDone, Sealed,
    SessionOpened, StageStats,
};
use hetee_proto::bodies::{QueryBody, UploadBody};
use hetee_proto::ids::{id_from_hex, id_hex, ModelId};
use hetee_proto::{EnclaveConfig, Schedule};
use hetee_server::app::{ApiError, App};
use hetee_server::launcher::InProcess;
use hetee_server::store::RedbStore;
use hetee_server::supervisor::{Launch, Supervisor};
use serde::Serialize;

use crate::client::data_provider::{Answer, Target};
use crate::client::model_provider::{upload, Terms};
use crate::client::public_meta::PublicMeta;
use crate::client::relay::Relay;
use crate::client::trust::Trust;

/// Figures of one query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    /// Data provider and relay time: quantize, pack, encrypt, channel
    /// messages, open and verify the result (ms).
    pub client_ms: f64,
    /// Bytes the data provider uploads.
    pub bytes_up: usize,
    /// Bytes the data provider receives.
    pub bytes_down: usize,
    /// End-to-end latency (ms).
    pub total_ms: f64,
    /// Enclave time starting the query (input binding check) (ms).
    pub start_ms: f64,
    /// Per stage.
    pub stages: Vec<StageStats>,
    /// This query's share of the server's figures: 1, or 1/n for one of n
    /// sessions stacked in one query.
    pub share: f64,
}

impl QueryStats {
    /// The figures of a data provider's answer that took `total_ms`.
    pub fn of(a: &Answer, total_ms: f64) -> Self {
        let server_ms = a.host_ms + a.enclave_ms;
        let stage_enclave: f64 = a.stages.iter().map(|s| s.enclave_ms).sum();
        QueryStats {
            client_ms: (total_ms - server_ms).max(0.0),
            bytes_up: a.bytes_up,
            bytes_down: a.bytes_down,
            total_ms,
            start_ms: (a.enclave_ms - stage_enclave).max(0.0),
            stages: a.stages.clone(),
            share: 1.0 / f64::from(a.stacked.max(1)),
        }
    }

    /// This query's host time: its share of the stages' sum.
    pub fn host_ms(&self) -> f64 {
        self.share * self.stages.iter().map(|s| s.host_ms).sum::<f64>()
    }
    /// This query's enclave time: its share of the start and every stage.
    pub fn enclave_ms(&self) -> f64 {
        self.share * (self.start_ms + self.stages.iter().map(|s| s.enclave_ms).sum::<f64>())
    }
}

/// The host logic as a client's relay, without HTTP.
pub struct LocalRelay(pub Arc<App>);

fn api_err(e: ApiError) -> anyhow::Error {
    anyhow!("the host answered {}: {}", e.status, e.message)
}

impl Relay for LocalRelay {
    fn create_keys(&self, req: &CreateKeys) -> Result<KeysInfo> {
        self.0.create_keys(req.clone()).map_err(api_err)
    }
    fn model(&self, model_id: &str) -> Result<ModelInfo> {
        self.0.get_model(model_id).map_err(api_err)
    }
    fn upload(&self, req: &UploadBody) -> Result<ModelCreated> {
        self.0.upload_model_bytes(req.clone()).map_err(api_err)
    }
    fn open_session(&self, req: &OpenSession) -> Result<SessionOpened> {
        self.0.open_session(req.clone()).map_err(api_err)
    }
    fn finish_session(&self, session: &str, req: &FinishSession) -> Result<Sealed> {
        self.0.finish_session(session, req.clone()).map_err(api_err)
    }
    fn query(&self, session: &str, req: &QueryBody) -> Result<QueryDone> {
        self.0.query_bytes(session, req.clone()).map_err(api_err)
    }
    fn close_session(&self, session: &str) {
        let _ = self.0.close_session(session);
    }
    fn public_meta(&self, model_id: &str) -> Result<PublicMeta> {
        let (_, p) = self.0.get_model_public(model_id).map_err(api_err)?;
        Ok(PublicMeta {
            preprocess: p.preprocess,
            output_shape: p
                .output_shape
                .map(|s| s.into_iter().map(|d| d as usize).collect()),
        })
    }
    fn upload_with_meta(&self, req: &UploadBody, meta: &PublicMeta) -> Result<ModelCreated> {
        let public = hetee_server::host_model::PublicMeta {
            preprocess: meta.preprocess.clone(),
            output_shape: meta
                .output_shape
                .as_ref()
                .map(|s| s.iter().map(|&d| d as u32).collect()),
        };
        self.0
            .upload_model_bytes_with(req.clone(), public)
            .map_err(api_err)
    }
}

/// One model served in this process: uploaded and registered by a model
/// provider, queried by a data provider.
pub struct Harness {
    app: Arc<App>,
    target: Target,
    _store: tempfile::TempDir,
    /// The model's id.
    pub model_id: ModelId,
    /// The compiled model (public structure).
    pub schedule: Schedule,
    /// Bytes of encrypted weights the model provider uploaded.
    pub weight_bytes: usize,
    /// Memory the host holds for the pre-extended weights.
    pub weight_memory: usize,
    /// Bytes the enclave keeps allocated for this model (keys, schedule,
    /// checks; counted only when the metering allocator is installed).
    pub enclave_resident: usize,
    /// Bytes of the model's sealed record in the host's store.
    pub sealed_model_bytes: usize,
}

impl Harness {
    /// Sets up all parties for `model`, planned for up to `max_batch`
    /// images per query: the model provider has the enclave make a key set,
    /// encrypts and uploads the weights, and registers the model; the data
    /// provider attests the enclave and fetches the query plan.
    pub fn new(model: &QuantModel, max_batch: usize) -> Result<Self> {
        // The allocation meter counts the whole process, and here the host
        // shares it with the enclave: the budget would count the host's
        // work too, so the harness sets the largest one (the enclave
        // process of `hetee serve` enforces the real budget).
        let config = EnclaveConfig {
            memory_budget_mib: 1 << 20,
        };
        let dir = tempfile::tempdir()?;
        let store = Arc::new(RedbStore::open(dir.path())?);
        let sup = Supervisor::start(Launch::InProcess(config), store.clone())?;
        let app = Arc::new(App::new(store, sup));
        let relay: Arc<dyn Relay> = Arc::new(LocalRelay(app.clone()));
        let trust = Trust {
            measurement: InProcess::measurement(&config),
            allow_sim: true,
        };
        let owner = StaticKeypair::generate()?;
        let terms = Terms {
            max_batch: max_batch.max(1),
            ..Terms::default()
        };
        let before = budget::current();
        let up = upload(relay.as_ref(), &trust, &owner, model, &terms)?;
        let enclave_resident = budget::current().saturating_sub(before);
        let id = id_hex(&up.model_id);
        let meta = app.registered(&up.model_id).map_err(api_err)?;
        let host = app.host_model(&up.model_id).map_err(api_err)?;
        let target = Target::connect(relay, &trust, &id, Some(StaticKeypair::generate()?))?;
        Ok(Harness {
            schedule: up.schedule,
            model_id: id_from_hex(&id).map_err(|e| anyhow!(e))?,
            weight_bytes: up.weight_bytes,
            weight_memory: host.weight_memory,
            sealed_model_bytes: meta.sealed.map(|s| s.len()).unwrap_or(0),
            enclave_resident,
            app,
            target,
            _store: dir,
        })
    }

    /// The enclave's counters of work made ahead (`bench`).
    pub(crate) fn ahead(&self) -> crate::bench::Ahead {
        crate::bench::Ahead::of(&self.app.health().base)
    }

    /// The host logic (for tests that play the host).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Runs one secure inference; returns the logits and the figures.
    pub fn infer(&self, x: &[f32]) -> Result<(Vec<f32>, QueryStats)> {
        let (mut l, s) = self.infer_batch(&[x])?;
        Ok((l.swap_remove(0), s))
    }

    /// Runs one thin query (the input goes to the enclave over the
    /// channel, and the enclave encrypts it); returns the logits and the
    /// figures.
    pub fn infer_thin(&self, x: &[f32]) -> Result<(Vec<f32>, QueryStats)> {
        let t0 = Instant::now();
        let mut a = self.target.query_thin(&[x])?;
        let stats = QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3);
        Ok((a.logits.swap_remove(0), stats))
    }

    /// Runs one secure query on up to `schedule.batch` images; returns the
    /// logits of each image and the figures of the whole query.
    pub fn infer_batch(&self, xs: &[&[f32]]) -> Result<(Vec<Vec<f32>>, QueryStats)> {
        let t0 = Instant::now();
        let a = self.target.query(xs)?;
        let stats = QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3);
        Ok((a.logits, stats))
    }
}
