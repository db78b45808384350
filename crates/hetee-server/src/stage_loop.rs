//! The host's half of a query, one loop for every path: the HTTP server,
//! `hetee run`, `bench`, `demo --in-process` and the tests all start a query
//! and feed the enclave stage by stage through [`run_query`]. The host
//! evaluates each linear stage on ciphertexts ([`HostModel::evaluate`]) and
//! hands the result to the enclave, which answers with the next stage's
//! input or, after the last stage, the result sealed to the data provider.

use std::time::Instant;

use hetee_proto::api::StageStats;
use hetee_proto::host::StackMember;
use hetee_proto::ids::{ModelId, SessionId};
use hetee_proto::{Request, Response};
use serde::Serialize;

use crate::host_model::HostModel;
use crate::launcher::LinkError;
use crate::supervisor::{CallError, Supervisor};

/// Anything that answers enclave requests: the supervised enclave process
/// or an in-process enclave. A refusal is an `Err`.
pub trait EnclaveCall: Sync {
    /// Sends `req`; returns the answer and the peak bytes the enclave
    /// allocated for it (0 when unknown).
    fn call_enclave(&self, req: Request) -> Result<(Response, usize), CallError>;

    /// Whether the enclave works on its own threads (another process), so
    /// that a caller waiting for it leaves this process's cores free.
    fn separate(&self) -> bool {
        false
    }
}

impl EnclaveCall for Supervisor {
    fn call_enclave(&self, req: Request) -> Result<(Response, usize), CallError> {
        self.call_measured(req)
    }

    fn separate(&self) -> bool {
        self.is_process()
    }
}

/// Why a query failed on the host's side.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The enclave refused or is unreachable.
    #[error(transparent)]
    Enclave(#[from] CallError),
    /// The host could not evaluate a stage (bad ciphertexts from the client).
    #[error("stage {stage}: {message}")]
    Host {
        /// The stage.
        stage: usize,
        /// What went wrong.
        message: String,
    },
    /// The enclave answered out of protocol.
    #[error("the enclave answered out of protocol: {0}")]
    Unexpected(String),
}

impl From<LinkError> for QueryError {
    fn from(e: LinkError) -> Self {
        QueryError::Enclave(CallError::Link(e))
    }
}

/// What one query cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryTrace {
    /// Enclave time starting the query (input check, thin encryption) (ms).
    pub start_ms: f64,
    /// Per stage.
    pub stages: Vec<StageStats>,
}

impl QueryTrace {
    /// Host time summed over stages.
    pub fn host_ms(&self) -> f64 {
        self.stages.iter().map(|s| s.host_ms).sum()
    }
    /// Enclave time: the start and every stage.
    pub fn enclave_ms(&self) -> f64 {
        self.start_ms + self.stages.iter().map(|s| s.enclave_ms).sum::<f64>()
    }
}

/// Starts the query of `session` on `model` (`payload` is the data
/// provider's sealed query, `input` its stage-0 ciphertexts, empty for a
/// thin query) and runs every stage. Returns the result sealed to the data
/// provider and the figures.
pub fn run_query(
    enclave: &dyn EnclaveCall,
    host: &HostModel,
    session: SessionId,
    model: ModelId,
    payload: Vec<u8>,
    input: Vec<Vec<u8>>,
) -> Result<(Vec<u8>, QueryTrace), QueryError> {
    let mut trace = QueryTrace::default();
    let start = |input| {
        let te = Instant::now();
        let started = enclave.call_enclave(Request::StartQuery {
            session,
            model_id: model,
            payload,
            input,
        });
        (started, ms(te))
    };
    // An HE query's input is the host's already. When the enclave is its
    // own process, the host evaluates stage 0 while the enclave checks and
    // admits the query (a thread of its own waits for the answer), so the
    // round trip costs the query nothing. Nothing reaches the enclave from
    // that evaluation before the start is answered. An enclave in this
    // process would take the same cores: it starts the query first.
    let (started, start_ms, first) = if input.is_empty() || !enclave.separate() {
        let (started, ms) = start(input.clone());
        (started, ms, None)
    } else {
        std::thread::scope(|s| {
            // No thread to wait: nothing was sent, the query is not spent.
            let waiter = std::thread::Builder::new()
                .name("hetee-start".into())
                .spawn_scoped(s, || start(input.clone()))
                .map_err(|e| {
                    LinkError::Launch(format!("no thread to wait for the enclave: {e}"))
                })?;
            let first = evaluate_stage(host, 0, &input);
            let (started, ms) = waiter.join().map_err(|_| {
                LinkError::Dead("the thread waiting for the query's start stopped".into())
            })?;
            Ok::<_, QueryError>((started, ms, Some(first)))
        })?
    };
    let Response::QueryStarted { input: thin, .. } = started?.0 else {
        return Err(QueryError::Unexpected("not QueryStarted".into()));
    };
    trace.start_ms = start_ms;
    tracing::debug!(start_ms, "query started");
    let first = match (first, thin) {
        (Some(first), _) => First::Evaluated(first?),
        (None, Some(thin)) => First::Input(thin),
        (None, None) => First::Input(input),
    };
    match run_stages(enclave, host, session, first, &mut trace)? {
        Response::Finished { payload } => Ok((payload, trace)),
        _ => Err(QueryError::Unexpected("not Finished".into())),
    }
}

