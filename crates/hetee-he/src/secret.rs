//! Secret-key decryption and encryption with the key's NTT form kept.
//!
//! `fhe`'s own `SecretKey` converts and transforms the secret key on every
//! call, builds a full `Plaintext` (one more NTT) after each decryption and
//! scales through its general RNS scaler. The enclave decrypts and
//! encrypts a few ciphertexts per layer of every query, so it keeps the
//! key's NTT form per ciphertext context once per key set and does only
//! the work each operation needs:
//!
//! - decrypt a stage result (degree 2, at the one-prime level the host
//!   switches every result down to) or a data provider's input (degree 1
//!   at the top level): see [`crate::decrypt`], also straight from the
//!   codec's bytes ([`SecretOps::decrypt_bytes`]); anything else goes
//!   through `fhe`;
//! - encrypt (top level): see [`crate::encrypt`].
//!
//! Both are tested equal to `fhe`'s decryption on random ciphertexts.
//! Arithmetic on secret values (the key, phases, messages) is branch-free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fhe::bfv::{BfvParameters, Ciphertext, Encoding, SecretKey};
use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use fhe_traits::{DeserializeParametrized, FheDecoder, FheDecrypter};
use num_bigint::BigUint;
use zeroize::Zeroizing;

use crate::decrypt::LevelKey;
use crate::extract::Extraction;
use crate::ntt::Ntt;
use crate::HeError;

/// The error variance of fresh encryptions: `fhe`'s default, which
/// [`crate::HeConfig::build`] keeps (and the noise test measures).
pub(crate) const ERROR_VARIANCE: usize = 10;

/// Decryption and encryption under one BFV secret key.
pub struct SecretOps {
    pub(crate) par: Arc<BfvParameters>,
    pub(crate) t: u64,
    sk: SecretKey,
    /// NTT(s) at the top level, for encryption.
    pub(crate) top: (Arc<Context>, Zeroizing<Poly>),
    /// The top level's transforms.
    pub(crate) top_ntt: Ntt,
    /// NTT(s) at the top level in Montgomery form, for encryption.
    pub(crate) top_key: MontgomeryKey,
    /// The level stage results arrive at (degree 2), when it has one or
    /// two primes.
    results: Option<LevelKey>,
    /// The top level for degree-1 ciphertexts (a data provider's input,
    /// once per query), when it has one or two primes.
    input: Option<LevelKey>,
    /// `⌊Q/t⌋ mod q_i` for every prime of the top level.
    pub(crate) delta_mod_q: Vec<u64>,
    /// The extractions of the coefficient sets asked of stage results so
    /// far (public tables, `None` for sets that are decrypted in full).
    extractions: Mutex<HashMap<Vec<usize>, Option<Arc<Extraction>>>>,
}

/// Most coefficient sets whose extraction [`SecretOps`] keeps (a few per
/// registered dense layer); past it, each call builds its own.
const MAX_EXTRACTIONS: usize = 256;

/// NTT(s) over one basis in Montgomery form ([`crate::decrypt::montgomery_rows`]),
/// with each prime's `−q⁻¹ mod 2^64`.
pub(crate) struct MontgomeryKey {
    /// `NTT(s)·2^64 mod q_i`, prime after prime.
    pub(crate) mont: Zeroizing<Vec<u64>>,
    /// `−q_i⁻¹ mod 2^64` per prime.
    pub(crate) neg_inv: Vec<u64>,
}

impl MontgomeryKey {
    fn new(ctx: &Context, s: &Poly) -> Result<Self, HeError> {
        let rows = s
            .coefficients()
            .to_slice()
            .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))?;
        let neg_inv: Vec<u64> = ctx
            .moduli()
            .iter()
            .map(|&p| crate::arith::neg_inverse(p))
            .collect();
        let n = rows.len() / ctx.moduli().len().max(1);
        Ok(MontgomeryKey {
            mont: crate::decrypt::montgomery_rows(ctx.moduli(), &neg_inv, n, rows),
            neg_inv,
        })
    }
}

fn math(e: fhe_math::Error) -> HeError {
    HeError::from(e)
}

fn ntt_of(coeffs: &[i64], ctx: &Arc<Context>) -> Result<Zeroizing<Poly>, HeError> {
    let mut s = Zeroizing::new(
        Poly::try_convert_from(coeffs, ctx, false, Representation::PowerBasis).map_err(math)?,
    );
    s.change_representation(Representation::Ntt);
    Ok(s)
}

