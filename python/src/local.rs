//! Work in this process: `hetee.run` (the in-process deployment or the
//! plaintext reference, like `hetee run`), `hetee.measure` (like `hetee
//! enclave measure`) and how the package finds the enclave binary.

use std::path::{Path, PathBuf};

use hetee::run::{self as hrun, ModelSource};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::arrays;
use crate::errors::{HeteeError, OrPy};

/// The environment variable naming the enclave binary.
pub const ENCLAVE_ENV: &str = "HETEE_ENCLAVE_BINARY";

/// The enclave binary's file name.
fn enclave_name() -> String {
    format!("hetee-enclave{}", std::env::consts::EXE_SUFFIX)
}

/// A model argument: a bundled model's name or an ONNX path, or ONNX bytes.
pub enum ModelArg {
    /// A bundled model's name or the path of an ONNX file.
    Named(String),
    /// The ONNX bytes.
    Onnx(Vec<u8>),
}

impl ModelArg {
    /// From `str`, `os.PathLike`, `bytes` or `bytearray`.
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(ModelArg::Onnx(b.as_bytes().to_vec()));
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(ModelArg::Onnx(b.to_vec()));
        }
        Ok(ModelArg::Named(path_string("model", obj)?))
    }

    /// The source [`hrun::load_model_from`] takes.
    pub fn source(&self) -> ModelSource<'_> {
        match self {
            ModelArg::Named(s) => ModelSource::Named(s),
            ModelArg::Onnx(b) => ModelSource::Onnx(b),
        }
    }
}

/// A `str` or `os.PathLike` as a string (`os.fspath`).
pub fn path_string(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = obj.py();
    let p = py
        .import("os")?
        .call_method1("fspath", (obj,))
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} must be a str or os.PathLike{}, not {}",
                if what == "model" {
                    " (or the ONNX bytes)"
                } else {
                    ""
                },
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
    match p.cast::<PyString>() {
        Ok(s) => s.extract::<String>(),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what}: give the path as str, not bytes"
        ))),
    }
}

/// An optional path argument.
pub fn opt_path(what: &str, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<PathBuf>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(PathBuf::from(path_string(what, o)?))),
        _ => Ok(None),
    }
}

/// Runs a model on a batch of inputs with every party in this process,
/// through the same protocol and stage loop as the server, like
/// `hetee run` (or the plaintext integer reference with `plaintext=True`,
/// whose output is identical bit for bit).
///
/// `model`: a bundled model's name (`mnist`, `e2dm`, `resnet20`,
/// `mobilenet`), the path of an ONNX file, or the ONNX bytes.
/// `x`: float32 `[N, ...]` in the model's input shape, preprocessed.
/// `calib`: float32 calibration inputs in the same layout (required unless
/// the model is a bundled one, which has its own).
/// Returns float32 outputs in the model's own output shape, batch first
/// (`[N, classes]` for a classifier).
#[pyfunction]
#[pyo3(signature = (model, x, calib=None, plaintext=false))]
pub fn run<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    calib: Option<&Bound<'py, PyAny>>,
    plaintext: bool,
) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
    let model = ModelArg::from_py(model)?;
    let x = arrays::tensor("the input", x)?;
    hrun::check_finite("the input", &x).or_py()?;
    let calib = arrays::opt_tensor("the calibration set", calib)?;
    let out = py
        .detach(|| -> anyhow::Result<_> {
            let (m, c) = hrun::load_model_from(model.source(), calib)?;
            hrun::check_batch("the input", &x, &m)?;
            let q = hrun::prepare(&m, &c)?;
            Ok(hrun::run_batch(&m, &q, &x, plaintext)?.output)
        })
        .or_py()?;
    arrays::to_numpy(py, &out.shape, out.data)
}

/// The first existing `hetee-enclave` among the places the package looks.
fn locate_enclave(binary: Option<PathBuf>) -> PyResult<PathBuf> {
    if let Some(b) = binary {
        return if b.is_file() {
            Ok(b)
        } else {
            Err(HeteeError::new_err(format!(
                "the enclave binary {} does not exist",
                b.display()
            )))
        };
    }
    if let Some(b) = std::env::var_os(ENCLAVE_ENV).filter(|v| !v.is_empty()) {
        let b = PathBuf::from(b);
        return if b.is_file() {
            Ok(b)
        } else {
            Err(HeteeError::new_err(format!(
                "{ENCLAVE_ENV}={} does not name a file",
                b.display()
            )))
        };
    }
    let name = enclave_name();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Beside the `hetee` on PATH, as `hetee serve` looks beside itself
    // (symlinks resolved; its parent too, for cargo's target/*/deps).
    let cli = format!("hetee{}", std::env::consts::EXE_SUFFIX);
    let beside_cli = dirs
        .iter()
        .map(|d| d.join(&cli))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|exe| {
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(|d| d.join(&name))
                .find(|p| p.is_file())
        });
    beside_cli
        .or_else(|| dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file()))
        .ok_or_else(|| {
            HeteeError::new_err(format!(
                "no {name} found: pass binary=PATH, set {ENCLAVE_ENV}, or put the directory of \
                 hetee and {name} on PATH (target/release after `cargo build --release`)"
            ))
        })
}

/// The path of the enclave binary the package would measure: `binary` if
/// given, else `$HETEE_ENCLAVE_BINARY`, else the `hetee-enclave` beside the
/// `hetee` executable found on `PATH` (where `hetee serve` takes it from),
/// else a `hetee-enclave` on `PATH`. Raises `HeteeError` if there is none.
#[pyfunction]
#[pyo3(signature = (binary=None))]
pub fn find_enclave_binary(binary: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    let b = locate_enclave(opt_path("binary", binary)?)?;
    Ok(b.to_string_lossy().into_owned())
}

/// The measurement (64 hex digits) of the enclave binary with the memory
/// budget `memory_budget_mib` (default `DEFAULT_MEMORY_BUDGET_MIB`, as
/// `hetee serve`), as `hetee enclave measure` prints it: what a server
/// that launches this binary on the simulated platform attests, and what
/// clients pin. The binary is found as by `find_enclave_binary`.
#[pyfunction]
#[pyo3(signature = (binary=None, memory_budget_mib=None))]
pub fn measure(
    py: Python<'_>,
    binary: Option<&Bound<'_, PyAny>>,
    memory_budget_mib: Option<u64>,
) -> PyResult<String> {
    let memory_budget_mib =
        memory_budget_mib.unwrap_or(hetee_proto::config::DEFAULT_MEMORY_BUDGET_MIB);
    let program = locate_enclave(opt_path("binary", binary)?)?;
    py.detach(|| hetee::serve::measure_enclave(Path::new(&program), memory_budget_mib))
        .or_py()
}

/// The names of the bundled models (`run` and `ModelOwner.upload` take
/// them without a calibration set).
#[pyfunction]
pub fn bundled_models() -> Vec<&'static str> {
    hetee::bundled::ALL.iter().map(|b| b.name).collect()
}
