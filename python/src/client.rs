//! `hetee.Client`: the data provider (`hetee infer`, `hetee verify-receipt`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hetee::client::channel::load_or_create_key;
use hetee::client::data_provider::Receipt;
use hetee::client::failover::Replicas;
use hetee::client::trust::Trust;
use hetee::images::Preprocess;
use hetee::infer::{connect, infer_on, read_for, Outputs, Query};
use hetee_proto::ids::id_hex;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::arrays;
use crate::errors::OrPy;
use crate::local::{opt_path, path_string};

/// A data provider: verifies the server's enclave, encrypts its inputs
/// under the attested HE key (or, in thin mode, hands them to the enclave
/// over the channel) and receives the results over the channel.
///
/// `server`: `host:port`, `http://host:port` or `https://host:port`; or
/// several replicas of one deployment (a list, or a comma-separated
/// string): queries go to them in turn and a query whose replica fails is
/// retried on another, with the same query id and input, so a budget
/// counts it once.
/// `measurement`: the enclave measurement to accept (64 hex digits).
/// `key_file`: the long-term client key (hex file, created if missing):
/// the key a model's owner lists to allow queries, and by which query
/// budgets count. `None`: a throwaway key per call (enough for open models).
/// `allow_sim`: accept the simulated TEE platform (testing only).
/// `ca`: for https, a PEM file of CA certificates to trust instead of the
/// system's roots.
///
/// A client keeps its sessions with each model open between calls, so
/// consecutive `infer` calls skip the handshake (the server closes a session
/// idle for 5 minutes; the client then opens a new one).
#[pyclass(module = "hetee", frozen)]
pub struct Client {
    servers: Vec<String>,
    ca: Option<PathBuf>,
    trust: Trust,
    key_file: Option<PathBuf>,
    /// Connected models (with their kept sessions), by model id.
    connected: Mutex<HashMap<String, Arc<Replicas>>>,
}