impl SecretOps {
    /// Prepares the secret key with coefficients `coeffs` (centred, as
    /// sampled): NTT(s) at the top level, and NTT(s), NTT(s²) and the
    /// rounding at the level of stage results ([`crate::eval::output_level`]).
    pub fn new(par: &Arc<BfvParameters>, coeffs: Zeroizing<Vec<i64>>) -> Result<Self, HeError> {
        if coeffs.len() != par.degree() {
            return Err(HeError::Params(format!(
                "a secret key of {} coefficients for degree {}",
                coeffs.len(),
                par.degree()
            )));
        }
        let t = par.plaintext();
        let sk = SecretKey::from_bytes(&encode_key(&coeffs), par)?;
        let top_ctx = par.context_at_level(0)?.clone();
        let top = (top_ctx.clone(), ntt_of(&coeffs, &top_ctx)?);
        let ctx = par
            .context_at_level(crate::eval::output_level(par))?
            .clone();
        let results = LevelKey::new(&ctx, &*ntt_of(&coeffs, &ctx)?, 2, t)?;
        let input = LevelKey::new(&top_ctx, &top.1, 1, t)?;
        let delta = top_ctx.modulus() / BigUint::from(t);
        let delta_mod_q = top_ctx
            .moduli()
            .iter()
            .map(|&q| (&delta % q).to_u64_digits().first().copied().unwrap_or(0))
            .collect();
        Ok(SecretOps {
            par: par.clone(),
            t,
            sk,
            top_ntt: Ntt::for_context(&top.0)?,
            top_key: MontgomeryKey::new(&top.0, &top.1)?,
            top,
            results,
            input,
            delta_mod_q,
            extractions: Mutex::new(HashMap::new()),
        })
    }

    /// Parses `fhe`'s serialized secret key (protobuf `repeated sint64
    /// coeffs = 1`, packed). Every coefficient of a key `fhe` samples is
    /// small (`|s_i| < 64`), so each is one zigzag byte and the parse does
    /// not branch on the key; anything else is refused.
    pub fn from_secret_key_bytes(par: &Arc<BfvParameters>, bytes: &[u8]) -> Result<Self, HeError> {
        let bad = || HeError::Params("not a secret key of small coefficients".into());
        let n = par.degree();
        let header = key_header(n);
        if bytes.len() != header.len() + n || bytes[..header.len()] != header[..] {
            return Err(bad());
        }
        let body = &bytes[header.len()..];
        let mut coeffs = Zeroizing::new(vec![0i64; n]);
        let mut high = 0u8;
        for (c, &z) in coeffs.iter_mut().zip(body) {
            high |= z;
            // Zigzag: (z >> 1) ^ -(z & 1).
            *c = ((z >> 1) as i64) ^ -((z & 1) as i64);
        }
        if high & 0x80 != 0 {
            return Err(bad());
        }
        Self::new(par, coeffs)
    }

