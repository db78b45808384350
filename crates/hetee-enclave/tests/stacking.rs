//! Stacked queries: the enclave lays several thin sessions' images side by
//! side in one batch. Each member's result is bit-exact, signed, bound to
//! its own images and sealed to its own channel only; a member that does
//! not fit waits for the next stack; whatever the host names that is not a
//! thin query of this model is refused on its own, without harming the
//! others. A member carries its query id: a retry spends nothing.

mod common;

use common::*;
use hetee_attest::StaticKeypair;
use hetee_enclave::messages::{thin_input_digest, ClientMessage, ModelId, OutputPolicy, SessionId};
use hetee_enclave::query_ids::ID_REUSED;
use hetee_enclave::{EnclaveConfig, Request, Response, Schedule};
use hetee_proto::host::StackMember;

const BATCH: usize = 4;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn image(seed: usize) -> Vec<f32> {
    (0..20)
        .map(|i| (((i + 3) * 7919 + seed * 104_729) % 1009) as f32 / 1009.0)
        .collect()
}

struct Setup {
    enclave: hetee_enclave::Enclave,
    keys: Keys,
    host: HostModel,
    model: ModelId,
    q: hetee_model::QuantModel,
}

fn setup(budget: Option<u64>) -> Setup {
    let (q, _) = tiny_model();
    let schedule = Schedule::compile(&q, BATCH).unwrap();
    let enclave = attested_enclave(MEASUREMENT, EnclaveConfig::default());
    let keys = create_keys(&enclave, &schedule.he);
    let host = HostModel::new(&q, &schedule, &keys.public_key);
    let msg = register_message_with(&keys, &host, OutputPolicy::Logits, budget);
    let model = register_with(&enclave, &keys, &msg).model_id;
    Setup {
        enclave,
        keys,
        host,
        model,
        q,
    }
}

/// A data provider that said hello and sealed a thin query of `images`.
fn member(
    s: &Setup,
    client: Option<&StaticKeypair>,
    images: &[Vec<f32>],
) -> (DataProvider, Vec<u8>) {
    let mut dp = hello_as(&s.enclave, &s.keys, client, s.model).unwrap();
    let payload = dp.thin_payload(images);
    (dp, payload)
}

struct Started {
    group: SessionId,
    input: Vec<Vec<u8>>,
    started: Vec<SessionId>,
    deferred: Vec<SessionId>,
    refused: Vec<(SessionId, String)>,
}

fn stack(s: &Setup, members: Vec<(SessionId, Vec<u8>)>) -> Result<Started, String> {
    let members = members
        .into_iter()
        .map(|(session, payload)| StackMember { session, payload })
        .collect();
    match s.enclave.handle(Request::StartStack {
        model_id: s.model,
        members,
    }) {
        Response::StackStarted {
            group,
            batch,
            input,
            started,
            deferred,
            refused,
            ..
        } => {
            assert_eq!(batch as usize, BATCH);
            Ok(Started {
                group,
                input,
                started,
                deferred,
                refused,
            })
        }
        Response::Error { message, .. } => Err(message),
        other => panic!("StartStack: {}", short(&other)),
    }
}

fn finish(s: &Setup, st: &Started) -> Vec<(SessionId, Vec<u8>)> {
    match run_stages(&s.enclave, &s.host, st.group, st.input.clone()) {
        Response::StackFinished { payloads } => payloads,
        other => panic!("stages: {}", short(&other)),
    }
}

/// Opens `payload` on `dp`'s channel and checks it against the reference.
fn check(s: &Setup, dp: &mut DataProvider, payload: &[u8], images: &[Vec<f32>]) {
    let r = dp.result(&s.keys, payload);
    assert_eq!(r.images as usize, images.len());
    assert_eq!(r.input_digest, thin_input_digest(images));
    assert_eq!(r.model_id, s.model);
    let want: Vec<f32> = images.iter().flat_map(|x| reference(&s.q, x)).collect();
    assert_eq!(bits(&r.logits), bits(&want));
}

