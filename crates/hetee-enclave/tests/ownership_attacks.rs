//! The decryption oracle of issue 9 and its relatives, mounted against the
//! enclave through registration and ownership: a spy model registered under
//! someone else's key set, a data provider acting as the owner, a sparse
//! check vector, weights registered other than uploaded, and unlisted
//! clients. Each attack is first shown to have a target (what it would
//! recover), then shown to recover nothing. The attacks through a restart
//! (the lock, budgets, rollback, and an identity offered by the host) are
//! in `restart_attacks.rs`.

mod common;

use std::sync::Arc;

use common::ownership::{bits, query_as, report, setup_with};
use common::*;
use fhe_traits::DeserializeParametrized;
use hetee_attest::StaticKeypair;
use hetee_enclave::messages::{AllowList, ClientMessage, ModelTerms};
use hetee_enclave::step::INTEGRITY_FAILURE;
use hetee_enclave::{Request, Response, Schedule};
use hetee_model::quant::StageOutput;
use hetee_model::QuantModel;
use zeroize::Zeroizing;

const NOT_OWNER: &str = "only the key set's owner";

/// The spy of issue 9: a one-stage model shaped like the victim's first
/// layer (shape and packing are public) whose outputs select input values
/// and are released as logits, compiled under the victim's HE parameters.
fn spy(s: &Setup) -> (QuantModel, Schedule) {
    let mut st = s.q.stages[0].clone();
    let n: usize = st.input_shape.iter().product();
    let m = st.out_channels;
    st.weight = vec![0; m * n];
    for o in 0..m.min(n) {
        st.weight[o * n + o] = 1;
    }
    st.bias = vec![0; m];
    st.post.clear();
    st.output = StageOutput::Logits;
    st.output_shape = st.linear_output_shape();
    st.acc_scale = vec![1.0; m];
    st.reads = hetee_model::TensorRef::Input;
    let q = QuantModel {
        input_shape: s.q.input_shape.clone(),
        input: s.q.input.clone(),
        stages: vec![st.clone()],
        joins: Vec::new(),
        output_shape: Vec::new(),
        softmax: false,
    };
    let mut schedule = s.host.schedule.clone();
    let mut layer = schedule.stages.swap_remove(0);
    layer.tail = hetee_model::quant::QuantStage {
        weight: Vec::new(),
        ..st
    };
    schedule.stages = vec![layer];
    (q, schedule)
}

/// Opens a channel to `keys`' key set as `who` and sends `msg`.
fn as_client(s: &mut Setup, who: &StaticKeypair, msg: &ClientMessage) -> Result<Opened, String> {
    connect_as(
        &s.enclave,
        s.keys.key_id,
        &s.keys.evidence,
        &s.keys.identity.channel_public_key,
        Some(who),
        msg,
    )
}

/// Issue 9's attack 1. The host registers the spy under the victim's key
/// set (refused: the key set is the model provider's), then under a key
/// set of its own, where it feeds the victim's ciphertexts in as a stage
/// result: they decrypt under the wrong key and fail the enclave's check.
#[test]
fn attack_host_registers_a_spy_under_another_providers_key_set() {
    let mut s = Setup::new();
    let victim_id = s.model_id();
    let (spy_q, spy_schedule) = spy(&s);
    let host_key = StaticKeypair::generate().unwrap();
    // The target: a victim's query in flight, its input and stage result.
    let mut victim = hello(&s.enclave, &s.keys, victim_id).unwrap();
    let victim_input = victim.encrypt(&s.keys.public_key, &s.x);
    assert!(matches!(
        victim.start(&s.enclave, victim_id, &victim_input),
        Response::QueryStarted { .. }
    ));
    let victim_result = s.host.evaluate(0, &victim_input);

    // (a) Under the victim's key set: refused, nothing stored.
    let spy_host = HostModel::new(&spy_q, &spy_schedule, &s.keys.public_key);
    let before = status(&s.enclave);
    let msg = register_message(&s.keys, &spy_host);
    let err = as_client(&mut s, &host_key, &msg)
        .err()
        .expect("the host registered a model under the victim's key set");
    assert!(err.contains(NOT_OWNER), "{err}");
    let after = status(&s.enclave);
    assert_eq!(
        (before.models, before.sessions),
        (after.models, after.sessions)
    );

    // (b) Under the host's own key set: registered, but the victim's
    // ciphertexts are no results of it.
    let host_keys = create_keys_for(
        &s.enclave,
        &s.host.schedule.he,
        Arc::new(StaticKeypair::generate().unwrap()),
    );
    let own_host = HostModel::new(&spy_q, &spy_schedule, &host_keys.public_key);
    let lenient = ModelTerms {
        lock_after: 1_000_000,
        ..ModelTerms::default()
    };
    let msg = register_message_terms(&host_keys, &own_host, lenient, AllowList::Open);
    let own = register_with(&s.enclave, &host_keys, &msg);
    // The victim's input as a stage result: switched to the output level,
    // with a zero third polynomial (what issue 9's spy sent).
    let input_as_result: Vec<Vec<u8>> = victim_input
        .iter()
        .map(|c| {
            use fhe::bfv::Ciphertext;
            let mut ct = hetee_he::codec::ciphertext_from_bytes(c, &s.host.par, 2).unwrap();
            ct.switch_to_level(hetee_he::eval::output_level(&s.host.par))
                .unwrap();
            let mut zero = ct[1].clone();
            zero -= &ct[1];
            let ct3 =
                Ciphertext::new(vec![ct[0].clone(), ct[1].clone(), zero], &s.host.par).unwrap();
            hetee_he::codec::ciphertext_to_bytes(&ct3)
        })
        .collect();
    let count = spy_schedule.stages[0].packing.output_count();
    let mut padded = input_as_result.clone();
    padded.resize(count, input_as_result[0].clone());
    padded.truncate(count);
    for forged in [victim_result.clone(), padded] {
        let mut spy_dp = hello(&s.enclave, &host_keys, own.model_id).unwrap();
        let input = spy_dp.encrypt(&host_keys.public_key, &s.x);
        assert!(matches!(
            spy_dp.start(&s.enclave, own.model_id, &input),
            Response::QueryStarted { .. }
        ));
        let r = s.enclave.handle(Request::StageResult {
            session: spy_dp.channel.session,
            stage: 0,
            ciphertexts: forged,
        });
        match r {
            Response::Error { message, .. } => assert_eq!(message, INTEGRITY_FAILURE),
            other => panic!("the spy released: {}", short(&other)),
        }
    }
    // The victim's query is unaffected.
    match run_stages(&s.enclave, &s.host, victim.channel.session, victim_input) {
        Response::Finished { payload } => {
            let r = victim.result(&s.keys, &payload);
            assert_eq!(bits(&r.logits), bits(&reference(&s.q, &s.x)));
        }
        other => panic!("the victim's query failed: {}", short(&other)),
    }
}

