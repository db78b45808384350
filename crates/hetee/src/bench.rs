//! `hetee bench`: latency and batch throughput of the bundled models, side
//! by side in the same run with the plaintext floor (the float model on
//! tract's optimized plan, the fastest plaintext engine here) and the
//! plaintext integer reference, as medians over runs.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{load_model, median, prepare};
use crate::data::idx_images;
use crate::harness::{Harness, QueryStats};
use hetee_model::reference;
use hetee_onnx::TractPlan;
use hetee_proto::api::Health;

/// One row of the benchmark table and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// The bundled model's name.
    pub model: String,
    /// `latency` (one image at a time, in process), `batch` (many images
    /// stacked per query, in process), `thin` (as latency, but the input
    /// goes over the channel and the enclave encrypts it), `served` (one
    /// image at a time through `hetee serve` on loopback), `clientsN` (N
    /// concurrent single-image clients through it) or `stackedN` (N
    /// concurrent single-image thin clients of the model registered for
    /// batches of N, stacked by the server); `clientsNxK`, `stackedNxK`:
    /// each of the N clients keeps K queries outstanding (`in_flight`).
    pub mode: String,
    /// Rayon threads.
    pub threads: usize,
    /// Images per run.
    pub images: usize,
    /// Median end-to-end latency per image (ms).
    pub latency_ms: f64,
    /// Images per second.
    pub throughput_img_s: f64,
    /// The fastest plaintext engine of this row (`tract` or `reference`).
    pub plaintext_engine: String,
    /// Its median time per image (ms), same run, same batch mode.
    pub plaintext_ms: f64,
    /// The float model on tract's optimized plan, per image (ms).
    pub tract_ms: f64,
    /// The plaintext integer reference (what secure inference matches bit
    /// for bit), per image (ms).
    pub reference_ms: f64,
    /// Secure latency (or time per image in batch mode) / `plaintext_ms`.
    pub ratio: f64,
    /// Host CPU time per image (ms).
    pub host_ms: f64,
    /// Enclave time per image (ms).
    pub enclave_ms: f64,
    /// Enclave share of the per-query CPU time (0-1): the time queries
    /// wait for the enclave.
    pub enclave_share: f64,
    /// Enclave CPU time per image spent off the queries' path: the
    /// encryptions of zero made ahead that this row's re-encryptions used,
    /// at their measured average cost (ms).
    pub enclave_ahead_ms: f64,
    /// The enclave's share counting that work too:
    /// `(enclave + ahead) / (host + enclave + ahead)` (0-1).
    pub enclave_cpu_share: f64,
    /// Enclave peak memory: resident state + largest working set (MiB).
    pub enclave_peak_mib: f64,
    /// Images stacked per query by the planner.
    pub batch: usize,
    /// Bytes the data provider uploads per image.
    pub bytes_up: f64,
    /// Bytes the data provider receives per image.
    pub bytes_down: f64,
    /// ct x ct products per image.
    pub ct_products: f64,
    /// Enclave decryptions per image.
    pub enclave_decrypts: f64,
    /// Enclave encryptions per image.
    pub enclave_encrypts: f64,
    /// Queries each concurrent client keeps outstanding, each on a session
    /// of its own (`clientsN`/`stackedN` rows; 1 elsewhere).
    pub in_flight: usize,
    /// Concurrent clients (`clientsN`/`stackedN` rows: N; 1 elsewhere).
    pub clients: usize,
    /// `served` rows: this latency over the in-process `latency` row's, same
    /// model and threads, same run (goal ≤ 1.2); absent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_ratio: Option<f64>,
    /// `stacked` rows: this throughput over the `batch` row's, same model
    /// and threads, same run (goal ≥ 0.8); absent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_ratio: Option<f64>,
    /// `stacked` rows: this throughput over the in-process batch at the
    /// same stack size (the `batchS` row, or `batch` when S is its size):
    /// what serving costs beyond what the packing gives at that size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_batch_ratio: Option<f64>,
}

