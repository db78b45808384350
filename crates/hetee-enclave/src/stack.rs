//! Stacked queries: several data providers' thin queries of one model run
//! as one batch. The enclave sees thin inputs in the clear, so it can lay
//! the images of many sessions side by side in the stage-0 input it
//! encrypts; the host then evaluates each product once for all of them
//! instead of once per session. Each member keeps its own channel, budget
//! and allow-list check, and gets its own signed result, sealed to it
//! alone: nothing of one member reaches another or the host.
//!
//! The host does not know how many images a thin query holds. It names
//! sessions in order; the enclave takes them while the model's batch has
//! room and keeps the rest opened (`Session::Opened`) for a later stack.

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::channel::decode;
use crate::enclave::{lock, refuse, Enclave, Member, Opened, Running, Session};
use crate::messages::{thin_input_digest, ClientMessage, ModelId, Response, SessionId};
use crate::query::{pad_to_batch, quantize_thin};
use crate::query_ids::SpentQuery;
use crate::state::ModelState;
use crate::step::{encrypt_stage_input, start_values};
use crate::EnclaveError;
use hetee_proto::host::StackMember;

/// Most sessions named in one stack.
pub const MAX_STACK_MEMBERS: usize = 256;

impl Enclave {
    pub(crate) fn start_stack(
        &self,
        model_id: ModelId,
        members: Vec<StackMember>,
    ) -> Result<Response, EnclaveError> {
        if members.is_empty() || members.len() > MAX_STACK_MEMBERS {
            return refuse(format!(
                "a stack names 1 to {MAX_STACK_MEMBERS} sessions, not {}",
                members.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !members.iter().all(|m| seen.insert(m.session)) {
            self.close_all(&members);
            return refuse("a stack names a session twice; its sessions are closed");
        }
        let (m, ks) = match self.model_and_keys(&model_id) {
            Ok(mk) => mk,
            Err(e) => {
                self.close_all(&members);
                return Err(e);
            }
        };
        let batch = m.schedule.batch;
        let mut refused = Vec::new();
        let mut opened = Vec::new();
        // Each member's channel message is opened on its own, on the
        // enclave's threads (a rayon pool wakes faster than a thread starts).
        let outcomes: Vec<_> = members
            .into_par_iter()
            .map(|member| {
                let o = self.open_member(&m.schedule, &model_id, member.session, &member.payload);
                (member.session, o)
            })
            .collect();
        for (session, outcome) in outcomes {
            match outcome {
                Ok(o) => opened.push((session, o)),
                Err(e) => refused.push((session, e.to_string())),
            }
        }
        // Take members in order while the batch has room; keep the others.
        let mut taken = Vec::new();
        let mut deferred = Vec::new();
        let mut used = 0usize;
        for (session, o) in opened {
            if used + o.x.len() <= batch && deferred.is_empty() {
                used += o.x.len();
                taken.push((session, o));
            } else {
                deferred.push(session);
                self.insert_session(session, Session::Opened(Box::new(o)));
            }
        }
        // Admit and spend each member at once, under the state table's lock
        // (a member retrying a query that spent, same id and images, spends
        // nothing).
        let mut admitted = Vec::with_capacity(taken.len());
        let sealed_state = self.with_state(&model_id, |state| {
            let mut next: ModelState = state.clone();
            for (session, o) in taken {
                let q = SpentQuery {
                    query_id: o.query_id,
                    input_digest: o.input_digest,
                };
                match next.charge(&o.client, &m.terms, &q) {
                    Ok(_) => admitted.push((session, o)),
                    Err(e) => refused.push((session, e.to_string())),
                }
            }
            if next.version == state.version {
                return Ok(None);
            }
            let sealed = next.seal(&self.sealer()?)?;
            *state = next;
            Ok(Some(sealed))
        });
        let sealed_state = match sealed_state {
            Ok(s) => s,
            Err(e) => {
                self.close_deferred(&deferred);
                return Err(e);
            }
        };
        let Some(group) = admitted.first().map(|(s, _)| *s) else {
            self.close_deferred(&deferred);
            let why = refused
                .first()
                .map(|(_, w)| w.clone())
                .unwrap_or_else(|| "no member fits the batch".into());
            return refuse(format!("no session of the stack can start: {why}"));
        };
        let mut x = Zeroizing::new(Vec::with_capacity(batch));
        for (_, o) in &admitted {
            x.extend(o.x.iter().cloned());
        }
        pad_to_batch(&m.schedule, &mut x);
        let built = start_values(&m.schedule, &x).and_then(|values| {
            let cts = encrypt_stage_input(&ks, &m.schedule, 0, &values)?;
            Ok((values, cts))
        });
        let (values, input) = match built {
            Ok(v) => v,
            Err(e) => {
                // Spent and refused: no result leaves, as for a single query.
                self.close_deferred(&deferred);
                return Err(e);
            }
        };
        let mut offset = 0u32;
        let mut started = Vec::with_capacity(admitted.len());
        let mut run_members = Vec::with_capacity(admitted.len());
        for (session, o) in admitted {
            let images = o.x.len() as u32;
            run_members.push(Member {
                session,
                tx: o.tx,
                client: o.client,
                offset,
                images,
                input_digest: o.input_digest,
            });
            started.push(session);
            offset += images;
        }
        self.insert_session(
            group,
            Session::Running(Box::new(Running {
                members: run_members,
                stacked: true,
                model_id,
                next_stage: 0,
                values,
                binding: None,
            })),
        );
        Ok(Response::StackStarted {
            group,
            batch: batch as u32,
            input,
            started,
            deferred,
            refused,
            state: sealed_state,
        })
    }

    /// Takes one named session and opens its thin query (or takes the one
    /// an earlier stack deferred). A refused member's session is closed.
    fn open_member(
        &self,
        schedule: &hetee_proto::Schedule,
        model_id: &ModelId,
        session: SessionId,
        payload: &[u8],
    ) -> Result<Opened, EnclaveError> {
        match self.take(&session)? {
            Session::Ready {
                mut tx,
                model_id: theirs,
                client,
                ..
            } => {
                if theirs != *model_id {
                    return refuse("the session said hello to another model; session closed");
                }
                if payload.is_empty() {
                    return refuse("the session sent no query; session closed");
                }
                let ClientMessage::ThinQuery { query_id, images } = decode(&tx.open(payload)?)?
                else {
                    return refuse(
                        "only thin queries can be stacked (the enclave stacks inputs it holds \
                         in the clear); session closed",
                    );
                };
                Ok(Opened {
                    x: quantize_thin(schedule, &images)?,
                    input_digest: thin_input_digest(&images),
                    query_id,
                    tx: *tx,
                    model_id: theirs,
                    client,
                })
            }
            Session::Opened(o) if payload.is_empty() && o.model_id == *model_id => Ok(*o),
            Session::Opened(_) => {
                refuse("this session's query is already opened; name it with no payload")
            }
            _ => refuse("this session cannot start a query now; session closed"),
        }
    }

    fn close_all(&self, members: &[StackMember]) {
        let mut sessions = lock(&self.sessions);
        for m in members {
            sessions.remove(&m.session);
        }
    }

    fn close_deferred(&self, deferred: &[SessionId]) {
        let mut sessions = lock(&self.sessions);
        for s in deferred {
            sessions.remove(s);
        }
    }
}
