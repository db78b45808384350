//! `hetee_he::codec::ciphertext_from_bytes` for the N=4096 parameters, with
//! 2 (host inputs) and 3 (enclave stage results) polynomials. What decodes
//! must re-encode to the same bytes and decrypt without panicking, with the
//! enclave's prepared secret key (`hetee_he::secret::SecretOps`, through
//! `step::decrypt`) and with `fhe`'s own decryption; both must agree.
#![no_main]

use std::sync::{Arc, OnceLock};

use fhe::bfv::{BfvParameters, Encoding, SecretKey};
use fhe_traits::{FheDecoder, FheDecrypter, Serialize as _};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
use hetee_he::secret::SecretOps;
use hetee_he::HeConfig;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fn setup() -> &'static (Arc<BfvParameters>, SecretKey, SecretOps) {
    static S: OnceLock<(Arc<BfvParameters>, SecretKey, SecretOps)> = OnceLock::new();
    S.get_or_init(|| {
        let he = HeConfig::for_accumulator_bound(1 << 20).unwrap();
        assert_eq!(he.degree, 4096);
        let par = he.build().unwrap();
        let sk = SecretKey::random(&par, &mut rand::rngs::StdRng::seed_from_u64(1));
        let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
        (par, sk, ops)
    })
}

fuzz_target!(|data: &[u8]| {
    let (par, sk, ops) = setup();
    for polys in [2, 3] {
        if let Ok(ct) = ciphertext_from_bytes(data, par, polys) {
            assert_eq!(ct.len(), polys);
            assert_eq!(ciphertext_to_bytes(&ct), data, "decode is not canonical");
            let ours = hetee_enclave::step::decrypt(ops, &ct, par.plaintext());
            let theirs = sk
                .try_decrypt(&ct)
                .and_then(|pt| Vec::<u64>::try_decode(&pt, Encoding::poly()));
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                let t = par.plaintext();
                let b: Vec<i64> = b
                    .iter()
                    .map(|&x| if x > t / 2 { x as i64 - t as i64 } else { x as i64 })
                    .collect();
                assert_eq!(a, &b, "SecretOps and fhe decrypt differently");
            }
        }
    }
});
