//! `hetee.ModelOwner`: the model provider's commands (`hetee model
//! upload|status|unlock|allow`).

use hetee::cli::OwnerArgs;
use hetee::client::channel::load_or_create_key;
use hetee::client::model_provider::{parse_allow_list, read_allow_list, Manage};
use hetee::client::trust::Trust;
use hetee::owner;
use hetee::run;
use hetee_proto::channel::{AllowList, ModelReport};
use hetee_proto::ids::id_hex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::arrays;
use crate::errors::OrPy;
use crate::local::{opt_path, path_string, ModelArg};

/// A model provider: verifies the server's enclave, then uploads,
/// registers and manages its models over a channel opened with its
/// long-term key.
///
/// `server`: `host:port`, `http://host:port` or `https://host:port`; or
/// several replicas of one deployment (a list, or a comma-separated
/// string): each call goes to the first that answers.
/// `measurement`: the enclave measurement to accept (64 hex digits, from
/// `hetee.measure()` or `hetee enclave measure`).
/// `key_file`: the owner's long-term key (hex file, created on first use).
/// The key set and every model under it belong to this key: keep it.
/// `allow_sim`: accept the simulated TEE platform (testing only: it
/// protects nothing).
/// `ca`: for https, a PEM file of CA certificates to trust instead of the
/// system's roots.
#[pyclass(module = "hetee", frozen)]
pub struct ModelOwner {
    args: OwnerArgs,
}

/// A model's state as a dict (keys in hex), the JSON of `hetee model status --json`.
fn report_dict<'py>(py: Python<'py>, r: &ModelReport) -> PyResult<Bound<'py, PyAny>> {
    let json = owner::report_json(r).to_string();
    py.import("json")?.call_method1("loads", (json,))
}

/// `allow_clients`: `None` (anyone), a list or tuple of client public keys
/// (hex), or the path of an allow-list file.
fn allow_list(obj: Option<&Bound<'_, PyAny>>) -> PyResult<AllowList> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(AllowList::Open);
    };
    if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let keys: Vec<String> = obj.extract().map_err(|_| {
            PyTypeError::new_err("allow_clients: a list of client public keys (hex str)")
        })?;
        return parse_allow_list(&keys.join("\n"), "allow_clients").or_py();
    }
    if obj.cast::<PyString>().is_ok() || obj.hasattr("__fspath__")? {
        let p = path_string("allow_clients", obj)?;
        return read_allow_list(std::path::Path::new(&p)).or_py();
    }
    Err(PyTypeError::new_err(
        "allow_clients: None, a list of client public keys (hex), or the path of an allow-list file",
    ))
}

#[pymethods]
impl ModelOwner {
    #[new]
    #[pyo3(signature = (server, measurement, key_file, allow_sim=false, ca=None))]
    fn new(
        server: &Bound<'_, PyAny>,
        measurement: &str,
        key_file: &Bound<'_, PyAny>,
        allow_sim: bool,
        ca: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Trust::new(measurement, allow_sim).or_py()?;
        let ca = opt_path("ca", ca)?;
        let server = crate::servers::servers(server, ca.as_deref())?;
        Ok(ModelOwner {
            args: OwnerArgs {
                server,
                ca,
                expect_measurement: measurement.to_owned(),
                allow_sim,
                client_key: path_string("key_file", key_file)?.into(),
            },
        })
    }

    /// The owner's public key (64 hex digits); creates the key file if missing.
    #[getter]
    fn public_key(&self) -> PyResult<String> {
        let k = load_or_create_key(&self.args.client_key).or_py()?;
        Ok(id_hex(k.public()))
    }

    /// Verifies the enclave, quantizes `model` on `calib`, encrypts its
    /// packed weights under a key set the enclave makes for this owner,
    /// uploads them and registers the model. Returns the model id (hex):
    /// give it to data providers.
    ///
    /// `model`: a bundled model's name, an ONNX path, or the ONNX bytes.
    /// `calib`: float32 calibration inputs `[N, ...]` in the model's input
    /// shape (optional for bundled models).
    /// `policy`: what a query releases: `"logits"`, `"label"` or `"top-K"`.
    /// `budget`: most queries one data-provider key may run (`None`: no limit).
    /// `allow_clients`: data providers allowed to query: a list of client
    /// public keys (hex) or the path of an allow-list file (`None`: anyone).
    /// `max_batch`: largest batch of images per query to plan for.
    /// `lock_after`: failed integrity checks after which the model locks.
    /// `preprocess`: how image inputs are preprocessed for this model (spec
    /// text, as `hetee model upload --preprocess`): public metadata that
    /// `Client.infer` and `hetee infer` apply to image paths.
    #[pyo3(signature = (model, calib=None, policy="logits", budget=None, allow_clients=None, max_batch=8, lock_after=1, preprocess=None))]
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        calib: Option<&Bound<'_, PyAny>>,
        policy: &str,
        budget: Option<u64>,
        allow_clients: Option<&Bound<'_, PyAny>>,
        max_batch: usize,
        lock_after: u32,
        preprocess: Option<&str>,
    ) -> PyResult<String> {
        let model = ModelArg::from_py(model)?;
        let calib = arrays::opt_tensor("the calibration set", calib)?;
        if let Some(c) = &calib {
            run::check_finite("the calibration set", c).or_py()?;
        }
        let allow = allow_list(allow_clients)?;
        let mut terms = owner::terms(max_batch, policy, budget, lock_after, allow).or_py()?;
        py.detach(|| -> anyhow::Result<String> {
            let (m, c) = run::load_model_from(model.source(), calib)?;
            if let Some(text) = preprocess {
                let spec: hetee::images::Preprocess = text.parse()?;
                hetee::images::check_fits(&spec, &m.input_shape)?;
                terms.public.preprocess = Some(spec.to_string());
            }
            let q = run::prepare(&m, &c)?;
            let (up, _) = owner::upload_model(&self.args, &q, &terms)?;
            Ok(id_hex(&up.model_id))
        })
        .or_py()
    }

    /// The model's state as the enclave reports it over the owner's
    /// channel: a dict with `model_id`, `version`, `locked`, `failures`,
    /// `lock_after`, `query_budget`, `allow` (`"open"` or a list of keys),
    /// `spent` and `incidents` (as `hetee model status --json`).
    fn status<'py>(&self, py: Python<'py>, model_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let r = py
            .detach(|| owner::manage(&self.args, model_id, Manage::Status))
            .or_py()?;
        report_dict(py, &r)
    }

    /// Clears the model's lock and incident log; returns its new state
    /// (as `status`).
    fn unlock<'py>(&self, py: Python<'py>, model_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let r = py
            .detach(|| owner::manage(&self.args, model_id, Manage::Unlock))
            .or_py()?;
        report_dict(py, &r)
    }

    /// Replaces the list of data providers allowed to query: a list of
    /// client public keys (hex) or the path of an allow-list file; `None`
    /// lets anyone query. Returns the new state (as `status`).
    #[pyo3(signature = (model_id, clients=None))]
    fn allow<'py>(
        &self,
        py: Python<'py>,
        model_id: &str,
        clients: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let allow = allow_list(clients)?;
        let r = py
            .detach(|| owner::manage(&self.args, model_id, Manage::Allow(allow)))
            .or_py()?;
        report_dict(py, &r)
    }

    fn __repr__(&self) -> String {
        format!(
            "ModelOwner(server={:?}, key_file={:?}, allow_sim={})",
            self.args.server.join(","),
            self.args.client_key.display().to_string(),
            if self.args.allow_sim { "True" } else { "False" }
        )
    }
}
