//! The query half of a session: `Ready → Running(stage 0, 1, …) → Ready`,
//! as many times as the data provider sends queries on its channel.
//! Each stage's decrypted result is checked (Freivalds) against the input
//! the enclave itself holds before anything is computed from it; the final
//! result goes through the model's output policy, is signed, and is sealed
//! to the data provider's channel.

use ed25519_dalek::Signer;
use hetee_attest::Transport;
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::binding::BindingVerdict;
use crate::channel::{decode, seal};
use crate::enclave::{refuse, Enclave, Member, Outcome, Running, Session};
use crate::messages::{
    input_digest, thin_input_digest, ClientMessage, EnclaveMessage, ModelId, QueryResult, Response,
    SessionId,
};
use crate::policy;
use crate::query_ids::SpentQuery;
use crate::state::ModelState;
use crate::step::{
    decrypt_stage, encrypt_stage_input, start_values, step_decrypted, StepOutput, INTEGRITY_FAILURE,
};
use crate::EnclaveError;

impl Enclave {
    pub(crate) fn start_query(
        &self,
        session: SessionId,
        host_model: ModelId,
        payload: &[u8],
        input: &[Vec<u8>],
    ) -> Result<Response, EnclaveError> {
        let Session::Ready {
            mut tx,
            model_id,
            client,
            ..
        } = self.take(&session)?
        else {
            return refuse("this session cannot start a query now; session closed");
        };
        if host_model != model_id {
            return refuse("the host evaluates another model than the session's; session closed");
        }
        let msg = decode(&tx.open(payload)?)?;
        let (m, keys) = self.model_and_keys(&model_id)?;
        let ks = keys.as_ref();
        let batch = m.schedule.batch;
        // What the query spends on: its id and its input's digest (cheap to
        // compute, so a refusal comes before any HE work).
        let spent = match &msg {
            ClientMessage::Query {
                query_id,
                input_digest: want,
                ..
            } => {
                if input_digest(input) != *want {
                    return refuse("the input ciphertexts are not the ones the data provider sent");
                }
                SpentQuery {
                    query_id: *query_id,
                    input_digest: *want,
                }
            }
            ClientMessage::ThinQuery { query_id, images } => SpentQuery {
                query_id: *query_id,
                input_digest: thin_input_digest(images),
            },
            _ => return refuse("expected the data provider's query; session closed"),
        };
        self.with_state(&model_id, |s| s.admit_query(&client, &m.terms, &spent))?;
        let (values, images, thin_input, binding) = match msg {
            ClientMessage::Query { images, seed, .. } => {
                if m.schedule.input_in_enclave() {
                    return refuse(
                        "this model runs ops on the input in the enclave before its first linear layer; send the input over the channel (a thin query)",
                    );
                }
                let need = m.schedule.stages[0].packing.input_count();
                if input.len() != need {
                    return refuse(format!(
                        "stage 0 takes {need} input ciphertexts, got {}",
                        input.len()
                    ));
                }
                // Decrypted and checked beside the host's stage 0
                // (`binding`): stage 0's result is used only once that
                // is done.
                let binding = BindingVerdict::spawn(keys.clone(), m.clone(), seed, input.to_vec());
                (Vec::new(), images, None, Some(binding))
            }
            ClientMessage::ThinQuery { images, .. } => {
                if !input.is_empty() {
                    return refuse("a thin query carries no ciphertexts");
                }
                let mut x = quantize_thin(&m.schedule, &images)?;
                pad_to_batch(&m.schedule, &mut x);
                let values = start_values(&m.schedule, &x)?;
                let cts = encrypt_stage_input(ks, &m.schedule, 0, &values)?;
                (values, images.len() as u32, Some(cts), None)
            }
            _ => return refuse("expected the data provider's query; session closed"),
        };
        if images == 0 || images as usize > batch {
            return refuse(format!("a query holds 1 to {batch} images, not {images}"));
        }
        // Admit and spend at once, under the state table's lock: two queries
        // cannot both spend a budget's last query, and a retry of a query
        // that spent (same id, same input) spends nothing.
        let sealed_state = self.with_state(&model_id, |state| {
            let mut next: ModelState = state.clone();
            next.charge(&client, &m.terms, &spent)?;
            if next.version == state.version {
                return Ok(None);
            }
            let sealed = next.seal(&self.sealer()?)?;
            *state = next;
            Ok(Some(sealed))
        })?;
        let digest = spent.input_digest;
        self.insert_session(
            session,
            Session::Running(Box::new(Running {
                members: vec![Member {
                    session,
                    tx: *tx,
                    client,
                    offset: 0,
                    images,
                    input_digest: digest,
                }],
                stacked: false,
                model_id,
                next_stage: 0,
                values,
                binding,
            })),
        );
        Ok(Response::QueryStarted {
            input: thin_input,
            state: sealed_state,
        })
    }

