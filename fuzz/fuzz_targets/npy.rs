//! `hetee::data::parse_npy`: the data provider's input files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = hetee::data::parse_npy(data) {
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(t.data.len()), "shape and data disagree");
    }
});
