//! The host's side of a replica joining the cluster (`hetee serve --join PEER`).
//!
//! Every replica's enclave must seal with one key, the cluster's, or it cannot open what the
//! others stored (on a real TEE a blob opens only on the CPU that sealed it). The first replica's
//! enclave founds the cluster with its own platform key; later ones obtain that key from a
//! running replica's enclave before anything is restored into them:
//!
//! 1. this host asks its enclave for a `PeerOffer` (its channel key and evidence);
//! 2. it POSTs the offer to a peer's relay ([`crate::peer::SHARE_PATH`]), whose host passes it to
//!    its enclave (`ShareSealingKey`) and answers with the sealed share;
//! 3. this host hands the share to its enclave (`AdoptSealingKey`), which answers with the key
//!    re-sealed under its own platform key; the host keeps that in a per-replica file
//!    ([`Cluster::keep`]), so that a restart hands it back (`RestoreSealingKey`) without a peer.
//!
//! The hosts only relay bytes; the enclaves check measurement, platform and bindings. Every
//! new enclave incarnation (a restart after a crash too) gets the key before its restore.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hetee_proto::{Request, Response};
use tracing::{info, warn};

use super::Supervisor;
use crate::launcher::{EnclaveLink, LinkError};
use crate::peer::{OfferBody, ShareBody};
use crate::store::StoreError;

/// File in the data dir that keeps the cluster's sealing key as this replica's enclave re-sealed
/// it (it opens only in this enclave build on this CPU).
pub const KEPT_KEY_FILE: &str = "cluster-sealing-key";

/// Why a relay to a peer failed (unreachable, refused, malformed answer): the message says which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RelayError(pub String);

/// How the host reaches a peer's relay: posts the offer, returns the peer's share.
pub trait PeerRelay: Send + Sync {
    /// `POST {peer}/v1/peer/share` with `offer`.
    fn share(&self, peer: &str, offer: &OfferBody) -> Result<ShareBody, RelayError>;
}

/// How this replica's enclave gets the cluster's sealing key.
#[derive(Default)]
pub struct Cluster {
    /// Where the re-sealed key is kept (per replica, e.g. `DATA_DIR/cluster-sealing-key`);
    /// `None` keeps it in memory only (a restart of the server must join again).
    pub keep: Option<PathBuf>,
    /// Running replicas to join through, tried in order (`--join`). Empty: this replica founds
    /// the cluster with its enclave's own key, unless it kept a joined key.
    pub peers: Vec<String>,
    /// With peers: if none of them answers and the store holds no key set yet, found the
    /// cluster instead of failing (for the seed replica of a deployment).
    pub found_if_empty: bool,
    /// The relay client (required when `peers` is not empty).
    pub relay: Option<Arc<dyn PeerRelay>>,
}

/// Why a replica could not take its place in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The enclave could not be started.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No peer gave a key this enclave adopted; one line per peer.
    #[error("cannot join the cluster: {0}")]
    NoPeer(String),
    /// The kept key does not open in this enclave and no peer was given.
    #[error(
        "the cluster's sealing key kept in {path} does not open in this enclave ({reason}): \
         it was sealed on another CPU or by another enclave build; start this replica with \
         --join URL of a running replica to obtain the key again"
    )]
    Kept {
        /// The file.
        path: PathBuf,
        /// The enclave's refusal.
        reason: String,
    },
    /// The adopted key could not be written to its file.
    #[error("cannot keep the cluster's sealing key in {path}: {reason}")]
    Keep {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store holds key sets and this enclave opens none of them.
    #[error(
        "this replica's enclave cannot open any of the {total} key sets in the store (first \
         refusal: {first}): they were sealed under another sealing key, on another CPU or by \
         another enclave build. A replica on another CPU must join the cluster: start it with \
         --join URL of a running replica"
    )]
    Foreign {
        /// Key sets in the store.
        total: usize,
        /// The enclave's first refusal.
        first: String,
    },
    /// `--join` without a relay client (a programming error in the caller).
    #[error("peers to join are given but no relay client")]
    NoRelay,
}

impl JoinError {
    /// As a [`LinkError`], for a restart of the enclave (the request that restarted it fails).
    pub(super) fn into_link(self) -> LinkError {
        match self {
            JoinError::Link(e) => e,
            other => LinkError::Launch(other.to_string()),
        }
    }
}

