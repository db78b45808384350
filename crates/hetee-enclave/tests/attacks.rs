//! The malicious host. Every test here plays a host that deviates from the
//! protocol (substitutes, replays, reorders, drops, truncates, scales, mixes
//! sessions or models, crafts chosen plaintexts, swaps inputs) and checks
//! three things:
//!
//! 1. the attacked session ends: the attack gets `Response::Error`, and the
//!    correct request sent afterwards for that session gets "unknown or
//!    closed session";
//! 2. nothing is released: no `Finished`, `Logits` or `NextInput` for the
//!    attacked step, an integrity failure is exactly `INTEGRITY_FAILURE`
//!    (fixed text), and any other refusal carries only numbers the host
//!    already knew (stage, counts, sizes);
//! 3. the enclave still serves others: an honest session opened before the
//!    attack (and left mid-query) and a new one opened after it both end
//!    with logits equal to `run_quantized`, bit for bit.
//!
//! The models of the forgery tests lock only after [`LENIENT`] failed
//! checks, so that each forgery meets the check itself; with the default
//! threshold of 1 the first failed check locks the model (tested in
//! `restart_attacks.rs`). Before any forgery is refused, [`Unchecked`]
//! shows what it decrypts to without the check.

mod common;
mod forgery;

use common::*;
use fhe::bfv::Ciphertext;
use forgery::*;
use hetee_enclave::step::INTEGRITY_FAILURE;
use hetee_enclave::{Request, Schedule};
use hetee_he::codec::{ciphertext_to_bytes, encoded_len};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// --- Attacks ---------------------------------------------------------------

