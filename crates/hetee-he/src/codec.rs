//! Compact ciphertext encoding that does not trust the bytes.
//!
//! Layout: `b"HCT1"`, primes kept (u8, i.e. the level), polynomial count (u8), then for every
//! polynomial and every prime `q_i` of that level, the N NTT-form
//! coefficients in `ceil(bits(q_i) / 8)` bytes each, little-endian.
//!
//! Seeded form (a fresh symmetric encryption whose `c1` is uniform from a
//! public seed, as the enclave makes): `b"HCS3"`, primes kept, `2`, then
//! `c0` in the coefficient domain (as [`crate::encrypt`] forms it; the
//! decoder applies the forward NTT, on the host's cores rather than the
//! enclave's) and the 32-byte seed; the decoder expands `c1` from the seed
//! with [`crate::sample::uniform_ntt`]. Half the bytes.
//! Decoding checks the exact length, the level, the count and that every
//! coefficient is below its prime; decoded polynomials are constant time
//! (the `fhe` protobuf format instead carries an `allow_variable_time` flag
//! chosen by whoever wrote the bytes). It is also several times faster.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};

use crate::HeError;

const MAGIC: &[u8; 4] = b"HCT1";
const SEEDED: &[u8; 4] = b"HCS3";
/// Bytes of a seed.
pub const SEED_LEN: usize = 32;

/// Bytes per coefficient modulo `q`.
pub(crate) fn width(q: u64) -> usize {
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
    polys_to_bytes(ct)
}

/// Encodes the polynomials of a ciphertext, all over one context, as
/// [`ciphertext_to_bytes`] does: polynomials in NTT form are read where
/// they are (others are converted on a copy). For the host's products,
/// which it sends on as bytes: building an `fhe` [`Ciphertext`] first
/// would look its level up by cloning and comparing whole contexts.
pub fn polys_to_bytes(polys: &[Poly]) -> Vec<u8> {
    let coefficients: usize = polys.iter().map(|p| p.coefficients().len()).sum();
    let mut out = Vec::with_capacity(6 + coefficients * 8);
    out.extend_from_slice(MAGIC);
    out.push(polys.first().map_or(0, |p| p.ctx().moduli().len()) as u8);
    out.push(polys.len() as u8);
    for p in polys {
        let converted;
        let p = if *p.representation() == Representation::Ntt {
            p
        } else {
            let mut c = p.clone();
            c.change_representation(Representation::Ntt);
            converted = c;
            &converted
        };
        for (row, &q) in p.coefficients().outer_iter().zip(p.ctx().moduli()) {
            pack(row, q, &mut out);
        }
    }
    out
}

/// Encodes a fresh symmetric encryption whose `c1` is
/// [`crate::sample::uniform_ntt`] of `seed`: `c0` and the seed only.
/// Refuses a ciphertext that is not of that form (it would not decode back).
pub fn seeded_ciphertext_to_bytes(
    ct: &Ciphertext,
    seed: &[u8; SEED_LEN],
) -> Result<Vec<u8>, HeError> {
    if ct.len() != 2 {
        return Err(HeError::Malformed(
            "only a two-polynomial ciphertext has a seeded form".into(),
        ));
    }
    let ctx = ct[0].ctx();
    let a = crate::sample::uniform_ntt(ctx, seed)?;
    let mut c1 = ct[1].clone();
    c1.change_representation(Representation::Ntt);
    if a != c1 {
        return Err(HeError::Malformed(
            "the ciphertext's c1 is not expanded from this seed".into(),
        ));
    }
    let mut out = seeded_header(ctx.moduli().len());
    let mut c0 = ct[0].clone();
    c0.change_representation(Representation::PowerBasis);
    for (row, &q) in c0.coefficients().outer_iter().zip(ctx.moduli()) {
        pack(row, q, &mut out);
    }
    out.extend_from_slice(seed);
    Ok(out)
}

/// Encodes a seeded encryption: `c0` and the seed (the same bytes as
/// [`seeded_ciphertext_to_bytes`] of its expansion, without expanding it).
pub fn seeded_to_bytes(s: &crate::encrypt::Seeded) -> Vec<u8> {
    let ctx = s.c0.ctx();
    let mut out = seeded_header(ctx.moduli().len());
    for (row, &q) in s.c0.coefficients().outer_iter().zip(ctx.moduli()) {
        pack(row, q, &mut out);
    }
    out.extend_from_slice(&s.seed);
    out
}

