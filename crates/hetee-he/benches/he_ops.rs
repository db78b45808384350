//! Micro-benchmarks of the HE building blocks at N = 4096: ct x ct (library
//! default vs extend-once accumulation), rescale, decrypt, encrypt,
//! (de)serialization, modulus switching and packing.

use criterion::{criterion_group, criterion_main, Criterion};
use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize};
use hetee_he::codec::{ciphertext_from_bytes, ciphertext_to_bytes, seeded_to_bytes};
use hetee_he::packing::{ConvPacking, ConvShape, Tiling};
use hetee_he::{Evaluator, HeConfig};

fn he_ops(c: &mut Criterion) {
    let cfg = HeConfig::for_accumulator_bound(1 << 23).unwrap();
    let par = cfg.build().unwrap();
    let mut rng = rand::rng();
    let sk = SecretKey::random(&par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let v: Vec<i64> = (0..par.degree() as i64).map(|i| i % 255).collect();
    let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap();
    let a = pk.try_encrypt(&pt, &mut rng).unwrap();
    let b = pk.try_encrypt(&pt, &mut rng).unwrap();
    let ev = Evaluator::new(&par).unwrap();
    let (ea, eb) = (ev.extend(&a).unwrap(), ev.extend(&b).unwrap());
    let prod = ev.sum_of_products(&[(&ea, &eb)]).unwrap();

    let mut g = c.benchmark_group("n4096");
    g.sample_size(20);
    g.bench_function("ct_x_ct_library", |bn| bn.iter(|| &a * &b));
    g.bench_function("extend", |bn| bn.iter(|| ev.extend(&a).unwrap()));
    g.bench_function("sum_of_1_product", |bn| {
        bn.iter(|| ev.sum_of_products(&[(&ea, &eb)]).unwrap())
    });
    // MNIST's sums have at most four products: the basis made for them has
    // one 62-bit prime fewer.
    let ev4 = Evaluator::for_sums(&par, 4).unwrap();
    let (fa, fb) = (ev4.extend(&a).unwrap(), ev4.extend(&b).unwrap());
    g.bench_function("extend_basis_for_4", |bn| {
        bn.iter(|| ev4.extend(&a).unwrap())
    });
    g.bench_function("sum_of_4_products", |bn| {
        bn.iter(|| ev.sum_of_products(&[(&ea, &eb); 4]).unwrap())
    });
    g.bench_function("sum_of_4_products_basis_for_4", |bn| {
        bn.iter(|| ev4.sum_of_products(&[(&fa, &fb); 4]).unwrap())
    });
    let pairs16: Vec<_> = (0..16).map(|_| (&ea, &eb)).collect();
    g.bench_function("sum_of_16_products", |bn| {
        bn.iter(|| ev.sum_of_products(&pairs16).unwrap())
    });
    // The host's basis for sums of fresh ciphertexts: two extension primes
    // where the worst case for 16 terms needs three.
    let evf = Evaluator::for_fresh_sums(&par, 64).unwrap();
    let (ha, hb) = (evf.extend(&a).unwrap(), evf.extend(&b).unwrap());
    g.bench_function("extend_fresh_basis", |bn| {
        bn.iter(|| evf.extend(&a).unwrap())
    });
    g.bench_function("sum_of_1_product_fresh_basis", |bn| {
        bn.iter(|| evf.sum_of_products(&[(&ha, &hb)]).unwrap())
    });
    let fresh16: Vec<_> = (0..16).map(|_| (&ha, &hb)).collect();
    g.bench_function("sum_of_16_products_fresh_basis", |bn| {
        bn.iter(|| evf.sum_of_products(&fresh16).unwrap())
    });
    // The host's stage tail: a plan of 8 one-product outputs (the fresh
    // basis), finished and encoded. Through `fhe` ciphertexts (each built
    // at the output level, which clones and compares contexts to find it,
    // and copied again to encode), and straight from the polynomials.
    let plan: Vec<Vec<(usize, usize)>> = (0..8).map(|_| vec![(0, 0)]).collect();
    let (ins, ws) = (vec![ha.clone()], vec![hb.clone()]);
    g.bench_function("plan_of_8_then_encode", |bn| {
        bn.iter(|| {
            let outs = evf.evaluate_plan(&plan, &ins, &ws).unwrap();
            outs.iter().map(ciphertext_to_bytes).collect::<Vec<_>>()
        })
    });
    g.bench_function("plan_of_8_to_bytes", |bn| {
        bn.iter(|| evf.evaluate_plan_to_bytes(&plan, &ins, &ws).unwrap())
    });
    // A layer with a single output (e2dm's first and last at one image):
    // too few polynomials to keep every core busy, unless each spreads its
    // primes and coefficients over the pool.
    let plan1 = vec![vec![(0, 0)]];
    g.bench_function("plan_of_1_to_bytes", |bn| {
        bn.iter(|| evf.evaluate_plan_to_bytes(&plan1, &ins, &ws).unwrap())
    });
    g.bench_function("decrypt_degree2", |bn| {
        bn.iter(|| {
            let p = sk.try_decrypt(&prod).unwrap();
            Vec::<i64>::try_decode(&p, Encoding::poly()).unwrap()
        })
    });
    let ops = hetee_he::secret::SecretOps::from_secret_key_bytes(&par, &sk.to_bytes()).unwrap();
    g.bench_function("decrypt_degree2_kept_key", |bn| {
        bn.iter(|| ops.decrypt(&prod).unwrap())
    });
    // A data provider's input: degree 1 at the top level, decrypted once
    // per HE query (kept NTT(s) and fhe-math's rounding, against fhe).
    g.bench_function("decrypt_input_top_level_fhe", |bn| {
        bn.iter(|| {
            let p = sk.try_decrypt(&a).unwrap();
            Vec::<u64>::try_decode(&p, Encoding::poly()).unwrap()
        })
    });
    g.bench_function("decrypt_input_top_level_kept_key", |bn| {
        bn.iter(|| ops.decrypt(&a).unwrap())
    });
    let mut low = prod.clone();
    low.switch_to_level(hetee_he::eval::output_level(&par))
        .unwrap();
    g.bench_function("decrypt_degree2_output_level_fhe", |bn| {
        bn.iter(|| {
            let p = sk.try_decrypt(&low).unwrap();
            Vec::<i64>::try_decode(&p, Encoding::poly()).unwrap()
        })
    });
    g.bench_function("decrypt_degree2_output_level_kept_key", |bn| {
        bn.iter(|| ops.decrypt(&low).unwrap())
    });
    // What the enclave runs: straight from the codec's bytes (NTT form),
    // against decoding then decrypting.
    let low_bytes = ciphertext_to_bytes(&low);
    g.bench_function("decrypt_degree2_output_level_decode_then_decrypt", |bn| {
        bn.iter(|| {
            ops.decrypt(&ciphertext_from_bytes(&low_bytes, &par, 3).unwrap())
                .unwrap()
        })
    });
    g.bench_function("decrypt_degree2_output_level_from_bytes", |bn| {
        bn.iter(|| ops.decrypt_bytes(&low_bytes, 3).unwrap())
    });
    // A dense layer's output (32 channels of a 128-input tile, as e2dm's
    // stage 1): only its 32 useful coefficients, by extraction.
    let dense: Vec<usize> = (0..32).map(|j| j * 128 + 127).collect();
    g.bench_function("decrypt_degree2_output_level_32_dense_coefficients", |bn| {
        bn.iter(|| ops.decrypt_bytes_at(&low_bytes, 3, &dense).unwrap())
    });
    // MNIST's last layer (100 -> 10): 10 coefficients of stride 4.
    let last: Vec<usize> = (0..10).map(|j| j * 100 + 99).collect();
    g.bench_function(
        "decrypt_degree2_output_level_10_coefficients_stride_4",
        |bn| bn.iter(|| ops.decrypt_bytes_at(&low_bytes, 3, &last).unwrap()),
    );
    // A stage result of five outputs (MNIST's stages 1 and 2), over the
    // threads as the enclave's step decrypts it.
    let five = vec![low_bytes.clone(); 5];
    g.bench_function("decrypt_5_outputs_parallel", |bn| {
        use rayon::prelude::*;
        bn.iter(|| {
            five.par_iter()
                .map(|b| ops.decrypt_bytes(b, 3).unwrap())
                .collect::<Vec<_>>()
        })
    });
    let input_bytes = ciphertext_to_bytes(&a);
    g.bench_function("decrypt_input_top_level_from_bytes", |bn| {
        bn.iter(|| ops.decrypt_bytes(&input_bytes, 2).unwrap())
    });
    g.bench_function("encrypt_secret_key_kept_key", |bn| {
        bn.iter(|| ops.encrypt(&v, &mut rand::rng()).unwrap())
    });
    // The enclave's split encryption: the zero encryption its idle thread
    // makes ahead, and what a query still pays (the message and the bytes).
    g.bench_function("zero_encryption_made_ahead", |bn| {
        bn.iter(|| ops.zero_encryption(&mut rand::rng()).unwrap())
    });
    // Its parts: the public c1 expanded from a seed (enclave and host
    // both do it), the error, and the inverse transforms.
    let top = par.context_at_level(0).unwrap().clone();
    g.bench_function("expand_c1_from_seed_fhe_math", |bn| {
        bn.iter(|| {
            fhe_math::rq::Poly::random_from_seed(&top, fhe_math::rq::Representation::Ntt, [7; 32])
        })
    });
    g.bench_function("expand_c1_from_seed", |bn| {
        bn.iter(|| hetee_he::sample::uniform_ntt(&top, &[7; 32]).unwrap())
    });
    g.bench_function("error_cbd_fhe_util", |bn| {
        bn.iter(|| {
            fhe_math::rq::Poly::small(
                &top,
                fhe_math::rq::Representation::PowerBasis,
                10,
                &mut rand::rng(),
            )
            .unwrap()
        })
    });
    g.bench_function("error_cbd", |bn| {
        bn.iter(|| hetee_he::sample::centred_binomial(par.degree(), 10, &mut rand::rng()).unwrap())
    });
    let top_ntt = hetee_he::ntt::Ntt::for_context(&top).unwrap();
    let mut rows = hetee_he::sample::uniform_ntt_rows(top.moduli(), par.degree(), &[7; 32]);
    g.bench_function("inverse_ntt_top_level", |bn| {
        bn.iter(|| top_ntt.inverse(&mut rows).unwrap())
    });
    g.bench_function("encrypt_with_zero_made_ahead", |bn| {
        bn.iter_batched(
            || ops.zero_encryption(&mut rand::rng()).unwrap(),
            |zero| seeded_to_bytes(&ops.encrypt_with(&v, zero).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("encrypt_to_bytes_with_zero_made_ahead", |bn| {
        bn.iter_batched(
            || ops.zero_encryption(&mut rand::rng()).unwrap(),
            |zero| ops.encrypt_to_bytes(&v, zero).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    // MNIST's stage-1 input: 4 channels of 12x12, 576 of 4096 coefficients.
    let sparse = &v[..576];
    g.bench_function(
        "encrypt_to_bytes_576_coefficients_with_zero_made_ahead",
        |bn| {
            bn.iter_batched(
                || ops.zero_encryption(&mut rand::rng()).unwrap(),
                |zero| ops.encrypt_to_bytes(sparse, zero).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        },
    );
    g.bench_function("encrypt_seeded_to_bytes", |bn| {
        bn.iter(|| seeded_to_bytes(&ops.encrypt_seeded(&v, &mut rand::rng()).unwrap()))
    });
    g.bench_function("encrypt_secret_key", |bn| {
        bn.iter(|| -> fhe::bfv::Ciphertext { sk.try_encrypt(&pt, &mut rand::rng()).unwrap() })
    });
    g.bench_function("encrypt_public_key", |bn| {
        bn.iter(|| pk.try_encrypt(&pt, &mut rand::rng()).unwrap())
    });
    let bytes = ciphertext_to_bytes(&prod);
    g.bench_function("serialize_degree2", |bn| {
        bn.iter(|| ciphertext_to_bytes(&prod))
    });
    g.bench_function("deserialize_degree2", |bn| {
        bn.iter(|| ciphertext_from_bytes(&bytes, &par, 3).unwrap())
    });
    g.bench_function("mod_switch_degree2_to_last", |bn| {
        bn.iter(|| {
            let mut p = prod.clone();
            p.switch_to_level(par.max_level()).unwrap();
            p
        })
    });
    let shape = ConvShape {
        c: 16,
        h: 12,
        w: 12,
        m: 32,
        kh: 5,
        kw: 5,
        oh: 8,
        ow: 8,
        groups: 1,
        phases: 1,
    };
    let pk16 = ConvPacking::new(
        shape,
        Tiling {
            ct: 4,
            ht: 12,
            wt: 12,
            mt: 7,
        },
        4096,
    )
    .unwrap();
    let x: Vec<i64> = (0..16 * 144).map(|i| i % 256).collect();
    let polys: Vec<Vec<i64>> = pk16
        .product_plan()
        .iter()
        .map(|_| vec![1i64; 4096])
        .collect();
    g.bench_function("pack_input_conv2", |bn| bn.iter(|| pk16.pack_input(&x)));
    g.bench_function("unpack_output_conv2", |bn| {
        bn.iter(|| pk16.unpack_output(&polys))
    });
    g.finish();
    eprintln!("degree-2 ciphertext: {} bytes serialized", bytes.len());
}

/// The evaluator's rescale of one accumulated polynomial (five primes down
/// to one, by `t q_out / q^2`): fhe-math's general scaler against the HPS
/// rescaler of `hetee_he::rns`.
fn rescale(c: &mut Criterion) {
    use fhe_math::rq::{Context, Poly, Representation};
    use fhe_math::zq::primes::generate_prime;
    let n = 4096;
    let mut ext = vec![
        generate_prime(55, 2 * n as u64, 1 << 55).unwrap(),
        generate_prime(54, 2 * n as u64, 1 << 54).unwrap(),
    ];
    let mut upper = 1u64 << 62;
    while ext.len() < 5 {
        upper = generate_prime(62, 2 * n as u64, upper).unwrap();
        ext.push(upper);
    }
    let q = Context::new_arc(&ext[..2], n).unwrap();
    let mul = Context::new_arc(&ext, n).unwrap();
    let out = Context::new_arc(&ext[..1], n).unwrap();
    let num = num_bigint::BigUint::from(16_760_833u64) * out.modulus();
    let den = q.modulus() * q.modulus();
    let p = Poly::random(&mul, Representation::PowerBasis, &mut rand::rng());
    let ours = hetee_he::rns::Rescaler::new(&mul, &out, &num, &den).unwrap();
    let theirs = fhe_math::rq::scaler::Scaler::new(
        &mul,
        &out,
        fhe_math::rns::ScalingFactor::new(&num, &den),
    )
    .unwrap();
    let mut g = c.benchmark_group("n4096");
    g.sample_size(20);
    g.bench_function("rescale_fhe_math", |bn| {
        bn.iter(|| p.scale(&theirs).unwrap())
    });
    g.bench_function("rescale_hps", |bn| bn.iter(|| ours.scale(&p).unwrap()));
    // The host's basis for fresh sums: four primes.
    let mul4 = Context::new_arc(&ext[..4], n).unwrap();
    let p4 = Poly::random(&mul4, Representation::PowerBasis, &mut rand::rng());
    let ours4 = hetee_he::rns::Rescaler::new(&mul4, &out, &num, &den).unwrap();
    g.bench_function("rescale_hps_4_primes", |bn| {
        bn.iter(|| ours4.scale(&p4).unwrap())
    });
    g.finish();
}

criterion_group!(benches, he_ops, rescale);
criterion_main!(benches);
