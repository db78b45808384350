//! The `server` argument of `Client` and `ModelOwner`: one address, or
//! several replicas of one deployment (a list, or commas in a string).

use hetee::client::failover::split_servers;
use hetee::client::http::Api;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::errors::OrPy;

/// `server`: a `str` (`"host:port"`, or `"a:1,b:2"`) or a list or tuple of
/// them. Every address is checked (and its CA file read) here.
pub fn servers(server: &Bound<'_, PyAny>, ca: Option<&std::path::Path>) -> PyResult<Vec<String>> {
    let raw: Vec<String> = if server.cast::<PyString>().is_ok() {
        vec![server.extract()?]
    } else if server.cast::<PyList>().is_ok() || server.cast::<PyTuple>().is_ok() {
        server.extract().map_err(|_| {
            PyTypeError::new_err("server: a list of addresses (str), e.g. [\"a:8470\", \"b:8470\"]")
        })?
    } else {
        return Err(PyTypeError::new_err(
            "server: an address (str) or a list of addresses of replicas",
        ));
    };
    let v = split_servers(&raw).or_py()?;
    for s in &v {
        Api::connect(s, ca).or_py()?;
    }
    Ok(v)
}
