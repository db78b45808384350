//! Stacks concurrent thin queries of one model into shared batches.
//!
//! A model registered for a batch of B images costs the host the same
//! products whether a query holds one image or B. When many data providers
//! send thin queries at once, the [`Stacker`] gathers them (for at most a
//! short while, or until B are waiting) and runs them as one stacked query
//! ([`run_stack`]): the enclave lays their images side by side, the host
//! evaluates each product once, and each data provider gets its own result,
//! sealed to it.
//!
//! There is no extra thread: the first caller to find no running stack
//! leads it (gathers, runs, hands out results), the others wait for their
//! answer. A leader whose own answer is in hands the lead to the next
//! waiter. Models registered for one image per query are not stacked.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hetee_proto::host::StackMember;
use hetee_proto::ids::{ModelId, SessionId};
use tracing::debug;

use crate::host_model::HostModel;
use crate::stage_loop::{run_stack, EnclaveCall, QueryError, QueryTrace};
use crate::supervisor::CallError;

/// Stacked queries of one model that may run at once (so that the host
/// evaluates one while the enclave works on another).
const RUNNING_PER_MODEL: usize = 2;

/// The longest a query waits for others, in windows, while the model is idle.
const MAX_WAIT_WINDOWS: u32 = 25;

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
    /// The model's batch, once an enclave reported it.
    batch: Option<usize>,
    /// Sessions the last stack named: clients that send one query after
    /// another come back about together.
    expected: usize,
    /// How long the last stack took: a stack started early costs the
    /// host as much as a full one, so its members' return is worth
    /// waiting for up to that long.
    last_run: Duration,
}

impl Queue {
    /// The longest a query waits for others while the model is idle:
    /// [`MAX_WAIT_WINDOWS`] windows, or the last stack's time if longer
    /// (a loaded host answers slower, and its clients come back slower).
    fn max_wait(&self, window: Duration) -> Duration {
        (window * MAX_WAIT_WINDOWS).max(self.last_run)
    }
}

/// One thin query's view of its stack: where to run it, and how many
/// sessions of its model are open but have not sent their query yet.
pub struct Job<'a> {
    /// The enclave.
    pub enclave: &'a dyn EnclaveCall,
    /// The model's weights.
    pub host: &'a HostModel,
    /// The model.
    pub model: ModelId,
    /// Sessions of the model that are open (or being opened, or part of
    /// a burst of opens) and may soon send a query.
    pub coming: &'a (dyn Fn() -> usize + Sync),
    /// Marks this query as no longer to come; called under the stacker's
    /// lock once the query waits in its queue.
    pub queued: &'a (dyn Fn() + Sync),
}

/// Gathers concurrent thin queries per model into stacked queries.
pub struct Stacker {
    window: Duration,
    queues: Mutex<HashMap<ModelId, Queue>>,
    arrived: Condvar,
}

impl Stacker {
    /// A stacker whose queries wait for others at most
    /// `MAX_WAIT_WINDOWS` × `window` (or the last stack's time, if
    /// longer) while their model is idle.
    pub fn new(window: Duration) -> Self {
        Stacker {
            window,
            queues: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
        }
    }

