//! TLS on the HTTP API (rustls): a certificate chain and key from PEM files,
//! and an accept loop that speaks TLS to every connection. A client that
//! speaks plain HTTP to the TLS port gets a plain-HTTP 400 that says so,
//! instead of a reset connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// What went wrong loading the server's certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server side of TLS: certificate chain and private key.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let err = |what, path: &Path, reason: String| TlsError::Pem {
            what,
            path: path.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| err("certificate", cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("certificate", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(err("certificate", cert, "no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| err("private key", key, e.to_string()))?;
        Self::new(chain, key)
    }

    /// From DER certificates and key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(Arc::new(cfg)))
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 62\r\n\r\n{\"error\":\"this port speaks TLS: use an https:// address here\"}";

/// Serves the API over TLS on `listener` until it fails.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    tls: TlsConfig,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls.0);
    let router = crate::api::router(app);
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let mut tcp = tcp;
            match tcp.peek(&mut first).await {
                Ok(1) if first[0] != TLS_HANDSHAKE => {
                    let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
                    let _ = tcp.shutdown().await;
                    return;
                }
                Ok(1) => {}
                _ => return,
            }
            let Ok(stream) = acceptor.accept(tcp).await else {
                return; // a failed handshake: nothing to answer
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plain_http_answer_has_the_right_length() {
        let s = std::str::from_utf8(super::PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
