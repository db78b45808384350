//! `hetee serve`: the untrusted host as an HTTP server, with its enclave as
//! a child process (the `hetee-enclave` binary) and its store in a data
//! directory or, with `--store postgres://…`, in a PostgreSQL database that
//! several replicas share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use hetee_client::http::Api;
use hetee_proto::bodies::OCTET_STREAM;
use hetee_proto::EnclaveConfig;
use hetee_server::app::{replica_id_in, App};
use hetee_server::launcher::LaunchSpec;
use hetee_server::peer::{OfferBody, ShareBody, SHARE_PATH};
use hetee_server::supervisor::join::{Cluster, PeerRelay, RelayError, KEPT_KEY_FILE};
use hetee_server::supervisor::{Launch, Supervisor};
use hetee_server::tls::TlsConfig;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (`host:port`; port 0 picks one).
    pub listen: String,
    /// The embedded store's directory, also holding the replica id.
    pub data_dir: PathBuf,
    /// `--store`: `None` for the embedded store in `data_dir`, or a `postgres://` DSN.
    pub store: Option<String>,
    /// `--replica-id` (default: the one kept in `data_dir`).
    pub replica_id: Option<String>,
    /// The enclave's memory budget (measured).
    pub enclave: EnclaveConfig,
    /// How long a thin query waits, at most, to share a stacked query
    /// (`None`: never stack).
    pub stack_window: Option<std::time::Duration>,
    /// How long a session may stay idle between queries before the server
    /// closes it.
    pub session_idle: std::time::Duration,
    /// Logs as JSON lines.
    pub log_json: bool,
    /// The enclave executable (default: `hetee-enclave` beside this one).
    pub enclave_program: Option<PathBuf>,
    /// The TEE platform the enclave runs on (`sim`, `tdx`, `snp`, `gramine`).
    pub platform: String,
    /// Longest one enclave call may take before the enclave is killed and
    /// restarted.
    pub enclave_timeout: std::time::Duration,
    /// TLS certificate chain and private key (PEM files); `None` serves
    /// plain HTTP (loopback, demos).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--join`: running replicas whose enclave shares the cluster's sealing key.
    pub join: Vec<String>,
    /// `--found-if-empty`: with `join`, found the cluster if no peer answers and the store
    /// holds no key set.
    pub found_if_empty: bool,
    /// `--join-ca`: CA certificates (PEM) for https peers.
    pub join_ca: Option<PathBuf>,
    /// `--sim-cpu`: the simulated CPU the enclave runs on (sim only).
    pub sim_cpu: Option<String>,
    /// Whether the enclave may map shared memory for large payloads (the
    /// platform's default, [`LaunchSpec::shared_memory`]); `false` sends
    /// everything through its stream.
    pub shared_memory: bool,
}

/// The peer relay over HTTP(S): `POST PEER/v1/peer/share` with the offer as a binary body.
struct HttpRelay {
    ca: Option<PathBuf>,
}

impl PeerRelay for HttpRelay {
    fn share(&self, peer: &str, offer: &OfferBody) -> Result<ShareBody, RelayError> {
        let api = Api::connect(peer, self.ca.as_deref()).map_err(|e| RelayError(e.to_string()))?;
        api.post_bytes(SHARE_PATH, OCTET_STREAM, &offer.encode())
            .map_err(|e| RelayError(format!("{e:#}")))
    }
}

/// Sets up structured logs on stderr (once per process). `RUST_LOG` filters.
pub fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// A bound, ready server: its address and how to run it.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The enclave measurement clients must pin (hex).
    pub measurement: String,
    listener: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<TlsConfig>,
}

