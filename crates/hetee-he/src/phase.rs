//! The scalar phase of a ciphertext read from the codec's bytes: one
//! prime's `c0 + Σ c_j·s^j` (NTT form) with Montgomery products, for
//! [`crate::decrypt`] where the AVX-512 kernel ([`crate::simd`]) does not
//! run. Branch-free on the products; the range check on the (public)
//! residues is a mask.

use crate::arith::{at_least, mont_mul, sub_if_at_least};

/// One prime's phase `c0 + Σ c_j·s^j` (NTT form) from the polynomials'
/// residues on the wire (`rows[j]`, `W` bytes each) and the key powers
/// (`keys[j - 1]`, Montgomery form), into `out`; whether a residue was not
/// below `p` (the ciphertext is public: the check may branch, the
/// products do not).
pub(crate) fn phase_from_wire<const W: usize>(
    rows: &[&[u8]],
    keys: &[&[u64]],
    p: u64,
    neg_inv: u64,
    out: &mut [u64],
) -> bool {
    match (rows, keys) {
        ([c0], _) => phase_of::<W, 1, 0>([c0], [], p, neg_inv, out),
        ([c0, c1], [s1, ..]) => phase_of::<W, 2, 1>([c0, c1], [s1], p, neg_inv, out),
        ([c0, c1, c2], [s1, s2, ..]) => {
            phase_of::<W, 3, 2>([c0, c1, c2], [s1, s2], p, neg_inv, out)
        }
        _ => true,
    }
}

/// [`phase_from_wire`] for `P` polynomials and `K = P − 1` key powers,
/// the loops unrolled: each residue one unaligned 8-byte read masked to
/// its `W` bytes, except the last few of a row (whose 8 bytes would run
/// past it), read byte by byte.
fn phase_of<const W: usize, const P: usize, const K: usize>(
    rows: [&[u8]; P],
    keys: [&[u64]; K],
    p: u64,
    neg_inv: u64,
    out: &mut [u64],
) -> bool {
    let n = out.len();
    if K + 1 != P || rows.iter().any(|r| r.len() != n * W) || keys.iter().any(|k| k.len() != n) {
        return true;
    }
    let mask = u64::MAX >> (64 - 8 * W);
    // Residues whose 8 bytes lie inside the row.
    let fast = if n * W >= 8 {
        ((n * W - 8) / W + 1).min(n)
    } else {
        0
    };
    let (head, rest) = out.split_at_mut(fast);
    let whole = |r: &[u8], k: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&r[k * W..k * W + 8]);
        u64::from_le_bytes(b) & mask
    };
    let bad = phase_range::<P, K>(&rows, &keys, p, neg_inv, head, 0, whole);
    let tail = |r: &[u8], k: usize| {
        let mut b = [0u8; 8];
        b[..W].copy_from_slice(&r[k * W..k * W + W]);
        u64::from_le_bytes(b)
    };
    let bad = bad | phase_range::<P, K>(&rows, &keys, p, neg_inv, rest, fast, tail);
    bad != 0
}

/// The phase of residues `start..start + out.len()`, each read by `read`;
/// a nonzero word if one was not below `p`.
fn phase_range<const P: usize, const K: usize>(
    rows: &[&[u8]; P],
    keys: &[&[u64]; K],
    p: u64,
    neg_inv: u64,
    out: &mut [u64],
    start: usize,
    read: impl Fn(&[u8], usize) -> u64,
) -> u64 {
    let mut bad = 0u64;
    for (i, o) in out.iter_mut().enumerate() {
        let k = start + i;
        let c: [u64; P] = std::array::from_fn(|j| read(rows[j], k));
        let mut x = c[0];
        for j in 0..K {
            x += mont_mul(c[j + 1], keys[j][k], p, neg_inv);
        }
        for v in c {
            bad |= at_least(v, p);
        }
        *o = sub_if_at_least(sub_if_at_least(sub_if_at_least(x, 2 * p), 2 * p), p);
    }
    bad
}
