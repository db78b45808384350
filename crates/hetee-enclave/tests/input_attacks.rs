//! The malicious host against a query's input: swapped inputs, tampered
//! thin queries, and a host that is also a client replaying a victim's
//! input in its own session or through a model it registered. Each attack
//! is refused and the enclave still serves others (see `attacks.rs` for
//! what every attack test checks).

mod common;
mod forgery;

use common::*;
use forgery::*;
use hetee_enclave::messages::{input_digest, ClientMessage, ModelId, QueryPlan};
use hetee_enclave::{Enclave, Request, Response};
use hetee_model::quant::StageOutput;
use hetee_model::reference::{finish_stage, linear};
use hetee_model::QuantModel;

#[test]
fn attack_input_swap() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    let by = bystander(&mut s, &other_input());

    // (a) Input ciphertexts other than those whose digest the data provider
    // sealed: another image, the same image encrypted again, the same
    // ciphertexts re-randomized, one ciphertext more.
    let owner = hello(&s.enclave, &s.keys, id).unwrap();
    let committed = owner.encrypt(&s.keys.public_key, &s.x);
    let swaps: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "another image",
            owner.encrypt(&s.keys.public_key, &other_input()),
        ),
        ("re-encrypted", owner.encrypt(&s.keys.public_key, &s.x)),
        (
            "re-randomized",
            committed
                .iter()
                .map(|c| forger.rerandomized_input(c))
                .collect(),
        ),
        ("one more", {
            let mut v = committed.clone();
            v.push(committed[0].clone());
            v
        }),
        ("none", vec![]),
    ];
    s.enclave.handle(Request::CloseSession {
        session: owner.channel.session,
    });
    for (what, input) in swaps {
        let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
        let payload = dp.query_payload(&committed);
        let started = s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: id,
            payload: payload.clone(),
            input: input.clone(),
        });
        let msg = if input_digest(&input) == input_digest(&committed) {
            // The sealed digest matches (the owner's seed makes the same
            // ciphertexts again), so the start is admitted; the input
            // binding, checked beside the host's stage 0, refuses the
            // stage-0 result before anything is decrypted from it.
            assert!(
                matches!(started, Response::QueryStarted { input: None, .. }),
                "{what}: {}",
                short(&started)
            );
            refused(s.enclave.handle(Request::StageResult {
                session: dp.channel.session,
                stage: 0,
                ciphertexts: s.host.evaluate(0, &input),
            }))
        } else {
            refused(started)
        };
        refused_publicly(&msg, "the input ciphertexts", &[]);
        let msg = error_of(s.enclave.handle(Request::StartQuery {
            session: dp.channel.session,
            model_id: id,
            payload,
            input: committed.clone(),
        }));
        assert!(msg.contains("unknown or closed session"), "{what}: {msg}");
    }

    // (b) Another session's input with this session's payload.
    let one = start(&s.enclave, &s.keys, id, &[other_input()]);
    let mut two = hello(&s.enclave, &s.keys, id).unwrap();
    let own = two.encrypt(&s.keys.public_key, &s.x);
    let payload = two.query_payload(&own);
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: two.channel.session,
        model_id: id,
        payload: payload.clone(),
        input: one.input.clone(),
    }));
    refused_publicly(&msg, "the input ciphertexts", &[]);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: two.channel.session,
        model_id: id,
        payload,
        input: own,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");

    // (c) Another session's payload and input, replayed into this session.
    let mut one_dp = hello(&s.enclave, &s.keys, id).unwrap();
    let one_input = one_dp.encrypt(&s.keys.public_key, &other_input());
    let one_payload = one_dp.query_payload(&one_input);
    let mut three = hello(&s.enclave, &s.keys, id).unwrap();
    let own = three.encrypt(&s.keys.public_key, &s.x);
    let payload = three.query_payload(&own);
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: three.channel.session,
        model_id: id,
        payload: one_payload.clone(),
        input: one_input.clone(),
    }));
    refused_publicly(&msg, "channel", &[0]);
    let msg = error_of(s.enclave.handle(Request::StartQuery {
        session: three.channel.session,
        model_id: id,
        payload,
        input: own,
    }));
    assert!(msg.contains("unknown or closed session"), "{msg}");
    // The session whose payload was replayed still works.
    let r = s.enclave.handle(Request::StartQuery {
        session: one_dp.channel.session,
        model_id: id,
        payload: one_payload.clone(),
        input: one_input.clone(),
    });
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let replayed = Flight {
        dp: one_dp,
        images: vec![other_input()],
        input: one_input.clone(),
        stage: 0,
    };

    // (d) That StartQuery replayed into its own, now running, session.
    let msg = refused(s.enclave.handle(Request::StartQuery {
        session: replayed.session(),
        model_id: id,
        payload: one_payload,
        input: one_input,
    }));
    refused_publicly(&msg, "cannot start a query now", &[]);
    let honest = replayed.honest(&s.host);
    assert_closed(&s.enclave, replayed.session(), 0, honest);

    // The session whose input was stolen in (b) is unaffected.
    one.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, by);
}