    /// Decrypts a ciphertext of degree 1 or 2 to its plaintext coefficients
    /// as residues in `[0, t)`: with the kept key ([`crate::decrypt`]) at
    /// the level of stage results and, for degree 1, at the top level; by
    /// `fhe` elsewhere.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Zeroizing<Vec<u64>>, HeError> {
        if !(2..=3).contains(&ct.len()) {
            return Err(HeError::Malformed(format!(
                "a ciphertext of {} polynomials; expected 2 or 3",
                ct.len()
            )));
        }
        if let Some(lk) = self.level_key(ct[0].ctx(), ct.len()) {
            let rows: Vec<std::borrow::Cow<'_, [u64]>> =
                ct.iter().map(ntt_residues).collect::<Result<_, _>>()?;
            return lk.decrypt_rows(rows.len(), |j| Ok(&rows[j][..]));
        }
        let pt = Zeroizing::new(self.sk.try_decrypt(ct)?);
        Ok(Zeroizing::new(Vec::<u64>::try_decode(
            &*pt,
            Encoding::poly_at_level(pt.level()),
        )?))
    }

    /// Decrypts the codec's encoding of a ciphertext of exactly `polys`
    /// polynomials ([`crate::codec`]): at the levels of [`Self::decrypt`]'s
    /// kept key straight from the bytes (read, checked and multiplied
    /// prime by prime, without building the ciphertext); otherwise decoded
    /// first.
    pub fn decrypt_bytes(
        &self,
        bytes: &[u8],
        polys: usize,
    ) -> Result<Zeroizing<Vec<u64>>, HeError> {
        let head = crate::codec::Header::parse(bytes, &self.par, polys)?;
        let ctx = self.par.context_at_level(head.level)?;
        match self.level_key(ctx, polys) {
            Some(lk) if !head.seeded => {
                let (body, widths) = head.body(bytes, ctx);
                lk.decrypt_wire(polys, body, &widths)
            }
            _ => self.decrypt(&crate::codec::ciphertext_from_bytes(
                bytes, &self.par, polys,
            )?),
        }
    }

    /// Decrypts only the coefficients at `positions` (each below `N`) of
    /// the codec's encoding of a ciphertext of exactly `polys`
    /// polynomials: one value in `[0, t)` per position. For a stage result
    /// whose positions are one residue class modulo a power of two (a
    /// dense layer's outputs), without the inverse NTT
    /// (`extract.rs`); otherwise picked from the full decryption.
    pub fn decrypt_bytes_at(
        &self,
        bytes: &[u8],
        polys: usize,
        positions: &[usize],
    ) -> Result<Zeroizing<Vec<u64>>, HeError> {
        let n = self.par.degree();
        if let Some(&x) = positions.iter().find(|&&x| x >= n) {
            return Err(HeError::Malformed(format!(
                "coefficient {x} of a polynomial of degree {n}"
            )));
        }
        let head = crate::codec::Header::parse(bytes, &self.par, polys)?;
        let ctx = self.par.context_at_level(head.level)?;
        let results = self.results.as_ref().filter(|lk| {
            !head.seeded
                && polys <= lk.degree() + 1
                && (Arc::ptr_eq(&lk.ctx, ctx) || *lk.ctx == **ctx)
        });
        if let Some(lk) = results {
            if let Some(ext) = self.extraction(lk, positions)? {
                let (body, widths) = head.body(bytes, ctx);
                if let Some(values) = lk.decrypt_wire_at(polys, body, &widths, &ext)? {
                    return Ok(values);
                }
            }
        }
        let all = self.decrypt_bytes(bytes, polys)?;
        Ok(Zeroizing::new(positions.iter().map(|&x| all[x]).collect()))
    }

    /// The extraction of `positions` at `lk`'s level, from the cache or
    /// made (and kept while the cache has room).
    fn extraction(
        &self,
        lk: &LevelKey,
        positions: &[usize],
    ) -> Result<Option<Arc<Extraction>>, HeError> {
        let mut cache = self.extractions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ext) = cache.get(positions) {
            return Ok(ext.clone());
        }
        let ext = match *lk.ctx.moduli() {
            [p] => Extraction::new(lk.ntt(), p, positions)?.map(Arc::new),
            _ => None,
        };
        if cache.len() < MAX_EXTRACTIONS {
            cache.insert(positions.to_vec(), ext.clone());
        }
        Ok(ext)
    }

    /// The kept key for ciphertexts of `polys` polynomials over `ctx`.
    fn level_key(&self, ctx: &Arc<Context>, polys: usize) -> Option<&LevelKey> {
        [&self.results, &self.input]
            .into_iter()
            .flatten()
            .find(|lk| (Arc::ptr_eq(&lk.ctx, ctx) || *lk.ctx == **ctx) && polys <= lk.degree() + 1)
    }
}

/// All residues of `p` in NTT form, prime after prime: borrowed when `p` is
/// in NTT form already (ciphertexts from the codec, the kept keys).
fn ntt_residues(p: &Poly) -> Result<std::borrow::Cow<'_, [u64]>, HeError> {
    fn all(p: &Poly) -> Result<&[u64], HeError> {
        p.coefficients()
            .to_slice()
            .ok_or_else(|| HeError::Malformed("non-contiguous coefficients".into()))
    }
    if *p.representation() == Representation::Ntt {
        return Ok(std::borrow::Cow::Borrowed(all(p)?));
    }
    let mut p = p.clone();
    p.change_representation(Representation::Ntt);
    Ok(std::borrow::Cow::Owned(all(&p)?.to_vec()))
}

/// `fhe`'s serialization header of a secret key of `n` one-byte
/// coefficients: field 1, wire type 2, then `n` as a varint.
fn key_header(n: usize) -> Vec<u8> {
    let mut h = vec![0x0a];
    let mut left = n;
    loop {
        let b = (left & 0x7f) as u8;
        left >>= 7;
        if left == 0 {
            h.push(b);
            return h;
        }
        h.push(b | 0x80);
    }
}