impl ServeOptions {
    /// A server on a free loopback port with a simulated enclave process and
    /// its store in `data_dir` (demo, benchmarks).
    pub fn loopback(data_dir: &std::path::Path) -> Self {
        ServeOptions {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            store: None,
            replica_id: None,
            enclave: EnclaveConfig::default(),
            stack_window: Some(hetee_server::app::DEFAULT_STACK_WINDOW),
            session_idle: hetee_server::app::DEFAULT_SESSION_IDLE,
            log_json: false,
            enclave_program: None,
            platform: "sim".into(),
            enclave_timeout: hetee_server::launcher::DEFAULT_ENCLAVE_TIMEOUT,
            tls: None,
            join: Vec::new(),
            found_if_empty: false,
            join_ca: None,
            sim_cpu: None,
            shared_memory: true,
        }
    }
}

impl Server {
    /// Opens the store, starts the enclave and binds the listener.
    pub fn bind(opts: &ServeOptions) -> Result<Self> {
        let store = hetee_server::store::open(opts.store.as_deref(), &opts.data_dir)?;
        let replica_id = match &opts.replica_id {
            Some(id) => id.clone(),
            None => replica_id_in(&opts.data_dir).with_context(|| {
                format!(
                    "cannot keep the replica id in {}; pass --replica-id or another --data-dir",
                    opts.data_dir.display()
                )
            })?,
        };
        let mut spec = LaunchSpec::new(opts.enclave_program.clone(), &opts.platform, opts.enclave)?;
        spec.timeout = opts.enclave_timeout;
        spec.sim_cpu = opts.sim_cpu.clone();
        if !opts.shared_memory {
            spec.shared_memory = None;
        }
        if spec.sim_cpu.is_some() && opts.platform != "sim" {
            bail!("--sim-cpu is for the simulated platform only (--platform sim)");
        }
        let cluster = Cluster {
            keep: Some(opts.data_dir.join(KEPT_KEY_FILE)),
            peers: opts.join.clone(),
            found_if_empty: opts.found_if_empty,
            relay: Some(Arc::new(HttpRelay {
                ca: opts.join_ca.clone(),
            })),
        };
        let sup = Supervisor::start_in_cluster(Launch::Process(spec), store.clone(), cluster)?;
        let measurement = sup.measurement().to_hex();
        let listener = std::net::TcpListener::bind(opts.listen.trim_start_matches("http://"))
            .with_context(|| format!("cannot listen on {}", opts.listen))?;
        listener.set_nonblocking(true)?;
        let tls = match &opts.tls {
            Some((cert, key)) => Some(TlsConfig::from_pem_files(cert, key)?),
            None => None,
        };
        Ok(Server {
            tls,
            addr: listener.local_addr()?,
            measurement,
            listener,
            app: Arc::new(
                App::new(store, sup)
                    .with_replica_id(replica_id)
                    .with_stack_window(opts.stack_window)
                    .with_session_idle_timeout(opts.session_idle),
            ),
        })
    }

    /// The host logic (for tests and tools in this process).
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until Ctrl-C.
    pub fn run(self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            match self.tls {
                Some(tls) => hetee_server::tls::serve_tls(listener, self.app, tls).await,
                None => hetee_server::api::serve(listener, self.app).await,
            }
        })
        .map_err(|e| anyhow!("server: {e}"))
    }
}

/// `hetee serve`.
pub fn serve(opts: &ServeOptions) -> Result<()> {
    init_logs(opts.log_json);
    let server = Server::bind(opts)?;
    println!("enclave measurement {}", server.measurement);
    let info = server.app.store().info();
    println!(
        "replica {} store {} {}",
        server.app.replica_id(),
        info.kind,
        info.location
    );
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("listening on {scheme}://{}", server.addr);
    server.run()
}

/// `hetee enclave measure`: the measurement (hex) of the enclave binary
/// `program` with a memory budget of `memory_budget_mib`, which is what a
/// server launching it on the simulated platform attests.
pub fn measure_enclave(program: &std::path::Path, memory_budget_mib: u64) -> Result<String> {
    let config = EnclaveConfig { memory_budget_mib };
    EnclaveConfig::from_bytes(&config.to_bytes())
        .context("--memory-budget-mib must be between 16 and 1048576")?;
    Ok(hetee_server::launcher::measure_binary(program, &config)?.to_hex())
}
