//! `hetee._hetee`: the Rust side of the `hetee` Python package. Thin
//! bindings over the library functions the `hetee` CLI uses:
//! - `ModelOwner`: `hetee model upload|status|unlock|allow`;
//! - `Client`: `hetee infer`;
//! - `run`: `hetee run`; `measure`: `hetee enclave measure`.
//!
//! Arrays come in and go out as numpy arrays; every call that does real work
//! (attestation, HE encryption, network, inference) runs with the GIL
//! released. Errors become `HeteeError` (or a subclass) with the
//! CLI's message.

use pyo3::prelude::*;

mod arrays;
mod client;
mod errors;
mod local;
mod owner;
mod servers;

/// The native module; `hetee/__init__.py` re-exports it.
#[pymodule]
fn _hetee(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("HeteeError", py.get_type::<errors::HeteeError>())?;
    m.add(
        "AttestationError",
        py.get_type::<errors::AttestationError>(),
    )?;
    m.add("InputError", errors::InputError::type_object(py)?)?;
    m.add_class::<owner::ModelOwner>()?;
    m.add_class::<client::Client>()?;
    m.add_function(wrap_pyfunction!(local::run, m)?)?;
    m.add_function(wrap_pyfunction!(local::measure, m)?)?;
    m.add_function(wrap_pyfunction!(local::find_enclave_binary, m)?)?;
    m.add_function(wrap_pyfunction!(local::bundled_models, m)?)?;
    m.add(
        "DEFAULT_MEMORY_BUDGET_MIB",
        hetee_proto::config::DEFAULT_MEMORY_BUDGET_MIB,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