#[test]
fn stacked_members_are_each_bit_exact_and_a_member_that_does_not_fit_waits() {
    let s = setup(None);
    let sets: Vec<Vec<Vec<f32>>> = vec![
        vec![image(1)],
        vec![image(2), image(3)],
        vec![image(4)],
        vec![image(5), image(6)], // does not fit: 4 images are already stacked
        vec![image(7)],           // after a deferred member: waits too, in order
    ];
    let mut dps = Vec::new();
    let mut named = Vec::new();
    for images in &sets {
        let (dp, payload) = member(&s, None, images);
        named.push((dp.channel.session, payload));
        dps.push(dp);
    }
    let st = stack(&s, named).unwrap();
    let ids: Vec<SessionId> = dps.iter().map(|d| d.channel.session).collect();
    assert_eq!(st.started, ids[..3].to_vec());
    assert_eq!(st.deferred, ids[3..].to_vec());
    assert!(st.refused.is_empty());
    let payloads = finish(&s, &st);
    assert_eq!(payloads.len(), 3);
    let mut outsider = hello(&s.enclave, &s.keys, s.model).unwrap();
    for (i, (session, payload)) in payloads.iter().enumerate() {
        assert_eq!(*session, ids[i]);
        // No other channel opens this member's result.
        assert!(outsider.channel.tx.open(payload).is_err());
        check(&s, &mut dps[i], payload, &sets[i]);
    }
    // Nor another member's, after it opened its own.
    assert!(dps[0].channel.tx.open(&payloads[1].1).is_err());
    assert!(dps[2].channel.tx.open(&payloads[0].1).is_err());
    s.enclave.handle(Request::CloseSession {
        session: outsider.channel.session,
    });
    // The deferred members run in the next stack, named without a payload.
    let st = stack(&s, vec![(ids[3], vec![]), (ids[4], vec![])]).unwrap();
    assert_eq!(st.started, ids[3..].to_vec());
    for (session, payload) in finish(&s, &st) {
        let i = ids.iter().position(|x| *x == session).unwrap();
        check(&s, &mut dps[i], &payload, &sets[i]);
    }
    assert_eq!(
        status(&s.enclave).sessions,
        sets.len(),
        "every member waits for its next query"
    );
}

