//! A registered model's mutable state: whether it is locked, the log of
//! failed checks, the queries each client key has run, and who may query.
//!
//! The model's secrets never change after registration; this state does.
//! The enclave seals it after every change and the host stores the newest
//! copy, so it survives enclave and server restarts. Each copy carries a
//! version that only grows. An enclave refuses to load a copy older than
//! the one it holds, but a freshly started enclave cannot tell the newest
//! copy from an older one: without a monotonic counter from the platform,
//! a host that restarts the enclave can replay an older copy (an unlocked
//! model, smaller budgets spent). The owner sees the version in
//! [`ModelReport`] and can notice it going back.

use std::collections::BTreeMap;

use hetee_proto::channel::{AllowList, Incident, ModelReport, ModelTerms};
use hetee_proto::host::SealedState;
use hetee_proto::ids::{ClientKey, ModelId};
use serde::{Deserialize, Serialize};

use crate::keys::Sealer;
use crate::EnclaveError;

/// Label of sealed model states.
pub const STATE_LABEL: &str = "state-v1";
/// Most incidents kept in the log (the oldest are dropped, the count stays).
pub const MAX_INCIDENTS: usize = 64;
/// Most client keys whose spending a budgeted model tracks.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;
/// The one refusal a locked model gives, whatever the query.
pub const LOCKED: &str = "the model is locked after a failed integrity check; its owner can \
                          inspect and unlock it (hetee model status / hetee model unlock)";

/// The mutable state of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelState {
    /// The model.
    pub model_id: ModelId,
    /// Grows with every change.
    pub version: u64,
    /// Who may query.
    pub allow: AllowList,
    /// Queries run per client key (tracked only for budgeted models).
    pub spent: BTreeMap<ClientKey, u64>,
    /// Failed checks since the last unlock.
    pub failures: u32,
    /// Whether every query is refused.
    pub locked: bool,
    /// Incidents ever logged.
    pub incident_count: u64,
    /// The most recent incidents since the last unlock.
    pub incidents: Vec<Incident>,
}

impl ModelState {
    /// The first state of a newly registered model.
    pub fn new(model_id: ModelId, allow: AllowList) -> Self {
        ModelState {
            model_id,
            version: 1,
            allow,
            spent: BTreeMap::new(),
            failures: 0,
            locked: false,
            incident_count: 0,
            incidents: Vec::new(),
        }
    }

    /// Whether `client` may start a query now; the refusal says why.
    pub fn admit(&self, client: &ClientKey, terms: &ModelTerms) -> Result<(), EnclaveError> {
        if self.locked {
            return Err(EnclaveError::Protocol(LOCKED.into()));
        }
        if !self.allow.allows(client) {
            return Err(EnclaveError::Protocol(
                "this client key is not on the model's allow list; ask the model's owner".into(),
            ));
        }
        if let Some(budget) = terms.query_budget {
            let spent = self.spent.get(client).copied().unwrap_or(0);
            if spent >= budget {
                return Err(EnclaveError::Protocol(
                    "this client's query budget for the model is spent".into(),
                ));
            }
            if spent == 0 && self.spent.len() >= MAX_TRACKED_CLIENTS {
                return Err(EnclaveError::Protocol(format!(
                    "the model already tracks the budgets of {MAX_TRACKED_CLIENTS} client keys; \
                     its owner can list the clients it allows"
                )));
            }
        }
        Ok(())
    }

    /// Counts one query of `client` (budgeted models only).
    pub fn spend(&mut self, client: &ClientKey, terms: &ModelTerms) {
        if terms.query_budget.is_some() {
            let n = self.spent.entry(*client).or_insert(0);
            *n = n.saturating_add(1);
            self.version += 1;
        }
    }

    /// Logs a failed check of `stage` in `client`'s session, and locks the
    /// model once the owner's threshold is reached.
    pub fn record_failure(&mut self, stage: u32, client: ClientKey, terms: &ModelTerms) {
        self.incident_count = self.incident_count.saturating_add(1);
        self.incidents.push(Incident {
            seq: self.incident_count,
            stage,
            client,
        });
        if self.incidents.len() > MAX_INCIDENTS {
            self.incidents.remove(0);
        }
        self.failures = self.failures.saturating_add(1);
        self.locked |= self.failures >= terms.lock_after;
        self.version += 1;
    }

    /// The owner clears the lock and the incident log.
    pub fn unlock(&mut self) {
        self.locked = false;
        self.failures = 0;
        self.incidents.clear();
        self.version += 1;
    }

    /// The owner replaces the allow list.
    pub fn set_allow(&mut self, allow: AllowList) {
        self.allow = allow;
        self.version += 1;
    }

    /// What the owner reads.
    pub fn report(&self, terms: &ModelTerms) -> ModelReport {
        ModelReport {
            model_id: self.model_id,
            version: self.version,
            locked: self.locked,
            failures: self.failures,
            terms: *terms,
            allow: self.allow.clone(),
            spent: self.spent.iter().map(|(k, v)| (*k, *v)).collect(),
            incidents: self.incidents.clone(),
        }
    }

    /// Seals this state for the host to store.
    pub fn seal(&self, sealer: &Sealer) -> Result<SealedState, EnclaveError> {
        Ok(SealedState {
            model_id: self.model_id,
            version: self.version,
            sealed: sealer.seal_record(STATE_LABEL, self)?,
        })
    }
}
