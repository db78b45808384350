//! An activation as an integer lookup table, evaluated in constant time.
//!
//! [`Lut::apply`] requantizes each value to the table's 8-bit input grid
//! (integer multiply, shift and clamp: [`Requant`]) and replaces it by its
//! table entry. The entry is found by scanning all 256 entries with an
//! equality mask, so neither the time nor the memory addresses touched depend
//! on the (secret) value; only the channel, a public position, picks which
//! table is scanned. Everything is integer arithmetic on values fixed at
//! quantization time, so the enclave and the plaintext reference, which both
//! call this code, agree bit for bit.

use serde::{Deserialize, Serialize};

use crate::intops::Requant;

/// Entries per table: one per 8-bit input value.
pub const ENTRIES: usize = 256;

/// A quantized elementwise activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lut {
    /// Requantization of the incoming values (per channel) to the table's
    /// input grid; entry `i` of a table is for the input `input.min + i`.
    pub input: Requant,
    /// [`ENTRIES`] values per table: one table for every channel, or one per
    /// channel (PRelu with per-channel slopes), channel after channel.
    pub table: Vec<i16>,
    /// Real value of one output unit.
    pub out_scale: f64,
}

impl Lut {
    /// Checks the table against `channels` channels: requantization
    /// parameters per channel, an input grid of at most 256 values, whole
    /// tables for one or every channel, and a usable output scale.
    pub fn check(&self, channels: usize) -> Result<(), String> {
        let rq = &self.input;
        if rq.multiplier.len() != channels || rq.shift.len() != channels {
            return Err("activation table: requantization does not match the channels".into());
        }
        if rq.shift.iter().any(|&s| !(1..=62).contains(&s)) || rq.multiplier.iter().any(|&m| m < 0)
        {
            return Err("activation table: malformed requantization parameters".into());
        }
        if rq.min > rq.max || rq.max - rq.min >= ENTRIES as i64 || rq.min.abs() > 1 << 20 {
            return Err("activation table: the input grid must span at most 256 values".into());
        }
        let tables = self.table.len() / ENTRIES;
        if !self.table.len().is_multiple_of(ENTRIES) || !(tables == 1 || tables == channels) {
            return Err(format!(
                "activation table has {} entries; expected 256 or 256 per channel ({channels})",
                self.table.len()
            ));
        }
        if !(self.out_scale.is_finite() && self.out_scale > 0.0) {
            return Err("activation table: the output scale must be positive".into());
        }
        Ok(())
    }

    /// Applies the activation to `[channels, rest]` values.
    pub fn apply(&self, mut x: Vec<i64>, channels: usize) -> Vec<i64> {
        if self.check(channels).is_err() {
            return vec![0; x.len()]; // malformed (refused at registration): no panic
        }
        self.input.apply(&mut x, channels);
        let per = (x.len() / channels.max(1)).max(1);
        let base = self.input.min;
        for (c, chunk) in x.chunks_mut(per).enumerate() {
            let table = self
                .table
                .chunks_exact(ENTRIES)
                .nth(c)
                .or_else(|| self.table.chunks_exact(ENTRIES).next());
            let Some(table) = table else {
                chunk.iter_mut().for_each(|v| *v = 0);
                continue;
            };
            for v in chunk {
                *v = select(table, v.wrapping_sub(base));
            }
        }
        x
    }
}

/// `table[i]` for a secret `i`, reading every entry once in order and
/// keeping the one whose position equals `i` by a mask (0 if none does).
/// The scan runs on 16-bit lanes, which the compiler vectorizes (eight
/// entries per SSE2 operation in the default x86-64 build, which has no
/// AVX2: three to four times the 64-bit scan's rate, a MobileNet stage's
/// activations 1.0 → 0.25 ms; `cargo bench -p hetee-model --bench lut`);
/// an `i` outside the
/// 8-bit grid gets bit 14 set first, so it matches no entry (no
/// truncation aliases it onto one).
#[inline]
pub fn select(table: &[i16], i: i64) -> i64 {
    let high = (i as u64) >> 8;
    // 1 iff i is outside [0, 256), without a branch.
    let outside = ((high | high.wrapping_neg()) >> 63) as i16;
    let i = (i as i16 & 0xff) | (outside << 14);
    let mut out = 0i16;
    for (j, &t) in table.iter().enumerate() {
        let d = (j as i16) ^ i;
        // all ones iff d == 0: (d | -d) has its top bit set iff d != 0
        let hit = ((d | d.wrapping_neg()) >> 15) ^ -1;
        out |= t & hit;
    }
    out as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_rq(channels: usize, min: i64, max: i64) -> Requant {
        Requant {
            multiplier: vec![1 << 30; channels],
            shift: vec![30; channels],
            min,
            max,
        }
    }

    #[test]
    fn constant_time_select_equals_indexing_for_every_input() {
        let table: Vec<i16> = (0..256)
            .map(|i| ((i * 97 + 13) % 383) as i16 - 128)
            .collect();
        for i in 0..256i64 {
            assert_eq!(select(&table, i), table[i as usize] as i64, "entry {i}");
        }
        // Outside the table nothing matches (nor does a value whose low bits
        // would alias an entry).
        for i in [
            -1i64,
            -256,
            256,
            257,
            65536 + 5,
            (1 << 40) + 7,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(select(&table, i), 0);
        }
        // Through a whole Lut, on a signed grid, with per-channel tables.
        let lut = Lut {
            input: identity_rq(2, -127, 127),
            table: table.iter().chain(table.iter().rev()).copied().collect(),
            out_scale: 1.0,
        };
        lut.check(2).unwrap();
        let x: Vec<i64> = (-127..=127).chain(-127..=127).collect();
        let y = lut.apply(x.clone(), 2);
        for (k, (&q, &v)) in x.iter().zip(&y).enumerate() {
            let t = &lut.table[(k / 255) * 256..];
            assert_eq!(v, t[(q + 127) as usize] as i64);
        }
        // Values beyond the grid are clamped first.
        // (channel 1's table is reversed: its entry 254 is table[1])
        assert_eq!(
            lut.apply(vec![-1000, 1000], 2)[..],
            [table[0] as i64, table[1] as i64]
        );
    }

    #[test]
    fn malformed_tables_are_refused_and_do_not_panic() {
        let good = Lut {
            input: identity_rq(3, 0, 255),
            table: vec![1; 256],
            out_scale: 0.5,
        };
        good.check(3).unwrap();
        let mut bad = good.clone();
        bad.table.pop();
        assert!(bad.check(3).is_err());
        assert_eq!(bad.apply(vec![5; 6], 3), vec![0; 6]);
        let mut bad = good.clone();
        bad.table = vec![1; 512];
        assert!(bad.check(3).is_err());
        let mut bad = good.clone();
        bad.input.max = 256;
        assert!(bad.check(3).is_err());
        let mut bad = good.clone();
        bad.input.shift[1] = 0;
        assert!(bad.check(3).is_err());
        assert_eq!(bad.apply(vec![5; 6], 3), vec![0; 6]);
        assert!(good.check(4).is_err());
        assert_eq!(good.apply(vec![5; 8], 4), vec![0; 8]);
        let mut bad = good;
        bad.out_scale = f64::NAN;
        assert!(bad.check(3).is_err());
    }
}
