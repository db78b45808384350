//! `hetee bench --served` and `--clients N`: the whole deployment on
//! loopback (`hetee serve` with its enclave process, both clients over
//! HTTP), measured in the same run as the in-process rows.
//!
//! - `served`: one single-image query at a time, latency per image;
//! - `clients`: N data providers at once, each sending single-image
//!   queries; total throughput over the wall time;
//! - `stacked`: the same N clients sending single-image *thin* queries to
//!   the model registered for batches of N: the server gathers concurrent
//!   queries into stacked queries (one product for all of them).
//!
//! Every client opens one session and sends its queries on it, one after
//! another (one handshake per client, not per query). The concurrent rows
//! time the queries: the clients' sessions are all open before the clock
//! starts, as a server's long-lived clients have theirs.

use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::Result;
use hetee_attest::StaticKeypair;
use hetee_model::QuantModel;
use hetee_proto::api::Health;

use crate::bench::{median_row, row, Ahead, BenchRow, Footprint, Plain};
use crate::client::data_provider::{QuerySession, Target};
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
    /// uploads `q` for queries of up to `max_batch` images.
    pub fn start(q: &QuantModel, max_batch: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let server = Server::bind(&ServeOptions::loopback(dir.path()))?;
        let addr = server.addr.to_string();
        let trust = Trust::new(&server.measurement, true)?;
        std::thread::spawn(move || server.run());
        let api = Api::new(&addr)?;
        let owner = StaticKeypair::generate()?;
        let terms = Terms {
            max_batch,
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

    /// One query in a session of its own; its figures.
    pub fn query(&self, x: &[f32]) -> Result<QueryStats> {
        let t0 = Instant::now();
        let a = self.target.query(&[x])?;
        Ok(QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// Single-image queries of `xs` one after another on one session (thin:
    /// the input over the channel); their figures.
    pub fn queries<'x>(
        &self,
        xs: impl Iterator<Item = &'x [f32]>,
        thin: bool,
    ) -> Result<Vec<QueryStats>> {
        queries_on(&mut self.target.session()?, xs, thin)
    }

    /// One thin query (the server may stack it with others); its figures.
    pub fn query_thin(&self, x: &[f32]) -> Result<QueryStats> {
        let t0 = Instant::now();
        let a = self.target.query_thin(&[x])?;
        Ok(QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// The server's health (`None` when it does not answer).
    fn health(&self) -> Option<Health> {
        self.api.get::<Health>("/v1/health").ok()
    }

    /// The enclave process's counters of work made ahead (zero when its
    /// health does not answer).
    fn ahead(&self) -> Ahead {
        self.health().map(|h| Ahead::of(&h)).unwrap_or_default()
    }

    /// The enclave process's peak memory so far.
    fn enclave_peak(&self) -> usize {
        self.health()
            .map(|h| h.enclave_memory_peak as usize)
            .unwrap_or(0)
    }
}

/// Single-image queries of `xs` one after another on `session`; their
/// figures.
fn queries_on<'x>(
    session: &mut QuerySession,
    xs: impl Iterator<Item = &'x [f32]>,
    thin: bool,
) -> Result<Vec<QueryStats>> {
    xs.map(|x| {
        let t0 = Instant::now();
        let a = if thin {
            session.query_thin(&[x])?
        } else {
            session.query(&[x])?
        };
        Ok(QueryStats::of(&a, t0.elapsed().as_secs_f64() * 1e3))
    })
    .collect()
}

/// The `served`, `clients` and `stacked` rows of one model: `runs` runs
/// each. `served` takes the first `latency_images` of `xs`; the concurrent
/// rows take all of `xs`, spread over the clients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    name: &str,
    served: &Served,
    stacked: Option<&Served>,
    xs: &[&[f32]],
    latency_images: usize,
    threads: usize,
    runs: usize,
    (clients, in_flight): (usize, usize),
    plain: impl Fn() -> Result<Plain>,
) -> Result<Vec<BenchRow>> {
    let footprint = |s: &Served| Footprint {
        batch: 1,
        enclave_resident: s.enclave_peak(),
    };
    let mut out = Vec::new();
    let mut run_rows = Vec::new();
    let first = &xs[..latency_images.min(xs.len())];
    for _ in 0..runs.max(1) {
        let ahead = served.ahead();
        let stats = served.queries(first.iter().copied(), false)?;
        let ahead = ahead.ms_until(&served.ahead());
        run_rows.push(
            row(
                name,
                "served",
                threads,
                first.len(),
                &stats,
                plain()?,
                None,
                footprint(served),
            )
            .with_ahead(ahead),
        );
    }
    out.push(median_row(run_rows));
    if clients == 0 {
        return Ok(out);
    }
    let concurrent: [(&str, Option<&Served>, bool); 2] =
        [("clients", Some(served), false), ("stacked", stacked, true)];
    // Each client keeps `in_flight` queries outstanding: one stream (a
    // session sending one query after another) per outstanding query.
    let streams = clients * in_flight.max(1);
    let label = match in_flight {
        0 | 1 => clients.to_string(),
        k => format!("{clients}x{k}"),
    };
    for (mode, target, thin) in concurrent {
        let Some(target) = target else { continue };
        let mut run_rows = Vec::new();
        for _ in 0..runs.max(1) {
            // Every client opens its session first (a handshake with the
            // enclave, once per client); the clock starts when all are
            // open, so the row is the queries' throughput.
            let ahead = target.ahead();
            let open = Barrier::new(streams + 1);
            let (stats, t0) = std::thread::scope(|s| {
                let handles: Vec<_> = (0..streams)
                    .map(|c| {
                        let open = &open;
                        s.spawn(move || {
                            let session = target.target.session();
                            open.wait();
                            let xs = xs.iter().copied().skip(c).step_by(streams);
                            queries_on(&mut session?, xs, thin)
                        })
                    })
                    .collect();
                open.wait();
                let t0 = Instant::now();
                let stats = handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
                    })
                    .collect::<Result<Vec<_>>>();
                (stats, t0)
            });
            let stats = stats?;
            let wall = t0.elapsed().as_secs_f64();
            let ahead = ahead.ms_until(&target.ahead());
            let stats: Vec<QueryStats> = stats.into_iter().flatten().collect();
            let mut r = row(
                name,
                &format!("{mode}{label}"),
                threads,
                xs.len(),
                &stats,
                plain()?,
                Some(wall),
                footprint(target),
            )
            .with_ahead(ahead);
            r.in_flight = in_flight.max(1);
            r.clients = clients;
            run_rows.push(r);
        }
        out.push(median_row(run_rows));
    }
    Ok(out)
}
