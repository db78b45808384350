//! `hetee_he::codec::ciphertext_from_bytes` for the N=4096 parameters, with
//! 2 (host inputs) and 3 (enclave stage results) polynomials. What decodes
//! must re-encode to the same bytes and decrypt without panicking.
#![no_main]

use std::sync::{Arc, OnceLock};

use fhe::bfv::{BfvParameters, SecretKey};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::HeConfig;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fn setup() -> &'static (Arc<BfvParameters>, SecretKey) {
    static S: OnceLock<(Arc<BfvParameters>, SecretKey)> = OnceLock::new();
    S.get_or_init(|| {
        let he = HeConfig::for_accumulator_bound(1 << 20).unwrap();
        assert_eq!(he.degree, 4096);
        let par = he.build().unwrap();
        let sk = SecretKey::random(&par, &mut rand::rngs::StdRng::seed_from_u64(1));
        (par, sk)
    })
}

fuzz_target!(|data: &[u8]| {
    let (par, sk) = setup();
    for polys in [2, 3] {
        if let Ok(ct) = ciphertext_from_bytes(data, par, polys) {
            assert_eq!(ct.len(), polys);
            assert_eq!(ciphertext_to_bytes(&ct), data, "decode is not canonical");
            let _ = hetee_enclave::step::decrypt(sk, &ct, par.plaintext());
        }
    }
});
