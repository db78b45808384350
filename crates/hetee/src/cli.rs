//! Command-line interface.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod model;

pub use model::OwnerArgs;
use model::{model_command, ModelCommand};

pub use crate::run::{bundled_onnx, check_batch, load_model, prepare};

/// Confidential neural-network inference: BFV on the untrusted host, exact
/// nonlinear steps in a trusted enclave.
#[derive(Parser, Debug)]
#[command(name = "hetee", version, about)]
pub struct Cli {
    /// Hide progress bars (they are drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum EnclaveCommand {
    /// Print the measurement of the enclave binary (`hetee-enclave`) with its
    /// config (SHA-256, what the simulated platform attests) as hex on the
    /// last line. The CLI itself is not measured.
    Measure {
        /// Enclave binary to measure (default: `hetee-enclave` beside this executable).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Memory budget in the measured config (MiB).
        #[arg(long, default_value_t = hetee_proto::config::DEFAULT_MEMORY_BUDGET_MIB)]
        memory_budget_mib: u64,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the bundled MNIST CNN on bundled test images, fully encrypted:
    /// by default the real deployment (server and enclave process on
    /// loopback, both clients); `--in-process` keeps everything in one process.
    Demo {
        /// How many test images (up to 10000).
        #[arg(long, default_value_t = 100)]
        images: usize,
        /// The bundled model: mnist, e2dm, resnet20 or mobilenet (the last two on Fashion-MNIST).
        #[arg(long, default_value = "mnist")]
        model: String,
        /// Print the figures as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// All parties and the enclave in this process, no server (the old path).
        #[arg(long)]
        in_process: bool,
    },
    /// The untrusted host: HTTP API, encrypted-model store, enclave process.
    Serve {
        /// Address to listen on (host:port; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: String,
        /// Directory of the embedded store and of this replica's id (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where models, key sets and model states live: omit for the embedded store in
        /// --data-dir, or postgres://user@host:port/db for a PostgreSQL database that several
        /// replicas (each with its own enclave) share.
        #[arg(long, value_name = "DSN")]
        store: Option<String>,
        /// This replica's id in GET /v1/health (default: a random id kept in
        /// DATA_DIR/replica-id).
        #[arg(long)]
        replica_id: Option<String>,
        /// The enclave's memory budget in MiB (part of its measurement).
        #[arg(long, default_value_t = hetee_proto::config::DEFAULT_MEMORY_BUDGET_MIB)]
        memory_budget_mib: u64,
        /// Concurrent thin queries of a model registered for batches share
        /// stacked queries: a query waits for the others the model's last
        /// stack held and for sessions still to send theirs (open, being
        /// opened, or a burst of opens), at most 25 times this long or the
        /// last stack's time, if longer; 0: never stack.
        #[arg(long, default_value_t = 2)]
        stack_window_ms: u64,
        /// A session (one client's channel to the enclave, carrying its
        /// queries one after another) idle this long is closed.
        #[arg(long, default_value_t = 300)]
        session_idle_secs: u64,
        /// Logs as JSON lines.
        #[arg(long)]
        log_json: bool,
        /// The TEE platform the enclave runs on: sim, tdx, snp or gramine.
        #[arg(long, default_value = "sim")]
        platform: String,
        /// The enclave binary (default: `hetee-enclave` beside this executable).
        #[arg(long)]
        enclave_binary: Option<PathBuf>,
        /// Seconds one enclave call may take before the enclave is killed
        /// and restarted (the request gets a clear error).
        #[arg(long, default_value_t = 120)]
        enclave_timeout: u64,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Join the cluster through a running replica (URL; repeat or comma-separate to try
        /// several): its enclave shares the cluster's sealing key with this one, kept
        /// re-sealed in DATA_DIR/cluster-sealing-key for restarts. Fails if no peer shares it.
        #[arg(long, value_name = "PEER_URL", value_delimiter = ',')]
        join: Vec<String>,
        /// With --join: found the cluster instead of failing when no peer answers and the
        /// store holds no key set yet (the seed replica of a deployment).
        #[arg(long, requires = "join")]
        found_if_empty: bool,
        /// For https peers of --join: trust the CA certificates in this PEM file.
        #[arg(long, requires = "join")]
        join_ca: Option<PathBuf>,
        /// Simulated platform only (tests, demos): run the enclave on the simulated CPU NAME,
        /// whose sealing key differs from every other name's (the measurement does not).
        #[arg(long, value_name = "NAME")]
        sim_cpu: Option<String>,
        /// Send every payload through the enclave's stream. By default the simulated
        /// platform's enclave also maps a region of shared memory (in /dev/shm) in which
        /// stage results and next inputs skip the pipe; it is untrusted, like the pipe.
        #[arg(long)]
        no_shared_memory: bool,
    },
    /// Model provider commands.
    Model {
        #[command(subcommand)]
        cmd: ModelCommand,
    },
    /// Data provider: verify the enclave, encrypt the inputs, query a model
    /// on the server and receive the logits over the channel.
    Infer {
        /// Server address: host:port, http://host:port or https://host:port.
        /// Several replicas of one deployment: repeat the flag or separate
        /// them with commas; queries go to them in turn, and a query whose
        /// replica fails is retried on another.
        #[arg(long, required = true, value_delimiter = ',')]
        server: Vec<String>,
        /// For https: trust the CA certificates in this PEM file instead of
        /// the system's roots.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Model id from `hetee model upload`.
        #[arg(long)]
        model_id: String,
        /// Inputs: float32 .npy `[N, ...]` in the model's input shape, a PNG
        /// or JPEG image, or a folder of them (sorted by file name).
        #[arg(long)]
        input: PathBuf,
        /// Preprocessing of image inputs, e.g.
        /// `size=28x28,channels=gray,scale=1/255,mean=0,std=1,layout=nchw`;
        /// overrides the one the model provider declared at upload.
        #[arg(long)]
        preprocess: Option<String>,
        /// Output: float32 .npy of dequantized outputs in the model's own
        /// shape when its provider declared it at upload (`[N, classes]`
        /// otherwise, and for a classifier); int32 `[N, k]` labels under a
        /// `label` or `top-K` policy.
        #[arg(long)]
        output: PathBuf,
        /// Print the figures and per-input results as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// The enclave measurement to accept (hex, from `hetee enclave measure`).
        #[arg(long)]
        expect_measurement: String,
        /// Accept the simulated TEE platform (testing only: it protects nothing).
        #[arg(long)]
        allow_sim: bool,
        /// Queries in flight at once (sessions, spread over the servers).
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Thin client: send the input to the enclave over the channel and
        /// let it encrypt (no HE on this machine).
        #[arg(long)]
        thin: bool,
        /// Write the enclave-signed results (receipts) as JSON here.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// Long-term client key (hex file, created if missing): the key a
        /// model's owner lists to allow queries, and by which budgets count.
        /// Default: a throwaway key (enough for open models).
        #[arg(long)]
        client_key: Option<PathBuf>,
    },
    /// Checks receipts written by `hetee infer --receipt`: the evidence
    /// under the pinned measurement and the enclave's signature.
    VerifyReceipt {
        /// The receipts file.
        #[arg(long)]
        receipt: PathBuf,
        /// The enclave measurement to accept (hex).
        #[arg(long)]
        expect_measurement: String,
        /// Accept the simulated TEE platform (testing only).
        #[arg(long)]
        allow_sim: bool,
        /// Print the count and each receipt's model, images and input
        /// digest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Writes man pages (roff) for hetee and every subcommand into a directory.
    Man {
        /// Output directory (created if missing).
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
    /// The enclave side.
    Enclave {
        #[command(subcommand)]
        cmd: EnclaveCommand,
    },
    /// Runs any supported ONNX model on a batch of inputs.
    Run {
        /// ONNX model, or a bundled one: `mnist`, `e2dm`, `resnet20`, `mobilenet`.
        #[arg(long)]
        model: String,
        /// Inputs: float32 .npy `[N, C, H, W]` or `[N, F]`, preprocessed; or
        /// a PNG or JPEG image, or a folder of them (sorted by file name).
        #[arg(long)]
        input: PathBuf,
        /// Preprocessing of image inputs, e.g.
        /// `size=28x28,channels=gray,scale=1/255,mean=0,std=1,layout=nchw`
        /// (default: `scale=1/255`, channels and size of the model input).
        #[arg(long)]
        preprocess: Option<String>,
        /// Calibration inputs, same layout (bundled models use their own).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Output: float32 .npy of dequantized outputs in the model's own
        /// shape (`[N, classes]` for a classifier).
        #[arg(long)]
        output: PathBuf,
        /// Per-layer JSON report.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Run the plaintext integer reference instead (same quantization).
        #[arg(long)]
        plaintext: bool,
        /// Print the figures, the per-layer report and per-input results as
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks the bundled models: latency and batch throughput, side by
    /// side with the plaintext integer reference; medians over runs.
    Bench {
        /// Write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw an SVG chart.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Thread counts, comma separated (default: 1 and all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Runs per configuration.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Images per latency run.
        #[arg(long, default_value_t = 20)]
        images: usize,
        /// Images per batch run.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Models, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "mnist,e2dm")]
        models: Vec<String>,
        /// Also measure the whole deployment on loopback: `hetee serve`
        /// with its enclave process, clients over HTTP.
        #[arg(long)]
        served: bool,
        /// Also run this many concurrent single-image clients through the
        /// served deployment (e.g. 16), and an in-process batch at their
        /// stack size (row `batchS`): the stacked rows' ratio to it is
        /// what serving costs beyond the packing at that size.
        #[arg(long, default_value_t = 0)]
        clients: usize,
        /// With --clients: single-image queries each client keeps
        /// outstanding, each on its own session (rows `clientsNxK`,
        /// `stackedNxK`, JSON `in_flight`); the stacked model is
        /// registered for stacks of N × K (16 × 4 fill 64-image stacks).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// Also measure thin queries (the input over the channel, encrypted
        /// by the enclave) one image at a time, in process (`thin` rows).
        #[arg(long)]
        thin: bool,
    },
    /// Prints the per-layer packing plan of a model.
    Plan {
        /// Plan for this many images per query (stacked in the same products).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// ONNX model, or a bundled one: `mnist`, `e2dm`, `resnet20`, `mobilenet`.
        #[arg(long, default_value = "mnist")]
        model: String,
        /// Calibration inputs (float32 .npy); bundled models use their own.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Print the plan as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<()> {
    crate::progress::set_quiet(cli.quiet);
    match cli.cmd {
        Command::Demo {
            images,
            model,
            json,
            in_process,
        } => {
            if in_process {
                crate::demo::demo(&model, images, json)
            } else {
                crate::deployment_demo::demo(&model, images, json)
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "hetee", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("cannot write man pages to {}", out.display()))?;
            eprintln!("wrote man pages to {}", out.display());
            Ok(())
        }
        Command::Enclave {
            cmd:
                EnclaveCommand::Measure {
                    binary,
                    memory_budget_mib,
                },
        } => {
            let program = match binary {
                Some(b) => b,
                None => hetee_server::launcher::find_enclave_binary()?,
            };
            println!(
                "{}",
                crate::serve::measure_enclave(&program, memory_budget_mib)?
            );
            Ok(())
        }
        Command::Serve {
            listen,
            data_dir,
            store,
            replica_id,
            memory_budget_mib,
            stack_window_ms,
            session_idle_secs,
            log_json,
            platform,
            enclave_binary,
            enclave_timeout,
            tls_cert,
            tls_key,
            join,
            found_if_empty,
            join_ca,
            sim_cpu,
            no_shared_memory,
        } => {
            let enclave = hetee_proto::EnclaveConfig { memory_budget_mib };
            hetee_proto::EnclaveConfig::from_bytes(&enclave.to_bytes())
                .context("--memory-budget-mib must be between 16 and 1048576")?;
            crate::serve::serve(&crate::serve::ServeOptions {
                listen,
                data_dir,
                store,
                replica_id,
                enclave,
                stack_window: (stack_window_ms > 0)
                    .then(|| std::time::Duration::from_millis(stack_window_ms)),
                session_idle: std::time::Duration::from_secs(session_idle_secs.max(1)),
                log_json,
                enclave_program: enclave_binary,
                platform,
                enclave_timeout: std::time::Duration::from_secs(enclave_timeout.max(1)),
                tls: tls_cert.zip(tls_key),
                join,
                found_if_empty,
                join_ca,
                sim_cpu,
                shared_memory: !no_shared_memory,
            })
        }
        Command::Model { cmd } => model_command(cmd),
        Command::Infer {
            server,
            ca,
            model_id,
            input,
            preprocess,
            output,
            json,
            expect_measurement,
            allow_sim,
            parallel,
            thin,
            receipt,
            client_key,
        } => crate::infer::infer_file(&crate::infer::InferJob {
            query: crate::infer::Query {
                servers: &server,
                ca: ca.as_deref(),
                model_id: &model_id,
                trust: &crate::client::trust::Trust::new(&expect_measurement, allow_sim)?,
                parallel,
                thin,
                client_key: client_key.as_deref(),
            },
            input: &input,
            preprocess: parse_preprocess(preprocess.as_deref())?.as_ref(),
            output: &output,
            receipt: receipt.as_deref(),
            json,
        }),
        Command::VerifyReceipt {
            receipt,
            expect_measurement,
            allow_sim,
            json,
        } => {
            let trust = crate::client::trust::Trust::new(&expect_measurement, allow_sim)?;
            let text = std::fs::read_to_string(&receipt)
                .with_context(|| format!("cannot read {}", receipt.display()))?;
            let receipts: Vec<crate::client::data_provider::Receipt> =
                serde_json::from_str(&text).context("the receipts file is malformed")?;
            for (i, r) in receipts.iter().enumerate() {
                r.verify(&trust).with_context(|| format!("receipt {i}"))?;
            }
            if json {
                let each: Vec<_> = receipts
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "model_id": hetee_proto::ids::id_hex(&r.result.model_id),
                            "images": r.result.images,
                            "input_digest": hetee_proto::ids::id_hex(&r.result.input_digest),
                        })
                    })
                    .collect();
                let doc = serde_json::json!({"verified": receipts.len(), "receipts": each});
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("{} receipts verified", receipts.len());
            }
            Ok(())
        }
        Command::Run {
            model,
            input,
            preprocess,
            calib,
            output,
            report,
            plaintext,
            json,
        } => crate::run_files::run_files(&crate::run_files::RunJob {
            model: &model,
            input: &input,
            calib: calib.as_deref(),
            output: &output,
            report: report.as_deref(),
            plaintext,
            preprocess: parse_preprocess(preprocess.as_deref())?.as_ref(),
            json,
        }),
        Command::Bench {
            json,
            chart,
            threads,
            runs,
            images,
            batch,
            models,
            served,
            clients,
            in_flight,
            thin,
        } => {
            let all = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let mut threads = if threads.is_empty() {
                vec![1, all]
            } else {
                threads
            };
            threads.dedup();
            let o = crate::bench::BenchOptions {
                models,
                threads,
                runs,
                images,
                batch,
                json: json.as_deref(),
                chart: chart.as_deref(),
                served,
                clients,
                in_flight,
                thin,
            };
            crate::bench::bench(&o).map(|_| ())
        }
        Command::Plan {
            model,
            calib,
            batch,
            json,
        } => {
            let (m, c) = load_model(&model, calib.as_deref())?;
            crate::plan::print_plan(&prepare(&m, &c)?, batch, json)
        }
    }
}

/// Median (upper median for even counts); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `--preprocess SPEC`, parsed.
fn parse_preprocess(spec: Option<&str>) -> Result<Option<crate::images::Preprocess>> {
    spec.map(|s| s.parse().context("--preprocess")).transpose()
}
