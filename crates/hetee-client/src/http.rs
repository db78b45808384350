//! A small blocking JSON client for the server's API.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hetee_proto::api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(900)))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(Api { base, agent })
    }

    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut resp =
            r.map_err(|e| anyhow!("{what}: cannot reach the server at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .with_context(|| format!("{what}: reading the answer"))?;
        if status >= 400 {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{what}: the server answered {status}: {msg}");
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