/// Options of `hetee bench`.
pub struct BenchOptions<'a> {
    /// Models to run.
    pub models: Vec<String>,
    /// Thread counts to run with.
    pub threads: Vec<usize>,
    /// Runs per configuration (medians are taken over runs).
    pub runs: usize,
    /// Images per latency run.
    pub images: usize,
    /// Images per batch run.
    pub batch: usize,
    /// JSON output file.
    pub json: Option<&'a Path>,
    /// SVG chart file.
    pub chart: Option<&'a Path>,
    /// Also measure the whole deployment on loopback (`served` rows).
    pub served: bool,
    /// Also run this many concurrent single-image clients through it
    /// (`clientsN` and `stackedN` rows; 0: none), and an in-process batch
    /// at their stack size (`batchS` row, when it differs from `batch`).
    pub clients: usize,
    /// Also measure thin queries one image at a time (`thin` rows).
    pub thin: bool,
    /// Single-image queries each concurrent client keeps outstanding (each
    /// on its own session); the stacked model is registered for stacks of
    /// `clients` × `in_flight`.
    pub in_flight: usize,
}

pub(crate) fn per_image(stats: &[QueryStats], f: impl Fn(&QueryStats) -> f64) -> f64 {
    median(stats.iter().map(f).collect())
}

/// A stage count summed over stages, this query's share of it.
fn sum_stages(s: &QueryStats, f: impl Fn(&hetee_proto::api::StageStats) -> usize) -> f64 {
    s.share * s.stages.iter().map(f).sum::<usize>() as f64
}