/// Attack 2: a data provider (who can open channels to the key set) tries
/// the same, and the owner's other messages, through its own channel.
#[test]
fn attack_data_provider_registers_or_manages_through_its_own_channel() {
    let mut s = Setup::new();
    let id = s.model_id();
    let dp_key = StaticKeypair::generate().unwrap();
    // The data provider may query.
    let x = s.x.clone();
    let got = query_as(&mut s, &dp_key, &x).unwrap();
    assert_eq!(bits(&got), bits(&reference(&s.q, &s.x)));
    let (spy_q, spy_schedule) = spy(&s);
    let spy_host = HostModel::new(&spy_q, &spy_schedule, &s.keys.public_key);
    let before = status(&s.enclave);
    let attempts = [
        register_message(&s.keys, &spy_host),
        ClientMessage::ModelStatus { model_id: id },
        ClientMessage::Unlock { model_id: id },
        ClientMessage::SetAllowList {
            model_id: id,
            allow: AllowList::Only(vec![*dp_key.public()]),
        },
    ];
    for msg in &attempts {
        let err = as_client(&mut s, &dp_key, msg)
            .err()
            .expect("a data provider acted as the owner");
        assert!(err.contains(NOT_OWNER), "{err}");
    }
    let after = status(&s.enclave);
    assert_eq!(
        (before.models, before.sessions),
        (after.models, after.sessions)
    );
    // The owner's state did not move.
    let r = report(&mut s);
    assert_eq!(r.allow, AllowList::Open);
    assert_eq!(r.version, 1);
}

/// Attack 3: the registrant used to choose `r`; an `r` that is zero at
/// some outputs let forged values through there. Now the enclave draws `r`
/// over every output: a +1 at any single output of any stage is refused.
#[test]
fn attack_forged_output_that_a_sparse_r_would_skip_is_refused() {
    let terms = ModelTerms {
        lock_after: 1_000_000,
        ..ModelTerms::default()
    };
    let s = setup_with(terms, AllowList::Open);
    let id = s.model_id();
    for k in 0..s.host.schedule.stages.len() {
        let outputs: usize = s.host.schedule.stages[k]
            .tail
            .linear_output_shape()
            .iter()
            .product();
        let positions = s.host.schedule.stages[k].packing.output_count();
        let n = s.host.schedule.he.degree;
        // Where each linear output is read: label every coefficient.
        let labels: Vec<Vec<i64>> = (0..positions)
            .map(|p| (0..n).map(|i| (p * n + i + 1) as i64).collect())
            .collect();
        let read = s.host.schedule.unpack_stage_output(k, &labels).unwrap();
        assert_eq!(read[0].len(), outputs);
        for (j, &label) in read[0].iter().enumerate() {
            let (p, i) = ((label - 1) as usize / n, (label - 1) as usize % n);
            let mut dp = hello(&s.enclave, &s.keys, id).unwrap();
            let mut input = dp.encrypt(&s.keys.public_key, &s.x);
            assert!(matches!(
                dp.start(&s.enclave, id, &input),
                Response::QueryStarted { .. }
            ));
            for stage in 0..k {
                match s.enclave.handle(Request::StageResult {
                    session: dp.channel.session,
                    stage: stage as u32,
                    ciphertexts: s.host.evaluate(stage, &input),
                }) {
                    Response::NextInput { ciphertexts, .. } => input = ciphertexts,
                    other => panic!("{}", short(&other)),
                }
            }
            let mut forged = s.host.evaluate(k, &input);
            let mut delta = vec![0i64; n];
            delta[i] = 1;
            let pk = fhe::bfv::PublicKey::from_bytes(&s.keys.public_key, &s.host.par).unwrap();
            forged[p] = plus(&forged[p], &delta, &pk, &s.host.par);
            match s.enclave.handle(Request::StageResult {
                session: dp.channel.session,
                stage: k as u32,
                ciphertexts: forged,
            }) {
                Response::Error { message, .. } => {
                    assert_eq!(message, INTEGRITY_FAILURE, "stage {k} output {j}")
                }
                other => panic!("stage {k} output {j} + 1 went through: {}", short(&other)),
            }
        }
    }
}