#[test]
fn attack_substituted_stage_result() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let by = bystander(&mut s, &other_input());
    let last = s.host.schedule.stages.len() - 1;
    assert!(last > 0);
    for k in [0, last] {
        let count = s.host.schedule.stages[k].packing.output_count();
        // Fresh encryptions of random polynomials under the public key.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = (0..count)
            .map(|_| forger.encrypted(&forger.random_poly(&mut rng)))
            .collect();
        f.attack_integrity(&s.enclave, &s.host, forged);
        // Well-formed bytes with random coefficients.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = (0..count).map(|_| forger.random_bytes(&mut rng)).collect();
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_replayed_stage_result() {
    let mut s = lenient();
    let id = s.model_id();
    let x = s.x.clone();
    let by = bystander(&mut s, &x);
    let last = s.host.schedule.stages.len() - 1;

    // An earlier, finished query on another input: the host keeps its results.
    let mut old = start(&s.enclave, &s.keys, id, &[other_input()]);
    let old_results: Vec<Vec<Vec<u8>>> = (0..=last)
        .map(|k| {
            old.advance_to(&s.enclave, &s.host, k);
            old.honest(&s.host)
        })
        .collect();
    old.finish(&s.enclave, &s.keys, &s.host, &s.q);

    // Replayed into a new query at the same stage.
    let mut xq = other_input();
    xq.reverse();
    for (k, old_result) in old_results.iter().enumerate() {
        let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        f.attack_integrity(&s.enclave, &s.host, old_result.clone());
    }

    // Within one query: stage 0's result again after it was accepted.
    let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
    let out0 = f.honest(&s.host);
    f.advance(&s.enclave, &s.host);
    let msg = f.attack_as(&s.enclave, &s.host, 0, out0.clone());
    refused_publicly(&msg, "stage 0 out of order (expected 1)", &[0, 1]);

    // Within one query: stage 0's result again, labelled as stage 1.
    let mut f = start(&s.enclave, &s.keys, id, &[xq.clone()]);
    let out0 = f.honest(&s.host);
    f.advance(&s.enclave, &s.host);
    let msg = f.attack(&s.enclave, &s.host, out0);
    let counts: Vec<usize> = s
        .host
        .schedule
        .stages
        .iter()
        .map(|st| st.packing.output_count())
        .collect();
    if counts[0] == counts[1] {
        assert_eq!(msg, INTEGRITY_FAILURE);
    } else {
        refused_publicly(&msg, "ciphertexts, got", &[1, counts[0], counts[1]]);
    }

    others_still_served(&mut s, by);
}

#[test]
fn attack_reordered_stages() {
    // Stage 1 before stage 0.
    let mut s = lenient();
    let id = s.model_id();
    let by = bystander(&mut s, &other_input());
    let f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let out0 = f.honest(&s.host);
    let msg = f.attack_as(&s.enclave, &s.host, 1, out0);
    refused_publicly(&msg, "stage 1 out of order (expected 0)", &[0, 1]);
    others_still_served(&mut s, by);

    // Output ciphertexts swapped within a stage: 256 images per query give
    // two output ciphertexts in each stage, each holding real images.
    let mut s = batch_setup(256);
    let id = s.model_id();
    let counts: Vec<usize> = s
        .host
        .schedule
        .stages
        .iter()
        .map(|st| st.packing.output_count())
        .collect();
    assert!(counts.iter().all(|&c| c >= 2), "{counts:?}");
    let batch = images(256, 7);
    let mut by = start(&s.enclave, &s.keys, id, &batch);
    by.advance(&s.enclave, &s.host);
    for (k, &count) in counts.iter().enumerate() {
        for (a, b) in [(0, 1), (0, count - 1)] {
            let mut f = start(&s.enclave, &s.keys, id, &batch);
            f.advance_to(&s.enclave, &s.host, k);
            let mut forged = f.honest(&s.host);
            forged.swap(a, b);
            f.attack_integrity(&s.enclave, &s.host, forged);
        }
        // All of them rotated.
        let mut f = start(&s.enclave, &s.keys, id, &batch);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        forged.rotate_left(1);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    assert_eq!(s.status().sessions, 1);
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let f = start(&s.enclave, &s.keys, id, &batch[..3]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn attack_dropped_and_truncated() {
    let mut s = batch_setup(256);
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let batch = images(256, 11);
    let mut by = start(&s.enclave, &s.keys, id, &batch);
    by.advance(&s.enclave, &s.host);
    let len = encoded_len(&s.host.par, forger.level, 3).unwrap();
    type Case = (&'static str, &'static str, fn(&mut Vec<Vec<u8>>, &Forger));
    let cases: [Case; 10] = [
        ("one dropped", "ciphertexts, got", |v, _| {
            v.pop();
        }),
        ("all dropped", "ciphertexts, got", |v, _| v.clear()),
        ("one repeated", "ciphertexts, got", |v, _| {
            v.push(v[0].clone())
        }),
        ("a fresh one appended", "ciphertexts, got", |v, f| {
            v.push(f.encrypted(&[1]))
        }),
        ("truncated by 3 bytes", "bytes, expected", |v, _| {
            let n = v[0].len() - 3;
            v[0].truncate(n)
        }),
        ("truncated to its header", "bytes, expected", |v, _| {
            v[1].truncate(6)
        }),
        ("one byte longer", "bytes, expected", |v, _| v[0].push(0)),
        (
            "degree 1 instead of 2",
            "2 polynomials, expected 3",
            |v, f| {
                let c = f.encrypt(&[1]);
                let two = Ciphertext::new(vec![c[0].clone(), c[1].clone()], &f.par).unwrap();
                v[0] = ciphertext_to_bytes(&two);
            },
        ),
        ("bad magic", "bad magic", |v, _| v[0][0] ^= 0x20),
        (
            "coefficient out of range",
            "out of range for its prime",
            |v, f| {
                // The first coefficient, all ones: above its prime.
                let w = f.first_width();
                v[0][6..6 + w].fill(0xff);
            },
        ),
    ];
    for (k, st) in s.host.schedule.stages.iter().enumerate() {
        let count = st.packing.output_count();
        assert!(count >= 2);
        for (what, says, mutate) in cases {
            let mut f = start(&s.enclave, &s.keys, id, &batch[..1]);
            f.advance_to(&s.enclave, &s.host, k);
            let mut forged = f.honest(&s.host);
            mutate(&mut forged, &forger);
            let given = forged.len();
            let msg = f.attack(&s.enclave, &s.host, forged);
            // Only counts and sizes the host knows.
            let public = if given != count {
                vec![k, count, given]
            } else {
                vec![len, len - 3, len + 1, 6, 2, 3]
            };
            assert!(msg.contains(says), "stage {k}, {what}: {msg}");
            refused_publicly(&msg, says, &public);
        }
        // One byte flipped inside a coefficient: well formed, wrong value.
        let mut f = start(&s.enclave, &s.keys, id, &batch[..1]);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        forged[0][6] ^= 1;
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    assert_eq!(s.status().sessions, 1);
    by.finish(&s.enclave, &s.keys, &s.host, &s.q);
    let f = start(&s.enclave, &s.keys, id, &batch[..2]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    assert_eq!(s.status().sessions, 0);
}

#[test]
fn attack_scaled_result() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let last = s.host.schedule.stages.len() - 1;
    type Scale = fn(&Forger, &[u8]) -> Vec<u8>;
    let scales: [(&str, i64, Scale); 4] = [
        ("times plaintext 2", 2, |f, c| f.times(c, 2)),
        ("added to itself", 2, |f, c| f.doubled(c)),
        ("negated", -1, |f, c| f.negated(c)),
        ("times -2", -2, |f, c| f.negated(&f.doubled(c))),
    ];
    // What each scaling decrypts to, released by an unchecked enclave.
    let mut u = Unchecked::new();
    let acc = u.honest_acc();
    for (what, c, scale) in scales {
        let got = u.run(|f, h| h.iter().map(|ct| scale(f, ct)).collect());
        let want = u.release(acc.iter().map(|a| a * c).collect());
        assert_eq!(bits(&got), bits(&want), "{what}");
    }
    for k in [0, last] {
        for (what, _, scale) in scales {
            let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
            f.advance_to(&s.enclave, &s.host, k);
            let forged: Vec<Vec<u8>> = f
                .honest(&s.host)
                .iter()
                .map(|c| scale(&forger, c))
                .collect();
            let msg = f.attack(&s.enclave, &s.host, forged);
            assert_eq!(msg, INTEGRITY_FAILURE, "stage {k}, result {what}");
        }
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_other_sessions_ciphertexts() {
    let mut s = lenient();
    let id = s.model_id();
    let last = s.host.schedule.stages.len() - 1;
    let xa = other_input();
    let mut xb = s.x.clone();
    xb.reverse();
    for k in [0, last] {
        // Two concurrent sessions on the same model, both at stage k.
        let mut a = start(&s.enclave, &s.keys, id, std::slice::from_ref(&xa));
        let mut b = start(&s.enclave, &s.keys, id, std::slice::from_ref(&xb));
        a.advance_to(&s.enclave, &s.host, k);
        b.advance_to(&s.enclave, &s.host, k);
        // A's result for B.
        let from_a = a.honest(&s.host);
        b.attack_integrity(&s.enclave, &s.host, from_a.clone());
        // Another session's honest result with A's added in.
        let mut c = start(&s.enclave, &s.keys, id, &[xb.clone()]);
        c.advance_to(&s.enclave, &s.host, k);
        let forger = Forger::new(&s.host, &s.keys.public_key);
        let mixed = c
            .honest(&s.host)
            .iter()
            .zip(&from_a)
            .map(|(x, y)| {
                let sum = &forger.parse(x) + &forger.parse(y);
                ciphertext_to_bytes(&sum)
            })
            .collect();
        c.attack_integrity(&s.enclave, &s.host, mixed);
        // A, the victim of the mixing, is unaffected.
        a.finish(&s.enclave, &s.keys, &s.host, &s.q);
    }
    let by = bystander(&mut s, &xa);
    others_still_served(&mut s, by);
}

#[test]
fn attack_other_models_ciphertexts() {
    let mut s = lenient();
    let y = s.model_id();
    let last = s.host.schedule.stages.len() - 1;
    // Model X: other weights, same key set.
    let qx = tiny_variant();
    let schedule_x = Schedule::compile(&qx, 1).unwrap();
    assert_eq!(schedule_x.he, s.host.schedule.he);
    let host_x = HostModel::new(&qx, &schedule_x, &s.keys.public_key);
    let x = register(&s.enclave, &s.keys, &host_x).model_id;
    // Model Z: Y's weights under another key set.
    let keys_z = create_keys(&s.enclave, &s.host.schedule.he);
    let host_z = HostModel::new(&s.q, &s.host.schedule, &keys_z.public_key);
    let z = register(&s.enclave, &keys_z, &host_z).model_id;
    assert!(x != y && z != y && x != z);
    // Honest sessions of X and Z, mid-query.
    let mut on_x = start(&s.enclave, &s.keys, x, &[s.x.clone()]);
    on_x.advance(&s.enclave, &host_x);
    let mut on_z = start(&s.enclave, &keys_z, z, &[s.x.clone()]);
    on_z.advance(&s.enclave, &host_z);
    let by = bystander(&mut s, &other_input());

    for k in [0, last] {
        // Y's session, stage k evaluated with X's weights.
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = host_x.evaluate(k, &f.input);
        f.attack_integrity(&s.enclave, &s.host, forged);
        // With Z's weights (another key set).
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let forged = host_z.evaluate(k, &f.input);
        f.attack_integrity(&s.enclave, &s.host, forged);
        // The result of a query of Z (same weights, same input, other keys).
        let mut g = start(&s.enclave, &keys_z, z, &[s.x.clone()]);
        g.advance_to(&s.enclave, &host_z, k);
        let mut f = start(&s.enclave, &s.keys, y, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        f.attack_integrity(&s.enclave, &s.host, g.honest(&host_z));
        g.finish(&s.enclave, &keys_z, &host_z, &s.q);
    }

    // StartQuery naming another model than the session's.
    for other in [x, z] {
        let mut dp = hello(&s.enclave, &s.keys, y).unwrap();
        let input = dp.encrypt(&s.keys.public_key, &s.x);
        let payload = dp.query_payload(&input);
        let msg = refused(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: other,
            payload: payload.clone(),
            input: input.clone(),
        }));
        refused_publicly(&msg, "another model than the session's", &[]);
        let msg = error_of(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: y,
            payload,
            input,
        }));
        assert!(msg.contains("unknown or closed session"), "{msg}");
    }

    on_x.finish(&s.enclave, &s.keys, &host_x, &qx);
    on_z.finish(&s.enclave, &keys_z, &host_z, &s.q);
    others_still_served(&mut s, by);
}

#[test]
fn attack_chosen_plaintext_ciphertext() {
    // The forgeries decrypt to what the host chose: an unchecked enclave
    // releases them.
    let mut u = Unchecked::new();
    let acc = u.honest_acc();
    assert_eq!(
        bits(&u.run(|_, h| h.to_vec())),
        bits(&reference(&u.q, &u.x))
    );
    let zero = vec![0i64; u.forger.degree()];
    let want_zero = bits(&u.release(vec![0; acc.len()]));
    let got = u.run(|f, h| h.iter().map(|_| f.encrypted(&zero)).collect());
    assert_eq!(bits(&got), want_zero, "Enc(0) did not decrypt to 0");
    let got = u.run(|f, h| h.iter().map(|_| f.trivial(&zero)).collect());
    assert_eq!(bits(&got), want_zero, "(Δ·0, 0, 0) did not decrypt to 0");
    let last = u.last();
    for j in 0..acc.len() {
        let mut want = acc.clone();
        want[j] += 5;
        let schedule = u.host.schedule.clone();
        let got = u.run(|f, h| nudged(f, &schedule, last, h, 0, j, 5));
        assert_eq!(bits(&got), bits(&u.release(want)), "output {j} + 5");
    }

    // The attested enclave refuses every one of them, at every stage.
    let mut s = lenient();
    let last = s.host.schedule.stages.len() - 1;
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for k in [0, last] {
        let count = s.host.schedule.stages[k].packing.output_count();
        let outs = read_positions(&s.host.schedule, k);
        let mut one_hot = zero.clone();
        one_hot[outs[0][0].1] = 1;
        let forgeries: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("Enc(0)", vec![forger.encrypted(&zero); count]),
            ("trivial 0", vec![forger.trivial(&zero); count]),
            ("Enc(one-hot)", vec![forger.encrypted(&one_hot); count]),
            ("trivial one-hot", vec![forger.trivial(&one_hot); count]),
        ];
        for (what, forged) in forgeries {
            let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
            f.advance_to(&s.enclave, &s.host, k);
            let msg = f.attack(&s.enclave, &s.host, forged);
            assert_eq!(msg, INTEGRITY_FAILURE, "stage {k}: {what}");
        }
        // The honest result plus a chosen delta on every output read.
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let mut forged = f.honest(&s.host);
        for (p, ct) in forged.iter_mut().enumerate() {
            let mut delta = zero.clone();
            for &(_, i) in outs.iter().flatten().filter(|&&(pp, _)| pp == p) {
                delta[i] = rng.random_range(-100..=100);
            }
            *ct = forger.plus(ct, &delta);
        }
        f.attack_integrity(&s.enclave, &s.host, forged);
        // The host's own evaluation of the stage on an input it chose (a
        // one-hot image at stage 0, the encrypted stage input of a one-hot
        // activation later).
        let mut f = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
        f.advance_to(&s.enclave, &s.host, k);
        let st = &s.host.schedule.stages[k];
        let n_in = st.spec.c * st.spec.h * st.spec.w;
        let mut chosen = vec![0i64; n_in];
        chosen[0] = 1;
        let packed = s.host.schedule.pack_stage_input(k, &[chosen]).unwrap();
        let chosen_input = encrypt_under(&s.keys.public_key, &s.host.par, &packed);
        let forged = s.host.evaluate(k, &chosen_input);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    others_still_served(&mut s, by);
}

#[test]
fn attack_single_coefficient_flip_is_always_refused() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());
    let stages = s.host.schedule.stages.len();
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let xs = images(20, 21);
    for (trial, x) in xs.iter().enumerate() {
        let k = trial % stages;
        let outs = read_positions(&s.host.schedule, k);
        let out = rng.random_range(0..outs[0].len());
        let mut f = start(&s.enclave, &s.keys, id, std::slice::from_ref(x));
        f.advance_to(&s.enclave, &s.host, k);
        let forged = nudged(&forger, &s.host.schedule, k, &f.honest(&s.host), 0, out, 1);
        let msg = f.attack(&s.enclave, &s.host, forged);
        assert_eq!(
            msg, INTEGRITY_FAILURE,
            "trial {trial}: stage {k}, output {out} + 1"
        );
    }
    others_still_served(&mut s, by);
}
