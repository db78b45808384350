//! The model owner's commands: `hetee model upload`, `status`, `unlock` and
//! `allow`. Each verifies the enclave, then speaks to it over a channel
//! opened with the owner's long-term key, the key its key sets belong to.
//! With several servers (replicas), each command goes to the first that
//! answers: a replica that fails is skipped for the next.

use std::path::Path;

use anyhow::{anyhow, Result};
use hetee_model::QuantModel;
use hetee_proto::channel::{AllowList, ModelReport, ModelTerms, OutputPolicy};
use hetee_proto::ids::id_hex;

use crate::cli::OwnerArgs;
use crate::client::channel::load_or_create_key;
use crate::client::failover::first_answer;
use crate::client::model_provider::{self, read_allow_list, Manage, Terms};
use crate::client::trust::Trust;

/// The terms of `hetee model upload`'s flags (`allow`: from
/// `--allow-clients`, or open).
pub fn terms(
    max_batch: usize,
    output_policy: &str,
    query_budget: Option<u64>,
    lock_after: u32,
    allow: AllowList,
) -> Result<Terms> {
    if lock_after == 0 {
        return Err(anyhow!("--lock-after must be at least 1"));
    }
    Ok(Terms {
        max_batch,
        model: ModelTerms {
            policy: OutputPolicy::parse(output_policy)
                .map_err(|e| anyhow!("--output-policy: {e}"))?,
            query_budget,
            lock_after,
        },
        allow,
        public: Default::default(),
    })
}

/// Verifies the enclave, then uploads and registers `q` on `terms` as the
/// owner `o` (its key file is created on first use). Returns what the
/// upload produced and the owner's public key.
pub fn upload_model(
    o: &OwnerArgs,
    q: &QuantModel,
    terms: &Terms,
) -> Result<(model_provider::Uploaded, [u8; 32])> {
    let trust = Trust::new(&o.expect_measurement, o.allow_sim)?;
    let key = load_or_create_key(&o.client_key)?;
    let spin = crate::progress::spinner("encrypting, uploading and registering the weights");
    let up = first_answer(&o.server, o.ca.as_deref(), |api| {
        model_provider::upload(api, &trust, &key, q, terms)
    });
    spin.finish_and_clear();
    Ok((up?, *key.public()))
}

/// `hetee model upload`: prints the model id alone on the last line, or
/// (`json`) one JSON document with the model id and the upload's figures.
pub fn upload(o: &OwnerArgs, q: &QuantModel, terms: &Terms, json: bool) -> Result<()> {
    let (up, owner) = upload_model(o, q, terms)?;
    eprintln!(
        "uploaded {} bytes of encrypted weights; {} images per query; owner key {}",
        up.weight_bytes,
        up.batch,
        id_hex(&owner)
    );
    if json {
        let doc = serde_json::json!({
            "model_id": id_hex(&up.model_id),
            "owner": id_hex(&owner),
            "weight_bytes": up.weight_bytes,
            "batch": up.batch,
            "stages": up.schedule.stages.len(),
            "preprocess": terms.public.preprocess,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", id_hex(&up.model_id));
    }
    Ok(())
}

/// Verifies the enclave and sends the owner's message `what` about
/// `model_id`; returns the model's state as the enclave reports it.
pub fn manage(o: &OwnerArgs, model_id: &str, what: Manage) -> Result<ModelReport> {
    let trust = Trust::new(&o.expect_measurement, o.allow_sim)?;
    let key = load_or_create_key(&o.client_key)?;
    first_answer(&o.server, o.ca.as_deref(), |api| {
        model_provider::manage(api, &trust, &key, model_id, what.clone())
    })
}

/// `hetee model status`.
pub fn status(o: &OwnerArgs, model_id: &str, json: bool) -> Result<()> {
    let r = manage(o, model_id, Manage::Status)?;
    show(&r, json);
    Ok(())
}

/// `hetee model unlock`: prints the new state (as JSON with `json`).
pub fn unlock(o: &OwnerArgs, model_id: &str, json: bool) -> Result<()> {
    let r = manage(o, model_id, Manage::Unlock)?;
    show(&r, json);
    Ok(())
}

/// `hetee model allow`: `None` opens the model to anyone; prints the new
/// state (as JSON with `json`).
pub fn allow(o: &OwnerArgs, model_id: &str, list: Option<&Path>, json: bool) -> Result<()> {
    let allow = match list {
        Some(p) => read_allow_list(p)?,
        None => AllowList::Open,
    };
    let r = manage(o, model_id, Manage::Allow(allow))?;
    show(&r, json);
    Ok(())
}

fn show(r: &ModelReport, json: bool) {
    if json {
        println!("{}", report_json(r));
    } else {
        print_report(r);
    }
}

/// The report as JSON (keys in hex).
pub fn report_json(r: &ModelReport) -> serde_json::Value {
    let allow = match &r.allow {
        AllowList::Open => serde_json::Value::String("open".into()),
        AllowList::Only(keys) => keys.iter().map(|k| id_hex(k)).collect(),
    };
    serde_json::json!({
        "model_id": id_hex(&r.model_id),
        "version": r.version,
        "locked": r.locked,
        "failures": r.failures,
        "lock_after": r.terms.lock_after,
        "query_budget": r.terms.query_budget,
        "allow": allow,
        "spent": r.spent.iter().map(|(k, n)| serde_json::json!({"client": id_hex(k), "queries": n})).collect::<Vec<_>>(),
        "incidents": r.incidents.iter().map(|i| serde_json::json!({"seq": i.seq, "stage": i.stage, "client": id_hex(&i.client)})).collect::<Vec<_>>(),
    })
}

fn print_report(r: &ModelReport) {
    println!("model        {}", id_hex(&r.model_id));
    println!("state        version {}", r.version);
    println!(
        "lock         {} ({} failed checks since the last unlock; locks after {})",
        if r.locked { "LOCKED" } else { "open" },
        r.failures,
        r.terms.lock_after
    );
    match &r.allow {
        AllowList::Open => println!("allowed      anyone"),
        AllowList::Only(k) => println!("allowed      {} client keys", k.len()),
    }
    if let Some(b) = r.terms.query_budget {
        println!(
            "budget       {b} queries per client key; {} keys tracked",
            r.spent.len()
        );
    }
    for i in &r.incidents {
        println!(
            "incident #{}: stage {} failed its check in a session of client {}",
            i.seq,
            i.stage,
            id_hex(&i.client)
        );
    }
}
