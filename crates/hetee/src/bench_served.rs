//! `hetee bench --served` and `--clients N`: the whole deployment on
//! loopback (`hetee serve` with its enclave process, both clients over
//! HTTP), measured in the same run as the in-process rows.
//!
//! - `served`: one single-image query at a time, latency per image;
//! - `clients`: N data providers at once, each sending single-image
//!   queries; total throughput over the wall time.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use hetee_attest::StaticKeypair;
use hetee_model::QuantModel;
use hetee_proto::api::Health;

use crate::bench::{median_row, row, BenchRow, Footprint, Plain};
use crate::client::data_provider::Target;
use crate::client::http::Api;
use crate::client::model_provider::{upload, Terms};
use crate::client::relay::Relay;
use crate::client::trust::Trust;
use crate::harness::QueryStats;
use crate::serve::{ServeOptions, Server};

/// A served model: the server on loopback and a data provider's target.
pub struct Served {
    _dir: tempfile::TempDir,
    api: Api,
    /// The data provider's view of the model.
    pub target: Target,
}

impl Served {
    /// Starts `hetee serve` on a loopback port with its enclave process and
    /// uploads `q` (one image per query).
    pub fn start(q: &QuantModel) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let server = Server::bind(&ServeOptions::loopback(dir.path()))?;
        let addr = server.addr.to_string();
        let trust = Trust::new(&server.measurement, true)?;
        std::thread::spawn(move || server.run());
        let api = Api::new(&addr)?;
        let owner = StaticKeypair::generate()?;
        let terms = Terms {
            max_batch: 1,
            ..Terms::default()
        };
        let up = upload(&api, &trust, &owner, q, &terms)?;
        let relay: Arc<dyn Relay> = Arc::new(api.clone());
        let id = hetee_proto::ids::id_hex(&up.model_id);
        let target = Target::connect(relay, &trust, &id, None)?;
        Ok(Served {
            _dir: dir,
            api,
            target,
        })
    }

    /// One query; its figures.
    pub fn query(&self, x: &[f32]) -> Result<QueryStats> {
        let t0 = Instant::now();
        let a = self.target.query(&[x])?;
        Ok(QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// The enclave process's peak memory so far.
    fn enclave_peak(&self) -> usize {
        self.api
            .get::<Health>("/v1/health")
            .map(|h| h.enclave_memory_peak as usize)
            .unwrap_or(0)
    }
}

/// The `served` and `clients` rows of one model: `runs` runs each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    name: &str,
    served: &Served,
    xs: &[&[f32]],
    threads: usize,
    runs: usize,
    clients: usize,
    plain: impl Fn() -> Result<Plain>,
) -> Result<Vec<BenchRow>> {
    let footprint = || Footprint {
        batch: 1,
        enclave_resident: served.enclave_peak(),
    };
    let mut out = Vec::new();
    let mut run_rows = Vec::new();
    for _ in 0..runs.max(1) {
        let stats = xs
            .iter()
            .map(|x| served.query(x))
            .collect::<Result<Vec<_>>>()?;
        run_rows.push(row(
            name,
            "served",
            threads,
            xs.len(),
            &stats,
            plain()?,
            None,
            footprint(),
        ));
    }
    out.push(median_row(run_rows));
    if clients > 0 {
        let mut run_rows = Vec::new();
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let stats = std::thread::scope(|s| {
                let handles: Vec<_> = (0..clients)
                    .map(|c| {
                        s.spawn(move || {
                            xs.iter()
                                .skip(c)
                                .step_by(clients)
                                .map(|x| served.query(x))
                                .collect::<Result<Vec<_>>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let wall = t0.elapsed().as_secs_f64();
            let stats: Vec<QueryStats> = stats.into_iter().flatten().collect();
            run_rows.push(row(
                name,
                &format!("clients{clients}"),
                threads,
                xs.len(),
                &stats,
                plain()?,
                Some(wall),
                footprint(),
            ));
        }
        out.push(median_row(run_rows));
    }
    Ok(out)
}
