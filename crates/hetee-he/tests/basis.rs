//! The multiplication basis of an evaluator made for sums of at most `K`
//! products holds the worst case exactly, and longer sums are refused; the
//! smaller basis made for sums of fresh ciphertexts holds them exactly.

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};
use hetee_he::eval::ExtendedCiphertext;
use hetee_he::{Evaluator, HeConfig};
use num_bigint::BigUint;
use std::sync::Arc;

/// A "ciphertext" whose every coefficient is `(q - 1) / 2` (or its
/// negation), the largest centred value: the worst case for the basis.
fn extreme(par: &Arc<BfvParameters>, negative: bool) -> Ciphertext {
    let ctx = par.context_at_level(0).unwrap();
    let q = ctx.modulus().clone();
    let half = (&q - 1u8) >> 1u32;
    let v = if negative { &q - &half } else { half };
    let coeffs = vec![v; par.degree()];
    let mut polys = Vec::new();
    for _ in 0..2 {
        let mut p =
            Poly::try_convert_from(coeffs.as_slice(), ctx, false, Representation::PowerBasis)
                .unwrap();
        p.change_representation(Representation::Ntt);
        polys.push(p);
    }
    Ciphertext::new(polys, par).unwrap()
}

fn coefficients(ct: &Ciphertext) -> Vec<Vec<BigUint>> {
    (0..ct.len())
        .map(|i| {
            let mut p = ct[i].clone();
            p.change_representation(Representation::PowerBasis);
            Vec::<BigUint>::from(&p)
        })
        .collect()
}

#[test]
fn the_smallest_basis_holds_the_worst_sum_it_was_made_for() {
    for bound in [1u64 << 20, 1 << 28] {
        let par = HeConfig::for_accumulator_bound(bound)
            .unwrap()
            .build()
            .unwrap();
        let general = Evaluator::new(&par).unwrap();
        for terms in [1usize, 4, 7, 8, 16] {
            let small = Evaluator::for_sums(&par, terms).unwrap();
            assert!(small.basis_primes() <= general.basis_primes());
            let (a, b) = (extreme(&par, false), extreme(&par, true));
            let (sa, sb) = (small.extend(&a).unwrap(), small.extend(&b).unwrap());
            let (ga, gb) = (general.extend(&a).unwrap(), general.extend(&b).unwrap());
            let ours = small.sum_of_products(&vec![(&sa, &sb); terms]).unwrap();
            let exact = general.sum_of_products(&vec![(&ga, &gb); terms]).unwrap();
            let q = par
                .context_at_level(hetee_he::eval::output_level(&par))
                .unwrap();
            let q = q.modulus().clone();
            assert_eq!(
                first_difference(&ours, &exact, &q),
                None,
                "{terms} terms in {} primes",
                small.basis_primes()
            );
        }
    }
}

#[test]
fn mnist_sized_sums_need_one_prime_fewer() {
    let par = HeConfig::for_accumulator_bound(1 << 22)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(Evaluator::new(&par).unwrap().basis_primes(), 5);
    assert_eq!(Evaluator::for_sums(&par, 4).unwrap().basis_primes(), 4);
}

#[test]
fn a_sum_longer_than_the_basis_holds_is_refused() {
    let par = HeConfig::for_accumulator_bound(1 << 20)
        .unwrap()
        .build()
        .unwrap();
    let ev = Evaluator::for_sums(&par, 2).unwrap();
    let a = ev.extend(&extreme(&par, false)).unwrap();
    assert!(ev.sum_of_products(&[(&a, &a), (&a, &a)]).is_ok());
    let err = ev.sum_of_products(&[(&a, &a), (&a, &a), (&a, &a)]);
    assert!(err.unwrap_err().to_string().contains("exceeds"));
    assert!(ev
        .evaluate_plan(
            &[vec![(0, 0); 3]],
            std::slice::from_ref(&a),
            std::slice::from_ref(&a)
        )
        .is_err());
}

