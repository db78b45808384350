//! Keeping one enclave in step with a store that other replicas write too.
//!
//! Several `hetee serve` replicas may share one store (PostgreSQL), each with its own enclave.
//! A key set or model created through another replica, or a model state (budget spent, lock,
//! allow list) changed by another replica's enclave, must reach this enclave before it is used.
//! [`Loaded`] records what this enclave incarnation holds; before each request the supervisor
//! loads what the request needs and the enclave lacks ([`Supervisor::prepare`]):
//! - `Evidence` / `OpenChannel`: the key set;
//! - `StartQuery`: the model (and its key set) and the newest stored state of the model;
//! - `ChannelFinish` (registration, the owner's changes, a data provider's hello): every model
//!   and state it lacks or holds an older version of.
//!
//! After a request the sealed state the enclave answers with is stored by compare-and-set
//! ([`Store::put_state`](crate::store::Store::put_state)). For a query's start that is the
//! budget being spent, so a lost compare-and-set (another replica changed the same model state
//! at the same time) refuses the query: of two replicas spending the last query of a budget,
//! one wins and the other's client gets a clear "retry" error. Query starts and restores
//! run under the [`Loaded`] lock, so that this replica's spends reach the store in the
//! enclave's order; stage results, channels (hellos and the owner's messages) and evidence run
//! concurrently and take the lock only to load and to store. An owner's change stored after a
//! newer spend loses the compare-and-set harmlessly: the newer state already holds it.
//!
//! What this cannot fix: an enclave that holds a *newer* state than the store (its own write was
//! lost, e.g. the store was unreachable) refuses the older stored copy as a replay; it keeps its
//! own until it restarts. Merging two diverged states would need the enclave.

use std::collections::{HashMap, HashSet};
use std::sync::MutexGuard;

use hetee_proto::host::SealedState;
use hetee_proto::ids::{id_from_hex, id_hex, KeyId, ModelId};
use hetee_proto::{Request, Response};
use tracing::{info, warn};

use super::{CallError, KeysRecord, Supervisor};
use crate::host_model::ModelMeta;
use crate::launcher::EnclaveLink;
use crate::store::StoreError;

/// What one enclave incarnation holds from the store.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// The enclave incarnation this describes.
    pub incarnation: u64,
    /// Key sets loaded.
    pub keysets: HashSet<KeyId>,
    /// Models loaded, and uploads seen (nothing to load).
    pub models: HashSet<ModelId>,
    /// The state version the enclave holds of each model, known to equal the store's.
    pub states: HashMap<ModelId, u64>,
    /// Models the enclave refused to load (e.g. sealed by another measurement): not retried on
    /// every channel message, only when a query names them.
    pub failed: HashSet<ModelId>,
}

/// What the supervisor does with the enclave's answer to a request.
pub(super) enum After {
    /// Nothing special.
    Plain,
    /// A query's start: its state change must win the store's compare-and-set.
    StartQuery(hetee_proto::ids::SessionId),
    /// A stacked query's start: the same, for the session it runs under.
    StartStack,
}

fn restore(child: &dyn EnclaveLink, req: Request, what: &str) -> bool {
    match child.call(req) {
        Ok((Response::Error { message, .. }, _)) => {
            warn!(%what, %message, "the enclave cannot load a record from the store");
            false
        }
        Ok(_) => true,
        Err(e) => {
            warn!(%what, error = %e, "loading a record into the enclave failed");
            false
        }
    }
}

impl Supervisor {
    /// The [`Loaded`] record, locked.
    pub(super) fn lock_loaded(&self) -> MutexGuard<'_, Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads what `req` needs into the enclave `child` (incarnation `number`) from the store.
    /// Store errors fail the request (a query must not start on a state that may be stale).
    pub(super) fn prepare(
        &self,
        loaded: &mut Loaded,
        child: &dyn EnclaveLink,
        number: u64,
        req: &Request,
    ) -> Result<After, CallError> {
        if loaded.incarnation != number {
            // The enclave was restarted meanwhile; this call goes to the dead one and fails.
            return Ok(After::Plain);
        }
        match req {
            Request::Evidence { key_id } | Request::OpenChannel { key_id, .. } => {
                self.ensure_keyset(loaded, child, key_id)?;
                Ok(After::Plain)
            }
            Request::StartQuery {
                session, model_id, ..
            } => {
                self.ensure_model(loaded, child, model_id)?;
                self.sync_state(loaded, child, model_id)?;
                Ok(After::StartQuery(*session))
            }
            Request::StartStack { model_id, .. } => {
                self.ensure_model(loaded, child, model_id)?;
                self.sync_state(loaded, child, model_id)?;
                Ok(After::StartStack)
            }
            Request::ChannelFinish { .. } => {
                for id in self.store.model_ids()? {
                    let Ok(id) = id_from_hex(&id) else { continue };
                    if !loaded.failed.contains(&id) {
                        self.ensure_model(loaded, child, &id)?;
                    }
                }
                for (id, version) in self.store.state_versions()? {
                    let Ok(id) = id_from_hex(&id) else { continue };
                    if !loaded.failed.contains(&id) && loaded.states.get(&id) != Some(&version) {
                        self.sync_state(loaded, child, &id)?;
                    }
                }
                Ok(After::Plain)
            }
            _ => Ok(After::Plain),
        }
    }

