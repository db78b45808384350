//! Name resolution for the HTTP client that answers IP literals itself.
//!
//! ureq's default resolver runs on every request, pooled connection or not,
//! and with a timeout set (the client sets one) it spawns a thread per
//! request to call the system resolver. For a server named by an IP
//! address (`http://127.0.0.1:8080`, the usual case within a cluster) that
//! is a thread and a `getaddrinfo` per query for nothing: this resolver
//! parses the literal and only hands host names to ureq's own resolver.

use std::net::{IpAddr, SocketAddr};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Resolves IP literals in place; host names through [`DefaultResolver`].
#[derive(Debug, Default)]
pub struct LiteralResolver {
    names: DefaultResolver,
}

impl LiteralResolver {
    /// The address of `uri` when its host is an IP literal (IPv6 in
    /// brackets) with an explicit port or the scheme's default port.
    fn literal(uri: &Uri) -> Option<SocketAddr> {
        let host = uri.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip: IpAddr = host.parse().ok()?;
        let port = uri.port_u16().or(match uri.scheme_str()? {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        })?;
        Some(SocketAddr::new(ip, port))
    }
}

impl Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        match Self::literal(uri) {
            Some(addr) => {
                let mut addrs = self.empty();
                addrs.push(addr);
                Ok(addrs)
            }
            None => self.names.resolve(uri, config, timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(s: &str) -> Option<SocketAddr> {
        LiteralResolver::literal(&s.parse().expect("a URI"))
    }

    #[test]
    fn ip_literals_resolve_in_place_and_names_do_not() {
        assert_eq!(
            literal("http://127.0.0.1:8080/v1/health"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            literal("https://[::1]:9443/v1/health"),
            Some("[::1]:9443".parse().unwrap())
        );
        assert_eq!(
            literal("https://10.0.0.7/x"),
            Some("10.0.0.7:443".parse().unwrap())
        );
        assert_eq!(
            literal("http://10.0.0.7/x"),
            Some("10.0.0.7:80".parse().unwrap())
        );
        assert_eq!(literal("http://localhost:8080/x"), None);
        assert_eq!(literal("http://example.org/x"), None);
    }

    #[test]
    fn host_names_still_resolve() {
        let r = LiteralResolver::default();
        let uri: Uri = "http://localhost:8080/".parse().unwrap();
        let addrs = r
            .resolve(&uri, &Config::default(), NextTimeout::default())
            .expect("localhost resolves");
        assert!(addrs
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
        assert!(!addrs.is_empty());
    }
}