#[test]
fn attack_the_host_cannot_slip_foreign_spent_or_repeated_sessions_into_a_stack() {
    let s = setup(Some(1));
    let spent = StaticKeypair::generate().unwrap();
    // This client says hello twice (admitted: nothing is spent yet), then
    // spends its one query in a first stack.
    let (c_dp, c_payload) = member(&s, Some(&spent), &[image(13)]);
    let x0 = vec![image(10)];
    let (mut dp0, p0) = member(&s, Some(&spent), &x0);
    let st = stack(&s, vec![(dp0.channel.session, p0)]).unwrap();
    let (_, payload) = finish(&s, &st).remove(0);
    check(&s, &mut dp0, &payload, &x0);

    // An honest member, then what a host might slip in beside it.
    let xa = vec![image(11)];
    let (mut a, pa) = member(&s, None, &xa);
    let pa_again = pa.clone();
    let (b_dp, b_payload) = {
        // An HE query: not something the enclave holds in the clear.
        let mut dp = hello(&s.enclave, &s.keys, s.model).unwrap();
        let input = dp.encrypt(&s.keys.public_key, &image(12));
        let payload = dp.query_payload(&input);
        (dp, payload)
    };
    let unknown = SessionId::from([9u8; 16]);
    let st = stack(
        &s,
        vec![
            (a.channel.session, pa),
            (b_dp.channel.session, b_payload),
            (c_dp.channel.session, c_payload),
            (unknown, vec![1, 2, 3]),
        ],
    )
    .unwrap();
    assert_eq!(st.started, vec![a.channel.session]);
    let why = |sid: SessionId| {
        st.refused
            .iter()
            .find(|(x, _)| *x == sid)
            .map(|(_, w)| w.clone())
            .unwrap_or_default()
    };
    assert!(
        why(b_dp.channel.session).contains("only thin queries"),
        "{}",
        why(b_dp.channel.session)
    );
    assert!(
        why(c_dp.channel.session).contains("budget"),
        "{}",
        why(c_dp.channel.session)
    );
    assert!(why(unknown).contains("unknown"), "{}", why(unknown));
    let (_, payload) = finish(&s, &st).remove(0);
    check(&s, &mut a, &payload, &xa);

    // A session named twice: the whole stack is refused and closed.
    let (d, pd) = member(&s, None, &[image(14)]);
    let msg = stack(
        &s,
        vec![(d.channel.session, pd.clone()), (d.channel.session, pd)],
    )
    .err()
    .unwrap();
    assert!(msg.contains("twice"), "{msg}");
    // A finished member waits for its next query, but the host cannot
    // replay its last one: the channel's nonce has moved on. The replay
    // closes it, and a closed member starts nothing either.
    let msg = stack(&s, vec![(a.channel.session, pa_again)])
        .err()
        .unwrap();
    assert!(msg.contains("channel"), "{msg}");
    let msg = stack(&s, vec![(a.channel.session, vec![])]).err().unwrap();
    assert!(msg.contains("unknown"), "{msg}");
    let msg = stack(&s, vec![(d.channel.session, vec![])]).err().unwrap();
    assert!(msg.contains("unknown"), "{msg}");
    assert_eq!(
        status(&s.enclave).sessions,
        1,
        "the first query's member waits for its next query"
    );
}

#[test]
fn attack_a_stack_cannot_mix_models_or_reopen_a_deferred_query() {
    let s = setup(None);
    // A second model under the same key set.
    let (q2, _) = tiny_model();
    let schedule2 = Schedule::compile(&q2, 2).unwrap();
    let host2 = HostModel::new(&q2, &schedule2, &s.keys.public_key);
    let other = register(&s.enclave, &s.keys, &host2).model_id;
    assert_ne!(other, s.model);
    let mut dp_other = hello(&s.enclave, &s.keys, other).unwrap();
    let p_other = dp_other.thin_payload(&[image(20)]);
    let xs: Vec<Vec<f32>> = (0..BATCH).map(|i| image(21 + i)).collect();
    let (mut full, p_full) = member(&s, None, &xs);
    let (late, p_late) = member(&s, None, &[image(30)]);
    let st = stack(
        &s,
        vec![
            (dp_other.channel.session, p_other),
            (full.channel.session, p_full),
            (late.channel.session, p_late.clone()),
        ],
    )
    .unwrap();
    assert_eq!(st.started, vec![full.channel.session]);
    assert_eq!(st.deferred, vec![late.channel.session]);
    let why = &st.refused[0];
    assert_eq!(why.0, dp_other.channel.session);
    assert!(why.1.contains("another model"), "{}", why.1);
    let (_, payload) = finish(&s, &st).remove(0);
    check(&s, &mut full, &payload, &xs);
    // The deferred query is opened: its payload cannot be replayed to it.
    let msg = stack(&s, vec![(late.channel.session, p_late)])
        .err()
        .unwrap();
    assert!(msg.contains("already opened"), "{msg}");
    assert_eq!(
        status(&s.enclave).sessions,
        1,
        "the finished member waits for its next query"
    );
}

