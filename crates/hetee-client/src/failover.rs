//! Clients with several servers (replicas of one deployment sharing a
//! store): a query goes to the next healthy replica in turn (on a session
//! the client keeps open there between queries), and an attempt
//! that fails because of the replica ([`Fault::Transient`]: unreachable,
//! died mid-query, 5xx, a lost state race) is retried in a new session, with
//! fresh attestation, on another one. A replica whose enclave fails the
//! client's checks ([`Fault::Untrusted`]) is left out for [`EXCLUSION`],
//! then attested again from scratch (it may have been restarted or
//! upgraded). A refusal of
//! the query itself ([`Fault::Fatal`]: budget spent, locked, not allowed,
//! bad input) is returned at once: every replica would refuse it too.
//!
//! Budgets: a query's budget is spent when its enclave starts it. Every
//! attempt of one query carries the same [`Ticket`] (query id and
//! encryption seed), so its input and id are the same on every replica: if
//! a replica dies after the spend, the retry elsewhere runs without
//! spending again. A query counts once (the enclave remembers the last 64
//! spending ids of each client key; see `hetee_enclave::query_ids`).
//! [`Replicas::retried`] lists every retried attempt.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hetee_attest::StaticKeypair;

use crate::data_provider::{Answer, QuerySession, Target, Ticket};
use crate::fault::{classify, Fault};
use crate::http::Api;
use crate::relay::Relay;
use crate::trust::Trust;

/// How long a replica that failed is skipped before it is tried again (with
/// one server, or all of them failing, the wait before the next attempt).
const COOLDOWN: Duration = Duration::from_secs(2);

/// How long a replica that failed the client's checks (its evidence, or
/// its host's) is left out before it is attested again: a replica being
/// upgraded or restarted may be back, and a long-lived client (the Python
/// `Client`) should not lose it for good. Nothing is trusted on the
/// strength of the earlier look: the next attempt verifies everything anew.
pub const EXCLUSION: Duration = Duration::from_secs(60);

/// Why a client with several servers gave up. Added as context to the error
/// of the last attempt, so the cause stays in the error's chain.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// Every attempt failed on a replica (none refused the query itself).
    #[error("no server answered after {attempts} attempts over {servers}")]
    Exhausted {
        /// Attempts made.
        attempts: usize,
        /// The servers, comma separated.
        servers: String,
    },
    /// Every replica failed the client's checks.
    #[error("no server passed the client's checks ({servers})")]
    NoneTrusted {
        /// The servers, comma separated.
        servers: String,
    },
}

/// An attempt that failed on a replica and was retried (or given up).
#[derive(Debug, Clone)]
pub struct Retried {
    /// The replica's address.
    pub server: String,
    /// What went wrong.
    pub error: String,
}

enum Health {
    Up,
    DownUntil(Instant),
    /// Failed the client's checks: skipped, and not waited for, until then.
    ExcludedUntil(Instant),
}

