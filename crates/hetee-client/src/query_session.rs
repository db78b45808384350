//! A data provider's session with one model: one attestation check and one
//! Noise handshake, then any number of queries on the same channel. The
//! enclave admits and spends each query on its own and signs each result
//! bound to that query's input; the channel's nonces stop the host from
//! replaying or reordering the queries. The session is closed when dropped
//! (or by [`QuerySession::close`]); the server also closes it after it has
//! been idle for a while (`hetee serve --session-idle-secs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hetee_proto::api::{KeysInfo, QueryDone};
use hetee_proto::bodies::QueryBody;
use hetee_proto::input_binding::encrypt_input;
use hetee_proto::messages::{input_digest, thin_input_digest, ClientMessage, EnclaveMessage};
use hetee_proto::plan::QueryPlan;
use zeroize::Zeroizing;

use crate::channel::Session;
use crate::data_provider::{Answer, Receipt, Ticket};
use crate::relay::Relay;
use crate::trust::AttestedKeys;

/// How long a client keeps reusing a session since its last answer. Well
/// under the server's default idle timeout (300 s), so that a reused session
/// is still open on the server.
pub const REUSE_FOR: Duration = Duration::from_secs(60);

/// An open session with one model, carrying queries one after another.
pub struct QuerySession {
    api: Arc<dyn Relay>,
    session: Session,
    keys: Arc<(AttestedKeys, Arc<KeysInfo>)>,
    plan: QueryPlan,
    model_id: [u8; 16],
    /// Queries answered on this session.
    queries: u64,
    last_answer: Instant,
    /// Closed (or known dead): nothing more is sent.
    closed: bool,
}

impl QuerySession {
    /// A session that said hello to `model_id` and got `plan` from the
    /// enclave attested by `keys`.
    pub(crate) fn new(
        api: Arc<dyn Relay>,
        session: Session,
        keys: Arc<(AttestedKeys, Arc<KeysInfo>)>,
        plan: QueryPlan,
        model_id: [u8; 16],
    ) -> Result<Self> {
        if plan.he != keys.0.he || plan.model_id != model_id {
            api.close_session(&session.id);
            bail!("the enclave's plan does not match the attested keys; refusing");
        }
        Ok(QuerySession {
            api,
            session,
            keys,
            plan,
            model_id,
            queries: 0,
            last_answer: Instant::now(),
            closed: false,
        })
    }

    /// The session id on the server (hex).
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// Queries answered on this session so far.
    pub fn queries(&self) -> u64 {
        self.queries
    }

    /// Whether the session can take another query: open, and answered
    /// within [`REUSE_FOR`].
    pub fn reusable(&self) -> bool {
        !self.closed && self.last_answer.elapsed() < REUSE_FOR
    }

    /// One query of up to the model's batch of images: the input is
    /// encrypted here under the attested key.
    pub fn query(&mut self, xs: &[&[f32]]) -> Result<Answer> {
        self.run(xs, false, &Ticket::new())
    }

    /// A thin query: the input goes to the enclave over the channel and
    /// the enclave encrypts it (for clients that cannot run HE).
    pub fn query_thin(&mut self, xs: &[&[f32]]) -> Result<Answer> {
        self.run(xs, true, &Ticket::new())
    }

    /// One attempt at the query of `ticket` (thin or not): a retry of a
    /// query whose attempt failed (on this session or another) passes the
    /// same ticket and images, so a budgeted model counts the query once.
    pub fn attempt(&mut self, xs: &[&[f32]], thin: bool, ticket: &Ticket) -> Result<Answer> {
        self.run(xs, thin, ticket)
    }

    /// Closes the session on the server (best effort).
    pub fn close(mut self) {
        self.shut();
    }

    /// Drops the session without telling the server (which failed, or is
    /// gone): it closes the session when it expires.
    pub fn forget(mut self) {
        self.closed = true;
    }

    fn shut(&mut self) {
        if !self.closed {
            self.closed = true;
            self.api.close_session(&self.session.id);
        }
    }

