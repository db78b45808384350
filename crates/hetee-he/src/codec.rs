//! Compact ciphertext encoding that does not trust the bytes.
//!
//! Layout: `b"HCT1"`, primes kept (u8, i.e. the level), polynomial count (u8), then for every
//! polynomial and every prime `q_i` of that level, the N NTT-form
//! coefficients bit-packed with `bits(q_i)` bits each, little-endian.
//! Decoding checks the exact length, the level, the count and that every
//! coefficient is below its prime; decoded polynomials are constant time
//! (the `fhe` protobuf format instead carries an `allow_variable_time` flag
//! chosen by whoever wrote the bytes). It is also several times faster.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};

use crate::HeError;

const MAGIC: &[u8; 4] = b"HCT1";

fn bits(q: u64) -> u32 {
    64 - q.leading_zeros()
}

/// Encoded size of a ciphertext of `polys` polynomials at `level`.
pub fn encoded_len(par: &BfvParameters, level: usize, polys: usize) -> Result<usize, HeError> {
    let ctx = par.context_at_level(level)?;
    let per_poly: usize = ctx
        .moduli()
        .iter()
        .map(|&q| (par.degree() * bits(q) as usize).div_ceil(8))
        .sum();
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
            pack(row.iter().copied(), bits(q), &mut out);
        }
    }
    out[4] = level_moduli as u8;
    out
}

fn pack(values: impl Iterator<Item = u64>, b: u32, out: &mut Vec<u8>) {
    let mut acc: u128 = 0;
    let mut n = 0u32;
    for v in values {
        acc |= (v as u128) << n;
        n += b;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
    }
}

fn unpack(bytes: &[u8], b: u32, count: usize, q: u64) -> Result<Vec<u64>, HeError> {
    let mut v = Vec::with_capacity(count);
    let mut acc: u128 = 0;
    let mut n = 0u32;
    let mask = (1u128 << b) - 1;
    let mut it = bytes.iter();
    for _ in 0..count {
        while n < b {
            let byte = *it
                .next()
                .ok_or_else(|| HeError::Malformed("truncated ciphertext".into()))?;
            acc |= (byte as u128) << n;
            n += 8;
        }
        let x = (acc & mask) as u64;
        acc >>= b;
        n -= b;
        if x >= q {
            return Err(HeError::Malformed(
                "coefficient out of range for its prime".into(),
            ));
        }
        v.push(x);
    }
    Ok(v)
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
            let len = (n * bits(q) as usize).div_ceil(8);
            coeffs.extend(unpack(&bytes[at..at + len], bits(q), n, q)?);
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