#[test]
fn attack_thin_query_tamper() {
    let mut s = lenient();
    let id = s.model_id();
    let by = bystander(&mut s, &other_input());
    let plan = QueryPlan::of(id, s.keys.key_id, *s.keys.owner.public(), &s.host.schedule).unwrap();
    let mut one_hot = vec![0f32; s.x.len()];
    one_hot[3] = 1.0;
    let zeros = vec![0f32; s.x.len()];
    for chosen in [other_input(), one_hot, zeros] {
        let f = start_thin_flight(&s.enclave, &s.keys, id, &[s.x.clone()]);
        // The host's own encryption of an input it chose, in place of the
        // enclave's encryption of the data provider's.
        let own = encrypt_under(
            &s.keys.public_key,
            &s.host.par,
            &plan.pack_input(&[chosen.as_slice()]).unwrap(),
        );
        assert_eq!(own.len(), f.input.len());
        let forged = s.host.evaluate(0, &own);
        f.attack_integrity(&s.enclave, &s.host, forged);
    }
    // An honest thin query still matches the reference.
    let f = start_thin_flight(&s.enclave, &s.keys, id, &[s.x.clone()]);
    f.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, by);
}

// --- Input replay by a host that is also a client ------------------------

/// The host opens its own data-provider session on `model_id`, binds the
/// digest of `input` (ciphertexts it saw from someone else) and runs the
/// query with `host`. Returns what the enclave released to it, or `None`
/// if the enclave refused (then the session must be closed).
fn spy_query(
    e: &Enclave,
    keys: &Keys,
    model_id: ModelId,
    host: &HostModel,
    input: &[Vec<u8>],
) -> Option<Vec<f32>> {
    let mut spy = hello(e, keys, model_id).unwrap();
    let payload = seal_msg(
        &mut spy.channel.tx,
        &ClientMessage::Query {
            query_id: spy.query_id,
            input_digest: input_digest(input),
            images: 1,
            // The host can only prove its own seed.
            seed: zeroize::Zeroizing::new(spy.seed),
        },
    );
    let r = e.handle(Request::StartQuery {
        session: spy.channel.session,
        model_id,
        payload,
        input: input.to_vec(),
    });
    if let Response::Error { .. } = r {
        let msg = error_of(e.handle(Request::StageResult {
            session: spy.channel.session,
            stage: 0,
            ciphertexts: host.evaluate(0, input),
        }));
        assert!(msg.contains("unknown or closed session"), "{msg}");
        return None;
    }
    assert!(
        matches!(r, Response::QueryStarted { input: None, .. }),
        "{}",
        short(&r)
    );
    let session = spy.channel.session;
    match run_stages(e, host, session, input.to_vec()) {
        Response::Finished { payload } => Some(spy.result(keys, &payload).logits.to_vec()),
        Response::Error { .. } => {
            assert_closed(e, session, 0, host.evaluate(0, input));
            None
        }
        other => panic!("released: {}", short(&other)),
    }
}