    fn run(&mut self, xs: &[&[f32]], thin: bool, ticket: &Ticket) -> Result<Answer> {
        if self.closed {
            bail!("this session is closed; open a new one");
        }
        // Any failure ends the session: the server and the enclave have
        // closed their side (and the channel may be out of step).
        let r = self.run_once(xs, thin, ticket);
        match &r {
            Ok(_) => {
                self.queries += 1;
                self.last_answer = Instant::now();
            }
            Err(_) => self.shut(),
        }
        r
    }

    fn run_once(&mut self, xs: &[&[f32]], thin: bool, ticket: &Ticket) -> Result<Answer> {
        let t0 = Instant::now();
        let keys = self.keys.clone();
        let (keys, info) = (&keys.0, &keys.1);
        // A model with ops before its first linear layer takes its input
        // over the channel: the enclave runs them before encrypting.
        let (msg, cts, digest) = if thin || self.plan.input_in_enclave {
            let images = Zeroizing::new(xs.iter().map(|x| x.to_vec()).collect::<Vec<_>>());
            let digest = thin_input_digest(&images);
            let msg = ClientMessage::ThinQuery {
                query_id: ticket.query_id,
                images,
            };
            (msg, Vec::new(), digest)
        } else {
            let polys = self.plan.pack_input(xs)?;
            // Secret randomness, revealed only to the enclave: it proves
            // that this client made these ciphertexts. The ticket's, so a
            // retry makes the same ciphertexts.
            let seed = ticket.seed.clone();
            let cts = encrypt_input(&keys.public_key, &keys.par, &polys, &seed)?;
            let digest = input_digest(&cts);
            let msg = ClientMessage::Query {
                query_id: ticket.query_id,
                input_digest: digest,
                images: xs.len() as u32,
                seed,
            };
            (msg, cts, digest)
        };
        let payload = self.session.seal(&msg)?;
        let sent_thin = cts.is_empty();
        // Ciphertexts, or the sealed input of a thin query.
        let bytes_up: usize = cts.iter().map(Vec::len).sum::<usize>() + payload.len();
        let t_sealed = t0.elapsed();
        let done: QueryDone = self.api.query(
            &self.session.id,
            &QueryBody {
                payload,
                input: cts,
            },
        )?;
        let t_answered = t0.elapsed();
        let EnclaveMessage::Result { result, signature } =
            self.session.open_reply(&done.payload)?
        else {
            bail!("the enclave sent no result");
        };
        let receipt = Receipt {
            result,
            signature: hetee_attest::evidence::hex(&signature),
            keys: info.clone(),
        };
        receipt.verify_against(keys)?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            session = %self.session.id,
            nth = self.queries + 1,
            thin = sent_thin,
            seal_ms = ms(t_sealed),
            query_ms = ms(t_answered - t_sealed),
            verify_ms = ms(t0.elapsed() - t_answered),
            "client query"
        );
        let r = &receipt.result;
        if r.images as usize != xs.len() || r.model_id != self.model_id || r.input_digest != digest
        {
            bail!("the enclave's result does not match the query");
        }
        let classes = r.classes.max(1) as usize;
        let per_label = r.labels.len() / xs.len().max(1);
        if !r.logits.is_empty() && r.logits.len() != xs.len() * classes {
            bail!("the enclave's result has the wrong size");
        }
        Ok(Answer {
            logits: r.logits.chunks(classes).map(<[f32]>::to_vec).collect(),
            labels: r
                .labels
                .chunks(per_label.max(1))
                .map(<[u32]>::to_vec)
                .collect(),
            host_ms: done.host_ms,
            enclave_ms: done.enclave_ms,
            bytes_up,
            bytes_down: done.payload.len() * 3 / 4,
            stages: done.stages,
            stacked: done.stacked.max(1),
            receipt,
        })
    }
}

impl Drop for QuerySession {
    fn drop(&mut self) {
        self.shut();
    }
}
