//! A data provider's query on the host: the stage loop, or a stacked query
//! shared with other thin queries of the same model.

use std::time::Instant;

use hetee_proto::api::{b64, unb64, QueryDone, RunQuery};
use hetee_proto::bodies::QueryBody;
use hetee_proto::ids::{id_hex, ModelId, SessionId};
use tracing::info;

use super::{now_unix, parse_id, ApiError, ApiResult, App};
use crate::stacker::Job;
use crate::stage_loop::run_query;

impl App {
    /// `POST /v1/sessions/{id}/query`: runs every linear stage on the host
    /// and every nonlinear step in the enclave; returns the sealed result.
    /// The session stays open for the client's next query (a failed query
    /// ends it).
    pub fn query(&self, session: &str, req: RunQuery) -> ApiResult<QueryDone> {
        let payload = unb64(&req.payload, "payload").map_err(ApiError::bad)?;
        let input = req
            .input
            .iter()
            .map(|c| unb64(c, "input"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad)?;
        self.query_bytes(session, QueryBody { payload, input })
    }

    /// `POST /v1/sessions/{id}/query` with the query as bytes (binary body,
    /// or the in-process relay).
    pub fn query_bytes(&self, session: &str, req: QueryBody) -> ApiResult<QueryDone> {
        let session = parse_id(session, "session")?;
        let model = self.claim(&session)?;
        let nth = self.begin_query(&session);
        let r = self.query_inner(session, model, req);
        // After a result the session waits for the client's next query; a
        // failed query ends it (the enclave has closed its side).
        self.release(&session, r.is_ok());
        let job = serde_json::json!({
            "session": id_hex(&session),
            "query": nth,
            "model_id": model.map(|m| id_hex(&m)),
            "ok": r.is_ok(),
            "error": r.as_ref().err().map(|e| e.message.clone()),
            "host_ms": r.as_ref().ok().map(|d| d.host_ms),
            "enclave_ms": r.as_ref().ok().map(|d| d.enclave_ms),
            "finished_unix": now_unix(),
        });
        let job_id = match nth {
            1 => id_hex(&session),
            n => format!("{}-{n}", id_hex(&session)),
        };
        self.jobs.record(job_id, job.to_string().into_bytes());
        r
    }

    fn query_inner(
        &self,
        session: SessionId,
        model: Option<ModelId>,
        req: QueryBody,
    ) -> ApiResult<QueryDone> {
        let model = model.ok_or_else(|| {
            ApiError::bad("this session was opened without a model_id; it cannot run a query")
        })?;
        let host = self.host_model(&model)?;
        let QueryBody {
            payload,
            input: cts,
        } = req;
        let expected = host.packing(0).map(|p| p.input_count()).unwrap_or(0);
        // A thin query sends no ciphertexts: the enclave encrypts the input.
        if !cts.is_empty() && cts.len() != expected {
            return Err(ApiError::bad(format!(
                "the model takes {expected} input ciphertexts, got {}",
                cts.len()
            )));
        }
        let t0 = Instant::now();
        // A thin query may share a stacked query with other sessions; the
        // figures are then the stack's, and `stacked` says how many shared it.
        let stacker = self
            .stacker
            .as_ref()
            .filter(|s| cts.is_empty() && s.stacks(&model));
        let (payload, trace, share) = match stacker {
            Some(stacker) => {
                let recent = stacker.max_wait(&model);
                let fresh = stacker.window();
                let coming =
                    || self.sessions_to_come(&model, recent) + self.openings.coming(&model, fresh);
                let queued = || self.mark_querying(&session);
                let job = Job {
                    enclave: &self.enclave,
                    host: &host,
                    model,
                    coming: &coming,
                    queued: &queued,
                };
                stacker.submit(&job, session, payload)?
            }
            None => {
                self.mark_querying(&session);
                let (payload, trace) =
                    run_query(&self.enclave, &host, session, model, payload, cts)?;
                (payload, trace, 1)
            }
        };
        let (host_ms, enclave_ms) = (trace.host_ms(), trace.enclave_ms());
        info!(
            model_id = %id_hex(&model),
            total_ms = ms(t0),
            host_ms,
            enclave_ms,
            "query done"
        );
        Ok(QueryDone {
            payload: b64(&payload),
            host_ms,
            enclave_ms,
            stages: trace.stages,
            stacked: share as u32,
        })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
