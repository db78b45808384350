//! Branch-free arithmetic modulo a word-sized prime, for the enclave's
//! work on secret values (the key, phases, messages): Shoup's and
//! Montgomery's products, conditional subtractions and comparisons as
//! masks. `fhe-math`'s constant-time helpers select with a comparison,
//! which the compiler turned into branches when they were inlined in a
//! scalar loop; these use sign bits and wrapping arithmetic only.

/// `a·b mod p`, lazily (in `[0, 2p)`), for any `a`, `b < p` and Shoup's
/// companion `b' = ⌊b·2^64/p⌋`: two multiplications, no branch.
pub(crate) fn lazy_shoup(a: u64, b: u64, b_shoup: u64, p: u64) -> u64 {
    let q = ((a as u128 * b_shoup as u128) >> 64) as u64;
    a.wrapping_mul(b).wrapping_sub(q.wrapping_mul(p))
}

/// Shoup's companion `⌊v·2^64/p⌋` of a public `v < p`.
pub(crate) fn shoup(v: u64, p: u64) -> u64 {
    (((v as u128) << 64) / p as u128) as u64
}

/// `a·b·2^-64 mod p`, lazily (in `[0, 2p)`), for `a, b < p < 2^63` and
/// `neg_inv = −p⁻¹ mod 2^64` (Montgomery's reduction): with `b` kept as
/// `b·2^64 mod p`, the product `a·b mod p`. Three multiplications, no
/// branch.
pub(crate) fn mont_mul(a: u64, b: u64, p: u64, neg_inv: u64) -> u64 {
    let t = a as u128 * b as u128;
    let m = (t as u64).wrapping_mul(neg_inv);
    ((t + m as u128 * p as u128) >> 64) as u64
}

/// `−p⁻¹ mod 2^64` for an odd `p` (Newton's iteration, public).
pub(crate) fn neg_inverse(p: u64) -> u64 {
    let mut inv = 1u64;
    for _ in 0..7 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

/// `x − m` if `x >= m`, else `x`, for `x, m < 2^63`, without a branch.
pub(crate) fn sub_if_at_least(x: u64, m: u64) -> u64 {
    let d = x.wrapping_sub(m);
    d.wrapping_add(m & ((d as i64 >> 63) as u64))
}

/// `1` if `a >= b`, else `0`, for `a, b < 2^63`, without a branch.
pub(crate) fn at_least(a: u64, b: u64) -> u64 {
    (a.wrapping_sub(b) >> 63) ^ 1
}

/// `1` if `a >= b`, else `0`, for `a, b < 2^127`, without a branch.
pub(crate) fn at_least_128(a: u128, b: u128) -> u64 {
    ((a.wrapping_sub(b) >> 127) as u64) ^ 1
}

/// `x mod t` for `x < 2t`, without branches.
pub(crate) fn reduce_once(x: u64, t: u64) -> u64 {
    let d = x.wrapping_sub(t);
    let keep = (d >> 63).wrapping_neg(); // all ones if x < t
    (x & keep) | (d & !keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn montgomery_products_are_exact() {
        let mut rng = rand::rng();
        for p in [
            36028797018652673u64,
            18014398509309953,
            (1 << 60) - 93,
            65537,
            3,
        ] {
            let ni = neg_inverse(p);
            assert_eq!(p.wrapping_mul(ni), u64::MAX, "-p^-1 for {p}");
            let r2 = (((1u128 << 64) % p as u128).pow(2) % p as u128) as u64;
            for _ in 0..20_000 {
                let (a, b) = (rng.random_range(0..p), rng.random_range(0..p));
                let b_mont = sub_if_at_least(mont_mul(b, r2, p, ni), p);
                assert_eq!(b_mont as u128, ((b as u128) << 64) % p as u128);
                let lazy = mont_mul(a, b_mont, p, ni);
                assert!(lazy < 2 * p);
                assert_eq!(lazy % p, ((a as u128 * b as u128) % p as u128) as u64);
            }
        }
    }
}
