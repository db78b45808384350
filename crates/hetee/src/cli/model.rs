//! `hetee model upload|status|unlock|allow`: the model owner's commands
//! and their arguments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{load_model, prepare};

#[derive(Subcommand, Debug)]
pub(super) enum ModelCommand {
    /// Model provider: verify the enclave, quantize and encrypt the model,
    /// upload it and register its secrets over the channel. Prints the model
    /// id alone on the last line.
    Upload {
        /// ONNX model, or a bundled one: `mnist`, `e2dm`, `resnet20`, `mobilenet`.
        #[arg(long)]
        model: String,
        /// Calibration inputs (float32 .npy); bundled models use their own.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Largest batch of images per query to plan for.
        #[arg(long, default_value_t = 8)]
        max_batch: usize,
        /// What a query releases: `logits`, `label` or `top-K` (e.g. `top-3`).
        #[arg(long, default_value = "logits")]
        output_policy: String,
        /// Most queries one data-provider key may run (default: unlimited).
        #[arg(long)]
        query_budget: Option<u64>,
        /// Failed integrity checks after which the model locks.
        #[arg(long, default_value_t = 1)]
        lock_after: u32,
        /// Data providers allowed to query: a file of client public keys
        /// (64 hex digits per line). Default: anyone.
        #[arg(long)]
        allow_clients: Option<PathBuf>,
        /// How image inputs are preprocessed for this model (e.g.
        /// `size=28x28,channels=gray,scale=1/255`): public metadata that
        /// `hetee infer` applies to PNG and JPEG inputs.
        #[arg(long)]
        preprocess: Option<String>,
        /// Print the model id and the upload's figures as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Owner: the model's state (lock, incidents, budgets spent, allow list,
    /// state version), read from the enclave over the owner's channel.
    Status {
        /// Model id from `hetee model upload`.
        #[arg(long)]
        model_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Owner: clear the model's lock and incident log.
    Unlock {
        /// Model id from `hetee model upload`.
        #[arg(long)]
        model_id: String,
        /// Print the model's new state as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Owner: replace the list of data providers allowed to query.
    Allow {
        /// Model id from `hetee model upload`.
        #[arg(long)]
        model_id: String,
        /// File of client public keys (64 hex digits per line).
        #[arg(long, conflicts_with = "open", required_unless_present = "open")]
        allow_clients: Option<PathBuf>,
        /// Let anyone query.
        #[arg(long)]
        open: bool,
        /// Print the model's new state as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

/// How the model owner reaches and checks the enclave, and who it is.
#[derive(clap::Args, Debug)]
pub struct OwnerArgs {
    /// Server address: host:port, http://host:port or https://host:port.
    /// Several replicas of one deployment: repeat the flag or separate
    /// them with commas; the first that answers is used.
    #[arg(long, required = true, value_delimiter = ',')]
    pub server: Vec<String>,
    /// For https: trust the CA certificates in this PEM file instead of
    /// the system's roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The enclave measurement to accept (hex, from `hetee enclave measure`).
    #[arg(long)]
    pub expect_measurement: String,
    /// Accept the simulated TEE platform (testing only: it protects nothing).
    #[arg(long)]
    pub allow_sim: bool,
    /// The owner's long-term key (hex file, created on first use). The key
    /// set and every model under it belong to this key: keep it.
    #[arg(long)]
    pub client_key: PathBuf,
}

pub(super) fn model_command(cmd: ModelCommand) -> Result<()> {
    use crate::owner;
    match cmd {
        ModelCommand::Upload {
            model,
            calib,
            max_batch,
            output_policy,
            query_budget,
            lock_after,
            allow_clients,
            preprocess,
            json,
            owner: o,
        } => {
            let allow = match allow_clients {
                Some(p) => crate::client::model_provider::read_allow_list(&p)?,
                None => hetee_proto::channel::AllowList::Open,
            };
            let mut terms =
                owner::terms(max_batch, &output_policy, query_budget, lock_after, allow)?;
            let (m, c) = load_model(&model, calib.as_deref())?;
            if let Some(spec) = super::parse_preprocess(preprocess.as_deref())? {
                // Refuse a spec that cannot fit the model before uploading.
                crate::images::check_fits(&spec, &m.input_shape).context("--preprocess")?;
                terms.public.preprocess = Some(spec.to_string());
            }
            let q = prepare(&m, &c)?;
            owner::upload(&o, &q, &terms, json)
        }
        ModelCommand::Status {
            model_id,
            json,
            owner: o,
        } => owner::status(&o, &model_id, json),
        ModelCommand::Unlock {
            model_id,
            json,
            owner: o,
        } => owner::unlock(&o, &model_id, json),
        ModelCommand::Allow {
            model_id,
            allow_clients,
            open: _,
            json,
            owner: o,
        } => owner::allow(&o, &model_id, allow_clients.as_deref(), json),
    }
}
