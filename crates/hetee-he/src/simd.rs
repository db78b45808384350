//! AVX-512 kernels, eight coefficients at a time:
//! - for the enclave's work on every stage: the phase `c0 + c1·s + c2·s²`
//!   of a stage result and its rounding to the plaintext, and the row
//!   `Δ·m + z` of a re-encryption packed for the wire;
//! - for the host: the `t/q` rescale of an accumulated product down to one
//!   prime.
//!
//! The same arithmetic as the scalar code of [`crate::decrypt`],
//! [`crate::encrypt`], [`crate::arith`] and [`crate::rns`] (Montgomery's
//! and Shoup's products, masked subtractions, the rounding by a
//! fixed-point estimate, the same floating-point operations in the same
//! order), so the same results bit for bit (their tests); no branch on
//! any value. Chosen at run time on x86-64 CPUs with AVX-512 F, DQ, BW
//! and VBMI (stable Rust since 1.89); the scalar code runs elsewhere.

/// Whether the kernels run: the CPU has the features, and `HETEE_SIMD`
/// is not `off` (read once; CI runs the tests both ways, and a host that
/// turns them off in the enclave's environment changes its speed only:
/// both paths give the same results).
pub(crate) fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HETEE_SIMD").as_deref() != Ok("off") && cpu_has_features())
}

/// Whether this CPU has AVX-512 F, DQ, BW and VBMI.
fn cpu_has_features() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One prime's phase into `out` (`n` residues) from the ciphertext's rows
/// as the codec lays them out (`rows[j]`: `n` little-endian residues of
/// `w` bytes, `1 <= w <= 8`, of polynomial `j`) and the key powers
/// (`keys[j - 1]`, Montgomery form), for `p < 2^61`; whether a residue
/// was not below `p`. `None` when the kernels cannot run here or the
/// lengths are not whole vectors.
pub(crate) fn phase(
    rows: &[&[u8]],
    w: usize,
    keys: &[&[u64]],
    p: u64,
    neg_inv: u64,
    out: &mut [u64],
) -> Option<bool> {
    let n = out.len();
    let fits = n.is_multiple_of(8)
        && (1..=8).contains(&w)
        && rows.len() == keys.len() + 1
        && rows.iter().all(|r| r.len() == w * n)
        && keys.iter().all(|k| k.len() == n);
    if !fits || !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has the features (checked above); every row holds
        // `n` residues of `w` bytes, every key `n` words, and `n` is a
        // multiple of 8 (checked above).
        Some(unsafe { avx512::phase(rows, w, keys, p, neg_inv, out) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, neg_inv);
        None
    }
}

/// `round(t·x/p) mod t` of every `x` in `xs` into `out`, as
/// [`crate::decrypt`]'s scalar `round_one` (`x < p < 2^61`, `t < p`,
/// `c = ⌊t·2^64/p⌋`). `false` when the kernels cannot run here (nothing
/// written).
pub(crate) fn round_one(xs: &[u64], t: u64, p: u64, half: u64, c: u64, out: &mut [u64]) -> bool {
    if xs.len() != out.len() || !xs.len().is_multiple_of(8) || !available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX-512F/DQ present, equal lengths, multiples of 8.
        unsafe { avx512::round_one(xs, t, p, half, c, out) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, p, half, c);
        false
    }
}

/// One prime's row of `c0 = Δ·m + z` appended to `out` in the codec's
/// form (`n` little-endian residues of `w` bytes), as the scalar code of
/// [`crate::encrypt`]: `m` the centred message (`|m_i| < q/2`, zeros past
/// its end), `z` the zero's row (`n` residues below `q < 2^62`), `d` and
/// `d_shoup` the public `Δ mod q` and its Shoup companion. `false` when
/// the kernel cannot run here (nothing appended).
pub(crate) fn encrypt_row(
    m: &[i64],
    z: &[u64],
    q: u64,
    (d, d_shoup): (u64, u64),
    w: usize,
    out: &mut Vec<u8>,
) -> bool {
    let n = z.len();
    if !n.is_multiple_of(8) || m.len() > n || !(1..=8).contains(&w) || !available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let start = out.len();
        // Each vector's masked store writes its `8 w` bytes in place.
        out.resize(start + n * w, 0);
        // SAFETY: the CPU has the features (checked above); `out` holds
        // `n w` bytes from `start`, `z` holds `n` words, `m` at most `n`.
        unsafe { avx512::encrypt_row(m, z, q, d, d_shoup, w, &mut out[start..]) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, d, d_shoup, out);
        false
    }
}

