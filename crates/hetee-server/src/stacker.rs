//! Stacks concurrent thin queries of one model into shared batches.
//!
//! A model registered for a batch of B images costs the host the same
//! products whether a query holds one image or B. When many data providers
//! send thin queries at once, the [`Stacker`] gathers them (for at most a
//! short window, or until B are waiting) and runs them as one stacked query
//! ([`run_stack`]): the enclave lays their images side by side, the host
//! evaluates each product once, and each data provider gets its own result,
//! sealed to it.
//!
//! There is no extra thread: the first caller to find no running stack
//! leads it (gathers, runs, hands out results), the others wait for their
//! answer. A leader whose own answer is in hands the lead to the next
//! waiter. Models registered for one image per query are not stacked.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hetee_proto::host::StackMember;
use hetee_proto::ids::{ModelId, SessionId};

use crate::host_model::HostModel;
use crate::stage_loop::{run_stack, EnclaveCall, QueryError, QueryTrace};
use crate::supervisor::CallError;

/// Stacked queries of one model that may run at once (so that the host
/// evaluates one while the enclave works on another).
const RUNNING_PER_MODEL: usize = 2;

/// The longest a query waits for others, in windows, while the model is idle.
const MAX_WAIT_WINDOWS: u32 = 8;

/// How a stacked member's query ended.
pub type StackAnswer = Result<(Vec<u8>, QueryTrace, usize), QueryError>;

/// What a leader's wait for members ended with.
enum Gathered {
    /// Members for a stack.
    Members(Vec<Waiter>),
    /// This leader's own reply.
    Reply(Reply),
    /// Nobody can answer this leader any more.
    Gone,
}

enum Reply {
    /// The member's sealed result, the stack's figures and its size.
    Done(StackAnswer),
    /// Lead the next stack.
    Lead,
}

struct Waiter {
    session: SessionId,
    /// The sealed query; empty once the enclave has opened it (deferred).
    payload: Vec<u8>,
    reply: Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// Leaders (at most [`RUNNING_PER_MODEL`]).
    running: usize,
    /// Stacks being evaluated right now.
    executing: usize,
    /// When the last query arrived.
    last_arrival: Option<Instant>,
    /// The model's batch, once an enclave reported it.
    batch: Option<usize>,
}

/// Gathers concurrent thin queries per model into stacked queries.
pub struct Stacker {
    window: Duration,
    queues: Mutex<HashMap<ModelId, Queue>>,
    arrived: Condvar,
}