/// Stage 0 as a query starts: its input, or its output already evaluated
/// (with the host's time for it).
enum First {
    Input(Vec<Vec<u8>>),
    Evaluated((Vec<Vec<u8>>, f64)),
}

/// The host's evaluation of stage `k` on `cts`, and its time (ms).
fn evaluate_stage(
    host: &HostModel,
    k: usize,
    cts: &[Vec<u8>],
) -> Result<(Vec<Vec<u8>>, f64), QueryError> {
    let th = Instant::now();
    let outs = host.evaluate(k, cts).map_err(|e| QueryError::Host {
        stage: k,
        message: e.to_string(),
    })?;
    Ok((outs, ms(th)))
}

/// What a stacked query did with each session it named.
#[derive(Debug, Default)]
pub struct StackRun {
    /// The model's batch, as the enclave reported it.
    pub batch: usize,
    /// Results sealed to each started member, in stacking order.
    pub results: Vec<(SessionId, Vec<u8>)>,
    /// Members opened but left for a later stack (batch full).
    pub deferred: Vec<SessionId>,
    /// Members refused, with why.
    pub refused: Vec<(SessionId, String)>,
    /// The figures of the whole stacked query.
    pub trace: QueryTrace,
}

/// Stacks several thin sessions of `model` in one query (the enclave packs
/// their images side by side) and runs every stage once for all of them.
pub fn run_stack(
    enclave: &dyn EnclaveCall,
    host: &HostModel,
    model: ModelId,
    members: Vec<StackMember>,
) -> Result<StackRun, QueryError> {
    let mut trace = QueryTrace::default();
    let te = Instant::now();
    let (started, _) = enclave.call_enclave(Request::StartStack {
        model_id: model,
        members,
    })?;
    let Response::StackStarted {
        group,
        batch,
        input,
        deferred,
        refused,
        ..
    } = started
    else {
        return Err(QueryError::Unexpected("not StackStarted".into()));
    };
    trace.start_ms = ms(te);
    let mut run = StackRun {
        batch: batch as usize,
        deferred,
        refused,
        ..Default::default()
    };
    match run_stages(enclave, host, group, First::Input(input), &mut trace)? {
        Response::StackFinished { payloads } => run.results = payloads,
        _ => return Err(QueryError::Unexpected("not StackFinished".into())),
    }
    run.trace = trace;
    Ok(run)
}

/// Runs every stage of the running query `session` from stage 0's input
/// (or its output); returns the enclave's last answer (`Finished` or
/// `StackFinished`).
fn run_stages(
    enclave: &dyn EnclaveCall,
    host: &HostModel,
    session: SessionId,
    first: First,
    trace: &mut QueryTrace,
) -> Result<Response, QueryError> {
    let (mut cts, mut evaluated) = match first {
        First::Input(cts) => (cts, None),
        First::Evaluated(out) => (Vec::new(), Some(out)),
    };
    for k in 0..host.stages() {
        let packing = host
            .packing(k)
            .ok_or_else(|| QueryError::Unexpected(format!("no stage {k}")))?;
        let mut s = StageStats {
            products: packing.product_count(),
            enclave_decrypts: packing.output_count(),
            ..Default::default()
        };
        let (outs, host_ms) = match evaluated.take() {
            Some(out) => out,
            None => evaluate_stage(host, k, &cts)?,
        };
        s.host_ms = host_ms;
        s.bytes_to_enclave = outs.iter().map(Vec::len).sum();
        let te = Instant::now();
        let (resp, peak) = enclave.call_enclave(Request::StageResult {
            session,
            stage: k as u32,
            ciphertexts: outs,
        })?;
        s.enclave_ms = ms(te);
        s.enclave_working_peak = peak;
        tracing::debug!(
            stage = k,
            host_ms = s.host_ms,
            enclave_ms = s.enclave_ms,
            "stage"
        );
        match resp {
            Response::NextInput { ciphertexts, .. } => {
                s.enclave_encrypts = ciphertexts.len();
                s.bytes_from_enclave = ciphertexts.iter().map(Vec::len).sum();
                trace.stages.push(s);
                cts = ciphertexts;
            }
            done @ (Response::Finished { .. } | Response::StackFinished { .. }) => {
                s.bytes_from_enclave = match &done {
                    Response::Finished { payload } => payload.len(),
                    Response::StackFinished { payloads } => {
                        payloads.iter().map(|(_, p)| p.len()).sum()
                    }
                    _ => 0,
                };
                trace.stages.push(s);
                return Ok(done);
            }
            _ => return Err(QueryError::Unexpected(format!("at stage {k}"))),
        }
    }
    Err(QueryError::Unexpected(
        "no result after the last stage".into(),
    ))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
