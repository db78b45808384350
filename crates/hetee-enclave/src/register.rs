//! The key set owner's messages: register a model, read its state, unlock
//! it, change who may query it. Only the channel key that owns the key set
//! (bound in the attested identity) may send them; anything else is
//! refused, closes the session and stores nothing.

use hetee_attest::Transport;
use hetee_proto::channel::{ClientMessage, EnclaveMessage, ModelTerms};
use hetee_proto::host::RegisteredModel;
use hetee_proto::host::Response;
use hetee_proto::ids::{model_id, registration_digest, upload_id, ClientKey, KeyId, ModelId};
use hetee_proto::plan::QueryPlan;
use zeroize::Zeroize;

use std::sync::Arc;

use crate::channel::seal;
use crate::enclave::{lock, read, refuse, write, Enclave};
use crate::freivalds::StageCheck;
use crate::keys::ModelRecord;
use crate::state::ModelState;
use crate::EnclaveError;

const NOT_OWNER: &str =
    "only the key set's owner may register or manage its models; session closed";

impl Enclave {
    /// A data provider's hello: the model's public plan, if it may query.
    pub(crate) fn hello(
        &self,
        key_id: KeyId,
        client: ClientKey,
        model_id: ModelId,
        tx: &mut Transport,
    ) -> Result<Vec<u8>, EnclaveError> {
        let m = read(&self.models)
            .get(&model_id)
            .cloned()
            .ok_or_else(|| EnclaveError::Protocol("unknown model".into()))?;
        if m.key_id != key_id {
            return refuse("the model is not under this channel's key set");
        }
        let owner = read(&self.keysets)
            .get(&key_id)
            .map(|k| k.owner)
            .unwrap_or([0; 32]);
        self.with_state(&model_id, |s| s.admit_client(&client))?;
        let plan = QueryPlan::of(model_id, key_id, owner, &m.schedule)?;
        seal(tx, &EnclaveMessage::Plan(Box::new(plan)))
    }

    /// Handles a management message from `client` on a channel to `key_id`.
    pub(crate) fn owner_message(
        &self,
        key_id: KeyId,
        client: ClientKey,
        msg: ClientMessage,
        tx: &mut Transport,
    ) -> Result<Response, EnclaveError> {
        let owner = read(&self.keysets)
            .get(&key_id)
            .map(|k| k.owner)
            .ok_or_else(|| EnclaveError::Protocol("unknown key set".into()))?;
        if owner != client {
            return refuse(NOT_OWNER);
        }
        match msg {
            ClientMessage::RegisterModel {
                key_id: k,
                commitment,
                schedule,
                weights,
                terms,
                allow,
            } => {
                if k != key_id {
                    return refuse("the model names another key set than its channel");
                }
                let rec = self.draw_record(key_id, commitment, *schedule, &weights, terms)?;
                let model_id = rec.model_id;
                let state = ModelState::new(model_id, allow);
                let sealer = self.sealer()?;
                let sealed = sealer.seal_model(&rec)?;
                let sealed_state = state.seal(&sealer)?;
                write(&self.models).insert(model_id, Arc::new(rec));
                lock(&self.states).insert(model_id, state);
                let payload = seal(tx, &EnclaveMessage::Registered { model_id })?;
                Ok(Response::ChannelReply {
                    payload,
                    registered: Some(RegisteredModel {
                        model_id,
                        upload_id: upload_id(&key_id, &commitment),
                        sealed,
                        state: sealed_state,
                    }),
                    state: None,
                })
            }
            ClientMessage::ModelStatus { model_id } => self.manage(key_id, model_id, tx, |_| {}),
            ClientMessage::Unlock { model_id } => {
                self.manage(key_id, model_id, tx, ModelState::unlock)
            }
            ClientMessage::SetAllowList { model_id, allow } => {
                self.manage(key_id, model_id, tx, move |s| s.set_allow(allow))
            }
            _ => refuse("unexpected first message; session closed"),
        }
    }

