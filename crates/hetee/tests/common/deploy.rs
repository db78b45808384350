//! Shared helpers of the deployment tests (`deploy.rs`,
//! `deploy_faults.rs`): a server with MNIST uploaded, the server's API,
//! the clients' trust in the simulated enclave, a data provider's target,
//! and the quantized MNIST model for the plaintext integer reference.

use std::sync::Arc;

use hetee::client::data_provider::Target;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;
use tempfile::TempDir;

use super::{measurement, upload_mnist, Server};

/// `hetee serve` with the bundled MNIST model uploaded by a model provider
/// whose key lives in the same temporary directory as the server's data.
/// Fields drop in order: the server stops before its directory goes.
pub struct ServedMnist {
    /// The server's HTTP API.
    pub api: Api,
    /// The model's id (hex).
    pub id: String,
    /// The enclave's measurement (hex).
    pub m: String,
    /// The running server.
    pub server: Server,
    /// Its data directory and the owner's key; keep it bound for the test.
    pub dir: TempDir,
}

/// Starts a server and uploads MNIST to it (see [`ServedMnist`]).
pub fn served_mnist() -> ServedMnist {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let m = measurement();
    let id = upload_mnist(&server.addr, &m, &dir.path().join("owner.key"));
    ServedMnist {
        api: api(&server),
        id,
        m,
        server,
        dir,
    }
}

/// The server's HTTP API.
pub fn api(s: &Server) -> Api {
    Api::new(&s.addr).unwrap()
}

/// The API as the clients' relay.
pub fn relay(api: &Api) -> Arc<dyn Relay> {
    Arc::new(api.clone())
}

/// A data provider's view of an open model (throwaway client key).
pub fn target(api: &Api, m: &str, id: &str) -> Target {
    Target::connect(relay(api), &trust(m), id, None).unwrap()
}

/// Trust in the measurement `m`, the simulated platform allowed.
pub fn trust(m: &str) -> Trust {
    Trust::new(m, true).unwrap()
}

/// The bundled MNIST model, quantized as `hetee` prepares it: the model of
/// the plaintext integer reference.
pub fn quantized_mnist() -> hetee_model::QuantModel {
    let (m, c) = hetee::cli::load_model("mnist", None).unwrap();
    hetee::cli::prepare(&m, &c).unwrap()
}