struct Replica {
    addr: String,
    api: Arc<dyn Relay>,
    /// Attested and holding the query plan; dropped after a failure so the
    /// next attempt attests again.
    target: Mutex<Option<Arc<Target>>>,
    /// Open sessions between queries, for the next queries to this replica
    /// (one per concurrent caller at most).
    sessions: Mutex<Vec<QuerySession>>,
    health: Mutex<Health>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The servers given with `--server`: each argument may hold several
/// comma-separated addresses.
pub fn split_servers<S: AsRef<str>>(args: &[S]) -> Result<Vec<String>> {
    let v: Vec<String> = args
        .iter()
        .flat_map(|a| a.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        bail!("no server address; pass --server host:port (several: a,b or --server a --server b)");
    }
    Ok(v)
}

/// One model on several replicas, for a data provider.
pub struct Replicas {
    replicas: Vec<Replica>,
    trust: Trust,
    model_id: String,
    client: Option<Arc<StaticKeypair>>,
    next: AtomicUsize,
    retried: Mutex<Vec<Retried>>,
    /// How long a replica that failed the client's checks is left out.
    exclusion: Duration,
    /// Images per query (the enclave's query plan).
    pub batch: usize,
    /// One image's shape (the enclave's query plan).
    pub input_shape: Vec<usize>,
    /// The model's public metadata (as the first replica serves it).
    pub public: crate::public_meta::PublicMeta,
}

impl Replicas {
    /// Clients for `servers` (`ca`: PEM roots for https) querying
    /// `model_id` as `client` (`None`: a throwaway key per session); the
    /// first replica that passes attestation gives the query plan.
    pub fn connect(
        servers: &[String],
        ca: Option<&Path>,
        trust: &Trust,
        model_id: &str,
        client: Option<StaticKeypair>,
    ) -> Result<Self> {
        let relays = split_servers(servers)?
            .into_iter()
            .map(|addr| {
                let api: Arc<dyn Relay> = Arc::new(Api::connect(&addr, ca)?);
                Ok((addr, api))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::over(relays, trust, model_id, client)
    }

    /// [`Replicas::connect`] over given relays, each named by its address
    /// (e.g. an [`Api`] wrapped to observe or disturb its traffic).
    pub fn over(
        relays: Vec<(String, Arc<dyn Relay>)>,
        trust: &Trust,
        model_id: &str,
        client: Option<StaticKeypair>,
    ) -> Result<Self> {
        Self::over_excluding_for(relays, trust, model_id, client, EXCLUSION)
    }

    /// [`Replicas::over`], leaving a replica that fails the client's
    /// checks out for `exclusion` (instead of [`EXCLUSION`]) before it is
    /// attested again.
    pub fn over_excluding_for(
        relays: Vec<(String, Arc<dyn Relay>)>,
        trust: &Trust,
        model_id: &str,
        client: Option<StaticKeypair>,
        exclusion: Duration,
    ) -> Result<Self> {
        if relays.is_empty() {
            bail!("no server address; pass --server host:port");
        }
        let replicas = relays
            .into_iter()
            .map(|(addr, api)| Replica {
                addr,
                api,
                target: Mutex::new(None),
                sessions: Mutex::new(Vec::new()),
                health: Mutex::new(Health::Up),
            })
            .collect();
        let mut pool = Replicas {
            replicas,
            trust: trust.clone(),
            model_id: model_id.to_string(),
            client: client.map(Arc::new),
            next: AtomicUsize::new(0),
            retried: Mutex::new(Vec::new()),
            exclusion,
            batch: 0,
            input_shape: Vec::new(),
            public: Default::default(),
        };
        let first = pool.attempt(|_, t| Ok(t.clone()))?;
        pool.batch = first.batch;
        pool.input_shape = first.input_shape.clone();
        pool.public = first.public.clone();
        Ok(pool)
    }

    /// The servers, comma separated.
    pub fn servers(&self) -> String {
        let v: Vec<&str> = self.replicas.iter().map(|r| r.addr.as_str()).collect();
        v.join(",")
    }

    /// One query of up to [`Replicas::batch`] images (thin: the input over
    /// the channel), retried on other replicas as the module doc says, each
    /// attempt with the same [`Ticket`]: a budget counts it once. It runs
    /// on a session this client left open on the replica after an earlier
    /// query (no new handshake), or on a new one.
    pub fn query(&self, xs: &[&[f32]], thin: bool) -> Result<Answer> {
        let ticket = Ticket::new();
        self.attempt(|i, t| self.query_on(i, t, xs, thin, &ticket))
    }

    /// A query on replica `i`, in a kept session if one is reusable.
    fn query_on(
        &self,
        i: usize,
        t: &Target,
        xs: &[&[f32]],
        thin: bool,
        ticket: &Ticket,
    ) -> Result<Answer> {
        let pool = &self.replicas[i].sessions;
        let kept = {
            let mut p = lock(pool);
            let mut stale = Vec::new();
            let mut found = None;
            while let Some(s) = p.pop() {
                if s.reusable() {
                    found = Some(s);
                    break;
                }
                stale.push(s);
            }
            drop(p);
            // Closed outside the lock (each is a request to the server).
            drop(stale);
            found
        };
        let run = |s: &mut QuerySession| s.attempt(xs, thin, ticket);
        let (mut s, reused) = match kept {
            Some(s) => (s, true),
            None => (t.session()?, false),
        };
        let a = match run(&mut s) {
            Ok(a) => a,
            // The server closed the kept session (idle too long, or
            // restarted): nothing ran; open a new one.
            Err(e) if reused && session_gone(&e) => {
                s = t.session()?;
                run(&mut s)?
            }
            Err(e) => return Err(e),
        };
        lock(pool).push(s);
        Ok(a)
    }

    /// Attempts that failed on a replica and were retried, in order.
    pub fn retried(&self) -> Vec<Retried> {
        lock(&self.retried).clone()
    }

    /// [`Replicas::retried`], emptying the list.
    pub fn take_retried(&self) -> Vec<Retried> {
        std::mem::take(&mut *lock(&self.retried))
    }

    /// The attested target on replica `i`, connecting if needed.
    fn target(&self, i: usize) -> Result<Arc<Target>> {
        let r = &self.replicas[i];
        let mut slot = lock(&r.target);
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = Arc::new(Target::connect_as(
            r.api.clone(),
            &self.trust,
            &self.model_id,
            self.client.clone(),
        )?);
        // Every replica serves the same model: its plan must be the same.
        if self.batch != 0 && (t.batch != self.batch || t.input_shape != self.input_shape) {
            bail!(
                "server {} plans queries of this model differently from the others; refusing it",
                r.addr
            );
        }
        *slot = Some(t.clone());
        Ok(t)
    }

    /// The next replica to try, in turn among the healthy ones (a replica
    /// whose exclusion is over counts as one); if all are cooling down,
    /// waits for the first to come back. `None`: every replica is excluded.
    fn pick(&self) -> Option<usize> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut soonest: Option<(Instant, usize)> = None;
        for k in 0..n {
            let j = (start + k) % n;
            match *lock(&self.replicas[j].health) {
                Health::Up => return Some(j),
                Health::DownUntil(t) | Health::ExcludedUntil(t) if t <= now => return Some(j),
                Health::DownUntil(t) => {
                    if soonest.is_none_or(|(s, _)| t < s) {
                        soonest = Some((t, j));
                    }
                }
                Health::ExcludedUntil(_) => {}
            }
        }
        let (t, j) = soonest?;
        std::thread::sleep(t.saturating_duration_since(now));
        Some(j)
    }

    fn attempt<T>(&self, run: impl Fn(usize, &Arc<Target>) -> Result<T>) -> Result<T> {
        let max = 2 * self.replicas.len() + 1;
        let mut last: Option<anyhow::Error> = None;
        for _ in 0..max {
            let Some(i) = self.pick() else {
                let e = last.unwrap_or_else(|| anyhow::anyhow!("no server"));
                if self.replicas.len() == 1 {
                    return Err(e);
                }
                return Err(e.context(FailoverError::NoneTrusted {
                    servers: self.servers(),
                }));
            };
            let r = &self.replicas[i];
            let e = match self.target(i).and_then(|t| run(i, &t)) {
                Ok(v) => {
                    *lock(&r.health) = Health::Up;
                    return Ok(v);
                }
                Err(e) => e,
            };
            let fault = classify(&e);
            if fault == Fault::Fatal {
                return Err(e);
            }
            *lock(&r.target) = None;
            // The replica failed: its kept sessions are not reused (nor
            // closed over the network, which may hang on it).
            let kept = std::mem::take(&mut *lock(&r.sessions));
            kept.into_iter().for_each(QuerySession::forget);
            *lock(&r.health) = match fault {
                Fault::Untrusted => Health::ExcludedUntil(Instant::now() + self.exclusion),
                _ => Health::DownUntil(Instant::now() + COOLDOWN),
            };
            lock(&self.retried).push(Retried {
                server: r.addr.clone(),
                error: format!("{e:#}"),
            });
            last = Some(e);
        }
        let e = last.unwrap_or_else(|| anyhow::anyhow!("no attempt"));
        if self.replicas.len() == 1 {
            return Err(e);
        }
        Err(e.context(FailoverError::Exhausted {
            attempts: max,
            servers: self.servers(),
        }))
    }
}

/// Whether a query on a kept session failed because the server no longer
/// knows the session (it closed it), or the enclave closed it to make room
/// for a new client (its session table was full); the query itself did not
/// run (the enclave refuses an unknown session before admitting anything).
fn session_gone(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("unknown or finished session")
        || s.contains("idle for more than")
        || s.contains("unknown or closed session")
}

/// Runs `f` against the first of `servers` that answers: on a replica's
/// failure ([`Fault::Transient`] or [`Fault::Untrusted`]) tries the next
/// one, in order; a refusal ([`Fault::Fatal`]) is returned at once. For the
/// model owner's commands (upload, status, unlock, allow).
pub fn first_answer<T>(
    servers: &[String],
    ca: Option<&Path>,
    mut f: impl FnMut(&Api) -> Result<T>,
) -> Result<T> {
    let servers = split_servers(servers)?;
    let mut last = None;
    for addr in &servers {
        let api = Api::connect(addr, ca)?;
        match f(&api) {
            Ok(v) => return Ok(v),
            Err(e) if classify(&e) == Fault::Fatal => return Err(e),
            Err(e) => {
                if servers.len() > 1 {
                    eprintln!("server {addr} failed ({e:#}); trying the next one");
                }
                last = Some(e);
            }
        }
    }
    let e = last.unwrap_or_else(|| anyhow::anyhow!("no server"));
    if servers.len() == 1 {
        return Err(e);
    }
    Err(e.context(FailoverError::Exhausted {
        attempts: servers.len(),
        servers: servers.join(","),
    }))
}

#[cfg(test)]
mod tests {
    use super::session_gone;

    #[test]
    fn a_session_the_server_or_the_enclave_closed_is_reopened() {
        for m in [
            "unknown or finished session; open a new one with POST /v1/sessions",
            "session idle for more than 300 s",
            "protocol: unknown or closed session",
        ] {
            assert!(session_gone(&anyhow::anyhow!("server: {m}")), "{m}");
        }
        assert!(!session_gone(&anyhow::anyhow!(
            "budget for the model is spent"
        )));
    }
}