fn pack(row: ndarray::ArrayView1<'_, u64>, q: u64, out: &mut Vec<u8>) {
    match row.as_slice() {
        Some(v) => pack_row(v, q, out),
        None => pack_row(&row.to_vec(), q, out),
    }
}

/// The start of a seeded ciphertext keeping `kept` primes (then each
/// prime's row of `c0`, [`pack_row`], and the seed).
pub(crate) fn seeded_header(kept: usize) -> Vec<u8> {
    let mut out = SEEDED.to_vec();
    out.push(kept as u8);
    out.push(2);
    out
}

/// Appends residues below `q`, `ceil(bits(q) / 8)` bytes each.
pub(crate) fn pack_row(values: &[u64], q: u64, out: &mut Vec<u8>) {
    // One loop per width, so that the copies are fixed-size moves.
    fn fixed<const W: usize>(values: &[u64], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + values.len() * W, 0);
        for (c, v) in out[start..].chunks_exact_mut(W).zip(values) {
            c.copy_from_slice(&v.to_le_bytes()[..W]);
        }
    }
    match width(q) {
        1 => fixed::<1>(values, out),
        2 => fixed::<2>(values, out),
        3 => fixed::<3>(values, out),
        4 => fixed::<4>(values, out),
        5 => fixed::<5>(values, out),
        6 => fixed::<6>(values, out),
        7 => fixed::<7>(values, out),
        _ => fixed::<8>(values, out),
    }
}

fn unpack(bytes: &[u8], q: u64, out: &mut Vec<u64>) -> Result<(), HeError> {
    fn fixed<const W: usize>(bytes: &[u8], q: u64, out: &mut Vec<u64>) -> bool {
        let mut bad = false;
        out.extend(bytes.chunks_exact(W).map(|c| {
            let mut buf = [0u8; 8];
            buf[..W].copy_from_slice(c);
            let x = u64::from_le_bytes(buf);
            bad |= x >= q;
            x
        }));
        bad
    }
    let bad = match width(q) {
        1 => fixed::<1>(bytes, q, out),
        2 => fixed::<2>(bytes, q, out),
        3 => fixed::<3>(bytes, q, out),
        4 => fixed::<4>(bytes, q, out),
        5 => fixed::<5>(bytes, q, out),
        6 => fixed::<6>(bytes, q, out),
        7 => fixed::<7>(bytes, q, out),
        _ => fixed::<8>(bytes, q, out),
    };
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
    let mut out = polys_from_bytes(bytes, par, polys)?;
    out.iter_mut()
        .for_each(|p| p.change_representation(Representation::Ntt));
    Ok(Ciphertext::new(out, par)?)
}

/// A checked header: the form, the level and where each stored
/// polynomial's residues lie.
pub(crate) struct Header {
    /// The seeded form (`c0` in the power basis, then the seed of `c1`).
    pub(crate) seeded: bool,
    /// The level (`fhe`'s numbering: primes dropped from the top).
    pub(crate) level: usize,
    polys: usize,
    degree: usize,
}

/// Bytes before the first coefficient.
const HEADER_LEN: usize = 6;

impl Header {
    /// Checks the magic, the level, the polynomial count (`polys`) and the
    /// exact length of `bytes`.
    pub(crate) fn parse(
        bytes: &[u8],
        par: &Arc<BfvParameters>,
        polys: usize,
    ) -> Result<Self, HeError> {
        let seeded = bytes.len() >= HEADER_LEN && &bytes[..4] == SEEDED;
        if bytes.len() < HEADER_LEN || (&bytes[..4] != MAGIC && !seeded) {
            return Err(HeError::Malformed(
                "not a hetee ciphertext (bad magic)".into(),
            ));
        }
        if seeded && polys != 2 {
            return Err(HeError::Malformed(format!(
                "a seeded ciphertext has 2 polynomials, expected {polys}"
            )));
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
        let want = if seeded {
            encoded_len(par, level, 1)? + SEED_LEN
        } else {
            encoded_len(par, level, polys)?
        };
        if bytes.len() != want {
            return Err(HeError::Malformed(format!(
                "ciphertext is {} bytes, expected {want}",
                bytes.len()
            )));
        }
        Ok(Header {
            seeded,
            level,
            polys,
            degree: par.degree(),
        })
    }

    /// The stored polynomials' residues (all primes of `ctx`, the
    /// header's level, prime after prime), each checked below its prime;
    /// a seeded ciphertext stores only `c0`.
    /// The stored polynomials' bytes (after the header, before a seed)
    /// and the residue width of each of `ctx`'s primes: polynomial after
    /// polynomial, each prime after prime, `n` residues of its width.
    pub(crate) fn body<'a>(&self, bytes: &'a [u8], ctx: &Context) -> (&'a [u8], Vec<usize>) {
        let widths: Vec<usize> = ctx.moduli().iter().map(|&q| width(q)).collect();
        let len = self.stored() * self.degree * widths.iter().sum::<usize>();
        let body = bytes.get(HEADER_LEN..HEADER_LEN + len).unwrap_or_default();
        (body, widths)
    }