/// What a rescale of `K` primes down to one prime `q` needs, for
/// [`rescale_to_one`]: the input rows (power basis) and the constants of
/// [`crate::rns::Rescaler`] and of the basis decomposition, as its
/// unrolled scalar loop holds them.
pub(crate) struct RescaleToOne<'a, const K: usize> {
    /// The input's residues, one row per input prime.
    pub rows: [&'a [u64]; K],
    /// `(q/m_i)^-1 mod m_i` with its Shoup companion.
    pub inv_hat: [(u64, u64); K],
    /// The input primes.
    pub moduli: [u64; K],
    /// `1 / m_i`.
    pub inv_m: [f64; K],
    /// The fractions `f_i`, `g_i` and `f_M`.
    pub f: [f64; K],
    /// See `f`.
    pub g: [f64; K],
    /// See `f`.
    pub f_m: f64,
    /// `I_i mod q`, `G_i mod q`, `q − (I_M mod q)`, `q − (2^40 mod q)`.
    pub ints: [u64; K],
    /// See `ints`.
    pub highs: [u64; K],
    /// See `ints`.
    pub neg_int_m: u64,
    /// See `ints`.
    pub neg_shift: u64,
    /// The output prime.
    pub q: u64,
    /// `2^40 + 1/2`.
    pub round_shift: f64,
}