    /// The stacker's time unit (`--stack-window-ms`).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The longest a query of `model` waits for others while the model is
    /// idle: `MAX_WAIT_WINDOWS` windows, or as long as the model's last
    /// stack took if that is longer.
    pub fn max_wait(&self, model: &ModelId) -> Duration {
        let queues = self.lock();
        match queues.get(model) {
            Some(q) => q.max_wait(self.window),
            None => self.window * MAX_WAIT_WINDOWS,
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

    /// Runs the thin query of `session` in a stacked query; returns its
    /// sealed result, the stack's figures and how many sessions it held.
    pub fn submit(&self, job: &Job<'_>, session: SessionId, payload: Vec<u8>) -> StackAnswer {
        let (tx, rx) = channel();
        let lead = {
            let mut queues = self.lock();
            let q = queues.entry(job.model).or_default();
            q.waiting.push_back(Waiter {
                session,
                payload,
                reply: tx,
            });
            (job.queued)();
            self.arrived.notify_all();
            if q.running < RUNNING_PER_MODEL {
                q.running += 1;
                true
            } else {
                false
            }
        };
        if !lead {
            match rx.recv() {
                Ok(Reply::Done(answer)) => return answer,
                Ok(Reply::Lead) => {}
                Err(_) => return Err(QueryError::Unexpected("the stack's leader is gone".into())),
            }
        }
        self.lead(job, session, &rx)
    }

    /// Runs stacks until this caller's own answer is in, then hands the
    /// lead on (or gives it up when nobody waits).
    fn lead(&self, job: &Job<'_>, me: SessionId, rx: &Receiver<Reply>) -> StackAnswer {
        loop {
            let answer = match self.gather(job, rx) {
                Gathered::Members(members) => {
                    self.run(job, members);
                    continue;
                }
                // Handed the lead while leading: one leader, not two.
                Gathered::Reply(Reply::Lead) => {
                    self.release(&job.model);
                    continue;
                }
                Gathered::Reply(Reply::Done(answer)) => answer,
                Gathered::Gone => {
                    self.release(&job.model);
                    return Err(QueryError::Unexpected("the stack's leader is gone".into()));
                }
            };
            let mut queues = self.lock();
            let q = queues.entry(job.model).or_default();
            match q.waiting.front() {
                Some(next) if next.session != me => {
                    let _ = next.reply.send(Reply::Lead);
                }
                _ => q.running = q.running.saturating_sub(1),
            }
            drop(queues);
            // The next leader may be a leader already, waiting in `gather`.
            self.arrived.notify_all();
            return answer;
        }
    }

    fn release(&self, model: &ModelId) {
        if let Some(q) = self.lock().get_mut(model) {
            q.running = q.running.saturating_sub(1);
        }
        self.arrived.notify_all();
    }

    /// Waits for members, then takes them (and counts the stack as
    /// executing); or returns this leader's own answer once it is in.
    ///
    /// A stack starts at once when the batch is full. Otherwise it waits
    /// while another stack of the model is evaluated (the host is busy
    /// anyway), and then, with the model idle, until as many queries wait
    /// as the last stack named (clients that query one after another come
    /// back together) and no session of the model that was active within
    /// [`Stacker::max_wait`] is still to send its query (a session idle
    /// between queries for longer is not waited for); at most
    /// [`MAX_WAIT_WINDOWS`] windows, or the last stack's time if longer.
    fn gather(&self, job: &Job<'_>, rx: &Receiver<Reply>) -> Gathered {
        let mut idle_since: Option<Instant> = None;
        let mut queues = self.lock();
        loop {
            match rx.try_recv() {
                Ok(reply) => return Gathered::Reply(reply),
                Err(TryRecvError::Disconnected) => return Gathered::Gone,
                Err(TryRecvError::Empty) => {}
            }
            let q = queues.entry(job.model).or_default();
            let want = q.batch.unwrap_or(usize::MAX);
            let now = Instant::now();
            let go = if q.waiting.len() >= want {
                true
            } else if q.waiting.is_empty() || q.executing > 0 {
                idle_since = None;
                false
            } else {
                let since = *idle_since.get_or_insert(now);
                let enough = q.waiting.len() >= q.expected.max(1);
                (enough && (job.coming)() == 0) || now >= since + q.max_wait(self.window)
            };
            if go {
                let n = q.waiting.len().min(want);
                q.executing += 1;
                return Gathered::Members(q.waiting.drain(..n).collect());
            }
            // Counting windows while the model is idle: look again soon.
            // Otherwise an arrival, the end of a stack or a reply wakes this
            // leader; the long timeout is only a safety net.
            let wait = match idle_since {
                Some(_) => (self.window / 4).max(Duration::from_micros(200)),
                None => self.window * MAX_WAIT_WINDOWS,
            };
            queues = match self.arrived.wait_timeout(queues, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Runs one stack and answers its members; deferred members go back
    /// to the front of the queue.
    fn run(&self, job: &Job<'_>, mut members: Vec<Waiter>) {
        let named: Vec<StackMember> = members
            .iter_mut()
            .map(|w| StackMember {
                session: w.session,
                payload: std::mem::take(&mut w.payload),
            })
            .collect();
        let named_count = named.len();
        let mut by_session: HashMap<SessionId, Waiter> =
            members.into_iter().map(|w| (w.session, w)).collect();
        let t0 = Instant::now();
        let outcome = run_stack(job.enclave, job.host, job.model, named);
        let mut deferred = Vec::new();
        match outcome {
            Ok(run) => {
                let size = run.results.len();
                let stages = &run.trace.stages;
                debug!(
                    named = named_count,
                    started = size,
                    deferred = run.deferred.len(),
                    refused = run.refused.len(),
                    ms = t0.elapsed().as_secs_f64() * 1e3,
                    start_ms = run.trace.start_ms,
                    host_ms = run.trace.host_ms(),
                    stages_enclave_ms = ?stages.iter().map(|s| s.enclave_ms).collect::<Vec<_>>(),
                    "stacked query"
                );
                for (session, payload) in run.results {
                    if let Some(w) = by_session.remove(&session) {
                        let answer = Ok((payload, run.trace.clone(), size));
                        let _ = w.reply.send(Reply::Done(answer));
                    }
                }
                for (session, why) in run.refused {
                    if let Some(w) = by_session.remove(&session) {
                        let refused = QueryError::Enclave(CallError::Refused(why));
                        let _ = w.reply.send(Reply::Done(Err(refused)));
                    }
                }
                deferred = run
                    .deferred
                    .iter()
                    .filter_map(|s| by_session.remove(s))
                    .collect();
                {
                    let mut queues = self.lock();
                    let q = queues.entry(job.model).or_default();
                    q.batch = Some(run.batch);
                    // Members left for the next stack come back at once.
                    q.expected = named_count.min(run.batch);
                    q.last_run = t0.elapsed();
                }
                for (_, w) in by_session {
                    let _ = w.reply.send(Reply::Done(Err(QueryError::Unexpected(
                        "the enclave left this session out of the stack".into(),
                    ))));
                }
            }
            Err(e) => {
                debug!(named = named_count, error = %e, "stacked query failed");
                for (_, w) in by_session {
                    let _ = w.reply.send(Reply::Done(Err(duplicate(&e))));
                }
            }
        }
        let mut queues = self.lock();
        let q = queues.entry(job.model).or_default();
        for w in deferred.into_iter().rev() {
            q.waiting.push_front(w);
        }
        q.executing = q.executing.saturating_sub(1);
        drop(queues);
        self.arrived.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_last_stack_stretches_the_longest_wait() {
        let window = Duration::from_millis(2);
        let mut q = Queue::default();
        assert_eq!(q.max_wait(window), window * MAX_WAIT_WINDOWS);
        q.last_run = Duration::from_millis(20);
        assert_eq!(q.max_wait(window), window * MAX_WAIT_WINDOWS);
        q.last_run = Duration::from_millis(180);
        assert_eq!(q.max_wait(window), Duration::from_millis(180));
    }
}