impl Client {
    /// The model's replicas as connected by an earlier call (with the
    /// sessions it kept), or newly connected.
    fn connected(&self, query: &Query) -> anyhow::Result<Arc<Replicas>> {
        let key = query.model_id.to_string();
        let mut map = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.get(&key) {
            return Ok(r.clone());
        }
        let r = Arc::new(connect(query)?);
        map.insert(key, r.clone());
        Ok(r)
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (server, measurement, key_file=None, allow_sim=false, ca=None))]
    fn new(
        server: &Bound<'_, PyAny>,
        measurement: &str,
        key_file: Option<&Bound<'_, PyAny>>,
        allow_sim: bool,
        ca: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let trust = Trust::new(measurement, allow_sim).or_py()?;
        let ca = opt_path("ca", ca)?;
        let servers = crate::servers::servers(server, ca.as_deref())?;
        Ok(Client {
            servers,
            ca,
            trust,
            key_file: opt_path("key_file", key_file)?,
            connected: Mutex::new(HashMap::new()),
        })
    }

    /// The client's public key (64 hex digits) to give a model's owner for
    /// its allow list; creates the key file if missing. `None` without a
    /// key file.
    #[getter]
    fn public_key(&self) -> PyResult<Option<String>> {
        self.key_file
            .as_deref()
            .map(|p| load_or_create_key(p).map(|k| id_hex(k.public())))
            .transpose()
            .or_py()
    }

    /// Runs every sample of `x` (float32 `[N, ...]` in the model's input
    /// shape, preprocessed) through the served model `model_id`, checking
    /// the enclave first; `parallel` queries in flight. The shape and the
    /// values are checked against the enclave's query plan before any input
    /// is sent.
    ///
    /// `x` may also be a path (str or os.PathLike) to a `.npy` file, a PNG
    /// or JPEG image, or a folder of them (read in sorted file-name order),
    /// preprocessed as `hetee infer` does: with `preprocess` (spec text,
    /// e.g. `"size=28x28,channels=gray,scale=1/255"`), else the spec the
    /// model's provider declared at upload, else `scale=1/255` at the
    /// model's size and channels.
    ///
    /// Returns float32 dequantized outputs in the model's own shape (as its
    /// provider declared it at upload; `[N, classes]` otherwise), or int32 `[N, k]`
    /// labels (best first) if the model's policy is `label` or `top-K`;
    /// identical to `hetee run --plaintext` on the same model and
    /// calibration set. `thin=True` sends the inputs to the enclave over the
    /// channel and lets it encrypt them (no HE here). With `receipts=True`
    /// returns `(outputs, receipts)`: the enclave-signed results of every
    /// query, as dicts (`Client.verify_receipts` checks them).
    #[pyo3(signature = (model_id, x, thin=false, receipts=false, parallel=4, preprocess=None))]
    #[allow(clippy::too_many_arguments)]
    fn infer<'py>(
        &self,
        py: Python<'py>,
        model_id: &str,
        x: &Bound<'py, PyAny>,
        thin: bool,
        receipts: bool,
        parallel: usize,
        preprocess: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let spec: Option<Preprocess> = preprocess
            .map(|s| s.parse::<Preprocess>().map_err(anyhow::Error::from))
            .transpose()
            .or_py()?;
        let path = if x.hasattr("__fspath__")? || x.is_instance_of::<pyo3::types::PyString>() {
            Some(PathBuf::from(path_string("x", x)?))
        } else {
            None
        };
        let x = match &path {
            Some(_) => None,
            None => {
                let t = arrays::tensor("the input", x)?;
                hetee::run::check_finite("the input", &t).or_py()?;
                Some(t)
            }
        };
        let query = Query {
            servers: &self.servers,
            ca: self.ca.as_deref(),
            model_id,
            trust: &self.trust,
            parallel,
            thin,
            client_key: self.key_file.as_deref(),
        };
        let (outputs, signed) = py
            .detach(|| -> anyhow::Result<_> {
                let target = self.connected(&query)?;
                let input = match (x, &path) {
                    (Some(t), _) => t,
                    (None, Some(p)) => read_for(&target, p, spec.as_ref())?.tensor,
                    (None, None) => anyhow::bail!("no input"),
                };
                let r = infer_on(&target, &query, &input)?;
                Ok((r.outputs, r.receipts))
            })
            .or_py()?;
        let out = match outputs {
            Outputs::Logits { shape, data } => arrays::to_numpy(py, &shape, data)?.into_any(),
            Outputs::Labels { shape, data } => arrays::to_numpy(py, &shape, data)?.into_any(),
        };
        if !receipts {
            return Ok(out);
        }
        let json = serde_json::to_string(&signed)
            .map_err(|e| crate::errors::HeteeError::new_err(e.to_string()))?;
        let list = py.import("json")?.call_method1("loads", (json,))?;
        Ok(PyTuple::new(py, [out, list])?.into_any())
    }

    /// Checks receipts from `infer(..., receipts=True)` (a list of dicts,
    /// or the path of a receipts file written by `hetee infer --receipt`):
    /// the evidence under this client's pinned measurement and the
    /// enclave's signature. Raises on the first that fails; returns how
    /// many were checked.
    fn verify_receipts(&self, py: Python<'_>, receipts: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = if receipts.hasattr("__fspath__")?
            || receipts.is_instance_of::<pyo3::types::PyString>()
        {
            let p = path_string("receipts", receipts)?;
            std::fs::read_to_string(&p)
                .map_err(|e| crate::errors::HeteeError::new_err(format!("cannot read {p}: {e}")))?
        } else {
            py.import("json")?
                .call_method1("dumps", (receipts,))?
                .extract::<String>()?
        };
        py.detach(|| -> anyhow::Result<usize> {
            use anyhow::Context;
            let rs: Vec<Receipt> =
                serde_json::from_str(&text).context("the receipts file is malformed")?;
            for (i, r) in rs.iter().enumerate() {
                r.verify(&self.trust)
                    .with_context(|| format!("receipt {i}"))?;
            }
            Ok(rs.len())
        })
        .or_py()
    }

    fn __repr__(&self) -> String {
        format!(
            "Client(server={:?}, key_file={:?}, allow_sim={})",
            self.servers.join(","),
            self.key_file.as_ref().map(|p| p.display().to_string()),
            if self.trust.allow_sim {
                "True"
            } else {
                "False"
            }
        )
    }
}