/// `fhe`'s serialization of small coefficients (`|c| < 64`).
fn encode_key(coeffs: &[i64]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(key_header(coeffs.len()));
    out.extend(coeffs.iter().map(|&c| ((c << 1) ^ (c >> 63)) as u8));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
    use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize};
    use rand::Rng;

    fn setup(bound: u64) -> (Arc<BfvParameters>, SecretKey, SecretOps) {
        let par = crate::HeConfig::for_accumulator_bound(bound)
            .unwrap()
            .build()
            .unwrap();
        let sk = SecretKey::random(&par, &mut rand::rng());
        let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
        (par, sk, ops)
    }

    #[test]
    fn decrypt_equals_fhe_on_random_ciphertexts_at_every_level() {
        for bound in [1000, 1 << 20, 1 << 28, 1 << 35] {
            let (par, sk, ops) = setup(bound);
            // Stage results take the fast path when their level has one or
            // two primes (the bundled models' parameters have one), and so
            // do inputs at a top level of two.
            let out = par
                .context_at_level(crate::eval::output_level(&par))
                .unwrap()
                .moduli()
                .len();
            assert_eq!(ops.results.is_some(), out <= 2, "bound {bound}");
            let top = par.context_at_level(0).unwrap().moduli().len();
            assert_eq!(ops.input.is_some(), top <= 2, "bound {bound}");
            if bound <= 1 << 23 {
                assert!(
                    ops.results.is_some() && ops.input.is_some(),
                    "bound {bound}"
                );
            }
            let pk = PublicKey::new(&sk, &mut rand::rng());
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            for level in 0..=par.max_level() {
                let ctx = par.context_at_level(level).unwrap();
                for degree2 in [false, true] {
                    let m: Vec<i64> = (0..par.degree())
                        .map(|_| rng.random_range(-(t / 2)..t / 2))
                        .collect();
                    let pt = Plaintext::try_encode(m.as_slice(), Encoding::poly(), &par).unwrap();
                    let mut ct: Ciphertext = pk.try_encrypt(&pt, &mut rng).unwrap();
                    if degree2 {
                        let one =
                            Plaintext::try_encode(&[1i64][..], Encoding::poly(), &par).unwrap();
                        let c1: Ciphertext = pk.try_encrypt(&one, &mut rng).unwrap();
                        ct = &ct * &c1;
                    }
                    ct.switch_to_level(level).unwrap();
                    // And a ciphertext of uniformly random polynomials: its
                    // phase is uniform, so every rounding boundary is hit.
                    let uniform = Ciphertext::new(
                        (0..ct.len())
                            .map(|_| Poly::random(ctx, Representation::Ntt, &mut rng))
                            .collect(),
                        &par,
                    )
                    .unwrap();
                    for (what, ct) in [("encryption", ct), ("uniform", uniform)] {
                        let want = Vec::<u64>::try_decode(
                            &sk.try_decrypt(&ct).unwrap(),
                            Encoding::poly_at_level(level),
                        )
                        .unwrap();
                        let case =
                            format!("bound {bound}, level {level}, degree 2: {degree2}, {what}");
                        assert_eq!(*ops.decrypt(&ct).unwrap(), want, "{case}");
                        let bytes = crate::codec::ciphertext_to_bytes(&ct);
                        assert_eq!(
                            *ops.decrypt_bytes(&bytes, ct.len()).unwrap(),
                            want,
                            "{case}"
                        );
                    }
                }
            }
        }
    }

    /// Coefficients decrypted alone ([`SecretOps::decrypt_bytes_at`]) are
    /// the full decryption's, on real degree-2 results and on uniformly
    /// random ciphertexts at the level of stage results: by extraction for
    /// a dense layer's positions (checked taken), from the full decryption
    /// for others.
    #[test]
    fn coefficients_decrypted_alone_are_the_full_decryptions() {
        let (par, sk, ops) = setup(1 << 20);
        let pk = PublicKey::new(&sk, &mut rand::rng());
        let mut rng = rand::rng();
        let level = crate::eval::output_level(&par);
        let ctx = par.context_at_level(level).unwrap();
        let t = par.plaintext() as i64;
        let m: Vec<i64> = (0..par.degree())
            .map(|_| rng.random_range(-(t / 2)..t / 2))
            .collect();
        let pt = Plaintext::try_encode(m.as_slice(), Encoding::poly(), &par).unwrap();
        let one = Plaintext::try_encode(&[1i64][..], Encoding::poly(), &par).unwrap();
        let a: Ciphertext = pk.try_encrypt(&pt, &mut rng).unwrap();
        let b: Ciphertext = pk.try_encrypt(&one, &mut rng).unwrap();
        let mut product = &a * &b;
        product.switch_to_level(level).unwrap();
        let uniform = Ciphertext::new(
            (0..3)
                .map(|_| Poly::random(ctx, Representation::Ntt, &mut rng))
                .collect(),
            &par,
        )
        .unwrap();
        let strided: Vec<Vec<usize>> = vec![
            (0..32).map(|j| j * 128 + 127).collect(),
            (0..10).map(|j| j * 64 + 63).collect(),
            vec![4095],
        ];
        let others: Vec<Vec<usize>> = vec![vec![170, 341, 512], (0..100).collect()];
        for ct in [product, uniform] {
            let bytes = crate::codec::ciphertext_to_bytes(&ct);
            let full = ops.decrypt_bytes(&bytes, 3).unwrap();
            for positions in strided.iter().chain(&others) {
                let want: Vec<u64> = positions.iter().map(|&x| full[x]).collect();
                let got = ops.decrypt_bytes_at(&bytes, 3, positions).unwrap();
                assert_eq!(*got, want, "positions {positions:?}");
            }
        }
        let cache = ops.extractions.lock().unwrap();
        for positions in &strided {
            assert!(
                matches!(cache.get(positions), Some(Some(_))),
                "{positions:?} extracted"
            );
        }
        for positions in &others {
            assert!(
                matches!(cache.get(positions), Some(None)),
                "{positions:?} in full"
            );
        }
        drop(cache);
        let bytes = crate::codec::ciphertext_to_bytes(&a);
        assert!(ops.decrypt_bytes_at(&bytes, 2, &[4096]).is_err());
        // A fresh input (top level) is decrypted in full, then picked.
        let full = ops.decrypt_bytes(&bytes, 2).unwrap();
        let at = ops.decrypt_bytes_at(&bytes, 2, &strided[0]).unwrap();
        assert_eq!(*at, strided[0].iter().map(|&x| full[x]).collect::<Vec<_>>());
    }

    #[test]
    fn malformed_bytes_are_refused_before_decryption() {
        let (par, sk, ops) = setup(1 << 20);
        let pk = PublicKey::new(&sk, &mut rand::rng());
        let pt = Plaintext::try_encode(&[3i64, -2][..], Encoding::poly(), &par).unwrap();
        let a: Ciphertext = pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
        let mut prod = &a * &a;
        prod.switch_to_level(crate::eval::output_level(&par))
            .unwrap();
        let good = crate::codec::ciphertext_to_bytes(&prod);
        assert!(ops.decrypt_bytes(&good, 3).is_ok());
        assert!(ops.decrypt_bytes(&good, 2).is_err(), "polynomial count");
        assert!(
            ops.decrypt_bytes(&good[..good.len() - 1], 3).is_err(),
            "length"
        );
        // A coefficient at or above its prime: the last of c2 (read byte by
        // byte), the first of c1 and one inside c0 (read 8 bytes at a time).
        let row = par.degree() * 7;
        for at in [good.len() - 7, 6 + row, 6 + 7 * 100] {
            let mut high = good.clone();
            high[at..at + 7].copy_from_slice(&[0xff; 7]);
            assert!(
                ops.decrypt_bytes(&high, 3).is_err(),
                "coefficient range at {at}"
            );
        }
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(ops.decrypt_bytes(&magic, 3).is_err(), "magic");
    }

    #[test]
    fn encryptions_decrypt_with_fhe() {
        for bound in [1000, 1 << 28] {
            let (par, sk, ops) = setup(bound);
            let t = par.plaintext() as i64;
            let mut rng = rand::rng();
            for _ in 0..5 {
                let m: Vec<i64> = (0..par.degree())
                    .map(|_| rng.random_range(-(t / 2)..t / 2))
                    .collect();
                let ct = ops.encrypt(&m, &mut rng).unwrap();
                let got = Vec::<i64>::try_decode(&sk.try_decrypt(&ct).unwrap(), Encoding::poly())
                    .unwrap();
                assert_eq!(got, m);
                let mine: Vec<u64> = ops.decrypt(&ct).unwrap().to_vec();
                let want: Vec<u64> = m.iter().map(|&v| v.rem_euclid(t) as u64).collect();
                assert_eq!(mine, want);
            }
        }
    }

    #[test]
    fn malformed_key_bytes_are_refused() {
        let (par, sk, _) = setup(1000);
        let mut b = sk.to_bytes();
        assert!(SecretOps::from_secret_key_bytes(&par, &b[..b.len() - 1]).is_err());
        b[0] = 0x12;
        assert!(SecretOps::from_secret_key_bytes(&par, &b).is_err());
        let mut b = sk.to_bytes();
        let last = b.len() - 1;
        b[last] = 0xff;
        assert!(SecretOps::from_secret_key_bytes(&par, &b).is_err());
    }
}