/// The host, acting as a data provider of its own (anyone who verifies the
/// public evidence can open a channel), binds the digest of a victim's
/// input ciphertexts in its own session and runs the query: the enclave
/// decrypts the victim's input and seals the victim's result to the host.
/// Re-randomizing the ciphertexts (adding an encryption of zero) changes
/// their digest, so a cache of digests seen would not stop it.
#[test]
fn attack_replayed_input_in_a_host_opened_session() {
    let mut s = lenient();
    let id = s.model_id();
    let forger = Forger::new(&s.host, &s.keys.public_key);
    // The victim's query; the host saw its input in StartQuery.
    let mut victim = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    victim.advance(&s.enclave, &s.host);
    let seen = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let stolen = seen.input.clone();
    let rerandomized: Vec<Vec<u8>> = stolen
        .iter()
        .map(|c| forger.rerandomized_input(c))
        .collect();
    assert_ne!(input_digest(&stolen), input_digest(&rerandomized));
    let victims_result = reference(&s.q, &s.x);
    let mut leaks = Vec::new();
    for (what, input) in [("as sent", &stolen), ("re-randomized", &rerandomized)] {
        if let Some(learned) = spy_query(&s.enclave, &s.keys, id, &s.host, input) {
            leaks.push(format!("{what}: {learned:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "BUG: the host replayed a data provider's input in its own session and \
         received that provider's result {leaks:?} (the reference on the provider's \
         input: {victims_result:?})"
    );
    seen.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, victim);
}

/// Worse, before key sets had owners: anyone could register a model under
/// any key set. The host registers
/// a one-stage model with the victim model's first-layer shape and packing
/// (public) whose weights select input values, then replays ciphertexts it
/// saw (a data provider's input, a thin query's enclave-made input, the
/// enclave's encrypted activations of a running query) as the input of a
/// query of its own: the released "logits" are the victim's plaintext.
#[test]
fn attack_replayed_input_through_a_host_registered_model() {
    let mut s = lenient();
    let id = s.model_id();
    // The victim's quantized input and stage-1 input (activations), for
    // comparison only.
    let xq = s.q.input.quantize(&s.x).unwrap();
    let act = finish_stage(&s.q.stages[0], linear(&s.q.stages[0], &xq));

    // What the host sees: a data provider's input, a thin query's input and
    // the encrypted activations of a running query.
    let mut victim = start(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let dp_input = victim.input.clone();
    victim.advance(&s.enclave, &s.host);
    let activations = victim.input.clone();
    let thin = start_thin_flight(&s.enclave, &s.keys, id, &[s.x.clone()]);
    let thin_input = thin.input.clone();

    let sources = [
        ("a data provider's input", 0, &dp_input, &xq),
        ("a thin query's input", 0, &thin_input, &xq),
        ("a running query's activations", 1, &activations, &act),
    ];
    type Spy = Option<(HostModel, ModelId)>;
    let mut spies: Vec<((usize, usize), Spy)> = Vec::new();
    let mut leaks = Vec::new();
    for (what, stage, input, secret) in sources {
        let n = secret.len();
        let m = s.host.schedule.stages[stage].spec.m.min(n);
        let mut recovered = vec![None; n];
        for offset in (0..n).step_by(m).map(|o| o.min(n - m)) {
            if !spies.iter().any(|(key, _)| *key == (stage, offset)) {
                let spy = selection_model(&mut s, stage, offset);
                spies.push(((stage, offset), spy));
            }
            let Some((_, Some((spy_host, spy_id)))) =
                spies.iter().find(|(key, _)| *key == (stage, offset))
            else {
                continue; // the registration was refused
            };
            if let Some(values) = spy_query(&s.enclave, &s.keys, *spy_id, spy_host, input) {
                for (o, v) in values.iter().enumerate() {
                    recovered[offset + o] = Some(v.round() as i64);
                }
            }
        }
        let recovered: Option<Vec<i64>> = recovered.into_iter().collect();
        if let Some(r) = recovered {
            leaks.push(format!("{what}: {r:?} (the secret: {secret:?})"));
        }
    }
    assert!(
        leaks.is_empty(),
        "BUG: the host decrypted, through a model it registered and its own \
         data-provider session, {leaks:#?}"
    );
    thin.finish(&s.enclave, &s.keys, &s.host, &s.q);
    others_still_served(&mut s, victim);
}

/// The host, as a model provider, registers under the victim's key set a
/// one-stage model shaped like the victim's stage `stage` (shape and
/// packing are public) whose output `o` is input `offset + o`, released as
/// logits (scale 1, no bias). `None` if the enclave refuses the registration.
fn selection_model(s: &mut Setup, stage: usize, offset: usize) -> Option<(HostModel, ModelId)> {
    let mut st = s.q.stages[stage].clone();
    let n: usize = st.input_shape.iter().product();
    let m = st.out_channels;
    st.weight = vec![0; m * n];
    for o in 0..m.min(n - offset) {
        st.weight[o * n + offset + o] = 1;
    }
    st.bias = vec![0; m];
    st.post.clear();
    st.output = StageOutput::Logits;
    st.output_shape = st.linear_output_shape();
    st.acc_scale = vec![1.0; m];
    st.nodes = vec!["select".into()];
    st.reads = hetee_model::TensorRef::Input;
    let q = QuantModel {
        input_shape: st.input_shape.to_vec(),
        input: s.q.input.clone(),
        stages: vec![st.clone()],
        joins: Vec::new(),
        output_shape: Vec::new(),
        softmax: false,
    };
    let mut schedule = s.host.schedule.clone();
    let mut layer = schedule.stages.swap_remove(stage);
    layer.tail = hetee_model::quant::QuantStage {
        weight: Vec::new(),
        ..st
    };
    schedule.stages = vec![layer];
    schedule.input_shape = vec![n];
    let host = HostModel::new(&q, &schedule, &s.keys.public_key);
    // The host speaks with a key of its own: it does not hold the owner's.
    let host_key = hetee_attest::StaticKeypair::generate().unwrap();
    let opened = connect_as(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        &s.keys.identity.channel_public_key,
        Some(&host_key),
        &register_message(&s.keys, &host),
    )
    .ok()?;
    let id = opened.registered?.model_id;
    Some((host, id))
}

/// A curious data provider encrypts, with its own seed, an input holding
/// values outside the model's quantized input range (to learn more of
/// the weights from one result than any valid image shows). The input is
/// its own, so its binding holds; the enclave decrypts it beside the
/// host's stage 0 and refuses the query before anything is computed from
/// stage 0's result. The provider's next, valid query is exact.
#[test]
fn attack_a_data_provider_sends_values_outside_the_input_range() {
    use fhe::bfv::PublicKey;
    use fhe_traits::DeserializeParametrized;

    let s = Setup::new();
    let id = s.model_id();
    let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
    let par = dp.plan.he.build().unwrap();
    let pk = PublicKey::from_bytes(&s.keys.public_key, &par).unwrap();
    let mut polys = dp.plan.pack_input(&[&s.x]).unwrap();
    // Just past the top of the range. Without the range check the stage-0
    // check refuses it instead (the sums wrap the plaintext modulus): this
    // test fails either way if the range check goes.
    let hi = s.q.input.max;
    for p in &mut polys {
        for c in p.iter_mut() {
            *c = hi + 3;
        }
    }
    let input = hetee_enclave::input_binding::encrypt_input(&pk, &par, &polys, &dp.seed).unwrap();
    let session = dp.channel.session;
    assert!(
        matches!(
            dp.start(&s.enclave, id, &input),
            Response::QueryStarted { .. }
        ),
        "the start checks only the digest"
    );
    match run_stages(&s.enclave, &s.host, session, input) {
        Response::Error { message, .. } => {
            assert!(
                message.contains("outside the model's input range"),
                "{message}"
            )
        }
        other => panic!("an out-of-range input was evaluated: {other:?}"),
    }
    // Its session is closed: nothing more comes out of it.
    assert!(matches!(
        s.enclave.handle(Request::StageResult {
            session,
            stage: 1,
            ciphertexts: vec![],
        }),
        Response::Error { .. }
    ));
    let want: Vec<u32> = reference(&s.q, &s.x).iter().map(|v| v.to_bits()).collect();
    let got = query(&s.enclave, &s.keys, &s.host, id, &s.x).unwrap();
    assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
}