/// `ct + Enc(delta)` at the output level of a stage result.
fn plus(
    ct: &[u8],
    delta: &[i64],
    pk: &fhe::bfv::PublicKey,
    par: &Arc<fhe::bfv::BfvParameters>,
) -> Vec<u8> {
    use fhe::bfv::{Ciphertext, Encoding, Plaintext};
    use fhe_traits::{FheEncoder, FheEncrypter};
    let c = hetee_he::codec::ciphertext_from_bytes(ct, par, 3).unwrap();
    let level = hetee_he::eval::output_level(par);
    let pt = Plaintext::try_encode(delta, Encoding::poly(), par).unwrap();
    let mut e: Ciphertext = pk.try_encrypt(&pt, &mut rand::rng()).unwrap();
    e.switch_to_level(level).unwrap();
    let mut zero = e[1].clone();
    zero -= &e[1];
    let e = Ciphertext::new(vec![e[0].clone(), e[1].clone(), zero], par).unwrap();
    hetee_he::codec::ciphertext_to_bytes(&(&c + &e))
}

/// Attack 5: a data provider the owner did not list is refused, whatever
/// key it makes up; the owner can change the list later.
#[test]
fn attack_unlisted_data_provider_key_is_refused() {
    let listed = StaticKeypair::generate().unwrap();
    let mut s = setup_with(
        ModelTerms::default(),
        AllowList::Only(vec![*listed.public()]),
    );
    let x = s.x.clone();
    let want = bits(&reference(&s.q, &x));
    assert_eq!(bits(&query_as(&mut s, &listed, &x).unwrap()), want);
    let stranger = StaticKeypair::generate().unwrap();
    for _ in 0..3 {
        let err = query_as(&mut s, &StaticKeypair::generate().unwrap(), &x).unwrap_err();
        assert!(err.contains("not on the model's allow list"), "{err}");
    }
    let err = query_as(&mut s, &stranger, &x).unwrap_err();
    assert!(err.contains("not on the model's allow list"), "{err}");
    // The owner swaps the list: the stranger is in, the first key out.
    let id = s.model_id();
    let keys = s.keys.clone();
    let (r, state) = manage(
        &s.enclave,
        &keys,
        &ClientMessage::SetAllowList {
            model_id: id,
            allow: AllowList::Only(vec![*stranger.public()]),
        },
    )
    .unwrap();
    assert_eq!(r.allow, AllowList::Only(vec![*stranger.public()]));
    assert!(state.is_some());
    assert_eq!(bits(&query_as(&mut s, &stranger, &x).unwrap()), want);
    let err = query_as(&mut s, &listed, &x).unwrap_err();
    assert!(err.contains("not on the model's allow list"), "{err}");
}

/// The checks are drawn from the weights sent at registration, not from
/// anything the host or a registrant chooses.
#[test]
fn attack_registration_with_other_weights_than_uploaded_fails_its_own_checks() {
    // The owner (colluding with the host) registers weights that differ from
    // the uploaded ones, hoping the checks then pass a forged evaluation:
    // the enclave checks against the weights it was given, so the host's
    // evaluation of the uploaded weights fails and nothing is released.
    let s = Setup::new();
    let schedule = s.host.schedule.clone();
    let keys = create_keys(&s.enclave, &schedule.he);
    let host = HostModel::new(&s.q, &schedule, &keys.public_key);
    // A weight that this input exercises: output 0, a nonzero input value.
    let xq = s.q.input.quantize(&s.x).unwrap();
    let j = xq.iter().position(|&v| v != 0).unwrap();
    let mut msg = register_message(&keys, &host);
    if let ClientMessage::RegisterModel { weights, .. } = &mut msg {
        let mut w: Vec<Vec<i8>> = weights.to_vec();
        w[0][j] = w[0][j].wrapping_add(1);
        *weights = Zeroizing::new(w);
    }
    let reg = register_with(&s.enclave, &keys, &msg);
    let got = query(&s.enclave, &keys, &host, reg.model_id, &s.x.clone());
    assert_eq!(got.unwrap_err(), INTEGRITY_FAILURE);
}