#[test]
fn stacked_members_query_again_on_their_sessions_each_spent() {
    let s = setup(Some(2));
    let clients: Vec<StaticKeypair> = (0..2).map(|_| StaticKeypair::generate().unwrap()).collect();
    let mut dps: Vec<DataProvider> = clients
        .iter()
        .map(|c| hello_as(&s.enclave, &s.keys, Some(c), s.model).unwrap())
        .collect();
    let sessions: Vec<SessionId> = dps.iter().map(|d| d.channel.session).collect();
    for round in 0..3 {
        // Each member's next query, on the session its last one left ready.
        let sets: Vec<Vec<Vec<f32>>> = (0..dps.len())
            .map(|i| vec![image(40 + 10 * round + i)])
            .collect();
        let named: Vec<(SessionId, Vec<u8>)> = dps
            .iter_mut()
            .zip(&sets)
            .map(|(dp, images)| {
                // A new query: a new id.
                dp.query_id = rand::random();
                (dp.channel.session, dp.thin_payload(images))
            })
            .collect();
        let started = stack(&s, named);
        if round == 2 {
            // A budget of two queries per client: the third is refused.
            let msg = started.err().unwrap();
            assert!(msg.contains("budget"), "{msg}");
            break;
        }
        let st = started.unwrap();
        assert_eq!(st.started, sessions);
        for (session, payload) in finish(&s, &st) {
            let i = sessions.iter().position(|x| *x == session).unwrap();
            check(&s, &mut dps[i], &payload, &sets[i]);
        }
    }
    assert_eq!(status(&s.enclave).sessions, 0, "the refusal ended them");
}

#[test]
fn attack_a_stacked_member_carries_its_query_id() {
    let s = setup(Some(3));
    let alice = StaticKeypair::generate().unwrap();
    let member_with = |id: [u8; 16], images: &[Vec<f32>]| {
        let mut dp = hello_as(&s.enclave, &s.keys, Some(&alice), s.model).unwrap();
        dp.query_id = id;
        let payload = dp.thin_payload(images);
        (dp, payload)
    };
    let spent = || {
        let msg = ClientMessage::ModelStatus { model_id: s.model };
        let r = manage(&s.enclave, &s.keys, &msg).unwrap().0;
        let n = r.spent.iter().find(|(k, _)| k == alice.public());
        n.map_or(0, |(_, n)| *n)
    };
    let id: [u8; 16] = rand::random();
    let x = vec![image(40)];
    let (mut dp, p) = member_with(id, &x);
    let st = stack(&s, vec![(dp.channel.session, p)]).unwrap();
    let (_, payload) = finish(&s, &st).remove(0);
    check(&s, &mut dp, &payload, &x);
    assert_eq!(spent(), 1);

    // A retry of that member in a later stack (its first result lost),
    // beside the same id on another image and a new query sent twice.
    let (mut retry, p_retry) = member_with(id, &x);
    let (reused, p_reused) = member_with(id, &[image(41)]);
    let twice: [u8; 16] = rand::random();
    let y = vec![image(42)];
    let (mut y1, p_y1) = member_with(twice, &y);
    let (mut y2, p_y2) = member_with(twice, &y);
    let st = stack(
        &s,
        vec![
            (retry.channel.session, p_retry),
            (reused.channel.session, p_reused),
            (y1.channel.session, p_y1),
            (y2.channel.session, p_y2),
        ],
    )
    .unwrap();
    let want = vec![
        retry.channel.session,
        y1.channel.session,
        y2.channel.session,
    ];
    assert_eq!(st.started, want);
    assert_eq!(st.refused.len(), 1);
    assert_eq!(st.refused[0].0, reused.channel.session);
    assert!(st.refused[0].1.contains(ID_REUSED), "{}", st.refused[0].1);
    for (session, payload) in finish(&s, &st) {
        let (dp, images) = if session == retry.channel.session {
            (&mut retry, &x)
        } else if session == y1.channel.session {
            (&mut y1, &y)
        } else {
            (&mut y2, &y)
        };
        check(&s, dp, &payload, images);
    }
    // The retry spent nothing, the new query once.
    assert_eq!(spent(), 2);
    assert_eq!(
        status(&s.enclave).sessions,
        4,
        "the refused member's session ended; the four answered wait for their next query"
    );
}