/// Runs the benchmark and prints the table.
pub fn bench(o: &BenchOptions) -> Result<Vec<BenchRow>> {
    // `RUST_LOG=debug` traces the served rows: the server's queries and
    // stacks, and each client's session open, query and receipt check.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::serve::init_logs(false);
    }
    let mut rows = Vec::new();
    for name in &o.models {
        let b = crate::bundled::find(name).with_context(|| {
            format!(
                "{name} is not a bundled model (bundled: {})",
                crate::bundled::names()
            )
        })?;
        let images = idx_images(b.test_images)?;
        let (model, calib) = load_model(name, None)?;
        let per: usize = model.input_shape.iter().product();
        let q = prepare(&model, &calib)?;
        let spin = crate::progress::spinner(&format!("benchmarking {name}"));
        let dep = Harness::new(&q, 1)?;
        let dep_batch = Harness::new(&q, o.batch.max(1))?;
        let onnx = crate::cli::bundled_onnx(name)
            .with_context(|| format!("{name} is not a bundled model"))?;
        let tract1 = TractPlan::new(onnx, &model.input_shape, 1)?;
        let tract_b = TractPlan::new(onnx, &model.input_shape, o.batch.max(1))?;
        // With concurrent clients, an in-process batch at their stack size.
        let stack = o.clients * o.in_flight.max(1);
        let at_stack = if o.clients > 1 && stack != o.batch.max(1) {
            Some((
                Harness::new(&q, stack)?,
                TractPlan::new(onnx, &model.input_shape, stack)?,
            ))
        } else {
            None
        };
        let all = o.threads.iter().copied().max().unwrap_or(1);
        for &t in &o.threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            pool.install(|| -> Result<()> {
                let n = o.images.max(1);
                let xs: Vec<&[f32]> = images
                    .data
                    .chunks(per)
                    .take(n.max(o.batch).max(stack))
                    .collect();
                // Latency: one image at a time; medians over images, then
                // runs. Thin: the same with the input sent over the channel.
                let modes: &[&str] = if o.thin {
                    &["latency", "thin"]
                } else {
                    &["latency"]
                };
                for &mode in modes {
                    let mut run_rows = Vec::new();
                    for _ in 0..o.runs.max(1) {
                        let mut stats = Vec::with_capacity(n);
                        let ahead = dep.ahead();
                        for x in xs.iter().take(n) {
                            let r = if mode == "thin" {
                                dep.infer_thin(x)?
                            } else {
                                dep.infer(x)?
                            };
                            stats.push(r.1);
                        }
                        // Each plaintext engine back to back over the same
                        // images (warm caches: the true floor).
                        let mut plain = Vec::with_capacity(n);
                        for x in xs.iter().take(n) {
                            let tp = Instant::now();
                            std::hint::black_box(reference::run_quantized(&q, x)?);
                            plain.push(tp.elapsed().as_secs_f64() * 1e3);
                        }
                        let mut floor = Vec::with_capacity(n);
                        for x in xs.iter().take(n) {
                            let tf = Instant::now();
                            std::hint::black_box(tract1.run(x)?);
                            floor.push(tf.elapsed().as_secs_f64() * 1e3);
                        }
                        run_rows.push(
                            row(
                                name,
                                mode,
                                t,
                                n,
                                &stats,
                                Plain {
                                    tract_ms: median(floor),
                                    reference_ms: median(plain),
                                },
                                None,
                                (&dep).into(),
                            )
                            .with_ahead(ahead.ms_until(&dep.ahead())),
                        );
                    }
                    rows.push(median_row(run_rows));
                }
                // Batch: images stacked `schedule.batch` per query by the
                // planner, all queries in flight at once.
                let batch = |mode: &str, harness: &Harness, tract: &TractPlan, images| {
                    crate::bench_batch::batch_row(&crate::bench_batch::BatchRun {
                        name,
                        mode,
                        threads: t,
                        harness,
                        tract,
                        model: &q,
                        xs: &xs,
                        images,
                        runs: o.runs,
                    })
                };
                rows.push(batch("batch", &dep_batch, &tract_b, o.batch)?);
                // The same at the stacked rows' stack size, on the threads
                // the server runs on: what the packing gives at that size.
                if let Some((dep_s, tract_s)) = at_stack.as_ref().filter(|_| t == all) {
                    let mode = format!("batch{stack}");
                    rows.push(batch(&mode, dep_s, tract_s, stack)?);
                }
                Ok(())
            })?;
        }
        if o.served || o.clients > 0 {
            // The server evaluates on its global pool (all cores).
            // The concurrent rows send at least four queries per client.
            let in_flight = o.in_flight.max(1);
            let streams = o.clients * in_flight;
            let n = o.images.max(1).max(4 * streams);
            let xs: Vec<&[f32]> = images.data.chunks(per).take(n).collect();
            let served = crate::bench_served::Served::start(&q, 1)?;
            // Registered for stacks of every outstanding query: one per
            // client, or `in_flight` per client (16 clients with 4 queries in
            // flight fill 64-image stacks, the batch row's size).
            let stacked = match o.clients {
                0 | 1 => None,
                c => Some(crate::bench_served::Served::start(&q, c * in_flight)?),
            };
            // Warm up: the first query loads the model's weights on the host.
            served.query(xs[0])?;
            if let Some(s) = &stacked {
                s.query_thin(xs[0])?;
            }
            let plain = || -> Result<Plain> {
                let mut floor = Vec::with_capacity(n);
                for x in &xs {
                    let tf = Instant::now();
                    std::hint::black_box(tract1.run(x)?);
                    floor.push(tf.elapsed().as_secs_f64() * 1e3);
                }
                let mut reference_ms = Vec::with_capacity(n);
                for x in &xs {
                    let tp = Instant::now();
                    std::hint::black_box(reference::run_quantized(&q, x)?);
                    reference_ms.push(tp.elapsed().as_secs_f64() * 1e3);
                }
                Ok(Plain {
                    tract_ms: median(floor),
                    reference_ms: median(reference_ms),
                })
            };
            rows.extend(crate::bench_served::rows(
                name,
                &served,
                stacked.as_ref(),
                &xs,
                o.images.max(1),
                all,
                o.runs,
                (o.clients, in_flight),
                plain,
            )?);
        }
        spin.finish_and_clear();
    }
    crate::bench_ratios::set_served_ratios(&mut rows);
    crate::bench_ratios::set_stack_ratios(&mut rows);
    print_table(&rows)?;
    if let Some(p) = o.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = o.chart {
        crate::chart::draw(&rows, p)?;
    }
    Ok(rows)
}

