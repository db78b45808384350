//! The package's exceptions, and how a Rust error becomes one.

use hetee::client::trust::AttestationRefused;
use hetee::images::ImageError;
use hetee::run::BadInput;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::PyTypeInfo;

pyo3::create_exception!(
    hetee,
    HeteeError,
    PyException,
    "Any failure of a hetee operation; the message is the one the `hetee` CLI prints."
);
pyo3::create_exception!(
    hetee,
    AttestationError,
    HeteeError,
    "The client refused the server's enclave: its evidence is for another measurement, comes \
     from the simulated platform without allow_sim=True, or does not verify."
);

/// `hetee.InputError`: a subclass of both `HeteeError` and `ValueError`,
/// made at import (pyo3's exception macro takes one base).
pub struct InputError;

static INPUT_ERROR: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

impl InputError {
    /// The class object, made on first use.
    pub fn type_object(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
        INPUT_ERROR
            .get_or_try_init(py, || {
                let builtins = py.import("builtins")?;
                let bases = (HeteeError::type_object(py), PyValueError::type_object(py));
                let dict = pyo3::types::PyDict::new(py);
                dict.set_item("__module__", "hetee")?;
                dict.set_item(
                    "__doc__",
                    "An array the model cannot take (wrong dtype, wrong shape, NaN or Inf, \
                     no samples), refused before anything is sent. Subclass of HeteeError and \
                     ValueError.",
                )?;
                let t = builtins
                    .getattr("type")?
                    .call1(("InputError", bases, dict))?
                    .cast_into::<pyo3::types::PyType>()?;
                Ok(t.unbind())
            })
            .map(|t| t.bind(py))
    }

    /// An `InputError` with `msg`.
    pub fn new_err(msg: impl Into<String>) -> PyErr {
        let msg = msg.into();
        Python::attach(|py| match Self::type_object(py) {
            Ok(t) => match t.call1((msg.clone(),)) {
                Ok(e) => PyErr::from_value(e),
                Err(e) => e,
            },
            Err(_) => PyValueError::new_err(msg),
        })
    }
}

/// The Python exception for a Rust error: `AttestationError` for a refused
/// enclave (its evidence, or a channel handshake that fails against the
/// attested key), `InputError` for unusable input (arrays, images, a
/// preprocessing spec), `HeteeError` otherwise; the
/// message is the whole chain, as the CLI prints it after `error: `.
pub fn to_py(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    if e.chain().any(|c| c.is::<AttestationRefused>()) {
        AttestationError::new_err(msg)
    } else if e
        .chain()
        .any(|c| c.is::<BadInput>() || c.is::<ImageError>())
    {
        InputError::new_err(msg)
    } else {
        HeteeError::new_err(msg)
    }
}

/// `.map_err(to_py)` in one word.
pub trait OrPy<T> {
    /// The result with a Python exception as its error.
    fn or_py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for anyhow::Result<T> {
    fn or_py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
