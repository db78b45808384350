//! Shared helpers of the ownership attack tests (`ownership_attacks.rs`,
//! `restart_attacks.rs`): a model registered with terms and an allow list,
//! queries as a given data provider, and the owner's report.

use super::*;

/// The bit patterns of `v`, to compare logits exactly.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A query as the data provider `who`; its logits or the refusal.
pub fn query_as(s: &mut Setup, who: &StaticKeypair, x: &[f32]) -> Result<Vec<f32>, String> {
    let id = s.model_id();
    let mut dp = hello_as(&s.enclave, &s.keys, Some(who), id)?;
    let input = dp.encrypt(&s.keys.public_key, x);
    match dp.start(&s.enclave, id, &input) {
        Response::QueryStarted { .. } => {}
        Response::Error { message, .. } => return Err(message),
        other => panic!("StartQuery: {}", short(&other)),
    }
    match run_stages(&s.enclave, &s.host, dp.channel.session, input) {
        Response::Finished { payload } => Ok(dp.result(&s.keys, &payload).logits.to_vec()),
        Response::Error { message, .. } => Err(message),
        other => panic!("last stage: {}", short(&other)),
    }
}

/// A model's state as its owner reads it.
pub fn report(s: &mut Setup) -> hetee_enclave::messages::ModelReport {
    let id = s.model_id();
    let keys = s.keys.clone();
    manage(
        &s.enclave,
        &keys,
        &ClientMessage::ModelStatus { model_id: id },
    )
    .unwrap()
    .0
}

/// The tiny model registered with `terms` and `allow`.
pub fn setup_with(terms: ModelTerms, allow: AllowList) -> Setup {
    let mut s = Setup::new();
    let schedule = s.host.schedule.clone();
    let keys = create_keys(&s.enclave, &schedule.he);
    let host = HostModel::new(&s.q, &schedule, &keys.public_key);
    let msg = register_message_terms(&keys, &host, terms, allow);
    s.registered = register_with(&s.enclave, &keys, &msg);
    s.keys = keys;
    s.host = host;
    s
}