#[test]
fn a_seeded_input_extends_the_same_from_either_form() {
    use fhe::bfv::SecretKey;
    use fhe_traits::Serialize;
    use hetee_he::codec::{ciphertext_from_bytes, polys_from_bytes, seeded_to_bytes};
    use hetee_he::secret::SecretOps;
    let par = HeConfig::for_accumulator_bound(1 << 22)
        .unwrap()
        .build()
        .unwrap();
    let sk = SecretKey::random(&par, &mut rand::rng());
    let ops = SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
    let m: Vec<i64> = (0..par.degree() as i64).map(|i| i % 97 - 48).collect();
    let bytes = seeded_to_bytes(&ops.encrypt_seeded(&m, &mut rand::rng()).unwrap());
    let ev = Evaluator::for_sums(&par, 4).unwrap();
    let via_ct = ev
        .extend(&ciphertext_from_bytes(&bytes, &par, 2).unwrap())
        .unwrap();
    let polys = polys_from_bytes(&bytes, &par, 2).unwrap();
    assert_eq!(polys[0].representation(), &Representation::PowerBasis);
    let via_polys = ev.extend_polys(&polys.iter().collect::<Vec<_>>()).unwrap();
    let a = ev.sum_of_products(&[(&via_ct, &via_ct)]).unwrap();
    let b = ev.sum_of_products(&[(&via_polys, &via_polys)]).unwrap();
    assert_eq!(coefficients(&a), coefficients(&b));
    // The product still decrypts to m * m (negacyclic) mod t.
    let t = par.plaintext() as i128;
    let n = par.degree();
    let want: Vec<u64> = (0..n)
        .map(|k| {
            let mut acc = 0i128;
            for i in 0..n {
                let j = (k + n - i) % n;
                let sign = if i <= k { 1 } else { -1 };
                acc += sign * m[i] as i128 * m[j] as i128;
            }
            acc.rem_euclid(t) as u64
        })
        .collect();
    assert_eq!(*ops.decrypt(&b).unwrap(), want);
}

/// Coefficients of `ours` within one of `exact`'s (the rescale may round
/// either way at a boundary), or the first that is not.
fn first_difference(ours: &Ciphertext, exact: &Ciphertext, q: &BigUint) -> Option<String> {
    for (x, y) in coefficients(ours).iter().zip(coefficients(exact)) {
        for (x, y) in x.iter().zip(&y) {
            let d = (x + q - y) % q;
            if d > BigUint::from(1u8) && d != q - 1u8 {
                return Some(format!("{x} against {y}"));
            }
        }
    }
    None
}