    pub(crate) fn rows(&self, bytes: &[u8], ctx: &Context) -> Result<Vec<Vec<u64>>, HeError> {
        let n = self.degree;
        let mut at = HEADER_LEN;
        let mut out = Vec::with_capacity(self.stored());
        for _ in 0..self.stored() {
            let mut coeffs = Vec::with_capacity(ctx.moduli().len() * n);
            for &q in ctx.moduli() {
                let len = n * width(q);
                unpack(&bytes[at..at + len], q, &mut coeffs)?;
                at += len;
            }
            out.push(coeffs);
        }
        Ok(out)
    }

    fn stored(&self) -> usize {
        if self.seeded {
            1
        } else {
            self.polys
        }
    }
}

/// The polynomials of a ciphertext of exactly `polys` polynomials under
/// `par`, each in the form it travelled in: NTT, except a seeded
/// ciphertext's `c0`, which stays in the power basis (the host's extension
/// needs it there, and is spared an NTT and its inverse).
pub fn polys_from_bytes(
    bytes: &[u8],
    par: &Arc<BfvParameters>,
    polys: usize,
) -> Result<Vec<Poly>, HeError> {
    let head = Header::parse(bytes, par, polys)?;
    let ctx = par.context_at_level(head.level)?;
    let rep = if head.seeded {
        Representation::PowerBasis
    } else {
        Representation::Ntt
    };
    let mut out = head
        .rows(bytes, ctx)?
        .into_iter()
        .map(|coeffs| Poly::try_convert_from(coeffs, ctx, false, rep))
        .collect::<Result<Vec<_>, _>>()?;
    if head.seeded {
        let at = bytes.len() - SEED_LEN;
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&bytes[at..]);
        out.push(crate::sample::uniform_ntt(ctx, &seed)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretOps;
    use fhe::bfv::SecretKey;
    use fhe_traits::Serialize;

    #[test]
    fn seeded_form_round_trips_in_half_the_bytes_and_is_checked() {
        let par = crate::HeConfig::for_accumulator_bound(1 << 20)
            .unwrap()
            .build()
            .unwrap();
        let sk = SecretKey::random(&par, &mut rand::rng());
        let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
        let m: Vec<i64> = (0..par.degree() as i64).map(|i| i % 97 - 48).collect();
        let s = ops.encrypt_seeded(&m, &mut rand::rng()).unwrap();
        let (ct, seed) = (s.expand(&par).unwrap(), *s.seed());
        let full = ciphertext_to_bytes(&ct);
        let seeded = seeded_ciphertext_to_bytes(&ct, &seed).unwrap();
        assert_eq!(
            seeded_to_bytes(&s),
            seeded,
            "the unchecked encoding is the same"
        );
        assert!(seeded.len() * 2 < full.len() + 2 * SEED_LEN + 12);
        let back = ciphertext_from_bytes(&seeded, &par, 2).unwrap();
        assert_eq!(ciphertext_to_bytes(&back), full);
        let got: Vec<u64> = ops.decrypt(&back).unwrap().to_vec();
        let t = par.plaintext() as i64;
        assert_eq!(
            got,
            m.iter()
                .map(|&v| v.rem_euclid(t) as u64)
                .collect::<Vec<_>>()
        );
        // Another seed is refused at encoding; lengths and counts are checked.
        let mut other = seed;
        other[0] ^= 1;
        assert!(seeded_ciphertext_to_bytes(&ct, &other).is_err());
        assert!(ciphertext_from_bytes(&seeded, &par, 3).is_err());
        assert!(ciphertext_from_bytes(&seeded[..seeded.len() - 1], &par, 2).is_err());
        let mut longer = seeded.clone();
        longer.push(0);
        assert!(ciphertext_from_bytes(&longer, &par, 2).is_err());
        // The earlier seeded forms (c0 in NTT form; c1 expanded by
        // fhe-math) are no longer read.
        for magic in [b"HCS1", b"HCS2"] {
            let mut old = seeded.clone();
            old[..4].copy_from_slice(magic);
            assert!(ciphertext_from_bytes(&old, &par, 2).is_err());
        }
    }
}
