//! Ciphertext (de)serialization that does not trust the bytes.
//!
//! `fhe` deserialization honours an `allow_variable_time` flag carried in the
//! bytes; every decoded polynomial is forced back to constant time here, and
//! the shape (polynomial count, level, parameters) is checked.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_traits::{DeserializeParametrized, Serialize};

use crate::HeError;

/// Serializes a ciphertext (protobuf, as `fhe` does).
pub fn ciphertext_to_bytes(ct: &Ciphertext) -> Vec<u8> {
    ct.to_bytes()
}

/// Decodes a ciphertext of exactly `polys` polynomials at level 0 under `par`.
pub fn ciphertext_from_bytes(
    bytes: &[u8],
    par: &Arc<BfvParameters>,
    polys: usize,
) -> Result<Ciphertext, HeError> {
    // Cheap bound before decoding: a level-0 polynomial is N * moduli * 8 bytes.
    let max = polys * par.degree() * par.moduli().len() * 8 + 4096;
    if bytes.len() > max {
        return Err(HeError::Malformed(format!(
            "ciphertext of {} bytes exceeds the {max}-byte maximum for these parameters",
            bytes.len()
        )));
    }
    let mut ct = Ciphertext::from_bytes(bytes, par)
        .map_err(|e| HeError::Malformed(format!("cannot decode ciphertext: {e}")))?;
    if ct.len() != polys {
        return Err(HeError::Malformed(format!(
            "ciphertext has {} polynomials, expected {polys}",
            ct.len()
        )));
    }
    let base = par.context_at_level(0)?;
    for p in ct.iter_mut() {
        p.disallow_variable_time_computations();
        if p.ctx() != base {
            return Err(HeError::Malformed("ciphertext is not at level 0".into()));
        }
    }
    Ok(ct)
}
