//! The basis changes against fhe-math's exact scaler and each other.

use super::*;
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::scaler::Scaler;
use fhe_math::rq::traits::TryConvertFrom;
use ndarray::Array2;
use rand::{Rng, SeedableRng};

const N: usize = 64;

fn contexts() -> (Arc<Context>, Arc<Context>, Arc<Context>) {
    use fhe_math::zq::primes::generate_prime;
    let q = [
        generate_prime(55, 2 * N as u64, 1 << 55).unwrap(),
        generate_prime(54, 2 * N as u64, 1 << 54).unwrap(),
    ];
    let mut ext = q.to_vec();
    let mut upper = 1u64 << 62;
    while ext.len() < 5 {
        upper = generate_prime(62, 2 * N as u64, upper).unwrap();
        ext.push(upper);
    }
    (
        Context::new_arc(&q, N).unwrap(),
        Context::new_arc(&ext, N).unwrap(),
        Context::new_arc(&q[..1], N).unwrap(),
    )
}

/// The centred value of every coefficient of `p`.
fn centred(p: &Poly) -> Vec<num_bigint::BigInt> {
    let m = num_bigint::BigInt::from(p.ctx().modulus().clone());
    Vec::<BigUint>::from(p)
        .into_iter()
        .map(|x| {
            let x = num_bigint::BigInt::from(x);
            if &x * 2 >= m {
                x - &m
            } else {
                x
            }
        })
        .collect()
}

#[test]
fn extension_is_the_exact_lift_of_random_coefficients() {
    let (q, five, _) = contexts();
    // Two extra primes (the unrolled case of the basis for fresh sums)
    // and three.
    let four = Context::new_arc(&five.moduli()[..4], N).unwrap();
    for ext in [four, five] {
        extension_is_exact(&q, &ext);
    }
}

fn extension_is_exact(q: &Arc<Context>, ext: &Arc<Context>) {
    let ours = BasisExtender::new(q, ext).unwrap();
    let theirs = Scaler::new(q, ext, ScalingFactor::one()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for repr in [Representation::PowerBasis, Representation::Ntt] {
        for _ in 0..20 {
            let p = Poly::random(q, repr, &mut rng);
            let mut a = ours.extend(&p).unwrap();
            let mut b = power_basis(&p).scale(&theirs).unwrap();
            a.change_representation(Representation::PowerBasis);
            b.change_representation(Representation::PowerBasis);
            assert_eq!(centred(&a), centred(&b));
        }
    }
}

#[test]
fn rescale_is_within_one_of_the_exact_rounding() {
    let (q, ext, out) = contexts();
    let num = BigUint::from(16_760_833u64) * out.modulus();
    let den = q.modulus() * q.modulus();
    let ours = Rescaler::new(&ext, &out, &num, &den).unwrap();
    let theirs = Scaler::new(&ext, &out, ScalingFactor::new(&num, &den)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let (mut equal, mut total) = (0usize, 0usize);
    for _ in 0..50 {
        // Values of the size of an accumulated product: |x| < q^2 2^20.
        let bound = q.modulus() * q.modulus() * BigUint::from(1u64 << 20);
        let xs: Vec<num_bigint::BigInt> = (0..N)
            .map(|_| {
                let mag = BigUint::from_bytes_le(&rng.random::<[u8; 32]>()) % &bound;
                let x = num_bigint::BigInt::from(mag);
                if rng.random() {
                    -x
                } else {
                    x
                }
            })
            .collect();
        let m = num_bigint::BigInt::from(ext.modulus().clone());
        let residues: Vec<BigUint> = xs
            .iter()
            .map(|x| (((x % &m) + &m) % &m).to_biguint().unwrap())
            .collect();
        let p =
            Poly::try_convert_from(residues.as_slice(), &ext, false, Representation::PowerBasis)
                .unwrap();
        let a = Vec::<BigUint>::from(&ours.scale(&p).unwrap());
        let b = Vec::<BigUint>::from(&p.scale(&theirs).unwrap());
        let qo = out.modulus().clone();
        for (a, b) in a.iter().zip(&b) {
            let d = (a + &qo - b) % &qo;
            assert!(
                d <= BigUint::from(1u8) || d == &qo - 1u8,
                "{a} and {b} differ by more than one"
            );
            equal += usize::from(a == b);
            total += 1;
        }
    }
    assert!(equal * 1000 >= total * 999, "{equal} of {total} equal");
}

#[test]
fn the_unrolled_rescale_equals_the_general_loop_whole_and_in_blocks() {
    let (q, _, out) = contexts();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for primes in 3..=6 {
        let mut ext = q.moduli().to_vec();
        let mut upper = 1u64 << 62;
        while ext.len() < primes {
            upper = fhe_math::zq::primes::generate_prime(62, 2 * N as u64, upper).unwrap();
            ext.push(upper);
        }
        let ext = Context::new_arc(&ext, N).unwrap();
        let num = BigUint::from(16_760_833u64) * out.modulus();
        let den = q.modulus() * q.modulus();
        let r = Rescaler::new(&ext, &out, &num, &den).unwrap();
        for _ in 0..10 {
            let p = Poly::random(&ext, Representation::PowerBasis, &mut rng);
            let view = p.coefficients();
            let rows = row_slices(&view).unwrap();
            let mut general = Array2::<u64>::zeros((1, N));
            r.scale_rows(&rows, &mut general);
            // The AVX-512 kernel where this CPU has it, else the unrolled loop.
            let unrolled = r.scale(&p).unwrap();
            assert_eq!(
                unrolled.coefficients().as_slice().unwrap(),
                general.as_slice().unwrap(),
                "{primes} primes"
            );
            // In parallel blocks, of sizes that divide N and that do not.
            for block in [1, 7, 16, N] {
                let split = r.scale_in_blocks(&p, block).unwrap();
                assert_eq!(
                    split.coefficients().as_slice().unwrap(),
                    general.as_slice().unwrap(),
                    "{primes} primes, blocks of {block}"
                );
            }
            // The unrolled scalar loop itself.
            let mut scalar = vec![0u64; N];
            match primes {
                3 => r.scale_to_one_scalar::<3>(&rows, &mut scalar),
                4 => r.scale_to_one_scalar::<4>(&rows, &mut scalar),
                5 => r.scale_to_one_scalar::<5>(&rows, &mut scalar),
                _ => r.scale_to_one_scalar::<6>(&rows, &mut scalar),
            }
            assert_eq!(
                scalar,
                general.as_slice().unwrap(),
                "{primes} primes, scalar"
            );
        }
    }
}

#[test]
fn mismatched_bases_are_refused() {
    let (q, ext, out) = contexts();
    assert!(BasisExtender::new(&ext, &q).is_err());
    let r = Rescaler::new(&ext, &out, &BigUint::from(1u8), &BigUint::from(2u8)).unwrap();
    assert!(r
        .scale(&Poly::zero(&q, Representation::PowerBasis))
        .is_err());
    assert!(r.scale(&Poly::zero(&ext, Representation::Ntt)).is_err());
}

/// Rows of `p` in the power basis (a copy converted when `p` is in NTT form).
fn power_basis(p: &Poly) -> Poly {
    let mut q = p.clone();
    if q.representation() != &Representation::PowerBasis {
        q.change_representation(Representation::PowerBasis);
    }
    q
}