/// Plaintext times per image of one row, measured in the same run.
pub(crate) struct Plain {
    pub tract_ms: f64,
    pub reference_ms: f64,
}

/// What a row needs to know of the deployment it measured.
pub(crate) struct Footprint {
    /// Images per query.
    pub batch: usize,
    /// Enclave memory held for the model, or the enclave's whole peak when
    /// the working set is not reported per stage (bytes).
    pub enclave_resident: usize,
}

impl From<&Harness> for Footprint {
    fn from(h: &Harness) -> Self {
        Footprint {
            batch: h.schedule.batch,
            enclave_resident: h.enclave_resident,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    model: &str,
    mode: &str,
    threads: usize,
    n: usize,
    stats: &[QueryStats],
    plain: Plain,
    wall_s: Option<f64>,
    dep: Footprint,
) -> BenchRow {
    let (plaintext_engine, plaintext_ms) = if plain.tract_ms <= plain.reference_ms {
        ("tract", plain.tract_ms)
    } else {
        ("reference", plain.reference_ms)
    };
    let first = &stats[0];
    // Per-query figures cover `batch` images.
    let per_q = dep.batch as f64;
    let host = per_image(stats, |s| s.host_ms() + s.client_ms) / per_q;
    let encl = per_image(stats, |s| s.enclave_ms()) / per_q;
    let latency = per_image(stats, |s| s.total_ms);
    let (throughput, per_img) = match wall_s {
        Some(w) => (n as f64 / w, w * 1e3 / n as f64),
        None => (1e3 / latency, latency),
    };
    let working = stats
        .iter()
        .flat_map(|s| s.stages.iter().map(|st| st.enclave_working_peak))
        .max()
        .unwrap_or(0);
    BenchRow {
        model: model.into(),
        mode: mode.into(),
        threads,
        images: n,
        latency_ms: latency,
        throughput_img_s: throughput,
        plaintext_engine: plaintext_engine.into(),
        plaintext_ms,
        tract_ms: plain.tract_ms,
        reference_ms: plain.reference_ms,
        ratio: per_img / plaintext_ms.max(1e-9),
        host_ms: host,
        enclave_ms: encl,
        enclave_share: encl / (host + encl).max(1e-9),
        enclave_ahead_ms: 0.0,
        enclave_cpu_share: encl / (host + encl).max(1e-9),
        enclave_peak_mib: (dep.enclave_resident + working) as f64 / (1 << 20) as f64,
        batch: dep.batch,
        bytes_up: first.bytes_up as f64 / per_q,
        bytes_down: first.bytes_down as f64 / per_q,
        ct_products: sum_stages(first, |s| s.products) / per_q,
        enclave_decrypts: sum_stages(first, |s| s.enclave_decrypts) / per_q,
        enclave_encrypts: sum_stages(first, |s| s.enclave_encrypts) / per_q,
        in_flight: 1,
        clients: 1,
        served_ratio: None,
        batch_ratio: None,
        stack_batch_ratio: None,
    }
}

impl BenchRow {
    /// Counts `ms` of enclave work made ahead during this row's run.
    pub(crate) fn with_ahead(mut self, ms: f64) -> Self {
        self.enclave_ahead_ms = ms / self.images.max(1) as f64;
        let enclave = self.enclave_ms + self.enclave_ahead_ms;
        self.enclave_cpu_share = enclave / (self.host_ms + enclave).max(1e-9);
        self
    }
}

/// The enclave's counters of work made ahead, as its health reports them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ahead {
    taken: u64,
    made: u64,
    made_us: u64,
}

impl Ahead {
    pub(crate) fn of(h: &Health) -> Self {
        Ahead {
            taken: h.enclave_taken_ahead,
            made: h.enclave_made_ahead,
            made_us: h.enclave_made_ahead_us,
        }
    }

