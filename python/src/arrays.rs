//! numpy arrays in and out: inputs must be float32 arrays (any layout;
//! copied to C order), outputs are fresh arrays owned by Python.

use hetee::data::Tensor;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::InputError;

/// Copies a float32 numpy array into a [`Tensor`] (batch first). Refuses
/// anything that is not a numpy array of float32 with at least one
/// dimension, with a message that says how to fix it.
pub fn tensor(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let Ok(untyped) = obj.cast::<PyUntypedArray>() else {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(InputError::new_err(format!(
            "{what} is a {ty}, not a numpy array; pass np.asarray(x, dtype=np.float32)"
        )));
    };
    let Ok(arr) = untyped.cast::<PyArrayDyn<f32>>() else {
        let dtype = untyped.dtype().to_string();
        return Err(InputError::new_err(format!(
            "{what} has dtype {dtype}, expected float32; convert with x.astype(np.float32)"
        )));
    };
    if untyped.ndim() == 0 {
        return Err(InputError::new_err(format!(
            "{what} is a scalar; pass a batch [N, ...] of samples"
        )));
    }
    let ro = arr.readonly();
    let data = match ro.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => ro.as_array().iter().copied().collect(),
    };
    Ok(Tensor {
        shape: untyped.shape().to_vec(),
        data,
    })
}

/// An optional float32 array (`None` stays `None`).
pub fn opt_tensor(what: &str, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Tensor>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(tensor(what, o)?)),
        _ => Ok(None),
    }
}

/// A numpy array of `shape` holding `data` (row-major).
pub fn to_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
    data: Vec<T>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| {
        crate::errors::HeteeError::new_err(format!("an output of the wrong size: {e}"))
    })?;
    Ok(a.into_pyarray(py))
}
