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
//!
//! A budgeted model's state also keeps each client's recent query ids
//! ([`crate::query_ids`]), so a retried query is counted once.

use std::collections::BTreeMap;

use hetee_proto::channel::{AllowList, Incident, ModelReport, ModelTerms};
use hetee_proto::host::SealedState;
use hetee_proto::ids::{ClientKey, ModelId};
use serde::{Deserialize, Serialize};

use crate::keys::Sealer;
use crate::query_ids::{RecentQueries, Seen, SpentQuery, ID_REUSED};
use crate::EnclaveError;

/// Label of sealed model states (version 2: with the recent query ids).
pub const STATE_LABEL: &str = "state-v2";
/// Label of version-1 sealed model states (no query ids), still read.
pub const STATE_V1_LABEL: &str = "state-v1";
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
    /// The recent query ids that spent, per client key (budgeted models).
    pub recent: RecentQueries,
}

/// What admitting a query decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new query: it spends the client's budget (if the model has one).
    Spend,
    /// A retry of a query that already spent: it runs without spending.
    Repeat,
}

/// A version-1 sealed state: [`ModelState`] before the query ids.
#[derive(Serialize, Deserialize)]
struct ModelStateV1 {
    model_id: ModelId,
    version: u64,
    allow: AllowList,
    spent: BTreeMap<ClientKey, u64>,
    failures: u32,
    locked: bool,
    incident_count: u64,
    incidents: Vec<Incident>,
}

impl From<ModelStateV1> for ModelState {
    fn from(v: ModelStateV1) -> Self {
        ModelState {
            model_id: v.model_id,
            version: v.version,
            allow: v.allow,
            spent: v.spent,
            failures: v.failures,
            locked: v.locked,
            incident_count: v.incident_count,
            incidents: v.incidents,
            recent: RecentQueries::default(),
        }
    }
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
            recent: RecentQueries::default(),
        }
    }

    /// Whether `client` may query the model at all (not locked, allowed);
    /// its budget is checked when its query starts
    /// ([`ModelState::admit_query`]), when the query's id is known.
    pub fn admit_client(&self, client: &ClientKey) -> Result<(), EnclaveError> {
        if self.locked {
            return Err(EnclaveError::Protocol(LOCKED.into()));
        }
        if !self.allow.allows(client) {
            return Err(EnclaveError::Protocol(
                "this client key is not on the model's allow list; ask the model's owner".into(),
            ));
        }
        Ok(())
    }

    /// Whether `client` may start query `q` now, and whether it spends;
    /// the refusal says why. On a budgeted model, a repeat of one of the
    /// client's recent spending ids with the same input runs without
    /// spending (even with the budget spent); with another input it is
    /// refused.
    pub fn admit_query(
        &self,
        client: &ClientKey,
        terms: &ModelTerms,
        q: &SpentQuery,
    ) -> Result<Admission, EnclaveError> {
        self.admit_client(client)?;
        if let Some(budget) = terms.query_budget {
            match self.recent.seen(client, q) {
                Seen::Repeat => return Ok(Admission::Repeat),
                Seen::Conflict => return Err(EnclaveError::Protocol(ID_REUSED.into())),
                Seen::New => {}
            }
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
        Ok(Admission::Spend)
    }

    /// Admits `client`'s query `q` ([`ModelState::admit_query`]) and, if it
    /// is new on a budgeted model, counts it and remembers its id: one new
    /// version. A repeat changes nothing.
    pub fn charge(
        &mut self,
        client: &ClientKey,
        terms: &ModelTerms,
        q: &SpentQuery,
    ) -> Result<Admission, EnclaveError> {
        let admission = self.admit_query(client, terms, q)?;
        if admission == Admission::Spend && terms.query_budget.is_some() {
            self.spend(client, terms);
            self.recent.record(client, *q);
        }
        Ok(admission)
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

    /// Opens a sealed state: the current format, or a version-1 state
    /// (read with no recent query ids).
    pub fn unseal(sealer: &Sealer, sealed: &[u8]) -> Result<Self, EnclaveError> {
        match sealer.unseal_record::<ModelState>(STATE_LABEL, sealed) {
            Ok(s) => Ok(s),
            Err(e) => sealer
                .unseal_record::<ModelStateV1>(STATE_V1_LABEL, sealed)
                .map(ModelState::from)
                .map_err(|_| e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetee_attest::Measurement;
    use zeroize::Zeroizing;

    #[test]
    fn a_version_1_state_is_still_read() {
        let sealer = Sealer {
            secret: Zeroizing::new([3; 32]),
            measurement: Measurement([4; 32]),
        };
        let incidents = vec![Incident {
            seq: 1,
            stage: 0,
            client: [5; 32],
        }];
        let old = ModelStateV1 {
            model_id: [1; 16],
            version: 7,
            allow: AllowList::Only(vec![[5; 32]]),
            spent: BTreeMap::from([([5; 32], 3)]),
            failures: 1,
            locked: true,
            incident_count: 1,
            incidents,
        };
        let sealed = sealer.seal_record(STATE_V1_LABEL, &old).unwrap();
        let st = ModelState::unseal(&sealer, &sealed).unwrap();
        assert_eq!((st.model_id, st.version, st.locked), ([1; 16], 7, true));
        assert_eq!(st.spent.get(&[5; 32]), Some(&3));
        assert_eq!(st.recent, RecentQueries::default());
        // Sealed again, it is a version-2 state that reads back equal.
        let again = st.seal(&sealer).unwrap();
        assert_eq!(ModelState::unseal(&sealer, &again.sealed).unwrap(), st);
        // Anything else is refused with the current format's error.
        let err = ModelState::unseal(&sealer, &sealed[1..]).unwrap_err();
        assert!(err.to_string().contains(STATE_LABEL), "{err}");
    }
}
