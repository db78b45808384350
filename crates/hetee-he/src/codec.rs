//! Compact ciphertext encoding that does not trust the bytes.
//!
//! Layout: `b"HCT1"`, primes kept (u8, i.e. the level), polynomial count (u8), then for every
//! polynomial and every prime `q_i` of that level, the N NTT-form
//! coefficients in `ceil(bits(q_i) / 8)` bytes each, little-endian.
//! Decoding checks the exact length, the level, the count and that every
//! coefficient is below its prime; decoded polynomials are constant time
//! (the `fhe` protobuf format instead carries an `allow_variable_time` flag
//! chosen by whoever wrote the bytes). It is also several times faster.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};

use crate::HeError;

const MAGIC: &[u8; 4] = b"HCT1";

/// Bytes per coefficient modulo `q`.
fn width(q: u64) -> usize {
    (64 - q.leading_zeros() as usize).div_ceil(8)
}

/// Encoded size of a ciphertext of `polys` polynomials at `level`.
pub fn encoded_len(par: &BfvParameters, level: usize, polys: usize) -> Result<usize, HeError> {
    let ctx = par.context_at_level(level)?;
    let per_poly: usize = ctx.moduli().iter().map(|&q| par.degree() * width(q)).sum();
    Ok(6 + polys * per_poly)
}

/// Encodes a ciphertext (any level, any number of polynomials up to 255).
pub fn ciphertext_to_bytes(ct: &Ciphertext) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + ct.len() * ct[0].coefficients().len() * 8);
    out.extend_from_slice(MAGIC);
    out.push(0); // primes kept, patched below
    out.push(ct.len() as u8);
    let mut level_moduli = 0;
    for p in ct.iter() {
        let mut p = p.clone();
        p.change_representation(Representation::Ntt);
        let coeffs = p.coefficients();
        level_moduli = p.ctx().moduli().len();
        for (row, &q) in coeffs.outer_iter().zip(p.ctx().moduli()) {
            pack(row.iter().copied(), q, &mut out);
        }
    }
    out[4] = level_moduli as u8;
    out
}

fn pack(values: impl Iterator<Item = u64>, q: u64, out: &mut Vec<u8>) {
    let w = width(q);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes()[..w]);
    }
}

fn unpack(bytes: &[u8], q: u64, out: &mut Vec<u64>) -> Result<(), HeError> {
    let w = width(q);
    let mut buf = [0u8; 8];
    let mut bad = false;
    for c in bytes.chunks_exact(w) {
        buf[..w].copy_from_slice(c);
        let x = u64::from_le_bytes(buf);
        bad |= x >= q;
        out.push(x);
    }
    if bad {
        return Err(HeError::Malformed(
            "coefficient out of range for its prime".into(),
        ));
    }
    Ok(())
}

/// Decodes a ciphertext of exactly `polys` polynomials under `par`.
pub fn ciphertext_from_bytes(
    bytes: &[u8],
    par: &Arc<BfvParameters>,
    polys: usize,
) -> Result<Ciphertext, HeError> {
    if bytes.len() < 6 || &bytes[..4] != MAGIC {
        return Err(HeError::Malformed(
            "not a hetee ciphertext (bad magic)".into(),
        ));
    }
    let kept = bytes[4] as usize;
    let total = par.moduli().len();
    if kept == 0 || kept > total {
        return Err(HeError::Malformed(format!(
            "ciphertext keeps {kept} primes, parameters have {total}"
        )));
    }
    let level = total - kept;
    if bytes[5] as usize != polys {
        return Err(HeError::Malformed(format!(
            "ciphertext has {} polynomials, expected {polys}",
            bytes[5]
        )));
    }
    let want = encoded_len(par, level, polys)?;
    if bytes.len() != want {
        return Err(HeError::Malformed(format!(
            "ciphertext is {} bytes, expected {want}",
            bytes.len()
        )));
    }
    let ctx = par.context_at_level(level)?;
    let n = par.degree();
    let mut at = 6;
    let mut out = Vec::with_capacity(polys);
    for _ in 0..polys {
        let mut coeffs = Vec::with_capacity(kept * n);
        for &q in ctx.moduli() {
            let len = n * width(q);
            unpack(&bytes[at..at + len], q, &mut coeffs)?;
            at += len;
        }
        out.push(Poly::try_convert_from(
            coeffs,
            ctx,
            false,
            Representation::Ntt,
        )?);
    }
    Ok(Ciphertext::new(out, par)?)
}