/// The refusal text of an answer, or `None` when `ok` matched.
fn refusal(r: Result<(Response, usize), LinkError>, ok: fn(&Response) -> bool) -> Option<String> {
    match r {
        Ok((resp, _)) if ok(&resp) => None,
        Ok((Response::Error { message, .. }, _)) => Some(message),
        Ok((other, _)) => Some(format!("unexpected answer {other:?}")),
        Err(e) => Some(e.to_string()),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (never half a key).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl Supervisor {
    /// Gives a fresh enclave `child` the cluster's sealing key, before anything is restored into
    /// it: the key this supervisor already holds, else the one kept on disk, else one obtained
    /// from a peer. Without any, the enclave keeps its own platform key (it founds the cluster).
    pub(super) fn enter_cluster(&self, child: &dyn EnclaveLink) -> Result<(), JoinError> {
        let held = self.lock_cluster_key().clone();
        if let Some(sealed) = held {
            match self.restore_key(child, sealed) {
                None => return Ok(()),
                Some(reason) => warn!(%reason, "the enclave refused the cluster key it held"),
            }
        }
        let cluster = &self.cluster;
        if let Some(path) = cluster.keep.as_ref().filter(|p| p.is_file()) {
            let sealed = std::fs::read(path).map_err(|e| JoinError::Kept {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            match self.restore_key(child, sealed.clone()) {
                None => {
                    info!(file = %path.display(), "restored the cluster's sealing key kept by this replica");
                    *self.lock_cluster_key() = Some(sealed);
                    return Ok(());
                }
                Some(reason) if cluster.peers.is_empty() => {
                    return Err(JoinError::Kept {
                        path: path.clone(),
                        reason,
                    })
                }
                Some(reason) => {
                    warn!(file = %path.display(), %reason, "the kept cluster key does not open here; joining again")
                }
            }
        }
        if cluster.peers.is_empty() {
            return Ok(());
        }
        let relay = cluster.relay.as_ref().ok_or(JoinError::NoRelay)?;
        let mut failures = Vec::new();
        for peer in &cluster.peers {
            match self.join_through(child, relay.as_ref(), peer) {
                Ok(sealed) => {
                    if let Some(path) = &cluster.keep {
                        write_atomically(path, &sealed).map_err(|e| JoinError::Keep {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                    info!(%peer, kept = ?cluster.keep, "joined the cluster: this enclave adopted its sealing key");
                    *self.lock_cluster_key() = Some(sealed);
                    return Ok(());
                }
                Err(why) => {
                    warn!(%peer, reason = %why, "cannot join through this peer");
                    failures.push(format!("through {peer}: {why}"));
                }
            }
        }
        if cluster.found_if_empty && self.store.keysets()?.is_empty() {
            warn!(
                "no peer answered and the store holds no key set: this replica founds the cluster"
            );
            return Ok(());
        }
        Err(JoinError::NoPeer(failures.join("; ")))
    }

    /// `RestoreSealingKey`; the refusal, if any.
    fn restore_key(&self, child: &dyn EnclaveLink, sealed: Vec<u8>) -> Option<String> {
        refusal(child.call(Request::RestoreSealingKey { sealed }), |r| {
            matches!(r, Response::SealingKeyRestored)
        })
    }

    /// Offer, relay, adopt; the key as the enclave re-sealed it, or what failed.
    fn join_through(
        &self,
        child: &dyn EnclaveLink,
        relay: &dyn PeerRelay,
        peer: &str,
    ) -> Result<Vec<u8>, String> {
        let offer = match child.call(Request::PeerOffer) {
            Ok((
                Response::PeerOffer {
                    channel_public_key,
                    evidence,
                },
                _,
            )) => OfferBody {
                channel_public_key,
                evidence,
            },
            other => {
                let why = refusal(other, |_| false).unwrap_or_default();
                return Err(format!("this enclave made no offer: {why}"));
            }
        };
        let share = relay
            .share(peer, &offer)
            .map_err(|e| format!("the peer did not share its key: {e}"))?;
        let (message, evidence) = share
            .bytes()
            .map_err(|e| format!("the peer's answer is malformed: {e}"))?;
        match child.call(Request::AdoptSealingKey { message, evidence }) {
            Ok((Response::SealingKeyAdopted { sealed }, _)) => Ok(sealed),
            other => {
                let why = refusal(other, |_| false).unwrap_or_default();
                Err(format!("this enclave refused the peer's share: {why}"))
            }
        }
    }

    /// The key set refusals of a first restore: fails when the store holds key sets and the
    /// enclave opened none (it seals with another key than the cluster's).
    pub(super) fn check_opened(&self, r: &super::Restored) -> Result<(), JoinError> {
        match (&r.first_refusal, r.keysets_opened) {
            (Some(first), 0) => Err(JoinError::Foreign {
                total: r.keysets_total,
                first: first.clone(),
            }),
            _ => Ok(()),
        }
    }
}