    pub(crate) fn stage_result(&self, session: SessionId, stage: u32, cts: &[Vec<u8>]) -> Outcome {
        let plain = |e| (e, None);
        let Session::Running(mut run) = self.take(&session).map_err(plain)? else {
            return refuse("no query is running in this session; session closed").map_err(plain);
        };
        if stage != run.next_stage {
            return refuse(format!(
                "stage {stage} out of order (expected {}); session closed",
                run.next_stage
            ))
            .map_err(plain);
        }
        // A lock stops running queries too: otherwise a host could open many
        // sessions first and spend each on one more forged result.
        if self
            .with_state(&run.model_id, |s| Ok(s.locked))
            .map_err(plain)?
        {
            return Err(plain(EnclaveError::Protocol(crate::state::LOCKED.into())));
        }
        let (m, ks) = self.model_and_keys(&run.model_id).map_err(plain)?;
        let Some(check) = m.checks.get(stage as usize) else {
            return refuse("the model has no check for this stage; session closed").map_err(plain);
        };
        let k = stage as usize;
        // An HE query's stage 0 waits for its input, decrypted and checked
        // on a thread of its own. The host's result is decrypted meanwhile
        // (the input is in the clear in the enclave already); nothing is
        // computed from it, and nothing leaves, until the check holds, and
        // a refusal drops it (zeroized).
        let polys = decrypt_stage(&ks, &m.schedule, k, cts).map_err(plain)?;
        if let Some(binding) = run.binding.take() {
            run.values = binding.wait().map_err(plain)?;
        }
        let stepped = step_decrypted(&ks, &m.schedule, k, &polys, &mut run.values, Some(check));
        drop(polys);
        let out = match stepped {
            Ok(out) => out,
            Err(EnclaveError::Integrity(_)) => return Err(self.failed_check(&run, stage)),
            Err(e) => return Err(plain(e)),
        };
        match out {
            StepOutput::Next(ciphertexts) => {
                run.next_stage += 1;
                self.insert_session(session, Session::Running(run));
                Ok(Response::NextInput {
                    stage: stage + 1,
                    ciphertexts,
                })
            }
            StepOutput::Logits(values) => {
                let classes = values.len() / m.schedule.batch.max(1);
                let Running {
                    members,
                    stacked,
                    model_id,
                    ..
                } = *run;
                let mut payloads = Vec::with_capacity(members.len());
                let mut ready = Vec::with_capacity(members.len());
                // Each member's result is signed and sealed to its own
                // channel, on the enclave's threads.
                let sealed: Vec<_> = members
                    .into_par_iter()
                    .map(|mut member| {
                        let from = (member.offset as usize * classes).min(values.len());
                        let to =
                            ((member.offset + member.images) as usize * classes).min(values.len());
                        let (logits, labels) =
                            policy::apply(m.terms.policy, &values[from..to], classes);
                        let result = QueryResult {
                            model_id,
                            commitment: m.commitment,
                            input_digest: member.input_digest,
                            images: member.images,
                            classes: classes as u32,
                            policy: m.terms.policy,
                            logits: Zeroizing::new(logits),
                            labels: Zeroizing::new(labels),
                        };
                        sign_and_seal(self, &mut member.tx, result).map(|payload| (member, payload))
                    })
                    .collect();
                for outcome in sealed {
                    let (member, payload) = outcome.map_err(plain)?;
                    payloads.push((member.session, payload));
                    ready.push((member.session, member.tx, member.client));
                }
                // Each member's session goes back to ready for the same
                // model on the same channel: its next query needs no new
                // handshake, and is admitted and spent on its own.
                for (session, tx, client) in ready {
                    self.insert_session(
                        session,
                        Session::Ready {
                            tx: Box::new(tx),
                            model_id,
                            client,
                            idle_since: self.tick(),
                        },
                    );
                }
                if stacked {
                    return Ok(Response::StackFinished { payloads });
                }
                let payload = payloads.pop().map(|(_, p)| p).unwrap_or_default();
                Ok(Response::Finished { payload })
            }
        }
    }

    /// A stage result failed its check: log the incident, lock the model
    /// once the owner's threshold is reached, and answer with the one fixed
    /// refusal and the new sealed state. The session is already closed.
    fn failed_check(
        &self,
        run: &Running,
        stage: u32,
    ) -> (EnclaveError, Option<hetee_proto::host::SealedState>) {
        let refusal = EnclaveError::Integrity(INTEGRITY_FAILURE.into());
        let Ok((m, _)) = self.model_and_keys(&run.model_id) else {
            return (refusal, None);
        };
        let sealed = self
            .with_state(&run.model_id, |state| {
                // One forged result is one incident, however many members
                // the query stacked; it is logged under the first.
                if let Some(first) = run.members.first() {
                    state.record_failure(stage, first.client, &m.terms);
                }
                self.sealer().and_then(|s| state.seal(&s))
            })
            .ok();
        (refusal, sealed)
    }
}

/// Whether every value lies in `[min, max]`, without branching on a value.
fn sign_and_seal(
    e: &Enclave,
    tx: &mut Transport,
    result: QueryResult,
) -> Result<Vec<u8>, EnclaveError> {
    let signature = e
        .signing_key()
        .sign(&result.signed_message())
        .to_bytes()
        .to_vec();
    seal(tx, &EnclaveMessage::Result { result, signature })
}

/// Quantizes the images of one thin query (1 to the model's batch, each of
/// the model's input size), not yet padded to the batch.
pub(crate) fn quantize_thin(
    schedule: &hetee_proto::Schedule,
    images: &[Vec<f32>],
) -> Result<Zeroizing<Vec<Vec<i64>>>, EnclaveError> {
    let batch = schedule.batch;
    if images.is_empty() || images.len() > batch {
        return refuse(format!("a query holds 1 to {batch} images"));
    }
    let per: usize = schedule.input_shape.iter().product();
    let mut x = Zeroizing::new(Vec::with_capacity(batch));
    for img in images {
        if img.len() != per {
            return refuse(format!("an image has {} values, not {per}", img.len()));
        }
        x.push(
            schedule
                .input
                .quantize(img)
                .map_err(|e| EnclaveError::Protocol(e.to_string()))?,
        );
    }
    Ok(x)
}

/// Pads quantized images with zero images to the model's batch.
pub(crate) fn pad_to_batch(schedule: &hetee_proto::Schedule, x: &mut Vec<Vec<i64>>) {
    let per: usize = schedule.input_shape.iter().product();
    x.resize(schedule.batch, vec![0; per]);
}
