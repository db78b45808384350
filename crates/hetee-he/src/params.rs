//! BFV parameters chosen per model from the worst-case accumulator bound,
//! with a 128-bit security check against the HE standard's table.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder};
use fhe_math::zq::primes::generate_prime;
use serde::{Deserialize, Serialize};

use crate::HeError;

/// Largest `log2 q` for 128-bit classical security with a ternary secret
/// (HomomorphicEncryption.org standard, Table 1), by ring degree.
pub const SECURITY_TABLE_128: [(usize, u32); 4] =
    [(2048, 54), (4096, 109), (8192, 218), (16384, 438)];

/// Plaintext bits up to which N = 4096 keeps a comfortable noise margin for
/// one ct x ct product (measured by the `noise` test).
const MAX_T_BITS_4096: u32 = 30;
/// Same for N = 8192.
const MAX_T_BITS_8192: u32 = 50;

/// The BFV parameter set of a compiled model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeConfig {
    /// Ring degree N.
    pub degree: usize,
    /// Plaintext modulus t (prime, `t = 1 mod 2N`).
    pub plaintext_modulus: u64,
    /// Bit sizes of the ciphertext primes.
    pub moduli_sizes: Vec<usize>,
}

impl HeConfig {
    /// Smallest parameters whose plaintext modulus holds every accumulator
    /// with `|acc| <= bound` (so `t > 2 * bound + 1`), at 128-bit security.
    pub fn for_accumulator_bound(bound: u64) -> Result<Self, HeError> {
        let need = 2u128 * bound as u128 + 2;
        let t_bits = (128 - need.leading_zeros()).max(12);
        let (degree, moduli_sizes) = if t_bits <= MAX_T_BITS_4096 {
            (4096, vec![55, 54])
        } else if t_bits <= MAX_T_BITS_8192 {
            (8192, vec![55, 54, 55, 54])
        } else {
            return Err(HeError::Params(format!(
                "accumulators up to {bound} need a {t_bits}-bit plaintext modulus; the largest supported is {MAX_T_BITS_8192} bits. Use fewer weight/activation bits or split the layer"
            )));
        };
        // The largest NTT-friendly prime (t = 1 mod 2N) below 2^t_bits may be
        // < need, or not exist for small t_bits: then take more bits.
        let t = (t_bits..t_bits + 8)
            .filter_map(|b| generate_prime(b as usize, 2 * degree as u64, 1u64 << b))
            .find(|&t| t as u128 >= need)
            .ok_or_else(|| {
                HeError::Params(format!(
                    "no NTT-friendly plaintext prime above {need} for N={degree}"
                ))
            })?;
        let cfg = HeConfig {
            degree,
            plaintext_modulus: t,
            moduli_sizes,
        };
        cfg.check_security()?;
        Ok(cfg)
    }

    /// Total bits of the ciphertext modulus q.
    pub fn log2_q(&self) -> u32 {
        let bits = (self.moduli_sizes.iter()).fold(0usize, |a, &b| a.saturating_add(b));
        u32::try_from(bits).unwrap_or(u32::MAX)
    }

    /// Refuses parameter sets weaker than 128 bits by the HE standard.
    pub fn check_security(&self) -> Result<(), HeError> {
        let max = SECURITY_TABLE_128
            .iter()
            .find(|(n, _)| *n == self.degree)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                HeError::Insecure(format!(
                    "ring degree {} is not in the 128-bit security table (2048..16384)",
                    self.degree
                ))
            })?;
        if self.log2_q() > max {
            return Err(HeError::Insecure(format!(
                "log2 q = {} exceeds {max}, the 128-bit bound for N = {}",
                self.log2_q(),
                self.degree
            )));
        }
        let smallest = *self.moduli_sizes.iter().min().unwrap_or(&0) as u32;
        if 64 - self.plaintext_modulus.leading_zeros() >= smallest {
            return Err(HeError::Params(format!(
                "plaintext modulus {} must be smaller than every ciphertext prime ({smallest} bits)",
                self.plaintext_modulus
            )));
        }
        Ok(())
    }

    /// Largest `|acc|` these parameters decode exactly.
    pub fn max_abs_value(&self) -> u64 {
        self.plaintext_modulus.saturating_sub(1) / 2
    }

    /// Builds the `fhe` parameters (after the security check).
    pub fn build(&self) -> Result<Arc<BfvParameters>, HeError> {
        self.check_security()?;
        BfvParametersBuilder::new()
            .set_degree(self.degree)
            .set_plaintext_modulus(self.plaintext_modulus)
            .set_moduli_sizes(&self.moduli_sizes)
            .build_arc()
            .map_err(|e| HeError::Params(format!("fhe refused the parameters: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_parameters_are_refused_without_overflow() {
        // Found by fuzz/ review: the sum of the prime sizes wrapped (and then
        // passed the security bound), and t = 0 underflowed.
        let mut he = HeConfig::for_accumulator_bound(1000).unwrap();
        he.moduli_sizes = vec![usize::MAX, 2];
        assert_eq!(he.log2_q(), u32::MAX);
        assert!(he.check_security().is_err());
        he.moduli_sizes = vec![1 << 32, 30];
        assert!(he.check_security().is_err());
        he.plaintext_modulus = 0;
        assert_eq!(he.max_abs_value(), 0);
    }
}
