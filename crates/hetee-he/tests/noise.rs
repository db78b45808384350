//! Measures the noise left after the worst case of a stage (one ct x ct
//! product summed over many tiles) and checks the margin to decryption failure.

use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{FheEncoder, FheEncrypter};
use hetee_he::{Evaluator, HeConfig};

fn margin_bits(bound: u64, products: usize) -> (i64, usize) {
    let cfg = HeConfig::for_accumulator_bound(bound).unwrap();
    let par = cfg.build().unwrap();
    let mut rng = rand::rng();
    let sk = SecretKey::random(&par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let t = cfg.plaintext_modulus as i64;
    // Worst-case operands: full-range coefficients everywhere.
    let full: Vec<i64> = (0..par.degree())
        .map(|i| if i % 2 == 0 { t / 2 } else { -(t / 2) })
        .collect();
    let pt = Plaintext::try_encode(full.as_slice(), Encoding::poly(), &par).unwrap();
    let ev = Evaluator::new(&par).unwrap();
    let a = ev.extend(&pk.try_encrypt(&pt, &mut rng).unwrap()).unwrap();
    let b = ev.extend(&pk.try_encrypt(&pt, &mut rng).unwrap()).unwrap();
    let pairs: Vec<_> = (0..products).map(|_| (&a, &b)).collect();
    let ct = ev.sum_of_products(&pairs).unwrap();
    // SAFETY: test-only, measures the noise with the secret key.
    let noise = unsafe { sk.measure_noise(&ct).unwrap() };
    // Decryption is correct while noise < q_level / (2t), at the level the
    // host switched the product down to.
    let kept: usize = cfg.moduli_sizes
        [..cfg.moduli_sizes.len() - hetee_he::eval::output_level(&par)]
        .iter()
        .sum();
    let budget = kept as i64 - (64 - cfg.plaintext_modulus.leading_zeros()) as i64 - 1;
    (budget - noise as i64, noise)
}

#[test]
fn noise_margin_at_largest_supported_t_for_n4096() {
    // t just under 2^30 (the largest t kept at N = 4096), 64 summed products
    // of full-range polynomials: far beyond what any real layer does.
    let (margin, noise) = margin_bits((1 << 28) - 10, 64);
    eprintln!("N=4096, t~2^29: noise {noise} bits, margin {margin} bits");
    assert!(margin >= 10, "noise margin only {margin} bits");
}

#[test]
fn noise_margin_for_mnist_sized_t() {
    // t ~ 2^26: the largest t for which products are switched to one prime.
    let (margin, noise) = margin_bits(1 << 25, 16);
    eprintln!("N=4096, t~2^26: noise {noise} bits, margin {margin} bits");
    assert!(margin >= 10, "noise margin only {margin} bits");
}

#[test]
fn insecure_parameters_are_refused() {
    let cfg = HeConfig {
        degree: 4096,
        plaintext_modulus: 65537,
        moduli_sizes: vec![40, 40, 40],
    };
    let err = cfg.build().unwrap_err().to_string();
    assert!(err.contains("insecure") && err.contains("109"), "{err}");
    let cfg = HeConfig {
        degree: 1024,
        plaintext_modulus: 65537,
        moduli_sizes: vec![27],
    };
    assert!(cfg.check_security().is_err());
    assert!(HeConfig::for_accumulator_bound(1 << 60).is_err());
}

#[test]
fn plaintext_modulus_always_holds_the_bound() {
    for bound in (1u64..2000)
        .chain((10..29).map(|b| (1u64 << b) - 1))
        .chain([523770, 256530, 115260])
    {
        let cfg = HeConfig::for_accumulator_bound(bound).unwrap();
        assert!(
            cfg.max_abs_value() >= bound,
            "bound {bound}: t = {}",
            cfg.plaintext_modulus
        );
    }
}

#[test]
fn ciphertext_codec_round_trip_and_rejects_bad_bytes() {
    use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
    let cfg = HeConfig::for_accumulator_bound(1000).unwrap();
    let par = cfg.build().unwrap();
    let mut rng = rand::rng();
    let sk = SecretKey::random(&par, &mut rng);
    let pt = Plaintext::try_encode(&[1i64, 2, 3][..], Encoding::poly(), &par).unwrap();
    let ct: fhe::bfv::Ciphertext = sk.try_encrypt(&pt, &mut rng).unwrap();
    let bytes = ciphertext_to_bytes(&ct);
    let back = ciphertext_from_bytes(&bytes, &par, 2).unwrap();
    for (a, b) in back.iter().zip(ct.iter()) {
        assert_eq!(a.coefficients(), b.coefficients());
    }
    assert!(
        ciphertext_from_bytes(&bytes, &par, 3).is_err(),
        "wrong polynomial count"
    );
    assert!(
        ciphertext_from_bytes(&bytes[..bytes.len() - 1], &par, 2).is_err(),
        "truncated"
    );
    assert!(
        ciphertext_from_bytes(b"junk", &par, 2).is_err(),
        "bad magic"
    );
    let mut big = bytes.clone();
    big[6..14].copy_from_slice(&[0xff; 8]);
    assert!(
        ciphertext_from_bytes(&big, &par, 2).is_err(),
        "coefficient >= q"
    );
    let mut lvl = bytes.clone();
    lvl[4] = 9;
    assert!(ciphertext_from_bytes(&lvl, &par, 2).is_err(), "bad level");
}