    /// The CPU time (ms) of the entries taken between `self` and `later`,
    /// at the average cost of every entry made by then.
    pub(crate) fn ms_until(&self, later: &Ahead) -> f64 {
        if later.made == 0 {
            return 0.0;
        }
        let each_us = later.made_us as f64 / later.made as f64;
        later.taken.saturating_sub(self.taken) as f64 * each_us / 1e3
    }
}

/// The run whose headline figure (latency or throughput) is the median.
pub(crate) fn median_row(mut runs: Vec<BenchRow>) -> BenchRow {
    runs.sort_by(|a, b| a.throughput_img_s.total_cmp(&b.throughput_img_s));
    runs.swap_remove(runs.len() / 2)
}

fn print_table(rows: &[BenchRow]) -> Result<()> {
    let mut out = String::new();
    writeln!(
        out,
        "{:<6} {:<8} {:>3} {:>5} {:>5} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7} {:>9} {:>5} {:>5} {:>5}",
        "model", "mode", "thr", "imgs", "stack", "lat ms", "img/s", "floor ms", "ratio", "host ms", "encl ms", "share", "+ahead", "peakMiB", "bytes up", "prods", "decr", "encr"
    )?;
    for r in rows {
        writeln!(
        out,
            "{:<6} {:<8} {:>3} {:>5} {:>5} {:>9.2} {:>9.1} {:>9.4} {:>7.0} {:>8.2} {:>8.2} {:>6.3} {:>6.3} {:>7.1} {:>9.0} {:>5.1} {:>5.1} {:>5.1}",
            r.model, r.mode, r.threads, r.images, r.batch, r.latency_ms, r.throughput_img_s, r.plaintext_ms, r.ratio, r.host_ms, r.enclave_ms, r.enclave_share, r.enclave_cpu_share, r.enclave_peak_mib, r.bytes_up, r.ct_products, r.enclave_decrypts, r.enclave_encrypts
        )?;
    }
    out.push_str(&crate::bench_ratios::stack_summary(rows));
    crate::stdout::emit(&out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row of `model`, `mode`, `threads` and `latency_ms`, zeros elsewhere.
    pub(crate) fn row(model: &str, mode: &str, threads: usize, latency_ms: f64) -> BenchRow {
        BenchRow {
            model: model.into(),
            mode: mode.into(),
            threads,
            images: 1,
            latency_ms,
            throughput_img_s: 0.0,
            plaintext_engine: "tract".into(),
            plaintext_ms: 0.0,
            tract_ms: 0.0,
            reference_ms: 0.0,
            ratio: 0.0,
            host_ms: 0.0,
            enclave_ms: 0.0,
            enclave_share: 0.0,
            enclave_ahead_ms: 0.0,
            enclave_cpu_share: 0.0,
            enclave_peak_mib: 0.0,
            batch: 1,
            bytes_up: 0.0,
            bytes_down: 0.0,
            ct_products: 0.0,
            enclave_decrypts: 0.0,
            enclave_encrypts: 0.0,
            in_flight: 1,
            clients: 1,
            served_ratio: None,
            batch_ratio: None,
            stack_batch_ratio: None,
        }
    }

    #[test]
    fn work_made_ahead_counts_the_entries_taken_at_their_average_cost() {
        let before = Ahead {
            taken: 10,
            made: 20,
            made_us: 2_000,
        };
        // 30 more taken; 50 made by then at 4 ms in all: 80 µs each.
        let after = Ahead {
            taken: 40,
            made: 50,
            made_us: 4_000,
        };
        assert!((before.ms_until(&after) - 2.4).abs() < 1e-9);
        assert_eq!(Ahead::default().ms_until(&Ahead::default()), 0.0);
        let mut r = row("a", "latency", 2, 10.0);
        (r.images, r.host_ms, r.enclave_ms) = (4, 9.0, 0.6);
        let r = r.with_ahead(1.6);
        assert!((r.enclave_ahead_ms - 0.4).abs() < 1e-9);
        assert!((r.enclave_cpu_share - 0.1).abs() < 1e-9);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("enclave_cpu_share").is_some());
    }
}
