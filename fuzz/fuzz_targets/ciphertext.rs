//! `hetee_he::codec::ciphertext_from_bytes` for the N=4096 parameters, with
//! 2 (host inputs) and 3 (enclave stage results) polynomials. What decodes
//! must re-encode to the same bytes and decrypt without panicking, with the
//! enclave's prepared secret key (`hetee_he::secret::SecretOps`, from the
//! decoded ciphertext and straight from the bytes) and with `fhe`'s own
//! decryption; all must agree. What does not decode must not decrypt from
//! the bytes either.
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
    let t = par.plaintext();
    let centre = |x: u64| if x > t / 2 { x as i64 - t as i64 } else { x as i64 };
    for polys in [2, 3] {
        let direct = ops.decrypt_bytes(data, polys);
        let Ok(ct) = ciphertext_from_bytes(data, par, polys) else {
            assert!(direct.is_err(), "decrypted bytes that do not decode");
            continue;
        };
        assert_eq!(ct.len(), polys);
        assert_eq!(ciphertext_to_bytes(&ct), data, "decode is not canonical");
        let ours = ops.decrypt(&ct).map(|v| v.to_vec());
        if let (Ok(a), Ok(d)) = (&ours, &direct) {
            assert_eq!(a, &d.to_vec(), "from the bytes and from the ciphertext differ");
        }
        let theirs = sk
            .try_decrypt(&ct)
            .and_then(|pt| Vec::<u64>::try_decode(&pt, Encoding::poly()));
        if let (Ok(a), Ok(b)) = (&ours, &theirs) {
            let a: Vec<i64> = a.iter().map(|&x| centre(x)).collect();
            let b: Vec<i64> = b.iter().map(|&x| centre(x)).collect();
            assert_eq!(a, b, "SecretOps and fhe decrypt differently");
        }
    }
});