    /// Builds a model record: validates the schedule and weights, draws the
    /// Freivalds vectors (uniform `r` over every output of every stage,
    /// `v = Wᵀ r`), and refuses a second registration of the same upload.
    fn draw_record(
        &self,
        key_id: KeyId,
        commitment: [u8; 32],
        schedule: crate::Schedule,
        weights: &[Vec<i8>],
        terms: ModelTerms,
    ) -> Result<ModelRecord, EnclaveError> {
        let he = read(&self.keysets)
            .get(&key_id)
            .map(|k| k.he.clone())
            .ok_or_else(|| EnclaveError::Protocol("unknown key set".into()))?;
        schedule.validate()?;
        if schedule.he != he {
            return refuse("the schedule's HE parameters are not its key set's");
        }
        if read(&self.models)
            .values()
            .any(|m| m.key_id == key_id && m.commitment == commitment)
        {
            return refuse("this upload is already registered; a model's secrets never change");
        }
        if weights.len() != schedule.stages.len() {
            return refuse(format!(
                "{} weight tensors for {} stages",
                weights.len(),
                schedule.stages.len()
            ));
        }
        let mut rng = rand::rng();
        let mut checks = Vec::with_capacity(weights.len());
        for (k, (st, w)) in schedule.stages.iter().zip(weights).enumerate() {
            let [c, h, wd] = st.tail.input_shape;
            let (kh, kw) = st.tail.kernel();
            let want = [st.tail.out_channels, c, kh, kw]
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d));
            let fan_in = [c, h, wd].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let want = match st.tail.linear {
                hetee_model::quant::LinearKind::Dense => {
                    fan_in.and_then(|f| f.checked_mul(st.tail.out_channels))
                }
                hetee_model::quant::LinearKind::Conv(_) => want,
            };
            if want != Some(w.len()) {
                return refuse(format!("stage {k}: the weights do not fit the layer"));
            }
            // The host skips products across a grouped conv's groups: the
            // weights there must be zero.
            let grouped = st.spec.groups > 1
                && !hetee_proto::schedule::respects_groups(
                    w,
                    c,
                    st.tail.out_channels,
                    kh * kw,
                    st.spec.groups,
                );
            if grouped {
                return refuse(format!(
                    "stage {k}: the schedule declares {} groups but the weights cross them",
                    st.spec.groups
                ));
            }
            let mut stage = st.tail.clone();
            stage.weight = w.clone();
            checks.push(StageCheck::draw(&stage, &mut rng));
            stage.weight.zeroize();
        }
        let digest = registration_digest(&schedule, weights, &terms);
        let rec = ModelRecord {
            model_id: model_id(&key_id, &commitment, &digest),
            key_id,
            commitment,
            schedule,
            checks,
            terms,
        };
        rec.validate_checks()?;
        Ok(rec)
    }

    /// Applies `change` to a model's state (owner only, checked by the
    /// caller) and answers with the new report and sealed state.
    fn manage(
        &self,
        key_id: KeyId,
        model_id: ModelId,
        tx: &mut Transport,
        change: impl FnOnce(&mut ModelState),
    ) -> Result<Response, EnclaveError> {
        let terms = match read(&self.models).get(&model_id) {
            Some(m) if m.key_id == key_id => m.terms,
            _ => return refuse("no such model under this key set"),
        };
        let (sealed, report) = self.with_state(&model_id, |state| {
            let mut next = state.clone();
            change(&mut next);
            let sealed = if next.version != state.version {
                Some(next.seal(&self.sealer()?)?)
            } else {
                None
            };
            let report = next.report(&terms);
            *state = next;
            Ok((sealed, report))
        })?;
        let payload = seal(tx, &EnclaveMessage::Report(Box::new(report)))?;
        Ok(Response::ChannelReply {
            payload,
            registered: None,
            state: sealed,
        })
    }
}