/// The rescale of [`RescaleToOne`] into `out`, eight coefficients at a
/// time: the same floating-point operations in the same order as the
/// scalar loop (so the same rounding), and the integer part reduced
/// term by term with Shoup's products instead of summed in 128 bits
/// (the same value modulo `q`). `false` when it cannot run here (for an
/// output prime of 58 bits or more, or lengths that are not whole
/// vectors).
pub(crate) fn rescale_to_one<const K: usize>(r: &RescaleToOne<'_, K>, out: &mut [u64]) -> bool {
    let n = out.len();
    let fits = n.is_multiple_of(8)
        && (1..=6).contains(&K)
        && r.q < 1 << 58
        && r.rows.iter().all(|row| row.len() == n)
        && r.moduli.iter().all(|&m| m < 1 << 62);
    if !fits || !available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has the features and the lengths hold (above).
        unsafe { avx512::rescale_to_one(r, out) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The high words of `a·b`, lane by lane (four 32-bit products).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn mul_hi(a: __m512i, b: __m512i) -> __m512i {
        let low = _mm512_set1_epi64(0xffff_ffff);
        let (a1, b1) = (_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
        let p00 = _mm512_mul_epu32(a, b);
        let p01 = _mm512_mul_epu32(a, b1);
        let p10 = _mm512_mul_epu32(a1, b);
        let p11 = _mm512_mul_epu32(a1, b1);
        let mid = _mm512_add_epi64(
            _mm512_add_epi64(_mm512_srli_epi64(p00, 32), _mm512_and_si512(p01, low)),
            _mm512_and_si512(p10, low),
        );
        _mm512_add_epi64(
            _mm512_add_epi64(p11, _mm512_srli_epi64(mid, 32)),
            _mm512_add_epi64(_mm512_srli_epi64(p01, 32), _mm512_srli_epi64(p10, 32)),
        )
    }

    /// Montgomery's product `a·b·2^-64 mod p` in `[0, 2p)`, lane by lane,
    /// as [`crate::arith::mont_mul`]: `(a·b + m·p) / 2^64` with
    /// `m = (a·b mod 2^64)·(−p⁻¹)`, whose low words cancel (a carry of
    /// one unless the low word of `a·b` is zero).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn mont_mul(a: __m512i, b: __m512i, p: __m512i, neg_inv: __m512i) -> __m512i {
        let lo = _mm512_mullo_epi64(a, b);
        let hi = mul_hi(a, b);
        let m = _mm512_mullo_epi64(lo, neg_inv);
        let sum = _mm512_add_epi64(hi, mul_hi(m, p));
        let carry = _mm512_test_epi64_mask(lo, lo);
        _mm512_mask_add_epi64(sum, carry, sum, _mm512_set1_epi64(1))
    }

    /// `x − m` where `x >= m`, lane by lane (`x, m < 2^63`): the smaller of
    /// `x` and the wrapped difference.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sub_if_at_least(x: __m512i, m: __m512i) -> __m512i {
        _mm512_min_epu64(x, _mm512_sub_epi64(x, m))
    }

    /// Eight residues of `w` bytes from `at` (a masked load: nothing past
    /// `8 w` bytes is read), widened to words: byte `i < w` of lane `j` is
    /// byte `w j + i` of the input, the others zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn load(
        at: *const u8,
        w: usize,
        bytes: __mmask64,
        lanes: __mmask64,
        idx: __m512i,
    ) -> __m512i {
        // SAFETY: the caller's `at` has `8 w` readable bytes.
        let v = unsafe { _mm512_maskz_loadu_epi8(bytes, at.cast()) };
        if w == 8 {
            v
        } else {
            _mm512_maskz_permutexvar_epi8(lanes, idx, v)
        }
    }

    /// See [`super::phase`].
    ///
    /// # Safety
    /// AVX-512 F/DQ/BW/VBMI; `1 <= w <= 8`, `rows[j].len() == w *
    /// out.len()`, `keys[j].len() == out.len()`, `out.len() % 8 == 0`,
    /// `rows.len() == keys.len() + 1`.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vbmi")]
    pub(super) unsafe fn phase(
        rows: &[&[u8]],
        w: usize,
        keys: &[&[u64]],
        p: u64,
        neg_inv: u64,
        out: &mut [u64],
    ) -> bool {
        let (pv, ninv) = (
            _mm512_set1_epi64(p as i64),
            _mm512_set1_epi64(neg_inv as i64),
        );
        let two_p = _mm512_set1_epi64(2 * p as i64);
        let bytes: __mmask64 = if w >= 8 { !0 } else { (1u64 << (8 * w)) - 1 };
        let lane: u64 = (1u64 << w) - 1;
        let lanes: __mmask64 = (0..8).fold(0, |m, j| m | lane << (8 * j));
        let mut idx = [0u8; 64];
        for (b, slot) in idx.iter_mut().enumerate() {
            let (j, i) = (b / 8, b % 8);
            *slot = if i < w { (w * j + i) as u8 } else { 0 };
        }
        // SAFETY: 64 bytes, read unaligned.
        let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
        let mut bad: __mmask8 = 0;
        for k in (0..out.len()).step_by(8) {
            // SAFETY: residues k..k+8 lie inside every row (bytes
            // `w k .. w k + 8 w`), key and `out`.
            unsafe {
                let c0 = load(rows[0].as_ptr().add(w * k), w, bytes, lanes, idx);
                bad |= _mm512_cmpge_epu64_mask(c0, pv);
                let mut x = c0;
                for (r, key) in rows[1..].iter().zip(keys) {
                    let c = load(r.as_ptr().add(w * k), w, bytes, lanes, idx);
                    bad |= _mm512_cmpge_epu64_mask(c, pv);
                    let s = _mm512_loadu_si512(key.as_ptr().add(k).cast());
                    x = _mm512_add_epi64(x, mont_mul(c, s, pv, ninv));
                }
                let x = sub_if_at_least(sub_if_at_least(sub_if_at_least(x, two_p), two_p), pv);
                _mm512_storeu_si512(out.as_mut_ptr().add(k).cast(), x);
            }
        }
        bad != 0
    }

    /// See [`super::encrypt_row`].
    ///
    /// # Safety
    /// AVX-512 F/DQ/BW/VBMI; `z.len() == out.len() / w`, a multiple of 8,
    /// `m.len() <= z.len()`, `1 <= w <= 8`.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vbmi")]
    pub(super) unsafe fn encrypt_row(
        m: &[i64],
        z: &[u64],
        q: u64,
        d: u64,
        d_shoup: u64,
        w: usize,
        out: &mut [u8],
    ) {
        let (qv, two_q) = (_mm512_set1_epi64(q as i64), _mm512_set1_epi64(2 * q as i64));
        let (dv, dsv) = (
            _mm512_set1_epi64(d as i64),
            _mm512_set1_epi64(d_shoup as i64),
        );
        // Byte `b < 8 w` of the packed vector is byte `b mod w` of lane `b / w`.
        let mut idx = [0u8; 64];
        for (b, slot) in idx.iter_mut().enumerate() {
            *slot = if b < 8 * w {
                (8 * (b / w) + b % w) as u8
            } else {
                0
            };
        }
        // SAFETY: 64 bytes, read unaligned.
        let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
        let bytes: __mmask64 = if w >= 8 { !0 } else { (1u64 << (8 * w)) - 1 };
        for k in (0..z.len()).step_by(8) {
            // The message's lanes (none past its end: a masked load reads
            // nothing there).
            let left = m.len().saturating_sub(k).min(8);
            let lanes = ((1u32 << left) - 1) as __mmask8;
            // SAFETY: lanes k..k+8 of `z` and bytes `w k .. w k + 8 w` of
            // `out` exist; of `m` only the `left` lanes that exist are read
            // (the pointer is not dereferenced past them).
            unsafe {
                let x = _mm512_maskz_loadu_epi64(lanes, m.as_ptr().wrapping_add(k).cast());
                // |x| < q/2: the residue is x, or x + q when negative.
                let xi = _mm512_add_epi64(x, _mm512_and_si512(qv, _mm512_srai_epi64(x, 63)));
                // Shoup: xi·d − ⌊xi·d'/2^64⌋·q, in [0, 2q).
                let qh = mul_hi(xi, dsv);
                let v = _mm512_sub_epi64(_mm512_mullo_epi64(xi, dv), _mm512_mullo_epi64(qh, qv));
                let zv = _mm512_loadu_si512(z.as_ptr().add(k).cast());
                let c = sub_if_at_least(sub_if_at_least(_mm512_add_epi64(v, zv), two_q), qv);
                let packed = if w == 8 {
                    c
                } else {
                    _mm512_permutexvar_epi8(idx, c)
                };
                _mm512_mask_storeu_epi8(out.as_mut_ptr().add(w * k).cast(), bytes, packed);
            }
        }
    }

    /// `a·b mod m` lazily, in `[0, 2m)`, for any `a` and `b < m` with
    /// `b_shoup = ⌊b·2^64/m⌋` (Shoup).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn shoup_lazy(a: __m512i, b: __m512i, b_shoup: __m512i, m: __m512i) -> __m512i {
        let q = mul_hi(a, b_shoup);
        _mm512_sub_epi64(_mm512_mullo_epi64(a, b), _mm512_mullo_epi64(q, m))
    }

    /// See [`super::rescale_to_one`].
    ///
    /// # Safety
    /// AVX-512 F/DQ/BW/VBMI; every row holds `out.len()` residues, a
    /// multiple of 8; `q < 2^58`, `K <= 6`, every input prime `< 2^62`.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vbmi")]
    pub(super) unsafe fn rescale_to_one<const K: usize>(
        r: &super::RescaleToOne<'_, K>,
        out: &mut [u64],
    ) {
        let set = |x: u64| _mm512_set1_epi64(x as i64);
        let shoup = |b: u64, m: u64| (((b as u128) << 64) / m as u128) as u64;
        let low32 = set(0xffff_ffff);
        let qv = set(r.q);
        let moduli: [__m512i; K] = std::array::from_fn(|i| set(r.moduli[i]));
        let inv_hat: [(__m512i, __m512i); K] =
            std::array::from_fn(|i| (set(r.inv_hat[i].0), set(r.inv_hat[i].1)));
        let inv_m: [__m512d; K] = std::array::from_fn(|i| _mm512_set1_pd(r.inv_m[i]));
        let (f, g): ([__m512d; K], [__m512d; K]) = (
            std::array::from_fn(|i| _mm512_set1_pd(r.f[i])),
            std::array::from_fn(|i| _mm512_set1_pd(r.g[i])),
        );
        let ints: [(__m512i, __m512i); K] =
            std::array::from_fn(|i| (set(r.ints[i]), set(shoup(r.ints[i], r.q))));
        let highs: [(__m512i, __m512i); K] =
            std::array::from_fn(|i| (set(r.highs[i]), set(shoup(r.highs[i], r.q))));
        let neg_int_m = (set(r.neg_int_m), set(shoup(r.neg_int_m, r.q)));
        let neg_shift = set(r.neg_shift);
        let barrett = set(((1u128 << 64) / r.q as u128) as u64);
        let (neg_f_m, half, round) = (
            _mm512_set1_pd(-r.f_m),
            _mm512_set1_pd(0.5),
            _mm512_set1_pd(r.round_shift),
        );
        for c in (0..out.len()).step_by(8) {
            // SAFETY: lanes c..c+8 lie inside every row and `out`.
            unsafe {
                // The split: y_i = x_i (q/m_i)^-1 mod m_i, and v = round(Σ y_i / m_i).
                let mut y = [_mm512_setzero_si512(); K];
                let mut s = half;
                for i in 0..K {
                    let x = _mm512_loadu_si512(r.rows[i].as_ptr().add(c).cast());
                    let t = shoup_lazy(x, inv_hat[i].0, inv_hat[i].1, moduli[i]);
                    y[i] = sub_if_at_least(t, moduli[i]);
                    s = _mm512_add_pd(s, _mm512_mul_pd(_mm512_cvtepi64_pd(y[i]), inv_m[i]));
                }
                let v = _mm512_cvttpd_epi64(s);
                // The fraction, in the scalar loop's order.
                let mut frac = _mm512_mul_pd(_mm512_cvtepi64_pd(v), neg_f_m);
                for i in 0..K {
                    let hi = _mm512_cvtepi64_pd(_mm512_srli_epi64(y[i], 32));
                    let lo = _mm512_cvtepi64_pd(_mm512_and_si512(y[i], low32));
                    let t = _mm512_add_pd(_mm512_mul_pd(hi, g[i]), _mm512_mul_pd(lo, f[i]));
                    frac = _mm512_add_pd(frac, t);
                }
                let shifted = _mm512_cvttpd_epi64(_mm512_add_pd(frac, round));
                // The integer part modulo q, term by term (each below 2q).
                let mut acc = _mm512_add_epi64(shifted, neg_shift);
                acc = _mm512_add_epi64(acc, shoup_lazy(v, neg_int_m.0, neg_int_m.1, qv));
                for i in 0..K {
                    acc = _mm512_add_epi64(acc, shoup_lazy(y[i], ints[i].0, ints[i].1, qv));
                    let yh = _mm512_srli_epi64(y[i], 32);
                    acc = _mm512_add_epi64(acc, shoup_lazy(yh, highs[i].0, highs[i].1, qv));
                }
                // acc < 2^63: Barrett leaves it below 3q.
                let est = mul_hi(acc, barrett);
                let rem = _mm512_sub_epi64(acc, _mm512_mullo_epi64(est, qv));
                let rem = sub_if_at_least(sub_if_at_least(rem, qv), qv);
                _mm512_storeu_si512(out.as_mut_ptr().add(c).cast(), rem);
            }
        }
    }

    /// See [`super::round_one`].
    ///
    /// # Safety
    /// AVX-512F/DQ; `xs.len() == out.len()`, a multiple of 8.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn round_one(xs: &[u64], t: u64, p: u64, half: u64, c: u64, out: &mut [u64]) {
        let (tv, pv) = (_mm512_set1_epi64(t as i64), _mm512_set1_epi64(p as i64));
        let (halfv, cv) = (_mm512_set1_epi64(half as i64), _mm512_set1_epi64(c as i64));
        let two_p = _mm512_set1_epi64(2 * p as i64);
        let one = _mm512_set1_epi64(1);
        for k in (0..xs.len()).step_by(8) {
            // SAFETY: lane k..k+8 lies inside `xs` and `out`.
            unsafe {
                let x = _mm512_loadu_si512(xs.as_ptr().add(k).cast());
                let e = mul_hi(x, cv);
                let rem = _mm512_sub_epi64(
                    _mm512_add_epi64(_mm512_mullo_epi64(x, tv), halfv),
                    _mm512_mullo_epi64(e, pv),
                );
                let r = _mm512_mask_add_epi64(e, _mm512_cmpge_epu64_mask(rem, pv), e, one);
                let r = _mm512_mask_add_epi64(r, _mm512_cmpge_epu64_mask(rem, two_p), r, one);
                _mm512_storeu_si512(out.as_mut_ptr().add(k).cast(), sub_if_at_least(r, tv));
            }
        }
    }
}
