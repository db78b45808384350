//! A small blocking JSON client for the server's API.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hetee_proto::api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::resolver::CachingResolver;

/// A request that did not get a successful answer: the server could not
/// be reached (or the connection broke), or it answered an error status.
/// Carried inside the `anyhow` errors of [`Api`], so callers (failover)
/// can tell the two apart with `downcast_ref`.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer: connection refused or reset, the server died mid-request,
    /// a timeout, or the answer broke off.
    #[error("{what}: cannot reach the server at {base}: {reason}")]
    Unreachable {
        /// The request path.
        what: String,
        /// The server's base URL.
        base: String,
        /// The transport's error.
        reason: String,
    },
    /// The server answered a status of 400 or more.
    #[error("{what}: the server answered {status}: {message}")]
    Status {
        /// The request path.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
}

/// Connections an [`Api`] keeps open for reuse, to its server. Its clones
/// share them: every session of a data provider (the bench's concurrent
/// clients, the Python `Client` on many threads) sends through one pool.
/// `ureq` keeps 3 per host by default, so that a fourth concurrent session
/// closed its connection after each answer and opened a new one for its
/// next query (a TCP handshake, and two fresh 128 KiB buffers zeroed).
pub const IDLE_CONNECTIONS: usize = 64;

/// The server's base URL and an HTTP agent.
#[derive(Clone)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
}

/// Normalizes `host:port`, `http://host:port[/]` or `https://host:port[/]`
/// to a base URL (plain HTTP unless `https://` is given).
pub fn base_url(addr: &str) -> Result<String> {
    let a = addr.trim().trim_end_matches('/');
    if a.is_empty() {
        bail!("empty server address; pass --server host:port");
    }
    let (scheme, rest) = match a.split_once("://") {
        Some(("http", r)) => ("http", r),
        Some(("https", r)) => ("https", r),
        Some((s, _)) => bail!("server address {addr:?}: scheme {s}:// is not http:// or https://"),
        None => ("http", a),
    };
    if rest.contains('/') || !rest.contains(':') {
        bail!("server address {addr:?} is not host:port, http://host:port or https://host:port");
    }
    Ok(format!("{scheme}://{rest}"))
}

impl Api {
    /// A client for the server at `addr`; an `https://` address is checked
    /// against the system's trust roots.
    pub fn new(addr: &str) -> Result<Self> {
        Self::connect(addr, None)
    }

    /// A client for the server at `addr`; an `https://` address is checked
    /// against the CA certificates in the PEM file `ca` if given, else the
    /// system's trust roots.
    pub fn connect(addr: &str, ca: Option<&std::path::Path>) -> Result<Self> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let base = base_url(addr)?;
        let roots = match ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read the CA file {}", path.display()))?;
                let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("the CA file {} is not PEM", path.display()))?;
                if certs.is_empty() {
                    bail!("the CA file {} holds no CERTIFICATE", path.display());
                }
                RootCerts::Specific(std::sync::Arc::new(certs))
            }
            None => RootCerts::PlatformVerifier,
        };
        if ca.is_some() && !base.starts_with("https://") {
            bail!("--ca is given but the server address {addr:?} is not https://");
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(900)))
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build();
        // ureq resolves the host on every request (a thread and a system
        // lookup each, with a timeout set): an IP literal needs neither, a
        // host name is looked up once per `resolver::NAME_TTL`.
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            CachingResolver::default(),
        );
        Ok(Api { base, agent })
    }

    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let unreachable = |reason: String| HttpError::Unreachable {
            what: what.to_string(),
            base: self.base.clone(),
            reason,
        };
        let mut resp = r.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if status >= 400 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(HttpError::Status {
                what: what.to_string(),
                status,
                message,
            }
            .into());
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: malformed answer"))
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        self.finish(path, self.agent.get(&url).call())
    }

    /// `POST path` with a JSON body.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let bytes = serde_json::to_vec(body)?;
        self.finish(
            path,
            self.agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&bytes[..]),
        )
    }

    /// `POST path` with a binary body of `content_type`.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        self.finish(
            path,
            self.agent
                .post(&url)
                .header("content-type", content_type)
                .send(bytes),
        )
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        self.finish(path, self.agent.delete(&url).call())
    }
}