impl Stacker {
    /// A stacker that waits at most `window` for a stack to fill.
    pub fn new(window: Duration) -> Self {
        Stacker {
            window,
            queues: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ModelId, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether thin queries of `model` are worth stacking: not when the
    /// model is known to take one image per query.
    pub fn stacks(&self, model: &ModelId) -> bool {
        self.lock()
            .get(model)
            .and_then(|q| q.batch)
            .is_none_or(|b| b > 1)
    }

    /// Runs the thin query of `session` in a stacked query of `model`;
    /// returns its sealed result, the stack's figures and how many
    /// sessions the stack held.
    pub fn submit(
        &self,
        enclave: &dyn EnclaveCall,
        host: &HostModel,
        model: ModelId,
        session: SessionId,
        payload: Vec<u8>,
    ) -> StackAnswer {
        let (tx, rx) = channel();
        let lead = {
            let mut queues = self.lock();
            let q = queues.entry(model).or_default();
            q.waiting.push_back(Waiter {
                session,
                payload,
                reply: tx,
            });
            q.last_arrival = Some(Instant::now());
            self.arrived.notify_all();
            if q.running < RUNNING_PER_MODEL {
                q.running += 1;
                true
            } else {
                false
            }
        };
        if lead {
            self.lead(enclave, host, model, session, &rx)
        } else {
            self.wait(enclave, host, model, session, &rx)
        }
    }

    fn wait(
        &self,
        enclave: &dyn EnclaveCall,
        host: &HostModel,
        model: ModelId,
        session: SessionId,
        rx: &Receiver<Reply>,
    ) -> StackAnswer {
        match rx.recv() {
            Ok(Reply::Done(answer)) => answer,
            Ok(Reply::Lead) => self.lead(enclave, host, model, session, rx),
            Err(_) => Err(QueryError::Unexpected("the stack's leader is gone".into())),
        }
    }

    /// Runs stacks until this caller's own answer is in, then hands the
    /// lead on (or gives it up when nobody waits).
    fn lead(
        &self,
        enclave: &dyn EnclaveCall,
        host: &HostModel,
        model: ModelId,
        me: SessionId,
        rx: &Receiver<Reply>,
    ) -> StackAnswer {
        loop {
            let answer = match self.gather(&model, rx) {
                Gathered::Members(members) => {
                    self.run(enclave, host, model, members);
                    continue;
                }
                // Handed the lead while leading: one leader, not two.
                Gathered::Reply(Reply::Lead) => {
                    self.release(&model);
                    continue;
                }
                Gathered::Reply(Reply::Done(answer)) => answer,
                Gathered::Gone => {
                    self.release(&model);
                    return Err(QueryError::Unexpected("the stack's leader is gone".into()));
                }
            };
            let mut queues = self.lock();
            let q = queues.entry(model).or_default();
            match q.waiting.front() {
                Some(next) if next.session != me => {
                    let _ = next.reply.send(Reply::Lead);
                }
                _ => q.running = q.running.saturating_sub(1),
            }
            return answer;
        }
    }

    fn release(&self, model: &ModelId) {
        if let Some(q) = self.lock().get_mut(model) {
            q.running = q.running.saturating_sub(1);
        }
        self.arrived.notify_all();
    }

    /// Waits for a batch of waiters, then takes them (and counts the stack
    /// as executing); or returns this leader's own answer once it is in.
    /// A stack starts when the batch is full, or when no other stack of the
    /// model is being evaluated and no query arrived for the window (at
    /// most [`MAX_WAIT_WINDOWS`] windows in all). While another stack is
    /// evaluated the host is busy anyway, so waiting for more costs nothing.
    fn gather(&self, model: &ModelId, rx: &Receiver<Reply>) -> Gathered {
        let start = Instant::now();
        let cap = start + self.window * MAX_WAIT_WINDOWS;
        let mut queues = self.lock();
        loop {
            match rx.try_recv() {
                Ok(reply) => return Gathered::Reply(reply),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Gathered::Gone,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            let q = queues.entry(*model).or_default();
            let want = q.batch.unwrap_or(usize::MAX);
            let now = Instant::now();
            let quiet_since = q.last_arrival.map_or(start, |t| t.max(start));
            let idle = q.executing == 0 && now >= quiet_since + self.window;
            if q.waiting.len() >= want || (!q.waiting.is_empty() && (idle || now >= cap)) {
                let n = q.waiting.len().min(want);
                q.executing += 1;
                return Gathered::Members(q.waiting.drain(..n).collect());
            }
            let until = if q.executing == 0 && !q.waiting.is_empty() {
                (quiet_since + self.window).min(cap)
            } else {
                now + self.window
            };
            let wait = until
                .saturating_duration_since(now)
                .max(Duration::from_micros(100));
            queues = match self.arrived.wait_timeout(queues, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Runs one stack and answers its members; deferred members go back
    /// to the front of the queue.
    fn run(
        &self,
        enclave: &dyn EnclaveCall,
        host: &HostModel,
        model: ModelId,
        mut members: Vec<Waiter>,
    ) {
        let named = members
            .iter_mut()
            .map(|w| StackMember {
                session: w.session,
                payload: std::mem::take(&mut w.payload),
            })
            .collect();
        let mut by_session: HashMap<SessionId, Waiter> =
            members.into_iter().map(|w| (w.session, w)).collect();
        let outcome = run_stack(enclave, host, model, named);
        {
            let mut queues = self.lock();
            let q = queues.entry(model).or_default();
            q.executing = q.executing.saturating_sub(1);
        }
        self.arrived.notify_all();
        match outcome {
            Ok(run) => {
                let size = run.results.len();
                for (session, payload) in run.results {
                    if let Some(w) = by_session.remove(&session) {
                        let _ = w
                            .reply
                            .send(Reply::Done(Ok((payload, run.trace.clone(), size))));
                    }
                }
                for (session, why) in run.refused {
                    if let Some(w) = by_session.remove(&session) {
                        let refused = QueryError::Enclave(CallError::Refused(why));
                        let _ = w.reply.send(Reply::Done(Err(refused)));
                    }
                }
                let mut queues = self.lock();
                let q = queues.entry(model).or_default();
                q.batch = Some(run.batch);
                for session in run.deferred.into_iter().rev() {
                    if let Some(w) = by_session.remove(&session) {
                        q.waiting.push_front(w);
                    }
                }
                drop(queues);
                for (_, w) in by_session {
                    let _ = w.reply.send(Reply::Done(Err(QueryError::Unexpected(
                        "the enclave left this session out of the stack".into(),
                    ))));
                }
            }
            Err(e) => {
                for (_, w) in by_session {
                    let _ = w.reply.send(Reply::Done(Err(duplicate(&e))));
                }
            }
        }
    }
}

/// The same failure for every member of a stack that failed as a whole.
fn duplicate(e: &QueryError) -> QueryError {
    match e {
        QueryError::Enclave(CallError::Refused(m)) => {
            QueryError::Enclave(CallError::Refused(m.clone()))
        }
        QueryError::Enclave(CallError::Conflict(m)) => {
            QueryError::Enclave(CallError::Conflict(m.clone()))
        }
        QueryError::Host { stage, message } => QueryError::Host {
            stage: *stage,
            message: message.clone(),
        },
        other => QueryError::Unexpected(format!("the stacked query failed: {other}")),
    }
}
