//! The host's table of open sessions: who may send the next request of a
//! session (one at a time), and when an idle session is closed, here and in
//! the enclave. A data provider's session stays open between its queries.

use std::time::{Duration, Instant};

use hetee_proto::ids::{ModelId, SessionId};
use hetee_proto::Request;

use super::{parse_id, ApiError, ApiResult, App};

/// One open session as the host tracks it.
pub(super) struct SessionInfo {
    model_id: Option<ModelId>,
    busy: bool,
    /// A query of this session is on its way (sent, not answered yet).
    querying: bool,
    /// When the session last opened, or last answered a request: it is
    /// closed after [`App::with_session_idle_timeout`] without a request.
    last_active: Instant,
    /// Queries this session ran (each one's record is its own job).
    queries: u64,
}

impl SessionInfo {
    pub(super) fn new(model_id: Option<ModelId>) -> Self {
        SessionInfo {
            model_id,
            busy: false,
            querying: false,
            last_active: Instant::now(),
            queries: 0,
        }
    }

    /// Idle (no request in progress) for longer than `timeout`.
    fn expired(&self, timeout: Duration) -> bool {
        !self.busy && self.last_active.elapsed() > timeout
    }
}

impl App {
    pub(super) fn claim(&self, session: &SessionId) -> ApiResult<Option<ModelId>> {
        let mut s = self
            .sessions
            .lock()
            .map_err(|_| ApiError::conflict("session table poisoned"))?;
        let info = s.get_mut(session).ok_or_else(|| {
            ApiError::not_found(
                "unknown or finished session; open a new one with POST /v1/sessions",
            )
        })?;
        if info.expired(self.session_idle) {
            s.remove(session);
            drop(s);
            let _ = self
                .enclave
                .call(Request::CloseSession { session: *session });
            return Err(ApiError::not_found(format!(
                "the session was idle for more than {} s and is closed; open a new one \
                 with POST /v1/sessions",
                self.session_idle.as_secs()
            )));
        }
        if info.busy {
            return Err(ApiError::conflict(
                "this session is busy with another request; requests of a session go one at a time",
            ));
        }
        info.busy = true;
        Ok(info.model_id)
    }

    pub(super) fn release(&self, session: &SessionId, keep: bool) {
        if let Ok(mut s) = self.sessions.lock() {
            if keep {
                if let Some(i) = s.get_mut(session) {
                    i.busy = false;
                    i.querying = false;
                    i.last_active = Instant::now();
                }
            } else {
                s.remove(session);
            }
        }
        if !keep {
            let _ = self
                .enclave
                .call(Request::CloseSession { session: *session });
        }
    }

    /// Closes every session idle for longer than the idle timeout, here and
    /// in the enclave.
    pub(super) fn close_idle_sessions(&self) {
        let idle = self.session_idle;
        let expired: Vec<SessionId> = match self.sessions.lock() {
            Ok(mut s) => {
                let gone: Vec<SessionId> = s
                    .iter()
                    .filter(|(_, i)| i.expired(idle))
                    .map(|(id, _)| *id)
                    .collect();
                for id in &gone {
                    s.remove(id);
                }
                gone
            }
            Err(_) => Vec::new(),
        };
        for session in expired {
            let _ = self.enclave.call(Request::CloseSession { session });
        }
    }

    /// `DELETE /v1/sessions/{id}`.
    pub fn close_session(&self, session: &str) -> ApiResult<()> {
        let session = parse_id(session, "session")?;
        let known = self
            .sessions
            .lock()
            .map(|mut s| s.remove(&session).is_some())
            .unwrap_or(false);
        if !known {
            return Err(ApiError::not_found("unknown or finished session"));
        }
        let _ = self.enclave.call(Request::CloseSession { session });
        Ok(())
    }

    /// Counts the session's query; returns its number in the session (1
    /// for the first). The session still counts as to come for stacks
    /// until [`App::mark_querying`].
    pub(super) fn begin_query(&self, session: &SessionId) -> u64 {
        let Ok(mut s) = self.sessions.lock() else {
            return 1;
        };
        match s.get_mut(session) {
            Some(i) => {
                i.queries += 1;
                i.queries
            }
            None => 1,
        }
    }

    /// Marks the session's query as on its way: running, or waiting in the
    /// stacker's queue (marked under the stacker's lock, so that a stack
    /// never sees the query neither to come nor waiting).
    pub(super) fn mark_querying(&self, session: &SessionId) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(i) = s.get_mut(session) {
                i.querying = true;
            }
        }
    }

    /// Sessions of `model` whose next query a stack should wait for: open,
    /// no query on its way, and active within `recent` (said hello or got
    /// its last result). A client sending one query after another comes
    /// back within that; a session idle for longer is not waited for.
    pub(super) fn sessions_to_come(&self, model: &ModelId, recent: Duration) -> usize {
        self.sessions
            .lock()
            .map(|s| {
                s.values()
                    .filter(|i| {
                        !i.querying
                            && i.model_id.as_ref() == Some(model)
                            && i.last_active.elapsed() <= recent
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}