/// Sums of `terms` products of fresh encryptions of random values, each
/// pairing distinct inputs with distinct weights (as the host's plans do):
/// the basis made for fresh sums gives the worst-case basis's results, with
/// one 62-bit prime fewer.
#[test]
fn fresh_sums_in_the_smaller_basis_equal_the_worst_case_basis() {
    use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
    use fhe_traits::{FheEncoder, FheEncrypter};
    use rand::Rng;
    let par = HeConfig::for_accumulator_bound(1 << 23)
        .unwrap()
        .build()
        .unwrap();
    let mut rng = rand::rng();
    let sk = SecretKey::random(&par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let q = par
        .context_at_level(hetee_he::eval::output_level(&par))
        .unwrap()
        .modulus()
        .clone();
    let mut fresh = |n: usize| -> Vec<Ciphertext> {
        (0..n)
            .map(|_| {
                let v: Vec<i64> = (0..par.degree())
                    .map(|_| rng.random_range(-128..128))
                    .collect();
                let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap();
                pk.try_encrypt(&pt, &mut rand::rng()).unwrap()
            })
            .collect()
    };
    for terms in [16usize, 64] {
        let small = Evaluator::for_fresh_sums(&par, terms).unwrap();
        let exact = Evaluator::for_sums(&par, terms).unwrap();
        assert_eq!(small.basis_primes(), 4, "{terms} terms");
        assert_eq!(exact.basis_primes(), 5, "{terms} terms");
        let (a, b) = (fresh(terms), fresh(terms));
        let sum = |ev: &Evaluator| {
            let a = ev.extend_all(&a).unwrap();
            let b = ev.extend_all(&b).unwrap();
            let pairs: Vec<_> = a.iter().zip(&b).collect();
            ev.sum_of_products(&pairs).unwrap()
        };
        let (ours, want) = (sum(&small), sum(&exact));
        assert_eq!(first_difference(&ours, &want, &q), None, "{terms} terms");
    }
}

/// The fresh-sum basis is smaller than the worst case needs: operands
/// chosen to defeat it (every coefficient at q/2) make a sum wrap. The
/// enclave's Freivalds check refuses such a result (`attack_*` tests).
#[test]
fn extreme_operands_wrap_the_fresh_basis() {
    let par = HeConfig::for_accumulator_bound(1 << 23)
        .unwrap()
        .build()
        .unwrap();
    let q = par
        .context_at_level(hetee_he::eval::output_level(&par))
        .unwrap()
        .modulus()
        .clone();
    let terms = 64;
    let small = Evaluator::for_fresh_sums(&par, terms).unwrap();
    let exact = Evaluator::for_sums(&par, terms).unwrap();
    let (a, b) = (extreme(&par, false), extreme(&par, true));
    let sum = |ev: &Evaluator| {
        let (a, b) = (ev.extend(&a).unwrap(), ev.extend(&b).unwrap());
        ev.sum_of_products(&vec![(&a, &b); terms]).unwrap()
    };
    assert!(first_difference(&sum(&small), &sum(&exact), &q).is_some());
}

/// An evaluator for sums of four fresh products, and the two extreme
/// operands extended, as inputs `[+, -]` and as weights `[-, +]`.
fn extreme_operands() -> (
    Arc<BfvParameters>,
    Evaluator,
    [ExtendedCiphertext; 2],
    [ExtendedCiphertext; 2],
) {
    let par = HeConfig::for_accumulator_bound(1 << 22)
        .unwrap()
        .build()
        .unwrap();
    let ev = Evaluator::for_fresh_sums(&par, 4).unwrap();
    let a = ev.extend(&extreme(&par, false)).unwrap();
    let b = ev.extend(&extreme(&par, true)).unwrap();
    (par, ev, [a.clone(), b.clone()], [b, a])
}

/// The host's products go out as bytes straight from their polynomials:
/// the same bytes as the `fhe` ciphertexts they would have been, encoded,
/// and they decode back to those ciphertexts.
#[test]
fn a_plan_encoded_from_its_polynomials_is_the_encoding_of_its_ciphertexts() {
    use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes};
    let (par, ev, ins, ws) = extreme_operands();
    let plan = vec![
        vec![(0, 1), (1, 0)],
        vec![(1, 1)],
        vec![(0, 0), (0, 1), (1, 1)],
    ];
    let cts = ev.evaluate_plan(&plan, &ins, &ws).unwrap();
    let bytes = ev.evaluate_plan_to_bytes(&plan, &ins, &ws).unwrap();
    assert_eq!(bytes.len(), plan.len());
    for (ct, b) in cts.iter().zip(&bytes) {
        assert_eq!(&ciphertext_to_bytes(ct), b);
        assert_eq!(ciphertext_from_bytes(b, &par, 3).unwrap(), *ct);
    }
    assert_ne!(bytes[0], bytes[1]);
}

/// An output alone in its layer spreads its rows and coefficients over the
/// pool; among enough others it runs whole on one thread. Both give the
/// same bytes, and so does a single sum of products.
#[test]
fn a_lone_output_spread_over_the_pool_equals_one_among_many() {
    use hetee_he::codec::ciphertext_to_bytes;
    let (_, ev, ins, ws) = extreme_operands();
    let sums: Vec<Vec<(usize, usize)>> = vec![
        vec![(0, 1), (1, 0)],
        vec![(1, 1)],
        vec![(0, 0), (0, 1), (1, 1)],
        vec![(1, 0)],
        vec![(0, 0)],
        vec![(0, 1), (1, 1)],
        vec![(1, 0), (1, 1)],
        vec![(0, 0), (1, 0)],
    ];
    // Two threads: eight outputs fill them (whole), one does not (spread).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let many = ev.evaluate_plan_to_bytes(&sums, &ins, &ws).unwrap();
        for (sum, whole) in sums.iter().zip(&many) {
            let lone = ev
                .evaluate_plan_to_bytes(std::slice::from_ref(sum), &ins, &ws)
                .unwrap();
            assert_eq!(&lone[0], whole);
            let pairs: Vec<_> = sum.iter().map(|&(i, w)| (&ins[i], &ws[w])).collect();
            let ct = ev.sum_of_products(&pairs).unwrap();
            assert_eq!(&ciphertext_to_bytes(&ct), whole);
        }
    });
}