    fn ensure_keyset(
        &self,
        loaded: &mut Loaded,
        child: &dyn EnclaveLink,
        key_id: &KeyId,
    ) -> Result<(), StoreError> {
        if loaded.keysets.contains(key_id) {
            return Ok(());
        }
        let Some(rec) = self.store.keyset(&id_hex(key_id))? else {
            return Ok(()); // unknown: the enclave refuses the request
        };
        let Ok(rec) = postcard::from_bytes::<KeysRecord>(&rec) else {
            warn!(key_id = %id_hex(key_id), "stored key set record is malformed; skipped");
            return Ok(());
        };
        let req = Request::RestoreKeys { sealed: rec.sealed };
        if restore(child, req, &format!("key set {}", id_hex(key_id))) {
            info!(key_id = %id_hex(key_id), "key set loaded from the shared store");
            loaded.keysets.insert(*key_id);
        }
        Ok(())
    }

    fn ensure_model(
        &self,
        loaded: &mut Loaded,
        child: &dyn EnclaveLink,
        model_id: &ModelId,
    ) -> Result<(), StoreError> {
        if loaded.models.contains(model_id) {
            return Ok(());
        }
        let Some(meta) = self.store.model_meta(&id_hex(model_id))? else {
            return Ok(());
        };
        let Ok(meta) = postcard::from_bytes::<ModelMeta>(&meta) else {
            warn!(model_id = %id_hex(model_id), "stored model record is malformed; skipped");
            return Ok(());
        };
        let Some(sealed) = meta.sealed else {
            loaded.models.insert(*model_id); // an upload: nothing for the enclave
            return Ok(());
        };
        self.ensure_keyset(loaded, child, &meta.key_id)?;
        let req = Request::RestoreModel { sealed };
        if restore(child, req, &format!("model {}", id_hex(model_id))) {
            info!(model_id = %id_hex(model_id), "model loaded from the shared store");
            loaded.models.insert(*model_id);
            loaded.failed.remove(model_id);
        } else {
            loaded.failed.insert(*model_id);
        }
        Ok(())
    }

    /// Gives the enclave the store's state of `model_id` unless it is known to hold it.
    fn sync_state(
        &self,
        loaded: &mut Loaded,
        child: &dyn EnclaveLink,
        model_id: &ModelId,
    ) -> Result<(), StoreError> {
        let Some(rec) = self.store.state(&id_hex(model_id))? else {
            return Ok(());
        };
        if loaded.states.get(model_id) == Some(&rec.version) {
            return Ok(());
        }
        let what = format!("state {} of model {}", rec.version, id_hex(model_id));
        if restore(child, Request::RestoreState { sealed: rec.sealed }, &what) {
            loaded.states.insert(*model_id, rec.version);
        } else {
            loaded.states.remove(model_id);
        }
        Ok(())
    }

    /// Stores a sealed state by compare-and-set; returns whether it won. Either way `loaded`
    /// then says what the enclave holds relative to the store.
    pub(super) fn store_state(
        &self,
        loaded: &mut Loaded,
        state: &SealedState,
    ) -> Result<bool, StoreError> {
        let id = id_hex(&state.model_id);
        let won = self.store.put_state(&id, state.version, &state.sealed);
        match &won {
            Ok(true) => {
                loaded.states.insert(state.model_id, state.version);
            }
            Ok(false) => {
                warn!(
                    model_id = %id,
                    version = state.version,
                    "another replica stored this model state first; reloading the store's copy"
                );
                loaded.states.remove(&state.model_id);
            }
            Err(e) => {
                warn!(model_id = %id, version = state.version, error = %e, "cannot store a model state");
                loaded.states.remove(&state.model_id);
            }
        }
        won
    }

    /// Records what an answer added to the enclave and stores the sealed states it carries.
    /// For a query's start, a state that did not reach the store fails the call (after closing
    /// the session in the enclave).
    pub(super) fn after(
        &self,
        loaded: &mut Loaded,
        child: &dyn EnclaveLink,
        after: After,
        resp: &Response,
    ) -> Result<(), CallError> {
        match resp {
            Response::KeysCreated { key_id, .. } => {
                loaded.keysets.insert(*key_id);
            }
            Response::ChannelReply {
                state, registered, ..
            } => {
                if let Some(reg) = registered {
                    loaded.models.insert(reg.model_id);
                    let _ = self.store_state(loaded, &reg.state);
                }
                if let Some(s) = state {
                    let _ = self.store_state(loaded, s);
                }
            }
            Response::Error { state: Some(s), .. } => {
                let _ = self.store_state(loaded, s);
            }
            Response::QueryStarted { state: Some(s), .. }
            | Response::StackStarted { state: Some(s), .. } => {
                let won = self.store_state(loaded, s);
                let session = match (after, resp) {
                    (After::StartQuery(session), _) => Some(session),
                    (After::StartStack, Response::StackStarted { group, .. }) => Some(*group),
                    _ => None,
                };
                if let (Some(session), Ok(false) | Err(_)) = (session, &won) {
                    let _ = child.call(Request::CloseSession { session });
                    return Err(match won {
                        Err(e) => CallError::Store(e),
                        _ => CallError::Conflict(
                            "another replica changed this model's state (its budget or lock) at \
                             the same time; this query was not run and not counted: open a new \
                             session and retry"
                                .into(),
                        ),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}
