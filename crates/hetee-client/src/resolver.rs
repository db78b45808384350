//! Name resolution for the HTTP client: IP literals answered in place, host
//! names looked up once per [`NAME_TTL`].
//!
//! ureq resolves the server's host on every request, before it looks in
//! its pool of open connections, and with a timeout set (the client sets
//! one) it spawns a thread per request around the system lookup. For a
//! server named by an address (`http://127.0.0.1:8080`, the usual case
//! within a cluster) that is a thread and a `getaddrinfo` per query for
//! nothing; for a host name it can be a DNS round trip per query. This
//! resolver parses literals itself and keeps a name's addresses for
//! [`NAME_TTL`] (what a client that resolves once per connection would do),
//! asking ureq's own resolver when they are older.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a host name's addresses are reused before it is looked up
/// again (a moved server is found within this long).
pub const NAME_TTL: Duration = Duration::from_secs(10);

/// Resolves IP literals in place; host names through `names` (ureq's
/// [`DefaultResolver`] unless a test gives another), cached for
/// [`NAME_TTL`].
#[derive(Debug)]
pub struct CachingResolver<R: Resolver = DefaultResolver> {
    names: R,
    /// `host:port` → when it was looked up, and its addresses.
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Default for CachingResolver {
    fn default() -> Self {
        Self::with_names(DefaultResolver::default())
    }
}

impl<R: Resolver> CachingResolver<R> {
    /// A resolver that looks host names up with `names`.
    pub fn with_names(names: R) -> Self {
        CachingResolver {
            names,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The address of `uri` when its host is an IP literal (IPv6 in
    /// brackets) with an explicit port or the scheme's default port.
    fn literal(uri: &Uri) -> Option<SocketAddr> {
        let ip: IpAddr = bare_host(uri)?.parse().ok()?;
        Some(SocketAddr::new(ip, port(uri)?))
    }
}

fn bare_host(uri: &Uri) -> Option<&str> {
    let host = uri.host()?;
    Some(
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
    )
}

fn port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })
}

impl<R: Resolver> Resolver for CachingResolver<R> {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if let Some(addr) = Self::literal(uri) {
            let mut addrs = self.empty();
            addrs.push(addr);
            return Ok(addrs);
        }
        let key = bare_host(uri)
            .zip(port(uri))
            .map(|(h, p)| format!("{}:{p}", h.to_ascii_lowercase()));
        let cached = key.as_ref().and_then(|k| {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(k)
                .filter(|(at, _)| at.elapsed() < NAME_TTL)
                .map(|(_, addrs)| addrs.clone())
        });
        if let Some(addrs) = cached {
            return Ok(addrs);
        }
        // Failures are not cached: the next request asks again.
        let addrs = self.names.resolve(uri, config, timeout)?;
        if let Some(k) = key {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (at, _)| at.elapsed() < NAME_TTL);
            cache.insert(k, (Instant::now(), addrs.clone()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn literal(s: &str) -> Option<SocketAddr> {
        CachingResolver::<DefaultResolver>::literal(&s.parse().expect("a URI"))
    }

    /// Counts its lookups; answers 10.1.2.3 with the URI's port, or fails.
    #[derive(Debug, Default)]
    struct Counting {
        lookups: AtomicUsize,
        fail: bool,
    }

    impl Resolver for Counting {
        fn resolve(
            &self,
            uri: &Uri,
            _: &Config,
            _: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if self.fail {
                return Err(ureq::Error::HostNotFound);
            }
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new([10, 1, 2, 3].into(), port(uri).unwrap()));
            Ok(addrs)
        }
    }

    fn resolve<R: Resolver>(r: &CachingResolver<R>, s: &str) -> Result<Vec<SocketAddr>, String> {
        r.resolve(
            &s.parse().expect("a URI"),
            &Config::default(),
            NextTimeout::default(),
        )
        .map(|a| a.to_vec())
        .map_err(|e| e.to_string())
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
    fn literals_never_reach_the_lookup_and_names_reach_it_once_per_ttl() {
        let r = CachingResolver::with_names(Counting::default());
        for _ in 0..3 {
            assert_eq!(
                resolve(&r, "http://192.168.0.9:7000/a"),
                Ok(vec!["192.168.0.9:7000".parse().unwrap()])
            );
        }
        assert_eq!(r.names.lookups.load(Ordering::Relaxed), 0);
        for path in ["a", "b", "c"] {
            assert_eq!(
                resolve(&r, &format!("http://Server.Example:7000/{path}")),
                Ok(vec!["10.1.2.3:7000".parse().unwrap()])
            );
        }
        assert_eq!(r.names.lookups.load(Ordering::Relaxed), 1);
        // Another port is another entry.
        assert_eq!(
            resolve(&r, "http://server.example:7001/"),
            Ok(vec!["10.1.2.3:7001".parse().unwrap()])
        );
        assert_eq!(r.names.lookups.load(Ordering::Relaxed), 2);
        // Entries older than the TTL are looked up again.
        for (at, _) in r.cache.lock().unwrap().values_mut() {
            *at = at
                .checked_sub(NAME_TTL)
                .expect("the clock started long ago");
        }
        resolve(&r, "http://server.example:7000/").unwrap();
        assert_eq!(r.names.lookups.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn failed_lookups_are_not_cached() {
        let r = CachingResolver::with_names(Counting {
            fail: true,
            ..Counting::default()
        });
        assert!(resolve(&r, "http://gone.example:7000/").is_err());
        assert!(resolve(&r, "http://gone.example:7000/").is_err());
        assert_eq!(r.names.lookups.load(Ordering::Relaxed), 2);
        assert!(r.cache.lock().unwrap().is_empty());
    }

    #[test]
    fn host_names_still_resolve_through_the_system() {
        let addrs = resolve(&CachingResolver::default(), "http://localhost:8080/")
            .expect("localhost resolves");
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
    }
}
