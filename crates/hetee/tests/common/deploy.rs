//! Shared helpers of the deployment tests (`deploy.rs`,
//! `deploy_faults.rs`): the server's API, the clients' trust in the
//! simulated enclave, a data provider's target, and the quantized MNIST
//! model for the plaintext integer reference.

use std::sync::Arc;

use hetee::client::data_provider::Target;
use hetee::client::http::Api;
use hetee::client::relay::Relay;
use hetee::client::trust::Trust;

use super::Server;

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
